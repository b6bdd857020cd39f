//! Target `journal`: journal recovery (`engine::journal::recovery::scan`) over an arbitrary
//! on-disk ring, and the in-memory journal rebuilt from what it found.
//!
//! Input: the ring size (1 to 16 blocks), the tail block and the tail sequence number (as a
//! superblock that passed its checks would give them), then either raw bytes written into the
//! ring from the tail on, or a recipe of records (writes, trims, zeroings, wraps, foreign and
//! stale records) encoded with the journal's own encoder, followed by damage (bytes flipped).
//!
//! Recovery never panics; it returns only records whose header and payload checksums hold, in
//! consecutive sequence order from the tail, inside the ring; the bytes it counts as used never
//! exceed the ring; and the journal rebuilt from it lists the same records and reads each one
//! back from the ring.

use engine::buffer::IoBuf;
use engine::journal::record::{self, RECORD_HEADER_BYTES, RecordHeader, RecordKind};
use engine::journal::recovery::{ScanEnd, scan};
use engine::journal::{Journal, JournalConfig, JournalTail, RecordData};
use engine::types::{BLOCK_BYTES, Seq};

use crate::input::Input;

/// The instance tag of the journal under test.
const TAG: u32 = 0x0000_7701;

/// The target body.
pub fn journal(data: &[u8]) {
    let mut input = Input::new(data);
    let blocks = 1 + input.below(16);
    let ring_bytes = blocks * BLOCK_BYTES as usize;
    let tail_offset = (input.below(blocks) * BLOCK_BYTES as usize) as u64;
    let control = input.u8();
    let tail_seq = Seq(if control & 1 == 0 {
        u64::from(input.u8())
    } else {
        input.u64()
    });
    let mut ring = vec![0u8; ring_bytes];
    if control & 2 == 0 {
        for (index, byte) in input.rest().iter().take(ring_bytes).enumerate() {
            ring[(tail_offset as usize + index) % ring_bytes] = *byte;
        }
    } else {
        write_recipe(&mut input, &mut ring, tail_offset, tail_seq);
        while !input.is_empty() {
            let at = input.below(ring_bytes);
            ring[at] ^= input.u8() | 1;
        }
    }
    check_recovery(&ring, tail_offset, tail_seq);
}

/// Writes records as the journal would (and some it would not) from the tail on.
fn write_recipe(input: &mut Input<'_>, ring: &mut [u8], tail_offset: u64, tail_seq: Seq) {
    let ring_bytes = ring.len() as u64;
    let mut position = tail_offset;
    let mut seq = tail_seq;
    for _ in 0..input.below(12) {
        let op = input.u8();
        let length = u32::from(input.u16()) % (3 * BLOCK_BYTES as u32);
        let fill = input.u8();
        let kind = match op % 8 {
            0..=2 => RecordKind::Write,
            3 => RecordKind::Trim,
            4 => RecordKind::WriteZeroes,
            _ => RecordKind::Wrap,
        };
        let payload_bytes = if kind == RecordKind::Write { length } else { 0 };
        let payload = vec![fill; payload_bytes as usize];
        let header = RecordHeader {
            kind,
            fua: op & 0x10 != 0,
            seq: if op & 0x20 != 0 {
                Seq(seq.0.wrapping_add(u64::from(fill)))
            } else {
                seq
            },
            offset: u64::from(fill) * 4096,
            length: if kind == RecordKind::Wrap { 0 } else { length },
            payload_bytes,
            payload_checksum: 0,
        };
        let tag = if op & 0x40 != 0 { TAG ^ 0x100 } else { TAG };
        let mut encoded = Vec::new();
        record::encode(&header, &payload, tag, &mut encoded);
        let stored = encoded.len() as u64;
        if kind == RecordKind::Wrap || position + stored > ring_bytes {
            // Wrap as the journal does: a marker with the next number, then on at 0.
            let marker = RecordHeader {
                kind: RecordKind::Wrap,
                length: 0,
                payload_bytes: 0,
                ..header
            };
            let mut bytes = Vec::new();
            record::encode(&marker, &[], tag, &mut bytes);
            ring[position as usize..][..bytes.len()].copy_from_slice(&bytes);
            position = 0;
            if kind == RecordKind::Wrap || stored > ring_bytes {
                continue;
            }
        }
        ring[position as usize..][..encoded.len()].copy_from_slice(&encoded);
        position = (position + stored) % ring_bytes;
        seq = Seq(header.seq.0.wrapping_add(1));
    }
}

fn check_recovery(ring: &[u8], tail_offset: u64, tail_seq: Seq) {
    let ring_bytes = ring.len() as u64;
    let recovery = scan(ring, tail_offset, tail_seq, TAG);
    let mut expected = tail_seq;
    let mut stored_total = 0;
    for found in &recovery.records {
        let header = found.header;
        assert_eq!(header.seq, expected, "records out of order");
        assert_ne!(
            header.kind,
            RecordKind::Wrap,
            "a wrap marker returned as a record"
        );
        assert!(found.ring_offset < ring_bytes && found.ring_offset.is_multiple_of(BLOCK_BYTES));
        assert!(found.ring_offset + header.stored_bytes() <= ring_bytes);
        let stored = &ring[found.ring_offset as usize..];
        assert_eq!(
            record::decode_header(stored, TAG),
            Some(header),
            "a record whose header does not decode"
        );
        let payload = &stored[RECORD_HEADER_BYTES as usize..][..header.payload_bytes as usize];
        assert_eq!(
            crc32(payload),
            header.payload_checksum,
            "a record whose payload checksum fails"
        );
        stored_total += header.stored_bytes();
        expected = Seq(expected.0.wrapping_add(1));
    }
    assert!(
        recovery.used_bytes <= ring_bytes,
        "{} used bytes",
        recovery.used_bytes
    );
    assert!(recovery.used_bytes >= stored_total);
    assert_eq!(
        recovery.end == ScanEnd::RingFull,
        recovery.used_bytes >= ring_bytes,
        "{:?} with {} of {ring_bytes} bytes used",
        recovery.end,
        recovery.used_bytes
    );
    let _ = recovery.end.to_string();

    // The journal as attach rebuilds it, and the catch-up reading the records back.
    let config = JournalConfig {
        ring_bytes,
        memory_bytes_max: 1 << 20,
        instance_tag: TAG,
    };
    let tail = JournalTail {
        position: tail_offset,
        seq: tail_seq,
    };
    let journal = Journal::recovered(config, tail, &recovery);
    assert_eq!(journal.next_seq(), recovery.next_seq(tail_seq));
    let listed: Vec<(RecordHeader, Option<u64>)> = journal
        .records()
        .map(|(header, offset)| (*header, offset))
        .collect();
    let found: Vec<(RecordHeader, Option<u64>)> = recovery
        .records
        .iter()
        .map(|record| (record.header, Some(record.ring_offset)))
        .collect();
    assert_eq!(listed, found, "the rebuilt journal lists other records");
    for record in &recovery.records {
        let header = record.header;
        let Some((held, RecordData::Ring { offset })) = journal.record(header.seq) else {
            panic!(
                "record {} is not on disk in the rebuilt journal",
                header.seq
            );
        };
        assert_eq!((held, offset), (header, record.ring_offset));
        let stored = &ring[offset as usize..][..header.stored_bytes() as usize];
        let payload = journal
            .decode_stored(&header, stored)
            .expect("a recovered record reads back");
        let expected = (header.payload_bytes > 0).then(|| {
            let start = RECORD_HEADER_BYTES as usize;
            IoBuf::copy_from(&stored[start..start + header.payload_bytes as usize])
        });
        assert_eq!(
            payload.as_ref().map(IoBuf::as_slice),
            expected.as_ref().map(IoBuf::as_slice)
        );
    }
    let stats = journal.stats();
    assert_eq!(stats.records, recovery.records.len() as u64);
}

fn crc32(bytes: &[u8]) -> u32 {
    engine::codec::checksum(bytes)
}

/// Seeds: recipes of contiguous records, with a wrap, with a stale and a foreign record, and a
/// raw ring.
pub fn seeds() -> Vec<Vec<u8>> {
    let recipe = |blocks: u8, tail_block: u8, seq: u8, ops: &[(u8, u16, u8)]| {
        let mut seed = vec![blocks, tail_block, 2, seq, ops.len() as u8];
        for &(op, length, fill) in ops {
            seed.push(op);
            seed.extend_from_slice(&length.to_le_bytes());
            seed.push(fill);
        }
        seed
    };
    let mut seeds = vec![
        recipe(
            8,
            0,
            10,
            &[(0, 5000, 1), (3, 512, 2), (4, 4096, 3), (1, 100, 4)],
        ),
        recipe(
            6,
            4,
            7,
            &[(0, 4000, 1), (0, 4000, 2), (1, 8000, 3), (2, 10, 4)],
        ),
        recipe(6, 2, 1, &[(0, 100, 1), (5, 0, 0), (0, 100, 2), (0, 100, 3)]),
        recipe(8, 1, 3, &[(0, 100, 1), (0x20, 100, 9), (0x40, 100, 3)]),
        recipe(1, 0, 0, &[(0, 0, 0), (0, 0, 0), (0, 0, 0)]),
    ];
    // Damage after a valid run: one byte of the second record's payload.
    let mut damaged = recipe(8, 0, 10, &[(0, 5000, 1), (0, 5000, 2)]);
    damaged.extend_from_slice(&[0x40, 0x20, 0xff]);
    seeds.push(damaged);
    // A raw ring: a valid record image placed by the raw mode.
    let header = RecordHeader {
        kind: RecordKind::Write,
        fua: false,
        seq: Seq(5),
        offset: 0,
        length: 16,
        payload_bytes: 16,
        payload_checksum: crc32(&[9; 16]),
    };
    let mut raw = vec![2, 0, 0, 5];
    record::encode(&header, &[9; 16], TAG, &mut raw);
    seeds.push(raw);
    seeds
}
