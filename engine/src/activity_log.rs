//! The activity log (AL): the bounded set of "hot" extents that may hold writes the peer does not
//! have yet.
//!
//! Setting a bitmap bit on disk for every write would double the write cost. Instead a write may
//! only touch an extent that the on-disk activity log lists; entering a cold extent costs one
//! small metadata write (an AL transaction), and after a crash every listed extent is treated as
//! dirty. Before an extent leaves the log its bitmap page is made durable, so the bits it carried
//! are never lost. A bigger log means fewer transactions but more resync after a primary crash.
//!
//! On disk: `al_blocks` logical blocks of 1015 slots, each stored twice (copies 0 and 1). A
//! transaction rewrites the changed blocks, each into the copy that does not hold its newest
//! version, with a higher transaction sequence, as FUA writes; the writes that wait for the
//! transaction start only after it is durable. A crash can therefore tear only a copy that was
//! being written, and opening takes, per block, the valid copy with the highest sequence.
//! One transaction is in flight at a time.
//!
//! Byte layout of one AL block copy:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TALB` |
//! | 4 | 4 | logical block index |
//! | 8 | 8 | transaction sequence |
//! | 16 | 4 | instance tag |
//! | 20 | 12 | reserved, zero |
//! | 32 | 4060 | 1015 slots: little-endian u32 extent numbers, `0xFFFF_FFFF` for an empty slot |
//! | 4092 | 4 | CRC-32 of bytes 0..4092 |

use std::collections::HashMap;

use crate::codec::{FieldReader, FieldWriter, seal_trailing_checksum, verify_trailing_checksum};
use crate::layout::{AL_SLOTS_PER_BLOCK, Layout};
use crate::types::BLOCK_BYTES;

/// The AL block magic.
pub const AL_BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"TALB");
const EMPTY_SLOT: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    extent: Option<u64>,
    /// Writes in flight into this extent; a slot with any cannot be evicted.
    writes_in_flight: u32,
    /// When the slot was last used, for least-recently-used eviction.
    last_used: u64,
    /// Part of the transaction in flight.
    changing: bool,
}

/// One change of a transaction: `slot` now holds `added` instead of `evicted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotChange {
    /// The slot index.
    pub slot: u32,
    /// The extent leaving the log, if the slot was in use.
    pub evicted: Option<u64>,
    /// The extent entering the log.
    pub added: u64,
}

/// An AL transaction: the slot changes and the sequence number they are written with.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// Transaction sequence number.
    pub sequence: u64,
    /// The slot changes.
    pub changes: Vec<SlotChange>,
}

/// One block copy to write for a transaction.
#[derive(Clone, Debug)]
pub struct BlockWrite {
    /// Logical block index.
    pub block: u32,
    /// Copy (0 or 1).
    pub copy: u32,
    /// The encoded block.
    pub bytes: Vec<u8>,
}

/// The in-memory activity log.
#[derive(Debug)]
pub struct ActivityLog {
    slots: Vec<Slot>,
    index: HashMap<u64, u32>,
    extent_shift: u32,
    extent_count: u64,
    transaction_sequence: u64,
    /// Per logical block, the copy that holds its newest version.
    newest_copy: Vec<u32>,
    clock: u64,
    in_transaction: bool,
}

/// What opening found in the on-disk activity log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlRecovery {
    /// Extents listed, by slot (`None` for an empty slot).
    pub slots: Vec<Option<u64>>,
    /// Per block, the copy that held the newest valid version.
    pub newest_copy: Vec<u32>,
    /// The highest transaction sequence found.
    pub transaction_sequence: u64,
    /// Block copies that failed their checks while the other copy was valid (a torn write).
    pub torn_copies: u32,
    /// Blocks whose two copies both failed: the log cannot be trusted.
    pub damaged_blocks: Vec<u32>,
    /// Slots naming an extent past the end of the volume, or one an earlier slot names
    /// (ignored: the log holds each extent once).
    pub invalid_slots: u32,
}

impl ActivityLog {
    /// An empty log for `layout`.
    pub fn new(layout: &Layout) -> Self {
        Self {
            slots: vec![Slot::default(); layout.params.al_slots as usize],
            index: HashMap::new(),
            extent_shift: layout.params.al_extent_bytes.trailing_zeros(),
            extent_count: layout.extent_count(),
            transaction_sequence: 0,
            newest_copy: vec![0; layout.al_blocks() as usize],
            clock: 0,
            in_transaction: false,
        }
    }

    /// The log as found on disk.
    pub fn recovered(layout: &Layout, recovery: &AlRecovery) -> Self {
        let mut log = Self::new(layout);
        for (slot, extent) in recovery.slots.iter().enumerate() {
            if let Some(extent) = *extent {
                log.slots[slot].extent = Some(extent);
                log.index.insert(extent, slot as u32);
            }
        }
        log.newest_copy.copy_from_slice(&recovery.newest_copy);
        log.transaction_sequence = recovery.transaction_sequence;
        log
    }

    /// The extent holding byte `offset`.
    pub fn extent_of(&self, offset: u64) -> u64 {
        offset >> self.extent_shift
    }

    /// The extents a byte range touches, as `first..end`.
    pub fn extents_of(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        assert!(length > 0);
        self.extent_of(offset)..self.extent_of(offset + length - 1) + 1
    }

    /// Bytes per extent.
    pub fn extent_bytes(&self) -> u64 {
        1 << self.extent_shift
    }

    /// Whether `extent` is in the log and usable.
    pub fn is_active(&self, extent: u64) -> bool {
        self.index.contains_key(&extent)
    }

    /// Extents in the log, in slot order.
    pub fn active_extents(&self) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .filter_map(|slot| slot.extent)
            .filter(|e| self.index.contains_key(e))
    }

    /// Number of slots.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether a transaction is in flight.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// A write into `extent` starts; the extent must be active.
    pub fn acquire(&mut self, extent: u64) {
        let slot = *self
            .index
            .get(&extent)
            .expect("acquire of an inactive extent");
        self.clock += 1;
        let slot = &mut self.slots[slot as usize];
        slot.writes_in_flight += 1;
        slot.last_used = self.clock;
    }

    /// A write into `extent` ended.
    pub fn release(&mut self, extent: u64) {
        let slot = *self
            .index
            .get(&extent)
            .expect("release of an inactive extent");
        let slot = &mut self.slots[slot as usize];
        assert!(slot.writes_in_flight > 0, "release without acquire");
        slot.writes_in_flight -= 1;
    }

    /// Starts a transaction that brings as many of `wanted` (cold extents, in order of need)
    /// into the log as there are evictable slots. A slot is evictable when no write is in
    /// flight in its extent and its extent is not in `protected` (hot extents that queued writes
    /// are about to use: evicting those would make the log thrash). Returns `None` if no slot
    /// can be freed now or nothing is wanted.
    pub fn begin_transaction(&mut self, wanted: &[u64], protected: &[u64]) -> Option<Transaction> {
        assert!(!self.in_transaction, "one transaction at a time");
        let mut changes = Vec::new();
        for &extent in wanted {
            assert!(extent < self.extent_count, "extent past the end");
            if self.index.contains_key(&extent)
                || changes.iter().any(|c: &SlotChange| c.added == extent)
            {
                continue;
            }
            let Some(slot) = self.victim(protected) else {
                break;
            };
            let evicted = self.slots[slot as usize].extent;
            if let Some(old) = evicted {
                self.index.remove(&old);
            }
            self.slots[slot as usize] = Slot {
                extent: Some(extent),
                writes_in_flight: 0,
                last_used: 0,
                changing: true,
            };
            changes.push(SlotChange {
                slot,
                evicted,
                added: extent,
            });
        }
        if changes.is_empty() {
            return None;
        }
        self.in_transaction = true;
        self.transaction_sequence += 1;
        Some(Transaction {
            sequence: self.transaction_sequence,
            changes,
        })
    }

    /// The block copies a transaction writes.
    pub fn block_writes(&self, transaction: &Transaction, instance_tag: u32) -> Vec<BlockWrite> {
        let mut blocks: Vec<u32> = transaction
            .changes
            .iter()
            .map(|c| c.slot / AL_SLOTS_PER_BLOCK)
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        blocks
            .into_iter()
            .map(|block| BlockWrite {
                block,
                copy: 1 - self.newest_copy[block as usize],
                bytes: self.encode_block(block, transaction.sequence, instance_tag),
            })
            .collect()
    }

    /// The transaction is durable: its extents become active.
    pub fn commit(&mut self, transaction: &Transaction) {
        assert!(self.in_transaction);
        for change in &transaction.changes {
            let slot = &mut self.slots[change.slot as usize];
            assert_eq!(slot.extent, Some(change.added));
            slot.changing = false;
            self.index.insert(change.added, change.slot);
        }
        // Several changes may share a block: each written block flips its copy once.
        let mut blocks: Vec<usize> = transaction
            .changes
            .iter()
            .map(|c| (c.slot / AL_SLOTS_PER_BLOCK) as usize)
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        for block in blocks {
            self.newest_copy[block] = 1 - self.newest_copy[block];
        }
        self.in_transaction = false;
    }

    fn victim(&self, protected: &[u64]) -> Option<u32> {
        let mut best: Option<(u64, u32)> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            let is_protected = slot
                .extent
                .is_some_and(|extent| protected.contains(&extent));
            if slot.changing || slot.writes_in_flight > 0 || is_protected {
                continue;
            }
            let age = if slot.extent.is_none() {
                0
            } else {
                slot.last_used + 1
            };
            if best.is_none_or(|(best_age, _)| age < best_age) {
                best = Some((age, index as u32));
                if age == 0 {
                    break;
                }
            }
        }
        best.map(|(_, slot)| slot)
    }

    fn encode_block(&self, block: u32, sequence: u64, instance_tag: u32) -> Vec<u8> {
        encode_block(block, sequence, instance_tag, |slot| {
            self.slots.get(slot as usize).and_then(|s| s.extent)
        })
    }
}

/// Encodes logical block `block` with the slot contents `slot_extent(slot)`.
pub fn encode_block(
    block: u32,
    sequence: u64,
    instance_tag: u32,
    slot_extent: impl Fn(u32) -> Option<u64>,
) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK_BYTES as usize];
    let mut w = FieldWriter::new(&mut bytes);
    w.put_u32(AL_BLOCK_MAGIC);
    w.put_u32(block);
    w.put_u64(sequence);
    w.put_u32(instance_tag);
    w.skip(12);
    let first_slot = block * AL_SLOTS_PER_BLOCK;
    for slot in first_slot..first_slot + AL_SLOTS_PER_BLOCK {
        let code = slot_extent(slot).map_or(EMPTY_SLOT, |e| u32::try_from(e).expect("bounded"));
        w.put_u32(code);
    }
    seal_trailing_checksum(&mut bytes);
    bytes
}

/// Decodes the on-disk activity log: `region` holds all `2 × al_blocks` block copies in order.
pub fn recover(layout: &Layout, region: &[u8], instance_tag: u32) -> AlRecovery {
    let blocks = layout.al_blocks();
    assert_eq!(region.len() as u64, 2 * u64::from(blocks) * BLOCK_BYTES);
    let slot_count = layout.params.al_slots as usize;
    let mut recovery = AlRecovery {
        slots: vec![None; slot_count],
        newest_copy: vec![0; blocks as usize],
        ..AlRecovery::default()
    };
    let mut listed = std::collections::HashSet::new();
    for block in 0..blocks {
        let copy_bytes = |copy: u32| {
            let start = (u64::from(2 * block + copy) * BLOCK_BYTES) as usize;
            &region[start..start + BLOCK_BYTES as usize]
        };
        let copies = [0, 1].map(|copy| decode_block(copy_bytes(copy), block, instance_tag));
        let chosen = match (&copies[0], &copies[1]) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { 1 } else { 0 }),
            (Some(_), None) | (None, Some(_)) => {
                recovery.torn_copies += 1;
                Some(if copies[0].is_some() { 0 } else { 1 })
            }
            (None, None) => None,
        };
        let Some(copy) = chosen else {
            recovery.damaged_blocks.push(block);
            continue;
        };
        let (sequence, slots) = copies[copy].clone().expect("chosen copy is valid");
        recovery.newest_copy[block as usize] = copy as u32;
        recovery.transaction_sequence = recovery.transaction_sequence.max(sequence);
        let first_slot = (block * AL_SLOTS_PER_BLOCK) as usize;
        for (offset, extent) in slots.into_iter().enumerate() {
            let slot = first_slot + offset;
            match extent {
                Some(extent)
                    if slot < slot_count
                        && extent < layout.extent_count()
                        && listed.insert(extent) =>
                {
                    recovery.slots[slot] = Some(extent);
                }
                Some(_) => recovery.invalid_slots += 1,
                None => {}
            }
        }
    }
    recovery
}

/// Decodes one block copy into its sequence and slots, or `None` if it fails its checks.
pub fn decode_block(
    bytes: &[u8],
    block: u32,
    instance_tag: u32,
) -> Option<(u64, Vec<Option<u64>>)> {
    let body = verify_trailing_checksum(bytes)?;
    let mut r = FieldReader::new(body);
    if r.u32()? != AL_BLOCK_MAGIC || r.u32()? != block {
        return None;
    }
    let sequence = r.u64()?;
    if r.u32()? != instance_tag {
        return None;
    }
    r.skip(12)?;
    let slots = (0..AL_SLOTS_PER_BLOCK)
        .map(|_| {
            r.u32()
                .map(|code| (code != EMPTY_SLOT).then_some(u64::from(code)))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((sequence, slots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutParams;

    fn layout(slots: u32) -> Layout {
        let params = LayoutParams {
            al_slots: slots,
            al_extent_bytes: 1 << 20,
            journal_bytes: 0,
            ..LayoutParams::default()
        };
        Layout::compute(256 << 20, params).expect("fits")
    }

    fn write_all(log: &ActivityLog, transaction: &Transaction, region: &mut [u8], tag: u32) {
        for write in log.block_writes(transaction, tag) {
            let start = ((2 * write.block + write.copy) as u64 * BLOCK_BYTES) as usize;
            region[start..start + BLOCK_BYTES as usize].copy_from_slice(&write.bytes);
        }
    }

    #[test]
    fn transactions_evict_least_recently_used_idle_slots_and_recover() {
        let layout = layout(3);
        let tag = 9;
        let mut region = vec![0u8; (2 * BLOCK_BYTES) as usize];
        let mut log = ActivityLog::new(&layout);
        let t = log
            .begin_transaction(&[5, 6, 7], &[])
            .expect("three free slots");
        write_all(&log, &t, &mut region, tag);
        log.commit(&t);
        log.acquire(5);
        log.acquire(6);
        log.release(6);
        log.acquire(7);
        log.release(7);
        // 5 is busy; 6 is the least recently used idle extent.
        assert!(
            log.begin_transaction(&[8], &[6, 7]).is_none(),
            "6 and 7 are protected"
        );
        let t = log
            .begin_transaction(&[8], &[])
            .expect("one evictable slot");
        assert_eq!(t.changes[0].evicted, Some(6));
        assert!(!log.is_active(6) && !log.is_active(8));
        write_all(&log, &t, &mut region, tag);
        log.commit(&t);
        assert!(log.is_active(8) && log.is_active(5) && log.is_active(7));
        let recovery = recover(&layout, &region, tag);
        let mut found: Vec<u64> = recovery.slots.iter().flatten().copied().collect();
        found.sort_unstable();
        assert_eq!(found, vec![5, 7, 8]);
        assert_eq!(recovery.torn_copies, 0);
        // Tear the copy the last transaction wrote: the previous version comes back.
        let start = (u64::from(log.newest_copy[0]) * BLOCK_BYTES) as usize;
        region[start + 100] ^= 0xFF;
        let recovery = recover(&layout, &region, tag);
        let mut found: Vec<u64> = recovery.slots.iter().flatten().copied().collect();
        found.sort_unstable();
        assert_eq!(
            found,
            vec![5, 6, 7],
            "the older copy still lists the evicted extent"
        );
        assert_eq!(recovery.torn_copies, 1);
    }

    #[test]
    fn busy_slots_block_eviction() {
        let layout = layout(1);
        let mut log = ActivityLog::new(&layout);
        let t = log.begin_transaction(&[1], &[]).expect("free slot");
        log.commit(&t);
        log.acquire(1);
        assert!(log.begin_transaction(&[2], &[]).is_none());
        log.release(1);
        assert!(log.begin_transaction(&[2], &[]).is_some());
    }
}
