//! Target `generation`: the decision table two nodes run when they meet
//! (`engine::generation::decide_sync`), which picks the resync direction from their
//! generations.
//!
//! Input: two views (generations from a small alphabet, or raw 64-bit values; crash, primary
//! and out-of-sync flags; node ids made distinct). Deciding never panics; what one node
//! decides, the other decides mirrored, by the mirrored rule; at most one side sends, and it
//! sends exactly when the other receives; and the decision survives the `Decision` message the
//! nodes exchange to compare them.

use engine::generation::{
    Generation, GenerationSet, SyncDecision, SyncRule, SyncView, decide_sync,
};
use engine::protocol::messages::PeerMessage;
use engine::types::NodeId;

use crate::input::Input;

/// The target body.
pub fn generation(data: &[u8]) {
    let mut input = Input::new(data);
    let local = view(&mut input);
    let mut peer = view(&mut input);
    if peer.node_id == local.node_id {
        peer.node_id = NodeId(local.node_id.0 ^ 1);
    }
    let (decision, rule) = decide_sync(&local, &peer);
    let (mirror_decision, mirror_rule) = decide_sync(&peer, &local);
    assert_eq!(
        mirror_decision,
        decision.reverse(),
        "{local:?} / {peer:?}: {rule}"
    );
    assert_eq!(mirror_rule, rule.reverse(), "{local:?} / {peer:?}: {rule}");
    assert!(
        SyncRule::ALL.contains(&rule),
        "{rule} is not a rule of the table"
    );
    assert_eq!(decision.reverse().reverse(), decision);
    assert_eq!(rule.reverse().reverse(), rule);
    assert!(!(decision.is_source() && mirror_decision.is_source()));
    assert_eq!(decision.is_source(), mirror_decision.is_target());
    assert_eq!(decision.is_full_sync(), mirror_decision.is_full_sync());
    assert_eq!(decision.is_split_brain(), mirror_decision.is_split_brain());
    let both_fresh = local.generations.current.is_none() && peer.generations.current.is_none();
    assert_eq!(decision == SyncDecision::NoSyncBothFresh, both_fresh);

    let message = PeerMessage::Decision { decision, rule };
    let decoded = PeerMessage::decode(message.kind(), &message.encode()).expect("decodes");
    assert_eq!(decoded, message);
}

fn view(input: &mut Input<'_>) -> SyncView {
    let flags = input.u8();
    let mut generation = || {
        let byte = input.u8();
        if flags & 0x80 != 0 && byte & 0x80 != 0 {
            Generation(input.u64())
        } else {
            Generation(u64::from(byte % 6))
        }
    };
    let current = generation();
    let bitmap = generation();
    let history = [generation(), generation(), generation(), generation()];
    SyncView {
        generations: GenerationSet {
            current,
            bitmap,
            history,
        },
        node_id: NodeId(input.u8()),
        crashed_primary: flags & 1 != 0,
        crashed_secondary: flags & 2 != 0,
        primary: flags & 4 != 0,
        out_of_sync_granules: if flags & 8 != 0 {
            input.u64()
        } else {
            u64::from(flags >> 4 & 1)
        },
    }
}

/// Seeds: a reconnect, a resync after a failover, a split brain, unrelated data.
pub fn seeds() -> Vec<Vec<u8>> {
    let view = |flags: u8, generations: [u8; 6], node: u8| {
        let mut bytes = vec![flags];
        bytes.extend_from_slice(&generations);
        bytes.push(node);
        bytes
    };
    let pair = |a: Vec<u8>, b: Vec<u8>| [a, b].concat();
    vec![
        pair(
            view(4, [5, 0, 4, 3, 0, 0], 0),
            view(0, [5, 0, 4, 3, 0, 0], 1),
        ),
        pair(
            view(1 | 0x10, [5, 0, 4, 0, 0, 0], 0),
            view(4, [1, 5, 4, 0, 0, 0], 1),
        ),
        pair(
            view(4, [2, 5, 4, 0, 0, 0], 0),
            view(4, [3, 5, 4, 0, 0, 0], 1),
        ),
        pair(
            view(0, [1, 0, 0, 0, 0, 0], 0),
            view(0, [2, 0, 0, 0, 0, 0], 1),
        ),
        pair(
            view(2, [0, 0, 0, 0, 0, 0], 0),
            view(0, [3, 0, 2, 1, 0, 0], 1),
        ),
    ]
}
