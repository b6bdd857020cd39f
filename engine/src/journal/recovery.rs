//! Recovering the journal after an unclean shutdown: the longest valid prefix from the tail.
//!
//! The scan starts at the tail the superblock recorded and expects the tail's sequence number;
//! each following record must carry the next sequence number, a valid header of this instance
//! and a payload matching its checksum. The first record that fails ends the journal. A torn
//! record at the end is normal (a crash during a spill); the scan cannot tell it apart from a
//! damaged one, and either way the dirty bitmap still covers every write the lost records held.

use std::fmt;

use super::record::{self, RECORD_HEADER_BYTES, RecordHeader, RecordKind};
use crate::codec::checksum;
use crate::types::{BLOCK_BYTES, Seq};

/// One record found by the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveredRecord {
    /// The record header.
    pub header: RecordHeader,
    /// Where the record starts in the ring.
    pub ring_offset: u64,
}

/// Why the scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// No valid header at the next position: the normal end.
    NoRecord,
    /// A valid header with an older or unexpected sequence number: space left by records that
    /// were already shipped.
    StaleRecord {
        /// The sequence number found.
        found: Seq,
    },
    /// A valid header whose payload does not match its checksum: a torn (or damaged) record.
    TornPayload {
        /// Its sequence number.
        seq: Seq,
    },
    /// The whole ring was scanned.
    RingFull,
}

impl fmt::Display for ScanEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRecord => write!(f, "no further record"),
            Self::StaleRecord { found } => write!(f, "stale record {found}"),
            Self::TornPayload { seq } => write!(f, "record {seq} torn or damaged, discarded"),
            Self::RingFull => write!(f, "ring full"),
        }
    }
}

/// The outcome of a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalRecovery {
    /// The valid records, in sequence order.
    pub records: Vec<RecoveredRecord>,
    /// Why the scan stopped.
    pub end: ScanEnd,
    /// Ring bytes the valid records (and wrap markers) occupy from the tail.
    pub used_bytes: u64,
}

impl JournalRecovery {
    /// The sequence number after the last valid record (the tail's if there is none).
    pub fn next_seq(&self, tail_seq: Seq) -> Seq {
        self.records
            .last()
            .map_or(tail_seq, |r| r.header.seq.next())
    }
}

/// Scans `ring` (the whole on-disk ring) from `tail_offset`, expecting `tail_seq` first.
pub fn scan(ring: &[u8], tail_offset: u64, tail_seq: Seq, instance_tag: u32) -> JournalRecovery {
    let ring_bytes = ring.len() as u64;
    let mut records = Vec::new();
    let mut position = tail_offset;
    let mut used_bytes = 0;
    let mut expected = tail_seq;
    let end = loop {
        if ring_bytes == 0 || used_bytes >= ring_bytes {
            break if ring_bytes == 0 {
                ScanEnd::NoRecord
            } else {
                ScanEnd::RingFull
            };
        }
        assert!(position < ring_bytes && position.is_multiple_of(BLOCK_BYTES));
        let Some(header) = record::decode_header(&ring[position as usize..], instance_tag) else {
            break ScanEnd::NoRecord;
        };
        if header.seq != expected {
            break ScanEnd::StaleRecord { found: header.seq };
        }
        if header.kind == RecordKind::Wrap {
            // A wrap marker carries the sequence number of the record that follows it at 0. The
            // journal never writes one whose gap would take the run past a whole ring (one at
            // offset 0 after other records, say): such a marker ends the journal like any
            // invalid record.
            if used_bytes + (ring_bytes - position) > ring_bytes {
                break ScanEnd::NoRecord;
            }
            used_bytes += ring_bytes - position;
            position = 0;
            continue;
        }
        if header.seq.0 == u64::MAX {
            // No sequence number follows this one, so no journal holds it (only a damaged
            // superblock's tail can ask for it): the end.
            break ScanEnd::NoRecord;
        }
        let stored = header.stored_bytes();
        if position + stored > ring_bytes || used_bytes + stored > ring_bytes {
            break ScanEnd::NoRecord;
        }
        let payload_start = (position + RECORD_HEADER_BYTES) as usize;
        let payload = &ring[payload_start..payload_start + header.payload_bytes as usize];
        if checksum(payload) != header.payload_checksum {
            break ScanEnd::TornPayload { seq: header.seq };
        }
        records.push(RecoveredRecord {
            header,
            ring_offset: position,
        });
        used_bytes += stored;
        position = (position + stored) % ring_bytes;
        expected = expected.next();
    };
    JournalRecovery {
        records,
        end,
        used_bytes,
    }
}
