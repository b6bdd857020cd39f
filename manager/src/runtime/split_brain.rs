//! Resolving a split brain on this node: `tandem split-brain resolve`, and the automatic
//! policies. The discarded node first saves the blocks it changed (see [`crate::discard`]),
//! synced to disk, and only then tells the engine to discard its data; a failed save changes
//! nothing.

use std::path::PathBuf;

use engine::replica::AdminCommand;
use engine::runtime::VolumeHandle;
use engine::state::Role;

use crate::discard::{DiscardRequest, check_destination, save_discarded};

/// Discarding this node's side of a split brain.
#[derive(Debug)]
pub struct Discard {
    /// The volume.
    pub volume: String,
    /// This node.
    pub node: String,
    /// This node's backing store.
    pub backing: PathBuf,
    /// Where the changed blocks are saved first (`None`: they are not saved).
    pub dir: Option<PathBuf>,
}

impl Discard {
    /// Saves (if asked), then resolves: a one-line summary, or why nothing was changed.
    pub async fn run(&self, handle: &VolumeHandle) -> Result<String, String> {
        let status = handle.status();
        if !status.split_brain {
            return Err(format!("{}: not in split brain", self.volume));
        }
        if status.role == Role::Primary {
            return Err(format!(
                "{}: this node is primary and its data would be discarded; demote it first \
                 (tandem volume secondary {})",
                self.volume, self.volume
            ));
        }
        let saved = match &self.dir {
            Some(dir) => {
                let handle = handle.clone();
                let (volume, node, backing, dir) = (
                    self.volume.clone(),
                    self.node.clone(),
                    self.backing.clone(),
                    dir.clone(),
                );
                let size = status.size_bytes;
                let unix_millis = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let saved = tokio::task::spawn_blocking(move || {
                    // Secondary and stand-alone: nothing writes here until the resolve below.
                    let ranges = handle.changed_ranges();
                    let bytes = ranges.iter().map(|(_, length)| length).sum();
                    check_destination(&dir, bytes).map_err(|e| e.to_string())?;
                    let request = DiscardRequest {
                        volume: &volume,
                        node: &node,
                        backing: &backing,
                        volume_bytes: size,
                        ranges: &ranges,
                        unix_millis,
                    };
                    save_discarded(&dir, &request).map_err(|e| e.to_string())
                })
                .await
                .map_err(|join| format!("the save panicked: {join}"))??;
                Some(saved)
            }
            None => None,
        };
        let resolve = AdminCommand::SplitBrainResolve { keep_self: false };
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || handle.admin(resolve))
            .await
            .map_err(|join| format!("the resolve panicked: {join}"))?
            .map_err(|refusal| format!("{}: {refusal}", self.volume))?;
        Ok(match saved {
            Some(saved) => format!(
                "{}: this node's changes ({} bytes in {} ranges) were saved to {}; it resyncs \
                 from the peer",
                self.volume,
                saved.bytes,
                saved.ranges,
                saved.folder.display()
            ),
            None => format!(
                "{}: this node's changes are discarded (not saved); it resyncs from the peer",
                self.volume
            ),
        })
    }
}
