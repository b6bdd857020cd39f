//! Target `quorum`: the quorum disk (`manager::cluster::quorum`).
//!
//! Input: a control byte. Bit 0 clear: the rest is a slot block; decoding never panics, and a
//! slot that decodes re-encodes to the same first bytes. Bit 0 set: the rest is a schedule for
//! two nodes sharing one disk: each step picks a node, how far the clock moves, and what the
//! node does (the next step of an acquire, a release, a restart with what its slot holds),
//! with arbitrary claims. The property: never do both nodes hold a lease granted within the
//! last `lease_ms` of their own clock at once, unless one was forced (the operator's choice).

use manager::cluster::quorum::{QuorumDisk, SLOT_BYTES, Slot, Step, Verdict};
use manager::cluster::witness::Claims;

use crate::input::Input;

const LEASE_MS: u64 = 3000;

/// The target body.
pub fn quorum(data: &[u8]) {
    let mut input = Input::new(data);
    if input.bool() {
        schedule(&mut input);
    } else {
        slot(input.rest());
    }
}

fn slot(block: &[u8]) {
    if let Ok(Some(slot)) = Slot::decode(block) {
        let encoded = slot.encode();
        assert_eq!(Slot::decode(&encoded), Ok(Some(slot)));
        assert_eq!(encoded.len(), SLOT_BYTES);
    }
}

/// Where one node is in an acquire.
enum Phase {
    Idle,
    /// Read done, claim to write.
    Claim(Vec<u8>, Claims),
    /// Claim written, second read to do.
    Check(Claims),
}

struct Node {
    side: QuorumDisk,
    phase: Phase,
    /// When its last grant began (its acquire's first read), if it holds.
    granted_at: Option<u64>,
    forced: bool,
}

fn schedule(input: &mut Input<'_>) {
    let mut disk: [Option<Vec<u8>>; 2] = [None, None];
    let read = |disk: &[Option<Vec<u8>>; 2], node: usize| {
        disk[node]
            .as_ref()
            .and_then(|block| Slot::decode(block).expect("only valid slots are written"))
    };
    let mut now = 0u64;
    let mut nodes: Vec<Node> = (0..2u8)
        .map(|me| Node {
            side: QuorumDisk::new("demo", me, LEASE_MS, None, 0),
            phase: Phase::Idle,
            granted_at: None,
            forced: false,
        })
        .collect();
    while !input.is_empty() {
        let step = input.u8();
        let index = usize::from(step & 1);
        now += u64::from(input.u16() % 2000);
        let claims = Claims {
            peer_behind: step & 0x10 != 0,
            in_sync: step & 0x20 != 0,
            force: step & 0x40 != 0 && step & 0x80 != 0,
            generation: u64::from(step >> 6),
        };
        let node = &mut nodes[index];
        match (step >> 1) & 7 {
            // Restart: a fresh side that reads what its slot holds.
            0 => {
                node.side = QuorumDisk::new("demo", index as u8, LEASE_MS, read(&disk, index), now);
                node.phase = Phase::Idle;
                node.granted_at = None;
            }
            // Release.
            1 => {
                disk[index] = Some(node.side.release(claims));
                node.phase = Phase::Idle;
                node.granted_at = None;
            }
            // The next step of an acquire.
            _ => match std::mem::replace(&mut node.phase, Phase::Idle) {
                Phase::Idle => {
                    node.side
                        .observe(read(&disk, 1 - index), now)
                        .expect("valid");
                    match node.side.acquire(claims, now) {
                        Step::Claim(block) => node.phase = Phase::Claim(block, claims),
                        Step::Answer(Verdict::Granted) => unreachable!("a grant needs a claim"),
                        Step::Answer(_) => node.granted_at = None,
                        Step::Write(..) => unreachable!("an acquire does not withdraw"),
                    }
                    if let Phase::Claim(..) = node.phase {
                        // The grant, if any, counts from this read.
                        node.granted_at = Some(now);
                    }
                }
                Phase::Claim(block, claims) => {
                    disk[index] = Some(block);
                    node.phase = Phase::Check(claims);
                }
                Phase::Check(claims) => {
                    node.side
                        .observe(read(&disk, 1 - index), now)
                        .expect("valid");
                    match node.side.after_claim(claims, now) {
                        Step::Answer(Verdict::Granted) => node.forced = claims.force,
                        Step::Answer(_) => node.granted_at = None,
                        Step::Write(block, _) => {
                            disk[index] = Some(block);
                            node.granted_at = None;
                        }
                        Step::Claim(_) => unreachable!("no second claim"),
                    }
                }
            },
        }
        // A lease runs `lease_ms` from its acquire's first read; one still in its claim is not
        // held yet.
        let holds = |node: &Node| {
            matches!(node.phase, Phase::Idle)
                && node.granted_at.is_some_and(|at| now < at + LEASE_MS)
        };
        if holds(&nodes[0]) && holds(&nodes[1]) && !nodes[0].forced && !nodes[1].forced {
            panic!("both nodes hold the quorum-disk lease at {now} ms");
        }
    }
}

/// Seeds: a slot, and a schedule of two nodes taking turns.
pub fn seeds() -> Vec<Vec<u8>> {
    let slot = Slot {
        cluster: 1,
        node: 0,
        seq: 5,
        holds: true,
        peer_behind: false,
        generation: 9,
        had: 0,
    };
    let mut block = vec![0u8];
    block.extend_from_slice(&slot.encode()[..64]);
    let mut schedule = vec![1u8];
    for round in 0..12u8 {
        for node in 0..2u8 {
            schedule.push(node | 0b0100);
            schedule.extend_from_slice(&(100 + u16::from(round) * 7).to_le_bytes());
        }
    }
    vec![block, schedule]
}
