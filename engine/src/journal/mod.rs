//! The ordered journal: every write the peer has not acknowledged yet, in write order.
//!
//! Records live in a memory tier first. When the memory tier holds more than its limit, the
//! oldest records spill, in sequence order, into the on-disk ring, so the ring always holds a
//! contiguous run of records starting at the tail and memory holds the newest ones. When the
//! peer acknowledges records the tail advances. A catch-up after a disconnect replays the journal
//! in order, which keeps the peer a crash-consistent prefix of this node's history.
//!
//! Overflow rule: when a spill finds no room in the ring (or, with no ring, the memory tier is
//! over its limit), the journal is dropped. Every write it held is already set in the dirty
//! bitmap, which takes over: the peer then needs a bitmap resync and is `Inconsistent` until it
//! ends. The replica records the drop in the superblock (`journal_complete = false`) before any
//! later write is issued, so a recovery never mistakes a partial journal for a complete one.
//!
//! Ring space is reused only behind the tail that the superblock has recorded: positions
//! between the persisted tail and the head may still be needed by a recovery, so when the ring
//! is short of space and the in-memory tail is ahead of the persisted one, the journal asks for
//! the tail to be persisted first.
//!
//! Positions are logical: they grow forever and the ring offset is `position % ring_bytes`.

pub mod record;
pub mod recovery;

use std::collections::VecDeque;

use record::{RecordHeader, RecordKind};
use recovery::JournalRecovery;

use crate::buffer::{IoBuf, IoBufMut};
use crate::types::{BLOCK_BYTES, Seq};

/// The largest single spill write.
pub const SPILL_WRITE_BYTES_MAX: u64 = 8 << 20;

/// Journal sizes and identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Bytes of the on-disk ring (0: no ring, memory only).
    pub ring_bytes: u64,
    /// Payload bytes the memory tier holds before spilling.
    pub memory_bytes_max: u64,
    /// The instance tag stamped into records.
    pub instance_tag: u32,
}

#[derive(Clone, Debug)]
enum Location {
    /// Only in memory.
    Memory,
    /// Being written at `position`; the payload stays in memory until the write completes.
    Spilling { position: u64 },
    /// On disk at `position`; the payload has left memory.
    Disk { position: u64 },
}

#[derive(Clone, Debug)]
struct Entry {
    header: RecordHeader,
    payload: Option<IoBuf>,
    location: Location,
}

/// What the journal needs done next (see [`Journal::poll_spill`]).
#[derive(Clone, Debug)]
pub enum SpillAction {
    /// Write `bytes` at ring offset `ring_offset`, then call [`Journal::spill_done`].
    Write {
        /// Offset within the ring.
        ring_offset: u64,
        /// Encoded records, or a wrap marker.
        bytes: IoBuf,
    },
    /// Persist this tail in the superblock, then call [`Journal::tail_persisted`].
    PersistTail(JournalTail),
    /// The ring is full: drop the journal (see the overflow rule).
    Overflow,
}

/// Where a record's payload is (see [`Journal::record`]).
#[derive(Clone, Debug)]
pub enum RecordData {
    /// In memory (`None`: a trim or zeroing, which has no payload).
    Memory(Option<IoBuf>),
    /// Spilled: read [`RecordHeader::stored_bytes`] at this ring offset.
    Ring {
        /// Offset within the ring.
        offset: u64,
    },
}

/// The tail as the superblock records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalTail {
    /// Logical position of the oldest needed record.
    pub position: u64,
    /// Its sequence number.
    pub seq: Seq,
}

/// The in-memory journal.
#[derive(Debug)]
pub struct Journal {
    config: JournalConfig,
    active: bool,
    /// Names this run of records (a fresh value at every activation or resume): a peer that
    /// received records of this run can catch up from them.
    id: u64,
    entries: VecDeque<Entry>,
    memory_bytes: u64,
    disk_head: u64,
    persisted_tail: JournalTail,
    next_seq: Seq,
    spill_in_flight: bool,
    overflows: u64,
}

/// Counters for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Whether the journal is keeping records.
    pub active: bool,
    /// Records held.
    pub records: u64,
    /// Payload bytes held in memory.
    pub memory_bytes: u64,
    /// Ring bytes in use from the persisted tail.
    pub ring_used_bytes: u64,
    /// Ring bytes in all.
    pub ring_bytes: u64,
    /// Times the journal overflowed since open.
    pub overflows: u64,
    /// Sequence number of the oldest record held, if any.
    pub tail_seq: Option<Seq>,
    /// Sequence number of the newest record held, if any.
    pub head_seq: Option<Seq>,
}

impl Journal {
    /// An inactive, empty journal whose persisted tail is at `tail`.
    pub fn new(config: JournalConfig, tail: JournalTail) -> Self {
        Self {
            config,
            active: false,
            id: 0,
            entries: VecDeque::new(),
            memory_bytes: 0,
            disk_head: tail.position,
            persisted_tail: tail,
            next_seq: tail.seq,
            spill_in_flight: false,
            overflows: 0,
        }
    }

    /// The journal as recovered from disk; active if `complete`, else the records are kept only
    /// for an ordered partial catch-up.
    pub fn recovered(config: JournalConfig, tail: JournalTail, recovery: &JournalRecovery) -> Self {
        let mut journal = Self::new(config, tail);
        for record in &recovery.records {
            let lap_start = tail.position - tail.position % config.ring_bytes.max(1);
            let mut position = lap_start + record.ring_offset;
            if position < tail.position {
                position += config.ring_bytes;
            }
            journal.entries.push_back(Entry {
                header: record.header,
                payload: None,
                location: Location::Disk { position },
            });
        }
        journal.disk_head = tail.position + recovery.used_bytes;
        journal.next_seq = recovery.next_seq(tail.seq);
        journal
    }

    /// Whether the journal keeps records.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The id of this run of records, while active.
    pub fn id(&self) -> Option<u64> {
        self.active.then_some(self.id)
    }

    /// Starts keeping records, beginning with sequence number `next_seq`, as run `id`. Returns
    /// the tail to persist before the first spill can use the ring.
    pub fn activate(&mut self, next_seq: Seq, id: u64) -> JournalTail {
        self.entries.clear();
        self.memory_bytes = 0;
        self.active = true;
        self.id = id;
        self.next_seq = next_seq;
        self.tail()
    }

    /// Whether some records exist only in memory.
    pub fn has_unspilled(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.location, Location::Memory | Location::Spilling { .. }))
    }

    /// Keeps recording after a clean restart, after the recovered records, as run `id`.
    pub fn resume(&mut self, id: u64) {
        self.active = true;
        self.id = id;
    }

    /// Stops keeping records and forgets the ones held (the bitmap covers them).
    pub fn deactivate(&mut self) {
        self.active = false;
        self.entries.clear();
        self.memory_bytes = 0;
    }

    /// Appends a record for sequence number `seq`; the journal must be active and `seq` must
    /// follow the last one.
    pub fn append(&mut self, header: RecordHeader, payload: Option<IoBuf>) {
        assert!(self.active, "append to an inactive journal");
        assert_eq!(header.seq, self.next_seq, "journal records are contiguous");
        assert_eq!(
            payload.as_ref().map_or(0, |p| p.len() as u64),
            u64::from(header.payload_bytes)
        );
        self.memory_bytes += u64::from(header.payload_bytes);
        self.next_seq = header.seq.next();
        self.entries.push_back(Entry {
            header,
            payload,
            location: Location::Memory,
        });
    }

    /// The sequence number the next record must carry.
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Skips sequence numbers used by writes that were not journaled (while inactive).
    pub fn set_next_seq(&mut self, seq: Seq) {
        assert!(!self.active || self.entries.is_empty());
        assert!(seq >= self.next_seq);
        self.next_seq = seq;
    }

    /// What the journal needs next to respect its memory limit, if anything. With `all`, spills
    /// every record in memory (before a clean shutdown).
    pub fn poll_spill(&mut self, all: bool) -> Option<SpillAction> {
        if !self.active || self.spill_in_flight {
            return None;
        }
        let over_limit = self.memory_bytes > self.config.memory_bytes_max;
        let has_memory = self
            .entries
            .iter()
            .any(|e| matches!(e.location, Location::Memory));
        if !(over_limit || all && has_memory) {
            return None;
        }
        if self.config.ring_bytes == 0 {
            return over_limit.then_some(SpillAction::Overflow);
        }
        self.plan_spill()
    }

    fn plan_spill(&mut self) -> Option<SpillAction> {
        let ring = self.config.ring_bytes;
        let first = self
            .entries
            .iter()
            .position(|e| matches!(e.location, Location::Memory))?;
        let mut head = self.disk_head;
        let mut batch: Vec<usize> = Vec::new();
        for index in first..self.entries.len() {
            let stored = self.entries[index].header.stored_bytes();
            let room_to_end = ring - head % ring;
            // A record never straddles the end of the ring: a wrap marker fills the gap.
            let wrap = stored > room_to_end;
            let end = if wrap {
                head + room_to_end + stored
            } else {
                head + stored
            };
            let fits = stored <= ring && end - self.persisted_tail.position <= ring;
            let too_big = head + stored - self.disk_head > SPILL_WRITE_BYTES_MAX;
            // One spill is one contiguous write: it ends where the ring ends.
            let at_ring_start = head.is_multiple_of(ring);
            if !batch.is_empty() && (wrap || !fits || too_big || at_ring_start) {
                break;
            }
            if !fits {
                let tail = self.tail();
                let can_free = stored <= ring && tail.position > self.persisted_tail.position;
                return Some(if can_free {
                    SpillAction::PersistTail(tail)
                } else {
                    SpillAction::Overflow
                });
            }
            if wrap {
                return Some(self.encode_wrap(self.entries[index].header.seq));
            }
            batch.push(index);
            head = end;
        }
        Some(self.encode_batch(&batch, head))
    }

    fn encode_wrap(&mut self, next_seq: Seq) -> SpillAction {
        let ring = self.config.ring_bytes;
        // The wrap marker carries the sequence number of the record that follows it at ring
        // offset 0, which the next spill writes.
        let header = RecordHeader {
            kind: RecordKind::Wrap,
            fua: false,
            seq: next_seq,
            offset: 0,
            length: 0,
            payload_bytes: 0,
            payload_checksum: 0,
        };
        let mut bytes = Vec::with_capacity(BLOCK_BYTES as usize);
        record::encode(&header, &[], self.config.instance_tag, &mut bytes);
        let ring_offset = self.disk_head % ring;
        self.disk_head += ring - ring_offset;
        self.spill_in_flight = true;
        SpillAction::Write {
            ring_offset,
            bytes: IoBuf::copy_from(&bytes),
        }
    }

    fn encode_batch(&mut self, batch: &[usize], new_head: u64) -> SpillAction {
        let total = (new_head - self.disk_head) as usize;
        let mut encoded = Vec::with_capacity(total);
        let mut position = self.disk_head;
        for &index in batch {
            let entry = &mut self.entries[index];
            let payload = entry.payload.as_ref().map_or(&[][..], |p| p.as_slice());
            record::encode(
                &entry.header,
                payload,
                self.config.instance_tag,
                &mut encoded,
            );
            entry.location = Location::Spilling { position };
            position += entry.header.stored_bytes();
        }
        assert_eq!(position, new_head);
        assert_eq!(encoded.len(), total);
        let mut buffer = IoBufMut::zeroed(total);
        buffer.as_mut_slice().copy_from_slice(&encoded);
        let ring_offset = self.disk_head % self.config.ring_bytes;
        assert!(
            ring_offset + total as u64 <= self.config.ring_bytes,
            "spill of {total} bytes at ring offset {ring_offset} crosses the end of a {}-byte ring (head {}, persisted tail {:?})",
            self.config.ring_bytes,
            self.disk_head,
            self.persisted_tail
        );
        self.disk_head = new_head;
        self.spill_in_flight = true;
        SpillAction::Write {
            ring_offset,
            bytes: buffer.freeze(),
        }
    }

    /// A spill write completed: its records are on disk and leave the memory tier.
    pub fn spill_done(&mut self) {
        assert!(self.spill_in_flight);
        self.spill_in_flight = false;
        for entry in &mut self.entries {
            if let Location::Spilling { position } = entry.location {
                entry.location = Location::Disk { position };
                if let Some(payload) = entry.payload.take() {
                    self.memory_bytes -= payload.len() as u64;
                }
            }
        }
    }

    /// The oldest record still needed and where it is (or will be) on disk.
    pub fn tail(&self) -> JournalTail {
        match self.entries.front() {
            Some(Entry {
                header,
                location: Location::Disk { position } | Location::Spilling { position },
                ..
            }) => JournalTail {
                position: *position,
                seq: header.seq,
            },
            Some(entry) => JournalTail {
                position: self.disk_head,
                seq: entry.header.seq,
            },
            None => JournalTail {
                position: self.disk_head,
                seq: self.next_seq,
            },
        }
    }

    /// The superblock now records `tail`.
    pub fn tail_persisted(&mut self, tail: JournalTail) {
        assert!(tail.position >= self.persisted_tail.position);
        self.persisted_tail = tail;
    }

    /// The peer has every record up to and including `seq`.
    pub fn acknowledge_through(&mut self, seq: Seq) {
        while let Some(front) = self.entries.front() {
            if front.header.seq > seq {
                break;
            }
            let entry = self.entries.pop_front().expect("front exists");
            if let Some(payload) = entry.payload {
                self.memory_bytes -= payload.len() as u64;
            }
        }
    }

    /// Record `seq` for sending to the peer: its header, and its payload or where it lies in
    /// the ring (its stored bytes start there). `None` if the journal does not hold it.
    pub fn record(&self, seq: Seq) -> Option<(RecordHeader, RecordData)> {
        let front = self.entries.front()?.header.seq;
        let index = usize::try_from(seq.0.checked_sub(front.0)?).ok()?;
        let entry = self.entries.get(index)?;
        debug_assert_eq!(entry.header.seq, seq);
        let data = match (&entry.payload, &entry.location) {
            (_, Location::Disk { position }) => RecordData::Ring {
                offset: position % self.config.ring_bytes.max(1),
            },
            (payload, _) => RecordData::Memory(payload.clone()),
        };
        Some((entry.header, data))
    }

    /// Reads back a record from its stored bytes in the ring: the payload, if the bytes hold
    /// record `header` intact.
    pub fn decode_stored(&self, header: &RecordHeader, stored: &[u8]) -> Option<Option<IoBuf>> {
        let found = record::decode_header(stored, self.config.instance_tag)?;
        if found != *header {
            return None;
        }
        if header.payload_bytes == 0 {
            return Some(None);
        }
        let start = record::RECORD_HEADER_BYTES as usize;
        let payload = stored.get(start..start + header.payload_bytes as usize)?;
        (crate::codec::checksum(payload) == header.payload_checksum)
            .then(|| Some(IoBuf::copy_from(payload)))
    }

    /// The records held, oldest first, with their ring offset when they are on disk.
    pub fn records(&self) -> impl Iterator<Item = (&RecordHeader, Option<u64>)> + '_ {
        let ring = self.config.ring_bytes.max(1);
        self.entries.iter().map(move |e| {
            let offset = match e.location {
                Location::Disk { position } => Some(position % ring),
                Location::Memory | Location::Spilling { .. } => None,
            };
            (&e.header, offset)
        })
    }

    /// Counters for status.
    pub fn stats(&self) -> JournalStats {
        JournalStats {
            active: self.active,
            records: self.entries.len() as u64,
            memory_bytes: self.memory_bytes,
            ring_used_bytes: self.disk_head - self.persisted_tail.position,
            ring_bytes: self.config.ring_bytes,
            overflows: self.overflows,
            tail_seq: self.entries.front().map(|e| e.header.seq),
            head_seq: self.entries.back().map(|e| e.header.seq),
        }
    }

    /// Counts an overflow (for status).
    pub fn note_overflow(&mut self) {
        self.overflows += 1;
    }

    /// The ring offset of a logical position.
    pub fn ring_offset(&self, position: u64) -> u64 {
        position % self.config.ring_bytes.max(1)
    }
}

#[cfg(test)]
mod tests;
