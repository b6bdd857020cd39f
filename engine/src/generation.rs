//! Data generations and the decision two nodes make when they meet.
//!
//! A [`Generation`] names one line of data history. Each node keeps a [`GenerationSet`]:
//!
//! - `current`: the generation its data is in now;
//! - `bitmap`: the generation its dirty bitmap counts changes from (the last generation it shared
//!   with the peer), or none when the bitmap is empty;
//! - `history`: older generations, newest first.
//!
//! A node starts a new generation only when its data is about to move away from the peer's:
//! the first write that sets a bitmap bit while primary, or a forced promotion. Recovery after a
//! crash never starts one (that would turn a crashed primary into a false split brain); it sets
//! the `crashed_primary` flag instead.
//!
//! [`decide_sync`] is the decision table of DESIGN §3 as a pure function. The first rule that
//! matches wins; every decision names its rule, and the table is checked to be mirror-symmetric:
//! what one node decides, the other decides reversed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Older generations remembered per node.
pub const HISTORY_LEN: usize = 4;

/// One line of data history. Zero means "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Generation(pub u64);

impl Generation {
    /// No generation: fresh metadata, or an empty bitmap.
    pub const NONE: Self = Self(0);

    /// Whether this is [`Generation::NONE`].
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// The generations one node knows, as stored in its superblock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenerationSet {
    /// The generation of the data now.
    pub current: Generation,
    /// The generation the dirty bitmap counts changes from; none when the bitmap is empty.
    pub bitmap: Generation,
    /// Older generations, newest first.
    pub history: [Generation; HISTORY_LEN],
}

impl GenerationSet {
    /// Starts generation `new` because the data is about to diverge from the peer's.
    pub fn start_new(&mut self, new: Generation) {
        assert!(!new.is_none(), "a new generation is never none");
        assert!(!self.contains(new), "generations are never reused");
        if self.bitmap.is_none() {
            // The bitmap now counts changes from the generation we shared with the peer.
            self.bitmap = self.current;
        } else {
            // The bitmap already counts from an older shared generation; keep it.
            self.push_history(self.current);
        }
        self.current = new;
    }

    /// A resync that made this node a copy of `source` has ended.
    pub fn finish_as_sync_target(&mut self, source: &Self) {
        assert!(!source.current.is_none());
        let old_current = self.current;
        self.current = source.current;
        self.bitmap = Generation::NONE;
        self.history = source.history;
        if source.bitmap != Generation::NONE {
            self.push_history(source.bitmap);
        }
        if old_current != self.current {
            self.push_history(old_current);
        }
    }

    /// A resync in which this node was the source has ended: the bitmap is empty again.
    pub fn finish_as_sync_source(&mut self) {
        if !self.bitmap.is_none() {
            self.push_history(self.bitmap);
            self.bitmap = Generation::NONE;
        }
    }

    /// Whether `generation` appears anywhere in the set.
    pub fn contains(&self, generation: Generation) -> bool {
        !generation.is_none()
            && (self.current == generation
                || self.bitmap == generation
                || self.history.contains(&generation))
    }

    /// Whether `generation` is one of the history entries.
    pub fn in_history(&self, generation: Generation) -> bool {
        !generation.is_none() && self.history.contains(&generation)
    }

    fn push_history(&mut self, generation: Generation) {
        if generation.is_none() || self.history.contains(&generation) {
            return;
        }
        self.history.rotate_right(1);
        self.history[0] = generation;
    }
}

impl fmt::Display for GenerationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "current {} bitmap {} history", self.current, self.bitmap)?;
        for generation in self.history {
            write!(f, " {generation}")?;
        }
        Ok(())
    }
}

/// What one node tells the other about its data when they meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncView {
    /// The node's generations.
    pub generations: GenerationSet,
    /// The node's index, used only to break exact ties the same way on both sides.
    pub node_id: NodeId,
    /// The node crashed while primary and has not yet resynced the extents it may have had in
    /// flight.
    pub crashed_primary: bool,
    /// The node crashed while secondary: writes it acknowledged may have been lost from its
    /// disk cache, so its activity-log extents must come from the peer.
    pub crashed_secondary: bool,
    /// The node is primary now.
    pub primary: bool,
    /// Set bits in the node's dirty bitmap.
    pub out_of_sync_granules: u64,
}

/// The outcome of [`decide_sync`], from the deciding node's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDecision {
    /// Nothing to resync.
    NoSync,
    /// Both sides have fresh metadata: nothing to resync until an operator forces one primary.
    NoSyncBothFresh,
    /// This node sends the blocks set in either bitmap.
    SourceUseBitmap,
    /// This node receives the blocks set in either bitmap.
    TargetUseBitmap,
    /// This node sends every block.
    SourceFullSync,
    /// This node receives every block.
    TargetFullSync,
    /// Both sides wrote since a common generation: split brain, which an automatic policy may
    /// resolve with a bitmap resync.
    SplitBrainAutoRecover,
    /// Both sides wrote and no common bitmap generation exists: split brain for the operator.
    SplitBrainDisconnect,
    /// The two sides share no history at all: refuse to connect.
    UnrelatedData,
}

impl SyncDecision {
    /// The same decision as the peer sees it.
    pub fn reverse(self) -> Self {
        match self {
            Self::SourceUseBitmap => Self::TargetUseBitmap,
            Self::TargetUseBitmap => Self::SourceUseBitmap,
            Self::SourceFullSync => Self::TargetFullSync,
            Self::TargetFullSync => Self::SourceFullSync,
            other => other,
        }
    }

    /// Whether the decision is a split brain.
    pub fn is_split_brain(self) -> bool {
        matches!(
            self,
            Self::SplitBrainAutoRecover | Self::SplitBrainDisconnect
        )
    }

    /// Whether this node will send blocks.
    pub fn is_source(self) -> bool {
        matches!(self, Self::SourceUseBitmap | Self::SourceFullSync)
    }

    /// Whether this node will receive blocks.
    pub fn is_target(self) -> bool {
        matches!(self, Self::TargetUseBitmap | Self::TargetFullSync)
    }

    /// Whether every block travels.
    pub fn is_full_sync(self) -> bool {
        matches!(self, Self::SourceFullSync | Self::TargetFullSync)
    }
}

impl fmt::Display for SyncDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::NoSync => "no-sync",
            Self::NoSyncBothFresh => "no-sync-both-fresh",
            Self::SourceUseBitmap => "source-use-bitmap",
            Self::TargetUseBitmap => "target-use-bitmap",
            Self::SourceFullSync => "source-full-sync",
            Self::TargetFullSync => "target-full-sync",
            Self::SplitBrainAutoRecover => "split-brain-auto-recover",
            Self::SplitBrainDisconnect => "split-brain-disconnect",
            Self::UnrelatedData => "unrelated-data",
        };
        f.write_str(name)
    }
}

/// The rule of the decision table that produced a [`SyncDecision`]. Rules come in mirror pairs
/// (`*_self` / `*_peer`); the others are their own mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncRule {
    /// Neither side has ever had a generation.
    BothFresh,
    /// This side has fresh metadata, the peer has data.
    SelfFresh,
    /// The peer has fresh metadata, this side has data.
    PeerFresh,
    /// Same generation, both crashed while primary: the lower node id is the source.
    CrashedPrimaryBoth,
    /// Same generation, this side crashed while primary: its activity-log extents travel.
    CrashedPrimarySelf,
    /// Same generation, the peer crashed while primary.
    CrashedPrimaryPeer,
    /// Same generation, this side crashed while secondary: it takes the peer's extents.
    CrashedSecondarySelf,
    /// Same generation, the peer crashed while secondary.
    CrashedSecondaryPeer,
    /// Same generation with out-of-sync bits (after a verify, say): the primary, else the lower
    /// node id, is the source.
    SameGenerationOutOfSync,
    /// Same generation, nothing out of sync.
    Reconnected,
    /// Each side's bitmap generation is the other's current: contradictory, treated as split
    /// brain.
    BitmapBothWays,
    /// This side's bitmap counts from the peer's current: this side moved on, the peer did not.
    BitmapSelf,
    /// The peer's bitmap counts from this side's current.
    BitmapPeer,
    /// Both bitmaps count from the same generation and both moved on: split brain with a
    /// common ancestor.
    BitmapBoth,
    /// Each side's current is in the other's history: contradictory, treated as split brain.
    HistoryBothWays,
    /// The peer's current is in this side's history: the peer is behind, the bitmap is unusable.
    HistorySelf,
    /// This side's current is in the peer's history.
    HistoryPeer,
    /// The sides share some older generation but no usable bitmap: split brain.
    HistoryBoth,
    /// No generation in common.
    Unrelated,
    /// Split brain resolved: the operator told this side to discard its changes (after saving
    /// them).
    DiscardSelf,
    /// Split brain resolved: the operator told the peer to discard its changes.
    DiscardPeer,
    /// Split brain, policy `discard-zero-changes`: this side changed nothing.
    ZeroChangesSelf,
    /// Split brain, policy `discard-zero-changes`: the peer changed nothing.
    ZeroChangesPeer,
    /// Split brain, policy `discard-least-changes`: this side changed fewer granules.
    LeastChangesSelf,
    /// Split brain, policy `discard-least-changes`: the peer changed fewer granules.
    LeastChangesPeer,
    /// Split brain, policy `discard-younger-primary`: this side diverged later.
    YoungerPrimarySelf,
    /// Split brain, policy `discard-younger-primary`: the peer diverged later.
    YoungerPrimaryPeer,
}

impl SyncRule {
    /// The same rule as the peer sees it.
    pub fn reverse(self) -> Self {
        match self {
            Self::SelfFresh => Self::PeerFresh,
            Self::PeerFresh => Self::SelfFresh,
            Self::CrashedPrimarySelf => Self::CrashedPrimaryPeer,
            Self::CrashedPrimaryPeer => Self::CrashedPrimarySelf,
            Self::CrashedSecondarySelf => Self::CrashedSecondaryPeer,
            Self::CrashedSecondaryPeer => Self::CrashedSecondarySelf,
            Self::BitmapSelf => Self::BitmapPeer,
            Self::BitmapPeer => Self::BitmapSelf,
            Self::HistorySelf => Self::HistoryPeer,
            Self::HistoryPeer => Self::HistorySelf,
            Self::DiscardSelf => Self::DiscardPeer,
            Self::DiscardPeer => Self::DiscardSelf,
            Self::ZeroChangesSelf => Self::ZeroChangesPeer,
            Self::ZeroChangesPeer => Self::ZeroChangesSelf,
            Self::LeastChangesSelf => Self::LeastChangesPeer,
            Self::LeastChangesPeer => Self::LeastChangesSelf,
            Self::YoungerPrimarySelf => Self::YoungerPrimaryPeer,
            Self::YoungerPrimaryPeer => Self::YoungerPrimarySelf,
            other => other,
        }
    }

    /// Every rule of the decision table, in table order (the split-brain resolutions that
    /// follow it are not in the table).
    pub const ALL: [Self; 19] = [
        Self::BothFresh,
        Self::SelfFresh,
        Self::PeerFresh,
        Self::CrashedPrimaryBoth,
        Self::CrashedPrimarySelf,
        Self::CrashedPrimaryPeer,
        Self::CrashedSecondarySelf,
        Self::CrashedSecondaryPeer,
        Self::SameGenerationOutOfSync,
        Self::Reconnected,
        Self::BitmapBothWays,
        Self::BitmapSelf,
        Self::BitmapPeer,
        Self::BitmapBoth,
        Self::HistoryBothWays,
        Self::HistorySelf,
        Self::HistoryPeer,
        Self::HistoryBoth,
        Self::Unrelated,
    ];
}

impl fmt::Display for SyncRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::BothFresh => "both-fresh",
            Self::SelfFresh => "self-fresh",
            Self::PeerFresh => "peer-fresh",
            Self::CrashedPrimaryBoth => "crashed-primary-both",
            Self::CrashedPrimarySelf => "crashed-primary-self",
            Self::CrashedPrimaryPeer => "crashed-primary-peer",
            Self::CrashedSecondarySelf => "crashed-secondary-self",
            Self::CrashedSecondaryPeer => "crashed-secondary-peer",
            Self::SameGenerationOutOfSync => "same-generation-out-of-sync",
            Self::Reconnected => "reconnected",
            Self::BitmapBothWays => "bitmap-both-ways",
            Self::BitmapSelf => "bitmap-self",
            Self::BitmapPeer => "bitmap-peer",
            Self::BitmapBoth => "bitmap-both",
            Self::HistoryBothWays => "history-both-ways",
            Self::HistorySelf => "history-self",
            Self::HistoryPeer => "history-peer",
            Self::HistoryBoth => "history-both",
            Self::Unrelated => "unrelated",
            Self::DiscardSelf => "discard-self",
            Self::DiscardPeer => "discard-peer",
            Self::ZeroChangesSelf => "zero-changes-self",
            Self::ZeroChangesPeer => "zero-changes-peer",
            Self::LeastChangesSelf => "least-changes-self",
            Self::LeastChangesPeer => "least-changes-peer",
            Self::YoungerPrimarySelf => "younger-primary-self",
            Self::YoungerPrimaryPeer => "younger-primary-peer",
        };
        f.write_str(name)
    }
}

/// Decides how two nodes that meet bring their data together, from `local`'s point of view.
///
/// The rows, in order (first match wins; `L` is local, `P` the peer, `c`/`b`/`h` current, bitmap
/// and history generations):
///
/// | rule | condition | decision |
/// |---|---|---|
/// | both-fresh | `L.c` and `P.c` none | no-sync-both-fresh |
/// | self-fresh / peer-fresh | `L.c` none / `P.c` none | target / source full sync |
/// | crashed-primary-both | `L.c = P.c`, both crashed primary | bitmap, lower node id is source |
/// | crashed-primary-self / -peer | `L.c = P.c`, one crashed primary | bitmap, it is the source |
/// | crashed-secondary-self / -peer | `L.c = P.c`, one crashed secondary | bitmap, it is the target |
/// | same-generation-out-of-sync | `L.c = P.c`, bits set on either side | bitmap, primary else lower id source |
/// | reconnected | `L.c = P.c` | no-sync |
/// | bitmap-both-ways | `L.b = P.c` and `P.b = L.c` | split brain, disconnect |
/// | bitmap-self / -peer | `L.b = P.c` / `P.b = L.c` | source / target, bitmap |
/// | bitmap-both | `L.b = P.b` | split brain, auto-recoverable |
/// | history-both-ways | `P.c ∈ L.h` and `L.c ∈ P.h` | split brain, disconnect |
/// | history-self / -peer | `P.c ∈ L.h` / `L.c ∈ P.h` | source / target, full sync |
/// | history-both | any generation in common | split brain, disconnect |
/// | unrelated | nothing in common | unrelated data |
pub fn decide_sync(local: &SyncView, peer: &SyncView) -> (SyncDecision, SyncRule) {
    assert!(local.node_id != peer.node_id, "a node never meets itself");
    let l = &local.generations;
    let p = &peer.generations;
    let local_wins_tie = local.node_id < peer.node_id;
    let by_tie = |local_is_source: bool| {
        if local_is_source {
            SyncDecision::SourceUseBitmap
        } else {
            SyncDecision::TargetUseBitmap
        }
    };

    if l.current.is_none() && p.current.is_none() {
        return (SyncDecision::NoSyncBothFresh, SyncRule::BothFresh);
    }
    if l.current.is_none() {
        return (SyncDecision::TargetFullSync, SyncRule::SelfFresh);
    }
    if p.current.is_none() {
        return (SyncDecision::SourceFullSync, SyncRule::PeerFresh);
    }
    if l.current == p.current {
        return match (local.crashed_primary, peer.crashed_primary) {
            (true, true) => (by_tie(local_wins_tie), SyncRule::CrashedPrimaryBoth),
            (true, false) => (SyncDecision::SourceUseBitmap, SyncRule::CrashedPrimarySelf),
            (false, true) => (SyncDecision::TargetUseBitmap, SyncRule::CrashedPrimaryPeer),
            (false, false) if local.crashed_secondary != peer.crashed_secondary => {
                if local.crashed_secondary {
                    (
                        SyncDecision::TargetUseBitmap,
                        SyncRule::CrashedSecondarySelf,
                    )
                } else {
                    (
                        SyncDecision::SourceUseBitmap,
                        SyncRule::CrashedSecondaryPeer,
                    )
                }
            }
            (false, false) if local.out_of_sync_granules > 0 || peer.out_of_sync_granules > 0 => {
                let local_is_source = match (local.primary, peer.primary) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => local_wins_tie,
                };
                (by_tie(local_is_source), SyncRule::SameGenerationOutOfSync)
            }
            (false, false) => (SyncDecision::NoSync, SyncRule::Reconnected),
        };
    }
    let local_bitmap_is_peer_current = !l.bitmap.is_none() && l.bitmap == p.current;
    let peer_bitmap_is_local_current = !p.bitmap.is_none() && p.bitmap == l.current;
    match (local_bitmap_is_peer_current, peer_bitmap_is_local_current) {
        (true, true) => return (SyncDecision::SplitBrainDisconnect, SyncRule::BitmapBothWays),
        (true, false) => return (SyncDecision::SourceUseBitmap, SyncRule::BitmapSelf),
        (false, true) => return (SyncDecision::TargetUseBitmap, SyncRule::BitmapPeer),
        (false, false) => {}
    }
    if !l.bitmap.is_none() && l.bitmap == p.bitmap {
        return (SyncDecision::SplitBrainAutoRecover, SyncRule::BitmapBoth);
    }
    match (l.in_history(p.current), p.in_history(l.current)) {
        (true, true) => {
            return (
                SyncDecision::SplitBrainDisconnect,
                SyncRule::HistoryBothWays,
            );
        }
        (true, false) => return (SyncDecision::SourceFullSync, SyncRule::HistorySelf),
        (false, true) => return (SyncDecision::TargetFullSync, SyncRule::HistoryPeer),
        (false, false) => {}
    }
    let shares_any = [l.current, l.bitmap]
        .iter()
        .chain(l.history.iter())
        .any(|g| p.contains(*g));
    if shares_any {
        return (SyncDecision::SplitBrainDisconnect, SyncRule::HistoryBoth);
    }
    (SyncDecision::UnrelatedData, SyncRule::Unrelated)
}

#[cfg(test)]
mod tests;
