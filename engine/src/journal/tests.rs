//! Journal tests: spill order, wrap-around, tail persistence, overflow and torn-tail recovery.

use super::recovery::{ScanEnd, scan};
use super::*;
use crate::codec::checksum;

const TAG: u32 = 0x77;

fn config(ring_bytes: u64, memory_bytes_max: u64) -> JournalConfig {
    JournalConfig {
        ring_bytes,
        memory_bytes_max,
        instance_tag: TAG,
    }
}

fn write_record(journal: &mut Journal, seq: u64, bytes: usize) {
    let payload = IoBuf::copy_from(&vec![seq as u8; bytes]);
    let header = RecordHeader {
        kind: RecordKind::Write,
        fua: false,
        seq: Seq(seq),
        offset: seq * 4096,
        length: bytes as u32,
        payload_bytes: bytes as u32,
        payload_checksum: checksum(payload.as_slice()),
    };
    journal.append(header, Some(payload));
}

/// Applies every spill the journal wants to `ring`; returns the last tail persisted and whether
/// the journal overflowed.
fn drive(journal: &mut Journal, ring: &mut [u8], all: bool) -> (Option<JournalTail>, bool) {
    let mut persisted = None;
    for _ in 0..10_000 {
        match journal.poll_spill(all) {
            None => return (persisted, false),
            Some(SpillAction::Write { ring_offset, bytes }) => {
                let start = ring_offset as usize;
                ring[start..start + bytes.len()].copy_from_slice(bytes.as_slice());
                journal.spill_done();
            }
            Some(SpillAction::PersistTail(tail)) => {
                journal.tail_persisted(tail);
                persisted = Some(tail);
            }
            Some(SpillAction::Overflow) => return (persisted, true),
        }
    }
    panic!("journal kept asking for work");
}

#[test]
fn records_spill_in_order_and_recover() {
    let ring_bytes = 1 << 20;
    let mut ring = vec![0u8; ring_bytes as usize];
    let tail = JournalTail {
        position: 0,
        seq: Seq(10),
    };
    let mut journal = Journal::new(config(ring_bytes, 16 << 10), tail);
    journal.activate(Seq(10), 1);
    for seq in 10..40 {
        write_record(&mut journal, seq, 5000);
        let (_, overflow) = drive(&mut journal, &mut ring, false);
        assert!(!overflow);
    }
    assert!(journal.stats().memory_bytes <= 16 << 10);
    drive(&mut journal, &mut ring, true);
    assert_eq!(journal.stats().memory_bytes, 0);
    let recovery = scan(&ring, 0, Seq(10), TAG);
    let seqs: Vec<u64> = recovery.records.iter().map(|r| r.header.seq.0).collect();
    assert_eq!(seqs, (10..40).collect::<Vec<_>>());
    assert_eq!(recovery.end, ScanEnd::NoRecord);
    for record in &recovery.records {
        let start = (record.ring_offset + record::RECORD_HEADER_BYTES) as usize;
        assert!(
            ring[start..start + 5000]
                .iter()
                .all(|&b| b == record.header.seq.0 as u8)
        );
    }
}

#[test]
fn the_ring_wraps_behind_a_persisted_tail_and_recovers_across_the_wrap() {
    let ring_bytes = 64 << 10;
    let mut ring = vec![0u8; ring_bytes as usize];
    let mut journal = Journal::new(
        config(ring_bytes, 0),
        JournalTail {
            position: 0,
            seq: Seq(1),
        },
    );
    journal.activate(Seq(1), 1);
    let mut last_tail = JournalTail {
        position: 0,
        seq: Seq(1),
    };
    for seq in 1..200u64 {
        write_record(&mut journal, seq, 3000 + (seq as usize % 3) * 4096);
        // The peer keeps up to five records behind.
        if seq > 5 {
            journal.acknowledge_through(Seq(seq - 5));
        }
        let (persisted, overflow) = drive(&mut journal, &mut ring, false);
        assert!(!overflow, "acknowledged records free space at seq {seq}");
        if let Some(tail) = persisted {
            last_tail = tail;
        }
    }
    // Recovery from the last persisted tail finds a contiguous run ending at the newest record.
    let recovery = scan(&ring, last_tail.position % ring_bytes, last_tail.seq, TAG);
    let seqs: Vec<u64> = recovery.records.iter().map(|r| r.header.seq.0).collect();
    assert_eq!(seqs.first(), Some(&last_tail.seq.0));
    assert_eq!(seqs.last(), Some(&199));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(
        last_tail.position > ring_bytes,
        "the ring wrapped at least once"
    );
}

#[test]
fn a_full_ring_overflows_and_a_memory_only_journal_overflows_at_its_limit() {
    let ring_bytes = 32 << 10;
    let mut ring = vec![0u8; ring_bytes as usize];
    let mut journal = Journal::new(
        config(ring_bytes, 0),
        JournalTail {
            position: 0,
            seq: Seq(1),
        },
    );
    journal.activate(Seq(1), 1);
    let mut overflowed = false;
    for seq in 1..20 {
        write_record(&mut journal, seq, 4000);
        let (_, overflow) = drive(&mut journal, &mut ring, false);
        if overflow {
            overflowed = true;
            break;
        }
    }
    assert!(
        overflowed,
        "nothing was acknowledged, so the ring must fill"
    );

    let mut memory_only = Journal::new(
        config(0, 10_000),
        JournalTail {
            position: 0,
            seq: Seq(1),
        },
    );
    memory_only.activate(Seq(1), 1);
    write_record(&mut memory_only, 1, 6000);
    assert!(memory_only.poll_spill(false).is_none());
    write_record(&mut memory_only, 2, 6000);
    assert!(matches!(
        memory_only.poll_spill(false),
        Some(SpillAction::Overflow)
    ));
}

#[test]
fn a_torn_record_ends_the_journal_and_keeps_the_prefix() {
    let ring_bytes = 1 << 20;
    let mut ring = vec![0u8; ring_bytes as usize];
    let mut journal = Journal::new(
        config(ring_bytes, 0),
        JournalTail {
            position: 0,
            seq: Seq(1),
        },
    );
    journal.activate(Seq(1), 1);
    for seq in 1..=5 {
        write_record(&mut journal, seq, 9000);
        drive(&mut journal, &mut ring, false);
    }
    let recovery = scan(&ring, 0, Seq(1), TAG);
    assert_eq!(recovery.records.len(), 5);
    let fourth = recovery.records[3].ring_offset as usize;
    ring[fourth + 6000] ^= 0xFF;
    let recovery = scan(&ring, 0, Seq(1), TAG);
    assert_eq!(recovery.records.len(), 3);
    assert_eq!(recovery.end, ScanEnd::TornPayload { seq: Seq(4) });
    let recovered = Journal::recovered(
        config(ring_bytes, 0),
        JournalTail {
            position: 0,
            seq: Seq(1),
        },
        &recovery,
    );
    assert_eq!(recovered.next_seq(), Seq(4));
    assert_eq!(recovered.stats().records, 3);
}

#[test]
fn a_spill_never_crosses_the_end_of_the_ring() {
    // Records of 8 KiB fill a 40 KiB ring exactly after five; the sixth starts a new lap. A
    // batch that took records 5 and 6 in one write once ran off the end of the ring.
    let ring_bytes = 40 << 10;
    let mut ring = vec![0u8; ring_bytes as usize];
    let mut journal = Journal::new(
        config(ring_bytes, 1 << 20),
        JournalTail {
            position: 0,
            seq: Seq(1),
        },
    );
    journal.activate(Seq(1), 1);
    for seq in 1..=12u64 {
        write_record(&mut journal, seq, 4096);
        if seq % 3 == 0 {
            journal.acknowledge_through(Seq(seq - 2));
        }
        loop {
            match journal.poll_spill(true) {
                None => break,
                Some(SpillAction::Write { ring_offset, bytes }) => {
                    assert!(
                        ring_offset + bytes.len() as u64 <= ring_bytes,
                        "spill crosses the end"
                    );
                    let start = ring_offset as usize;
                    ring[start..start + bytes.len()].copy_from_slice(bytes.as_slice());
                    journal.spill_done();
                }
                Some(SpillAction::PersistTail(tail)) => journal.tail_persisted(tail),
                Some(SpillAction::Overflow) => panic!("acknowledged records leave room"),
            }
        }
    }
}
