//! A simulated backing store.
//!
//! Faults it injects, each only of a kind the engine claims to survive:
//! - latency: every operation completes after a random delay, so completions arrive out of order;
//! - reordering until a flush: a completed write is visible to reads at once but durable only
//!   after a flush submitted after it completes (or at once, for FUA);
//! - crashes: each sector written since its last durable point ends up holding its durable
//!   value or the value of any later write, chosen per 512-byte sector, so unflushed writes are
//!   lost, kept, or torn; writes still in flight may land or not the same way;
//! - I/O errors: an operation fails with `EIO` with a configured probability (a failed write
//!   may have landed on some sectors);
//! - metadata damage at a crash, when asked: bytes flipped in one region.

use std::collections::BTreeMap;

use crate::buffer::IoBuf;
use crate::prng::Prng;
use crate::replica::{StorageCompletion, StorageOp, StorageRequest};
use crate::types::{Errno, SECTOR_BYTES, StorageOpId};

/// Fault settings.
#[derive(Clone, Copy, Debug)]
pub struct DiskFaults {
    /// Smallest operation latency, in nanoseconds.
    pub latency_min_nanos: u64,
    /// Largest operation latency, in nanoseconds.
    pub latency_max_nanos: u64,
    /// Chance per operation (in parts per million) of an `EIO`.
    pub error_ppm: u64,
}

#[derive(Clone, Debug)]
struct UnflushedWrite {
    offset: u64,
    data: Vec<u8>,
    /// Completion order, to decide which writes a flush covers.
    completion: u64,
}

#[derive(Debug)]
struct InFlight {
    request: StorageRequest,
    due_nanos: u64,
    /// For flushes: the completion counter when submitted.
    flush_covers_through: u64,
}

/// The simulated disk.
#[derive(Debug)]
pub struct SimDisk {
    durable: Vec<u8>,
    visible: Vec<u8>,
    unflushed: Vec<UnflushedWrite>,
    in_flight: BTreeMap<(u64, u64), InFlight>,
    completions: u64,
    faults: DiskFaults,
    prng: Prng,
    /// Counters for reports.
    pub operations: u64,
    /// Errors injected so far.
    pub errors_injected: u64,
}

impl SimDisk {
    /// A zero-filled disk of `bytes`.
    pub fn new(bytes: u64, faults: DiskFaults, prng: Prng) -> Self {
        Self {
            durable: vec![0; bytes as usize],
            visible: vec![0; bytes as usize],
            unflushed: Vec::new(),
            in_flight: BTreeMap::new(),
            completions: 0,
            faults,
            prng,
            operations: 0,
            errors_injected: 0,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.visible.len() as u64
    }

    /// Whether the disk has no bytes.
    pub fn is_empty(&self) -> bool {
        self.visible.is_empty()
    }

    /// Writes `bytes` at `offset` durably, outside any operation (formatting).
    pub fn write_durable(&mut self, offset: u64, bytes: &[u8]) {
        let range = offset as usize..offset as usize + bytes.len();
        self.durable[range.clone()].copy_from_slice(bytes);
        self.visible[range].copy_from_slice(bytes);
    }

    /// What reads would return now (for checkers).
    pub fn visible(&self) -> &[u8] {
        &self.visible
    }

    /// Sets the fault settings.
    pub fn set_faults(&mut self, faults: DiskFaults) {
        self.faults = faults;
    }

    /// Accepts an operation at time `now_nanos`.
    pub fn submit(&mut self, request: StorageRequest, now_nanos: u64) {
        let end = match &request.op {
            StorageOp::Read { offset, length }
            | StorageOp::Discard { offset, length, .. }
            | StorageOp::WriteZeroes { offset, length, .. } => offset + length,
            StorageOp::Write { offset, data, .. } => offset + data.len() as u64,
            StorageOp::Flush => 0,
        };
        assert!(
            end <= self.len(),
            "storage operation past the end of the disk: {request:?}"
        );
        self.operations += 1;
        let span = self.faults.latency_max_nanos - self.faults.latency_min_nanos;
        let due_nanos = now_nanos + self.faults.latency_min_nanos + self.prng.below(span + 1);
        let key = (due_nanos, request.id.0);
        let flush_covers_through = self.completions;
        self.in_flight.insert(
            key,
            InFlight {
                request,
                due_nanos,
                flush_covers_through,
            },
        );
    }

    /// When the next operation completes, if any is in flight.
    pub fn next_due(&self) -> Option<u64> {
        self.in_flight.keys().next().map(|(due, _)| *due)
    }

    /// Completes the next operation due at or before `now_nanos`.
    pub fn complete_next(&mut self, now_nanos: u64) -> Option<StorageCompletion> {
        let (&key, _) = self.in_flight.iter().next()?;
        if key.0 > now_nanos {
            return None;
        }
        let op = self.in_flight.remove(&key).expect("present");
        debug_assert!(op.due_nanos <= now_nanos);
        Some(self.perform(op))
    }

    fn perform(&mut self, op: InFlight) -> StorageCompletion {
        let id = op.request.id;
        let fail = self.faults.error_ppm > 0 && self.prng.below(1_000_000) < self.faults.error_ppm;
        if fail {
            self.errors_injected += 1;
            if let StorageOp::Write { offset, data, .. } = &op.request.op {
                // A failed write may have reached some sectors.
                self.apply_some_sectors(*offset, data.as_slice());
            }
            return StorageCompletion {
                id,
                result: Err(Errno::EIO),
            };
        }
        let result = match op.request.op {
            StorageOp::Read { offset, length } => {
                let range = offset as usize..(offset + length) as usize;
                Ok(Some(IoBuf::copy_from(&self.visible[range])))
            }
            StorageOp::Write { offset, data, fua } => {
                self.apply(offset, data.as_slice(), fua);
                Ok(None)
            }
            StorageOp::Discard {
                offset,
                length,
                fua,
            }
            | StorageOp::WriteZeroes {
                offset,
                length,
                fua,
            } => {
                self.apply(offset, &vec![0; length as usize], fua);
                Ok(None)
            }
            StorageOp::Flush => {
                self.flush_through(op.flush_covers_through);
                Ok(None)
            }
        };
        StorageCompletion { id, result }
    }

    fn apply(&mut self, offset: u64, data: &[u8], fua: bool) {
        let range = offset as usize..offset as usize + data.len();
        self.visible[range.clone()].copy_from_slice(data);
        self.completions += 1;
        if fua {
            self.durable[range].copy_from_slice(data);
            // Older unflushed writes to these sectors can no longer come back after a crash.
            self.forget_unflushed(offset, data.len() as u64);
        } else {
            self.unflushed.push(UnflushedWrite {
                offset,
                data: data.to_vec(),
                completion: self.completions,
            });
        }
    }

    fn apply_some_sectors(&mut self, offset: u64, data: &[u8]) {
        for (index, sector) in data.chunks(SECTOR_BYTES as usize).enumerate() {
            if self.prng.chance(1, 2) {
                let at = offset + index as u64 * SECTOR_BYTES;
                self.apply(at, sector, false);
            }
        }
    }

    fn forget_unflushed(&mut self, offset: u64, length: u64) {
        let end = offset + length;
        for write in &mut self.unflushed {
            let write_end = write.offset + write.data.len() as u64;
            if write.offset >= end || write_end <= offset {
                continue;
            }
            // Keep only the parts outside [offset, end) by replacing covered sectors with what
            // is now durable there, which is what the write would leave behind anyway.
            let from = offset.max(write.offset);
            let to = end.min(write_end);
            let local = (from - write.offset) as usize..(to - write.offset) as usize;
            write.data[local].copy_from_slice(&self.durable[from as usize..to as usize]);
        }
    }

    fn flush_through(&mut self, completion: u64) {
        let (flushed, kept): (Vec<_>, Vec<_>) = self
            .unflushed
            .drain(..)
            .partition(|write| write.completion <= completion);
        for write in flushed {
            let range = write.offset as usize..write.offset as usize + write.data.len();
            self.durable[range].copy_from_slice(&write.data);
        }
        self.unflushed = kept;
    }

    /// A crash: operations in flight are dropped, and every sector written since its durable
    /// point keeps its durable value or takes the value of one of the later writes (completed or
    /// in flight), chosen per sector. Afterwards the disk holds only durable data.
    pub fn crash(&mut self) {
        let mut candidates: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        let sector = SECTOR_BYTES as usize;
        let mut add = |offset: u64, data: &[u8]| {
            for (index, chunk) in data.chunks(sector).enumerate() {
                let at = offset + (index * sector) as u64;
                candidates.entry(at).or_default().push(chunk.to_vec());
            }
        };
        for write in &self.unflushed {
            add(write.offset, &write.data);
        }
        for op in self.in_flight.values() {
            match &op.request.op {
                StorageOp::Write { offset, data, .. } => add(*offset, data.as_slice()),
                StorageOp::Discard { offset, length, .. }
                | StorageOp::WriteZeroes { offset, length, .. } => {
                    add(*offset, &vec![0; *length as usize]);
                }
                StorageOp::Read { .. } | StorageOp::Flush => {}
            }
        }
        for (offset, values) in candidates {
            // Keep the durable value, or take one of the later ones.
            let choice = self.prng.below(values.len() as u64 + 1) as usize;
            if choice > 0 {
                let start = offset as usize;
                self.durable[start..start + sector].copy_from_slice(&values[choice - 1]);
            }
        }
        self.unflushed.clear();
        self.in_flight.clear();
        self.visible.copy_from_slice(&self.durable);
    }

    /// Flips `count` random bytes in `[offset, offset + length)` of the durable image.
    pub fn damage(&mut self, offset: u64, length: u64, count: u32) {
        for _ in 0..count {
            let at = (offset + self.prng.below(length)) as usize;
            self.durable[at] ^= 1 << self.prng.below(8);
            self.visible[at] = self.durable[at];
        }
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether an operation with `id` is in flight.
    pub fn has_op(&self, id: StorageOpId) -> bool {
        self.in_flight.values().any(|op| op.request.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk() -> SimDisk {
        let faults = DiskFaults {
            latency_min_nanos: 10,
            latency_max_nanos: 100,
            error_ppm: 0,
        };
        SimDisk::new(8192, faults, Prng::from_seed(3))
    }

    fn write(id: u64, offset: u64, byte: u8, fua: bool) -> StorageRequest {
        let data = IoBuf::copy_from(&[byte; 512]);
        StorageRequest {
            id: StorageOpId(id),
            op: StorageOp::Write { offset, data, fua },
        }
    }

    #[test]
    fn flushed_and_fua_writes_survive_a_crash_unflushed_ones_may_not() {
        let mut disk = disk();
        disk.submit(write(1, 0, 1, false), 0);
        disk.submit(write(2, 512, 2, true), 0);
        while disk.complete_next(1000).is_some() {}
        disk.submit(
            StorageRequest {
                id: StorageOpId(3),
                op: StorageOp::Flush,
            },
            1000,
        );
        while disk.complete_next(2000).is_some() {}
        disk.submit(write(4, 1024, 4, false), 2000);
        while disk.complete_next(3000).is_some() {}
        assert_eq!(disk.visible()[1024], 4);
        disk.crash();
        assert_eq!(disk.visible()[0], 1, "flushed");
        assert_eq!(disk.visible()[512], 2, "FUA");
        assert!(matches!(disk.visible()[1024], 0 | 4), "unflushed: either");
    }
}
