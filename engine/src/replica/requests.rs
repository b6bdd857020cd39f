//! Client requests: validation, the write pipeline with its gates, reads and flushes.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use super::{
    ClientCompletion, ClientOp, ClientRequest, Event, OpPurpose, Output, PlantedBug, Replica,
    StorageOp,
};
use crate::buffer::IoBuf;
use crate::codec::checksum;
use crate::journal::record::{RecordHeader, RecordKind};
use crate::state::{DiskState, Role};
use crate::types::{ByteRange, Errno, RequestTag, SECTOR_BYTES, Seq};

/// The replica's name for a write it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct WriteId(u64);

#[derive(Clone, Debug)]
enum WriteKind {
    Data(IoBuf),
    Trim,
    Zeroes,
}

/// A client request split into several writes (a trim across extents): it completes when all of
/// them have.
#[derive(Clone, Copy, Debug)]
struct Parent {
    tag: RequestTag,
    remaining: usize,
    failed: bool,
}

#[derive(Clone, Debug)]
struct PendingWrite {
    parent: u64,
    range: ByteRange,
    kind: WriteKind,
    fua: bool,
    extents: Range<u64>,
    /// Assigned when the write is issued.
    seq: Option<Seq>,
}

/// Client requests held by the replica.
#[derive(Debug, Default)]
pub(super) struct Requests {
    next_write_id: u64,
    next_parent_id: u64,
    parents: HashMap<u64, Parent>,
    /// Writes not yet issued, in arrival order.
    queued: VecDeque<WriteId>,
    /// Every write held, queued or in flight.
    writes: HashMap<WriteId, PendingWrite>,
    /// Issued writes, in issue order.
    issued: Vec<WriteId>,
    reads_in_flight: usize,
    flushes_in_flight: usize,
    /// Writes may be issued only once this superblock version is durable.
    superblock_gate: u64,
    /// The next sequence number to assign.
    next_seq: Seq,
}

impl Requests {
    /// Requests accepted and not yet completed.
    pub(super) fn in_flight(&self) -> usize {
        self.parents.len() + self.reads_in_flight + self.flushes_in_flight
    }

    /// Later writes wait until superblock version `version` is durable.
    pub(super) fn raise_superblock_gate(&mut self, version: u64) {
        self.superblock_gate = self.superblock_gate.max(version);
    }

    /// Sets the next sequence number (at attach).
    pub(super) fn set_next_seq(&mut self, seq: Seq) {
        self.next_seq = seq;
    }

    fn overlaps_earlier(&self, position: usize, range: ByteRange) -> bool {
        let in_flight = self
            .issued
            .iter()
            .any(|id| self.writes[id].range.overlaps(range));
        let queued = self
            .queued
            .iter()
            .take(position)
            .any(|id| self.writes[id].range.overlaps(range));
        in_flight || queued
    }
}

impl Replica {
    pub(super) fn client_request(&mut self, request: ClientRequest) {
        let tag = request.tag;
        if self.requests.in_flight() >= self.config.requests_in_flight_max {
            return self.complete(tag, Err(Errno::EAGAIN));
        }
        if let Err(errno) = self.check_serving() {
            return self.complete(tag, Err(errno));
        }
        let data_bytes = self
            .volume
            .as_ref()
            .expect("serving implies attached")
            .layout
            .data_bytes;
        if let Err(errno) = validate(&request.op, data_bytes, self.config.request_bytes_max) {
            return self.complete(tag, Err(errno));
        }
        match request.op {
            ClientOp::Read { offset, length } => {
                self.requests.reads_in_flight += 1;
                self.submit(
                    StorageOp::Read { offset, length },
                    OpPurpose::ClientRead(tag),
                );
            }
            ClientOp::Flush => {
                self.requests.flushes_in_flight += 1;
                self.submit(StorageOp::Flush, OpPurpose::ClientFlush(tag));
                if self.planted(PlantedBug::AcknowledgeFlushEarly) {
                    self.requests.flushes_in_flight -= 1;
                    self.complete(tag, Ok(None));
                }
            }
            ClientOp::Write { offset, data, fua } => {
                let range = ByteRange::new(offset, data.len() as u64);
                self.queue_write(tag, range, WriteKind::Data(data), fua);
            }
            ClientOp::Trim {
                offset,
                length,
                fua,
            } => {
                self.queue_write(tag, ByteRange::new(offset, length), WriteKind::Trim, fua);
            }
            ClientOp::WriteZeroes {
                offset,
                length,
                fua,
            } => {
                self.queue_write(tag, ByteRange::new(offset, length), WriteKind::Zeroes, fua);
            }
        }
    }

    /// Whether client I/O may be served now, or the errno that says why not.
    fn check_serving(&self) -> Result<(), Errno> {
        if self.disk == DiskState::Failed {
            return Err(Errno::EIO);
        }
        if self.volume.is_none() || self.role != Role::Primary || self.detaching() {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Queues a write. Trims and zeroings are split at activity-log extent boundaries, so that
    /// one request never needs more of the log than a data write of the maximum size does.
    fn queue_write(&mut self, tag: RequestTag, range: ByteRange, kind: WriteKind, fua: bool) {
        if range.length == 0 {
            return self.complete(tag, Ok(None));
        }
        let volume = self.volume.as_ref().expect("serving implies attached");
        let extent_bytes = volume.activity_log.extent_bytes();
        let mut chunks = Vec::new();
        match kind {
            WriteKind::Data(_) => chunks.push(range),
            WriteKind::Trim | WriteKind::Zeroes => {
                let mut offset = range.offset;
                while offset < range.end() {
                    let extent_end = (offset / extent_bytes + 1) * extent_bytes;
                    let end = extent_end.min(range.end());
                    chunks.push(ByteRange::new(offset, end - offset));
                    offset = end;
                }
            }
        }
        let parent = self.requests.next_parent_id;
        self.requests.next_parent_id += 1;
        let remaining = chunks.len();
        self.requests.parents.insert(
            parent,
            Parent {
                tag,
                remaining,
                failed: false,
            },
        );
        for chunk in chunks {
            let extents = volume.activity_log.extents_of(chunk.offset, chunk.length);
            let id = WriteId(self.requests.next_write_id);
            self.requests.next_write_id += 1;
            let write = PendingWrite {
                parent,
                range: chunk,
                kind: kind.clone(),
                fua,
                extents,
                seq: None,
            };
            self.requests.writes.insert(id, write);
            self.requests.queued.push_back(id);
        }
    }

    /// Issues every queued write whose gates are open. Returns whether any was issued.
    pub(super) fn advance_writes(&mut self) -> bool {
        if self.volume.is_none() || self.disk == DiskState::Failed {
            return false;
        }
        let mut progress = false;
        let mut position = 0;
        while position < self.requests.queued.len() {
            let id = self.requests.queued[position];
            if !self.write_may_issue(id, position) {
                position += 1;
                continue;
            }
            self.requests.queued.remove(position);
            self.issue_write(id);
            progress = true;
        }
        progress
    }

    fn write_may_issue(&mut self, id: WriteId, position: usize) -> bool {
        let write = &self.requests.writes[&id];
        let (range, extents) = (write.range, write.extents.clone());
        if self.requests.overlaps_earlier(position, range) {
            return false;
        }
        let volume = self.volume.as_ref().expect("attached");
        if !extents
            .clone()
            .all(|extent| volume.activity_log.is_active(extent))
        {
            return false;
        }
        // The write will make this node's data differ from the peer's. If the bitmap does not
        // yet count changes from a shared generation, start a new generation first, so that a
        // peer which moved on meanwhile sees a split brain instead of overwriting this write.
        if volume.superblock.generations.bitmap.is_none() {
            self.start_diverging_generation();
        }
        self.superblock_durable(self.requests.superblock_gate)
    }

    fn start_diverging_generation(&mut self) {
        let generation = self.new_generation();
        let unix_millis = self.now.unix_millis;
        let version = self.update_superblock(|superblock| {
            superblock.generations.start_new(generation);
            superblock.current_started_unix_millis = unix_millis;
        });
        self.requests.raise_superblock_gate(version);
        let generations = self
            .volume
            .as_ref()
            .expect("attached")
            .superblock
            .generations;
        self.emit(Event::NewGeneration {
            generations,
            reason: "first write without the peer",
        });
    }

    fn issue_write(&mut self, id: WriteId) {
        let seq = self.requests.next_seq;
        self.requests.next_seq = seq.next();
        let volume = self.volume.as_mut().expect("attached");
        let write = self.requests.writes.get_mut(&id).expect("held");
        write.seq = Some(seq);
        for extent in write.extents.clone() {
            volume.activity_log.acquire(extent);
        }
        let granules = volume.bitmap.granules_of(write.range);
        volume.bitmap.set(granules);
        let (kind, payload) = match &write.kind {
            WriteKind::Data(data) => (RecordKind::Write, Some(data.clone())),
            WriteKind::Trim => (RecordKind::Trim, None),
            WriteKind::Zeroes => (RecordKind::WriteZeroes, None),
        };
        if volume.journal.is_active() {
            let payload_bytes = payload.as_ref().map_or(0, |p| p.len() as u32);
            let header = RecordHeader {
                kind,
                fua: write.fua,
                seq,
                offset: write.range.offset,
                length: u32::try_from(write.range.length).expect("validated"),
                payload_bytes,
                payload_checksum: payload
                    .as_ref()
                    .map_or(checksum(&[]), |p| checksum(p.as_slice())),
            };
            volume.journal.append(header, payload);
        } else {
            volume.journal.set_next_seq(seq.next());
        }
        let (offset, length, fua) = (write.range.offset, write.range.length, write.fua);
        let op = match &write.kind {
            WriteKind::Data(data) => StorageOp::Write {
                offset,
                data: data.clone(),
                fua,
            },
            WriteKind::Trim => StorageOp::Discard {
                offset,
                length,
                fua,
            },
            WriteKind::Zeroes => StorageOp::WriteZeroes {
                offset,
                length,
                fua,
            },
        };
        self.requests.issued.push(id);
        self.submit(op, OpPurpose::ClientWrite(id));
    }

    pub(super) fn write_completion(&mut self, id: WriteId, result: Result<(), Errno>) {
        let write = self.requests.writes.remove(&id).expect("held");
        self.requests.issued.retain(|issued| *issued != id);
        if let Some(volume) = self.volume.as_mut() {
            for extent in write.extents.clone() {
                volume.activity_log.release(extent);
            }
        }
        if let Err(errno) = result {
            self.fail_disk("writing data", errno);
        }
        let ok = result.is_ok() && self.disk != DiskState::Failed;
        self.chunk_done(write.parent, ok);
    }

    /// One write of a client request ended; the request completes with its last write.
    fn chunk_done(&mut self, parent: u64, ok: bool) {
        let state = self.requests.parents.get_mut(&parent).expect("parent held");
        state.remaining -= 1;
        state.failed |= !ok;
        if state.remaining == 0 {
            let state = self.requests.parents.remove(&parent).expect("parent held");
            let result = if state.failed {
                Err(Errno::EIO)
            } else {
                Ok(None)
            };
            self.complete(state.tag, result);
        }
    }

    pub(super) fn read_completion(
        &mut self,
        tag: RequestTag,
        result: Result<Option<IoBuf>, Errno>,
    ) {
        self.requests.reads_in_flight -= 1;
        match result {
            Ok(data) if self.disk != DiskState::Failed => self.complete(tag, Ok(data)),
            Ok(_) => self.complete(tag, Err(Errno::EIO)),
            Err(errno) => {
                self.fail_disk("reading data", errno);
                self.complete(tag, Err(Errno::EIO));
            }
        }
    }

    pub(super) fn flush_completion(&mut self, tag: RequestTag, result: Result<(), Errno>) {
        if self.planted(PlantedBug::AcknowledgeFlushEarly) {
            return; // Already completed when it arrived.
        }
        self.requests.flushes_in_flight -= 1;
        match result {
            Ok(()) if self.disk != DiskState::Failed => self.complete(tag, Ok(None)),
            Ok(()) => self.complete(tag, Err(Errno::EIO)),
            Err(errno) => {
                self.fail_disk("flushing", errno);
                self.complete(tag, Err(Errno::EIO));
            }
        }
    }

    /// Completes every write not yet issued with `EIO` (the disk failed).
    pub(super) fn fail_queued_requests(&mut self) {
        let queued: Vec<WriteId> = self.requests.queued.drain(..).collect();
        for id in queued {
            let write = self.requests.writes.remove(&id).expect("held");
            self.chunk_done(write.parent, false);
        }
    }

    /// What the next activity-log transaction should do: the cold extents queued writes need,
    /// in queue order, and the hot extents the same writes need (which must not be evicted).
    /// It stops before the wanted and protected extents together would not fit in the log.
    pub(super) fn wanted_extents(&self) -> (Vec<u64>, Vec<u64>) {
        let Some(volume) = self.volume.as_ref() else {
            return (Vec::new(), Vec::new());
        };
        let log = &volume.activity_log;
        let mut wanted: Vec<u64> = Vec::new();
        let mut protected: Vec<u64> = Vec::new();
        for id in &self.requests.queued {
            let extents = self.requests.writes[id].extents.clone();
            let (hot, cold): (Vec<u64>, Vec<u64>) = extents.partition(|e| log.is_active(*e));
            let new_hot = hot.iter().filter(|e| !protected.contains(e)).count();
            let new_cold = cold.iter().filter(|e| !wanted.contains(e)).count();
            if wanted.len() + protected.len() + new_hot + new_cold > log.slot_count() {
                break;
            }
            protected.extend(
                hot.into_iter()
                    .filter(|e| !protected.contains(e))
                    .collect::<Vec<_>>(),
            );
            wanted.extend(
                cold.into_iter()
                    .filter(|e| !wanted.contains(e))
                    .collect::<Vec<_>>(),
            );
        }
        (wanted, protected)
    }

    fn complete(&mut self, tag: RequestTag, result: Result<Option<IoBuf>, Errno>) {
        self.outputs
            .push_back(Output::Client(ClientCompletion { tag, result }));
    }
}

/// Checks alignment, bounds and sizes of a client operation.
fn validate(op: &ClientOp, data_bytes: u64, write_bytes_max: u64) -> Result<(), Errno> {
    let (offset, length, is_write) = match op {
        ClientOp::Flush => return Ok(()),
        ClientOp::Read { offset, length } => (*offset, *length, false),
        ClientOp::Write { offset, data, .. } => (*offset, data.len() as u64, true),
        ClientOp::Trim { offset, length, .. } | ClientOp::WriteZeroes { offset, length, .. } => {
            (*offset, *length, true)
        }
    };
    if !offset.is_multiple_of(SECTOR_BYTES) || !length.is_multiple_of(SECTOR_BYTES) {
        return Err(Errno::EINVAL);
    }
    let length_max = if matches!(op, ClientOp::Write { .. }) {
        write_bytes_max
    } else {
        u64::from(u32::MAX) / SECTOR_BYTES * SECTOR_BYTES
    };
    if length > length_max {
        return Err(Errno::EINVAL);
    }
    match offset.checked_add(length) {
        Some(end) if end <= data_bytes => Ok(()),
        _ if is_write => Err(Errno::ENOSPC),
        _ => Err(Errno::EINVAL),
    }
}
