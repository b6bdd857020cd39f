//! What `tandem status` shows: the JSON contract of DESIGN §5 and its text rendering.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The status of one node, as its daemon reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// This node's name.
    pub node: String,
    /// The cluster's nodes as this node sees them.
    pub nodes: Vec<NodeView>,
    /// The volumes.
    pub volumes: Vec<VolumeReport>,
    /// Resource groups (the cluster manager's, when configured).
    pub groups: Vec<GroupReport>,
    /// Arbitration, when groups are configured.
    #[serde(default)]
    pub arbitration: Option<ArbitrationReport>,
}

/// A node as seen from the reporting node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Whether it is reachable (this node itself always is).
    pub reachable: bool,
    /// Its heartbeat links and their health.
    pub links: Vec<LinkView>,
}

/// One heartbeat link.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkView {
    /// The link's address.
    pub address: String,
    /// `up`, `suspect` or `down`.
    pub health: String,
    /// Why the link has no socket on the reporting node, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A resource group.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GroupReport {
    /// Its name.
    pub name: String,
    /// The node running it, if any.
    pub active_node: Option<String>,
    /// `running`, `starting`, `stopping`, `stopped`, `failed` or `stop_failed`.
    pub state: String,
    /// Why it does not run on the reporting node, or what it waits for.
    #[serde(default)]
    pub reason: String,
    /// Its resources and their state on the reporting node.
    pub resources: Vec<ResourceReport>,
}

/// A resource of a group, on the reporting node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResourceReport {
    /// Its name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
}

/// Arbitration, as the reporting node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ArbitrationReport {
    /// The arbiters configured, in order (`witness 10.0.0.3:7790`, `reference ip 10.0.0.254`).
    pub arbiters: Vec<String>,
    /// The reporting node holds a fresh lease.
    pub lease_held: bool,
    /// Who holds it instead, as the arbiter said last.
    pub holder: Option<String>,
    /// The last arbitration error.
    pub error: Option<String>,
    /// The reporting node lost arbitration and stopped its groups.
    pub fenced: bool,
    /// Maintenance mode: monitors and failover suspended.
    pub maintenance: bool,
}

/// Resync progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Percent done.
    pub percent: f64,
    /// Recent throughput.
    pub bytes_per_second: u64,
    /// Estimated seconds to go.
    pub eta_seconds: Option<u64>,
    /// "source" or "target".
    pub direction: String,
    /// "full", "bitmap", "checksum" (digests first) or "journal" (a catch-up in write order).
    pub kind: String,
    /// Bytes still to send (null on the target of a catch-up, which cannot know).
    pub remaining_bytes: Option<u64>,
}

/// The running online verify, or the last one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyView {
    /// "running", "finished" or "aborted".
    pub state: String,
    /// Why it was aborted.
    pub reason: Option<String>,
    /// Share of the volume compared.
    pub percent: f64,
    /// Bytes compared.
    pub checked_bytes: u64,
    /// Bytes found different.
    pub mismatched_bytes: u64,
    /// Mismatching ranges, `[offset, length]` in bytes, merged, in order.
    pub mismatched_ranges: Vec<[u64; 2]>,
    /// Whether every mismatching range is listed (the first 1000 are).
    pub ranges_complete: bool,
    /// The mismatches were marked out of sync on this node.
    pub marked: bool,
    /// When it started.
    pub started_unix_millis: u64,
    /// When it ended.
    pub finished_unix_millis: Option<u64>,
}

impl From<engine::replica::VerifyReport> for VerifyView {
    fn from(report: engine::replica::VerifyReport) -> Self {
        Self {
            state: report.state.to_string(),
            reason: report.reason,
            percent: report.percent,
            checked_bytes: report.checked_bytes,
            mismatched_bytes: report.mismatched_bytes,
            mismatched_ranges: report.mismatched_ranges,
            ranges_complete: report.ranges_complete,
            marked: report.marked,
            started_unix_millis: report.started_unix_millis,
            finished_unix_millis: report.finished_unix_millis,
        }
    }
}

impl VerifyView {
    /// One line for the text status.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "verify {}: {:.1}% compared, {} in {} range{} differ",
            self.state,
            self.percent,
            human_bytes(self.mismatched_bytes),
            self.mismatched_ranges.len(),
            if self.mismatched_ranges.len() == 1 {
                ""
            } else {
                "s"
            },
        );
        if let Some(reason) = &self.reason {
            let _ = write!(line, " ({reason})");
        }
        if self.marked {
            line.push_str(", marked out of sync");
        }
        line
    }
}

/// The journal: the writes the peer has not written yet, in write order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JournalReport {
    /// Keeping records (false after an overflow, until the peer is in sync again).
    pub active: bool,
    /// Records held.
    pub records: u64,
    /// Bytes of them in memory.
    pub memory_bytes: u64,
    /// Bytes of the on-disk ring in use, and its size.
    pub ring_used_bytes: u64,
    /// Size of the on-disk ring.
    pub ring_bytes: u64,
    /// Overflows since the daemon started (each one hands over to a bitmap resync).
    pub overflows: u64,
}

/// One volume on the reporting node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VolumeReport {
    /// The volume's name.
    pub name: String,
    /// `primary` or `secondary`.
    pub role: String,
    /// This node's disk state (`up_to_date`, `inconsistent`, ...).
    pub disk: String,
    /// Connection to the peer (`connected`, `unconnected`, `stand_alone`, ...).
    pub connection: String,
    /// Replication state (`established`, `sync_source`, ...).
    pub replication: String,
    /// The peer's disk state (`unknown` when not connected).
    pub peer_disk: String,
    /// The peer's role, when connected.
    pub peer_role: Option<String>,
    /// Bytes marked out of sync with the peer.
    pub out_of_sync_bytes: u64,
    /// Bytes written here and sent to the peer that it has not written yet (under protocol A,
    /// how far behind it is).
    pub unacked_bytes: u64,
    /// The journal.
    pub journal: JournalReport,
    /// Resync progress, while one runs.
    pub sync: Option<SyncReport>,
    /// The running online verify, or the last one.
    #[serde(default)]
    pub verify: Option<VerifyView>,
    /// A split brain was detected and not resolved.
    pub split_brain: bool,
    /// What each side changed, while a split brain is unresolved.
    #[serde(default)]
    pub split_brain_detail: Option<engine::replica::SplitBrainReport>,
    /// Where clients reach the volume on this node (`nbd://10.0.0.1:10809/r0`), when serving.
    pub device: Option<String>,
    /// Size of the data area.
    pub size_bytes: u64,
    /// Replication protocol.
    pub protocol: String,
    /// The last sync decision and the rule that made it.
    pub last_decision: Option<String>,
    /// Why the connection is stand-alone or was last lost.
    pub connection_reason: Option<String>,
    /// Bytes sent to the peer on the wire (after compression and encryption), since start.
    pub wire_bytes_sent: u64,
    /// Bytes received from the peer on the wire, since start.
    pub wire_bytes_received: u64,
    /// Why the frontend is not serving, if it should and is not.
    pub frontend_error: Option<String>,
}

impl NodeReport {
    /// The text `tandem status` prints.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "node {}", self.node);
        for node in &self.nodes {
            let reach = if node.reachable {
                "reachable"
            } else {
                "unreachable"
            };
            let links: Vec<String> = node
                .links
                .iter()
                .map(|link| format!("{} {}", link.address, link.health))
                .collect();
            let _ = writeln!(
                out,
                "  {:<12} {reach}; heartbeat links: {}",
                node.name,
                links.join(", ")
            );
        }
        for volume in &self.volumes {
            let _ = writeln!(
                out,
                "volume {} ({}, protocol {}): role {}, disk {}",
                volume.name,
                human_bytes(volume.size_bytes),
                volume.protocol,
                volume.role,
                volume.disk
            );
            let peer_role = volume.peer_role.as_deref().unwrap_or("unknown");
            let _ = writeln!(
                out,
                "  connection {}, replication {}, peer {} ({peer_role})",
                volume.connection, volume.replication, volume.peer_disk
            );
            if let Some(reason) = &volume.connection_reason
                && volume.connection != "connected"
            {
                let _ = writeln!(out, "  reason: {reason}");
            }
            if volume.wire_bytes_sent > 0 || volume.wire_bytes_received > 0 {
                let _ = writeln!(
                    out,
                    "  link traffic: sent {}, received {} (compressed, encrypted)",
                    human_bytes(volume.wire_bytes_sent),
                    human_bytes(volume.wire_bytes_received)
                );
            }
            if volume.out_of_sync_bytes > 0 {
                let _ = writeln!(
                    out,
                    "  out of sync: {}",
                    human_bytes(volume.out_of_sync_bytes)
                );
            }
            if volume.unacked_bytes > 0 {
                let _ = writeln!(
                    out,
                    "  peer behind by: {} (sent, not yet written there)",
                    human_bytes(volume.unacked_bytes)
                );
            }
            let journal = &volume.journal;
            if journal.records > 0 || journal.overflows > 0 {
                let state = if journal.active { "" } else { ", stopped" };
                let _ = writeln!(
                    out,
                    "  journal: {} records ({} in memory, {} of {} ring){state}, {} overflows",
                    journal.records,
                    human_bytes(journal.memory_bytes),
                    human_bytes(journal.ring_used_bytes),
                    human_bytes(journal.ring_bytes),
                    journal.overflows
                );
            }
            if let Some(sync) = &volume.sync {
                let eta = sync
                    .eta_seconds
                    .map_or("unknown".to_string(), |s| format!("{s} s"));
                let to_go = sync
                    .remaining_bytes
                    .map_or("unknown".to_string(), human_bytes);
                let _ = writeln!(
                    out,
                    "  sync ({} {}): {:.1}% done, {}/s, {to_go} to go, eta {eta}",
                    sync.kind,
                    sync.direction,
                    sync.percent,
                    human_bytes(sync.bytes_per_second),
                );
            }
            if let Some(verify) = &volume.verify {
                let _ = writeln!(out, "  {}", verify.summary());
            }
            if volume.split_brain {
                let _ = writeln!(
                    out,
                    "  SPLIT BRAIN: see tandem split-brain show {}",
                    volume.name
                );
            }
            if let Some(decision) = &volume.last_decision {
                let _ = writeln!(out, "  last decision: {decision}");
            }
            match (&volume.device, &volume.frontend_error) {
                (Some(device), _) => {
                    let _ = writeln!(out, "  device {device}");
                }
                (None, Some(error)) => {
                    let _ = writeln!(out, "  frontend: {error}");
                }
                (None, None) => {}
            }
        }
        if let Some(arbitration) = &self.arbitration {
            let arbiters = if arbitration.arbiters.is_empty() {
                "none configured".to_string()
            } else {
                arbitration.arbiters.join(", ")
            };
            let mut line = format!("arbitration: {arbiters}");
            if arbitration.lease_held {
                line.push_str("; lease held");
            }
            if let Some(holder) = &arbitration.holder {
                let _ = write!(line, "; lease held by {holder}");
            }
            if let Some(error) = &arbitration.error {
                let _ = write!(line, "; {error}");
            }
            if arbitration.fenced {
                line.push_str("; FENCED (lost arbitration, groups stopped)");
            }
            if arbitration.maintenance {
                line.push_str("; MAINTENANCE (monitors and failover suspended)");
            }
            let _ = writeln!(out, "{line}");
        }
        for group in &self.groups {
            let node = group.active_node.as_deref().unwrap_or("-");
            let _ = write!(out, "group {} on {node}: {}", group.name, group.state);
            if !group.reason.is_empty() {
                let _ = write!(out, " ({})", group.reason);
            }
            let _ = writeln!(out);
            for resource in &group.resources {
                let _ = writeln!(out, "  {} {}", resource.name, resource.state);
            }
        }
        out
    }
}

/// `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    crate::size::ByteSize(bytes).human()
}
