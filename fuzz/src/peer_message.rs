//! Target `peer_message`: the peer protocol's message table (`engine::protocol::messages`):
//! hand-framed data messages and postcard-encoded control messages.
//!
//! Input: a selector byte (below 0x80: one of the known kinds, chosen by the next byte; else
//! the next two bytes are the raw kind), then the payload. `PeerMessage::decode` never panics;
//! a decoded message has the kind it was decoded as, re-encodes to a payload that decodes to the
//! same message, and, for the hand-framed kinds, to exactly the input. A bitmap chunk the
//! replica would accept goes through the roaring decoder the replica uses, which must not
//! panic either.

use engine::protocol::messages::{BITMAP_CHUNK_BYTES_MAX, PeerMessage, kind_name};

use crate::input::Input;

/// Every kind of the table.
const KINDS: [u16; 19] = [
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0010, 0x0011, 0x0012, 0x0013, 0x0020, 0x0021,
    0x0022, 0x0030, 0x0031, 0x0032, 0x0033, 0x0034, 0x0035,
];

/// Kinds whose payload is postcard, where several encodings may decode alike.
const POSTCARD_KINDS: [u16; 3] = [0x0001, 0x0002, 0x0032];

/// The target body.
pub fn peer_message(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = if input.u8() < 0x80 {
        KINDS[input.below(KINDS.len())]
    } else {
        input.u16()
    };
    let payload = input.rest();
    let message = match PeerMessage::decode(kind, payload) {
        Ok(message) => message,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    assert_eq!(message.kind(), kind);
    assert!(kind_name(kind).is_some());
    let _ = message.to_string();
    let encoded = message.encode();
    if !POSTCARD_KINDS.contains(&kind) {
        assert_eq!(encoded, payload, "{message} re-encodes to other bytes");
    }
    let again = PeerMessage::decode(kind, &encoded).expect("a re-encoded message decodes");
    assert_eq!(again, message);

    if let PeerMessage::Bitmap { granules, .. } = &message
        && granules.len() <= BITMAP_CHUNK_BYTES_MAX
        && let Ok(set) = roaring::RoaringTreemap::deserialize_from(&granules[..])
    {
        // What the replica does next with an accepted set: its maximum, then every member.
        let _ = set.max();
        let count = set.iter().take(1 << 16).count() as u64;
        assert!(count <= set.len());
    }
}

/// Seeds: one payload of every kind, as the engine encodes them.
pub fn seeds() -> Vec<Vec<u8>> {
    use engine::buffer::IoBuf;
    use engine::generation::{Generation, GenerationSet, SyncDecision, SyncRule};
    use engine::protocol::messages::{DigestPurpose, JournalMark, PeerState, WriteFlags};
    use engine::state::{DiskState, Role};
    use engine::types::{NodeId, Seq};

    let generations = GenerationSet {
        current: Generation(9),
        bitmap: Generation(7),
        history: [
            Generation(3),
            Generation(2),
            Generation::NONE,
            Generation::NONE,
        ],
    };
    let mut bitmap = roaring::RoaringTreemap::new();
    bitmap.insert_range(10..20);
    bitmap.insert(1 << 40);
    let mut granules = Vec::new();
    bitmap.serialize_into(&mut granules).expect("serializes");
    let messages = [
        PeerMessage::State(Box::new(PeerState {
            node_id: NodeId(1),
            role: Role::Primary,
            disk: DiskState::UpToDate,
            generations,
            current_started_unix_millis: 1_700_000_000_000,
            crashed_primary: true,
            crashed_secondary: false,
            out_of_sync_granules: 12,
            data_bytes: 1 << 30,
            granule_bytes: 4096,
            journal: Some(JournalMark {
                id: 9,
                tail: Seq(4),
                head: Seq(8),
            }),
            received: None,
            discard_my_data: false,
        })),
        PeerMessage::Decision {
            decision: SyncDecision::SourceUseBitmap,
            rule: SyncRule::BitmapSelf,
        },
        PeerMessage::Bitmap {
            granules,
            last: true,
        },
        PeerMessage::StartResync {
            full: false,
            checksum: true,
        },
        PeerMessage::Ping { id: 4 },
        PeerMessage::Pong { id: 4 },
        PeerMessage::Write {
            seq: Seq(10),
            after: Seq(8),
            offset: 4096,
            flags: WriteFlags {
                fua: true,
                receipt: false,
            },
            data: IoBuf::copy_from(&[7; 64]),
        },
        PeerMessage::Trim {
            seq: Seq(11),
            after: Seq(9),
            offset: 0,
            length: 512,
            flags: WriteFlags::default(),
        },
        PeerMessage::WriteZeroes {
            seq: Seq(12),
            after: Seq(9),
            offset: 0,
            length: 512,
            flags: WriteFlags::default(),
        },
        PeerMessage::Flush { id: 77 },
        PeerMessage::WriteAck {
            seq: Seq(10),
            ok: true,
        },
        PeerMessage::FlushAck { id: 77, ok: false },
        PeerMessage::Received { seq: Seq(10) },
        PeerMessage::ResyncData {
            offset: 8192,
            data: IoBuf::copy_from(&[1; 32]),
        },
        PeerMessage::ResyncAck {
            offset: 8192,
            length: 512,
            ok: true,
        },
        PeerMessage::ResyncDone { generations },
        PeerMessage::ResyncDoneAck,
        PeerMessage::Digests {
            purpose: DigestPurpose::Verify,
            offset: 4096,
            length: 8192,
            digests: vec![3; 32],
        },
        PeerMessage::DigestReply {
            purpose: DigestPurpose::Resync,
            offset: 4096,
            length: 8192,
            differing: vec![2],
        },
    ];
    messages
        .iter()
        .map(|message| {
            let index = KINDS
                .iter()
                .position(|&kind| kind == message.kind())
                .expect("a kind of the table");
            let mut seed = vec![0, index as u8];
            seed.extend(message.encode());
            seed
        })
        .collect()
}
