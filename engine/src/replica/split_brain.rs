//! Split brain (S5): both sides moved on without each other. Nothing is overwritten until an
//! operator, or a configured policy, names the side whose changes are discarded.
//!
//! On detection both sides send their bitmaps (the granules each changed since the common
//! ancestor, when the bitmaps are usable: rule `bitmap-both`), so that either node can show
//! both sides' ranges (`tandem split-brain show`), then the link is closed.
//!
//! - Policy `disconnect` (the default): both stay stand-alone with `split_brain: true`.
//! - An operator runs `tandem split-brain resolve VOL --keep NODE`; on the discarded node the
//!   driver first saves that node's changed blocks, then [`AdminCommand::SplitBrainResolve`]
//!   sets "discard my data", which this node announces in its state when it connects again.
//!   The decision then makes it the target: a bitmap resync of both sides' changes (or a full
//!   sync when the bitmaps are not usable), with the rule `discard-self` / `discard-peer`.
//! - Automatic policies (only for `bitmap-both`, where the changes are known) pick the loser by
//!   a rule (`zero-changes-*`, `least-changes-*`, `younger-primary-*`). The loser does not sync
//!   at once: it goes stand-alone with `discard_pending`, the driver saves its changed blocks
//!   and resolves it as an operator would; the winner keeps reconnecting until then.
//!
//! [`AdminCommand::SplitBrainResolve`]: super::AdminCommand::SplitBrainResolve

use roaring::RoaringTreemap;
use serde::{Deserialize, Serialize};

use super::{Refusal, Replica};
use crate::generation::{SyncDecision, SyncRule};
use crate::protocol::messages::PeerState;
use crate::state::{ConnState, Role};

/// Ranges kept in a report (the byte counts cover all of them).
const REPORTED_RANGES_MAX: usize = 1000;

/// How a split brain is resolved without an operator (`after_split_brain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// Stay stand-alone; the operator decides.
    #[default]
    Disconnect,
    /// If only one side changed anything, discard the side that changed nothing.
    DiscardZeroChanges,
    /// Discard the side that changed fewer granules (a tie waits for the operator).
    DiscardLeastChanges,
    /// Discard the side whose current generation started later (became primary later).
    DiscardYoungerPrimary,
}

/// One side of a split brain, for status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitBrainSide {
    /// Its node id.
    pub node_id: u8,
    /// Its role when the split brain was detected.
    pub role: Role,
    /// When its current generation started (Unix ms): when it became primary, or first wrote
    /// without the peer.
    pub diverged_unix_millis: u64,
    /// Whether its changed ranges are known (its bitmap arrived and counts from the common
    /// ancestor).
    pub known: bool,
    /// Granules it changed.
    pub changed_granules: u64,
    /// Bytes it changed (whole granules).
    pub changed_bytes: u64,
    /// The changed ranges, `[offset, length]`, merged, in order (the first 1000).
    pub ranges: Vec<[u64; 2]>,
    /// Whether every range is listed.
    pub ranges_complete: bool,
}

/// A split brain, for status (`split_brain_detail` in `tandem status --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitBrainReport {
    /// The decision rule that found it.
    pub rule: SyncRule,
    /// When it was detected (Unix ms).
    pub detected_unix_millis: u64,
    /// This node.
    pub this_node: SplitBrainSide,
    /// The peer.
    pub peer: SplitBrainSide,
    /// A policy chose this node as the loser; its blocks are being saved before the resync.
    pub discard_pending: Option<SyncRule>,
    /// This node was told to discard its data and waits for the peer.
    pub discarding: bool,
}

/// What is known about the split brain, kept until it is resolved.
#[derive(Debug)]
pub(super) struct SplitBrain {
    rule: SyncRule,
    detected_unix_millis: u64,
    local: PeerState,
    remote: PeerState,
    /// The peer's changed granules, once its bitmap arrived.
    peer_changes: Option<RoaringTreemap>,
    /// Receiving the peer's bitmap.
    pub(super) exchanging: bool,
    /// A policy made this node the loser.
    discard_pending: Option<SyncRule>,
}

/// Merges granule indexes into byte ranges: the first `max` ranges, the bytes of all, whether
/// all are listed.
pub(super) fn granule_ranges(
    granules: impl IntoIterator<Item = u64>,
    granule_bytes: u64,
    data_bytes: u64,
    max: usize,
) -> (Vec<[u64; 2]>, u64, bool) {
    let mut ranges: Vec<[u64; 2]> = Vec::new();
    let mut bytes = 0;
    let mut complete = true;
    for index in granules {
        let offset = index * granule_bytes;
        let length = granule_bytes.min(data_bytes - offset);
        bytes += length;
        let full = ranges.len() >= max;
        match ranges.last_mut() {
            Some([start, len]) if *start + *len == offset => *len += length,
            _ if full => complete = false,
            _ => ranges.push([offset, length]),
        }
    }
    (ranges, bytes, complete)
}

/// Who loses by the operator's word or by `policy`: `Some((this node loses, rule))`.
pub(super) fn loser(
    policy: SplitBrainPolicy,
    decision: SyncDecision,
    local: &PeerState,
    remote: &PeerState,
) -> Option<(bool, SyncRule)> {
    match (local.discard_my_data, remote.discard_my_data) {
        (true, false) => return Some((true, SyncRule::DiscardSelf)),
        (false, true) => return Some((false, SyncRule::DiscardPeer)),
        (true, true) => return None,
        (false, false) => {}
    }
    if decision != SyncDecision::SplitBrainAutoRecover {
        return None; // The changes are not known: only an operator decides.
    }
    let (l, r) = (local.out_of_sync_granules, remote.out_of_sync_granules);
    let pick = |local_loses: bool, self_rule: SyncRule| {
        Some((
            local_loses,
            if local_loses {
                self_rule
            } else {
                self_rule.reverse()
            },
        ))
    };
    match policy {
        SplitBrainPolicy::Disconnect => None,
        SplitBrainPolicy::DiscardZeroChanges => match (l == 0, r == 0) {
            (true, false) => pick(true, SyncRule::ZeroChangesSelf),
            (false, true) => pick(false, SyncRule::ZeroChangesSelf),
            _ => None,
        },
        SplitBrainPolicy::DiscardLeastChanges if l != r => pick(l < r, SyncRule::LeastChangesSelf),
        SplitBrainPolicy::DiscardYoungerPrimary
            if local.current_started_unix_millis != remote.current_started_unix_millis =>
        {
            pick(
                local.current_started_unix_millis > remote.current_started_unix_millis,
                SyncRule::YoungerPrimarySelf,
            )
        }
        SplitBrainPolicy::DiscardLeastChanges | SplitBrainPolicy::DiscardYoungerPrimary => None,
    }
}

impl Replica {
    /// Both sides decided split brain: exchange bitmaps for `show`, then act on the policy.
    pub(super) fn begin_split_brain(&mut self, decision: SyncDecision, rule: SyncRule) {
        let local = self.peer.sent.clone().expect("state sent before deciding");
        let remote = self.peer.remote.clone().expect("remote state");
        self.peer.split_brain = true;
        self.peer.split_brain_detail = Some(SplitBrain {
            rule,
            detected_unix_millis: self.now.unix_millis,
            local,
            remote,
            peer_changes: None,
            exchanging: decision == SyncDecision::SplitBrainAutoRecover,
            discard_pending: None,
        });
        if decision == SyncDecision::SplitBrainAutoRecover {
            self.send_bitmap();
        } else {
            self.end_split_brain_exchange(decision);
        }
    }

    /// Whether the peer's bitmap of a split brain is expected.
    pub(super) fn split_brain_exchanging(&self) -> bool {
        self.peer
            .split_brain_detail
            .as_ref()
            .is_some_and(|detail| detail.exchanging)
    }

    /// Part of the peer's bitmap of a split brain arrived.
    pub(super) fn split_brain_bitmap(&mut self, granules: &RoaringTreemap, last: bool) {
        let detail = self.peer.split_brain_detail.as_mut().expect("exchanging");
        detail
            .peer_changes
            .get_or_insert_with(RoaringTreemap::new)
            .extend(granules.iter());
        if last {
            detail.exchanging = false;
            self.end_split_brain_exchange(SyncDecision::SplitBrainAutoRecover);
        }
    }

    fn end_split_brain_exchange(&mut self, decision: SyncDecision) {
        let (reason, stand_alone) = self.split_brain_outcome(decision);
        if stand_alone {
            self.refuse_link(&reason);
        } else {
            self.close_link(&reason);
        }
    }

    /// The link dropped while the peer's bitmap was coming: its ranges stay unknown, the
    /// outcome is the same.
    pub(super) fn split_brain_link_lost(&mut self, why: &str) {
        let (reason, stand_alone) = self.split_brain_outcome(SyncDecision::SplitBrainAutoRecover);
        if stand_alone {
            self.set_conn(ConnState::StandAlone, format!("{reason} ({why})"));
        }
    }

    /// What the policy makes of the split brain: the reason, and whether to stay stand-alone
    /// (else keep reconnecting: the peer discards its changes once saved).
    fn split_brain_outcome(&mut self, decision: SyncDecision) -> (String, bool) {
        let detail = self.peer.split_brain_detail.as_mut().expect("detected");
        let rule = detail.rule;
        match loser(
            self.config.after_split_brain,
            decision,
            &detail.local,
            &detail.remote,
        ) {
            Some((true, by)) => {
                detail.discard_pending = Some(by);
                let reason = format!(
                    "split brain detected by rule={rule}; the policy discards this node's \
                     changes by rule={by}: saving them before the resync"
                );
                (reason, true)
            }
            Some((false, by)) => {
                let reason = format!(
                    "split brain detected by rule={rule}; the policy discards the peer's changes \
                     by rule={by}: waiting for it to save them"
                );
                (reason, false)
            }
            None => {
                let reason = format!(
                    "split brain detected by rule={rule}; resolve it with `tandem split-brain \
                     resolve`"
                );
                (reason, true)
            }
        }
    }

    /// `split-brain resolve`: this node keeps its data, or discards it (its blocks were saved).
    pub(super) fn admin_split_brain_resolve(&mut self, keep_self: bool) -> Result<(), Refusal> {
        if !self.peer.split_brain {
            return Err(Refusal::Nothing("not in split brain"));
        }
        if !keep_self && self.role == Role::Primary {
            return Err(Refusal::IsPrimary);
        }
        self.peer.discard_my_data = !keep_self;
        if self.peer.conn == ConnState::StandAlone {
            self.set_conn(ConnState::Unconnected, "split brain resolution: connect");
        }
        Ok(())
    }

    /// The split brain was resolved by a decision that syncs one way.
    pub(super) fn split_brain_resolved(&mut self) {
        self.peer.split_brain = false;
        self.peer.split_brain_detail = None;
        self.peer.discard_my_data = false;
    }

    /// Every granule this node changed since the split (its bitmap), as merged byte ranges:
    /// what `split-brain resolve` saves before discarding it.
    pub fn changed_ranges(&self) -> Vec<(u64, u64)> {
        let Some(volume) = self.volume.as_ref() else {
            return Vec::new();
        };
        let (ranges, _, _) = granule_ranges(
            volume.bitmap.iter_set(),
            volume.bitmap.granule_bytes(),
            volume.layout.data_bytes,
            usize::MAX,
        );
        ranges.into_iter().map(|[o, l]| (o, l)).collect()
    }

    /// The split brain, for status.
    pub(super) fn split_brain_report(&self) -> Option<SplitBrainReport> {
        let detail = self.peer.split_brain_detail.as_ref()?;
        let volume = self.volume.as_ref()?;
        let granule = volume.bitmap.granule_bytes();
        let data_bytes = volume.layout.data_bytes;
        let known = detail.rule == SyncRule::BitmapBoth;
        let side = |state: &PeerState, granules: Option<Vec<u64>>| {
            let (ranges, bytes, complete) = granule_ranges(
                granules.clone().unwrap_or_default(),
                granule,
                data_bytes,
                REPORTED_RANGES_MAX,
            );
            SplitBrainSide {
                node_id: state.node_id.0,
                role: state.role,
                diverged_unix_millis: state.current_started_unix_millis,
                known: known && granules.is_some(),
                changed_granules: state.out_of_sync_granules,
                changed_bytes: if granules.is_some() {
                    bytes
                } else {
                    (state.out_of_sync_granules * granule).min(data_bytes)
                },
                ranges,
                ranges_complete: complete,
            }
        };
        let local: Vec<u64> = volume.bitmap.iter_set().collect();
        let peer = detail.peer_changes.as_ref().map(|set| set.iter().collect());
        let mut this_node = side(&detail.local, Some(local));
        this_node.changed_granules = volume.bitmap.weight();
        Some(SplitBrainReport {
            rule: detail.rule,
            detected_unix_millis: detail.detected_unix_millis,
            this_node,
            peer: side(&detail.remote, peer),
            discard_pending: detail.discard_pending,
            discarding: self.peer.discard_my_data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::GenerationSet;
    use crate::state::DiskState;
    use crate::types::NodeId;

    fn state(node: u8, changed: u64, started: u64, discard: bool) -> PeerState {
        PeerState {
            node_id: NodeId(node),
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            generations: GenerationSet::default(),
            current_started_unix_millis: started,
            crashed_primary: false,
            crashed_secondary: false,
            out_of_sync_granules: changed,
            data_bytes: 1 << 20,
            granule_bytes: 4096,
            journal: None,
            received: None,
            discard_my_data: discard,
        }
    }

    #[test]
    fn every_policy_picks_the_same_loser_from_both_sides() {
        use SplitBrainPolicy::*;
        let auto = SyncDecision::SplitBrainAutoRecover;
        let cases = [
            (
                DiscardZeroChanges,
                state(1, 0, 5, false),
                state(2, 3, 9, false),
                Some(true),
            ),
            (
                DiscardZeroChanges,
                state(1, 2, 5, false),
                state(2, 3, 9, false),
                None,
            ),
            (
                DiscardLeastChanges,
                state(1, 2, 5, false),
                state(2, 3, 9, false),
                Some(true),
            ),
            (
                DiscardLeastChanges,
                state(1, 3, 5, false),
                state(2, 3, 9, false),
                None,
            ),
            (
                DiscardYoungerPrimary,
                state(1, 2, 5, false),
                state(2, 3, 9, false),
                Some(false),
            ),
            (
                Disconnect,
                state(1, 0, 5, false),
                state(2, 3, 9, false),
                None,
            ),
            (
                Disconnect,
                state(1, 7, 5, true),
                state(2, 3, 9, false),
                Some(true),
            ),
            (Disconnect, state(1, 7, 5, true), state(2, 3, 9, true), None),
        ];
        for (policy, a, b, a_loses) in cases {
            let from_a = loser(policy, auto, &a, &b);
            let from_b = loser(policy, auto, &b, &a);
            assert_eq!(from_a.map(|(l, _)| l), a_loses, "{policy:?}");
            assert_eq!(from_b.map(|(l, _)| !l), a_loses, "{policy:?} from b");
            if let (Some((_, ra)), Some((_, rb))) = (from_a, from_b) {
                assert_eq!(ra.reverse(), rb, "mirror rules");
            }
        }
        // Without known changes only the operator decides.
        let history = SyncDecision::SplitBrainDisconnect;
        let (a, b) = (state(1, 0, 5, false), state(2, 3, 9, false));
        assert_eq!(loser(DiscardZeroChanges, history, &a, &b), None);
        let a = state(1, 0, 5, true);
        assert_eq!(
            loser(Disconnect, history, &a, &b),
            Some((true, SyncRule::DiscardSelf))
        );
    }

    #[test]
    fn granules_merge_into_ranges_with_a_short_last_granule() {
        let (ranges, bytes, complete) = granule_ranges([0, 1, 3, 9], 4096, 9 * 4096 + 100, 10);
        assert_eq!(ranges, vec![[0, 8192], [3 * 4096, 4096], [9 * 4096, 100]]);
        assert_eq!(bytes, 3 * 4096 + 100);
        assert!(complete);
        let (ranges, bytes, complete) = granule_ranges([0, 2, 4], 4096, 1 << 20, 2);
        assert_eq!(ranges.len(), 2);
        assert_eq!(bytes, 3 * 4096);
        assert!(!complete);
    }
}
