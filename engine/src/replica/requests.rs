//! Writes, reads and flushes: from clients on the primary, replicated from the primary on the
//! secondary, and resync data on a resync target.
//!
//! Every write, whatever its origin, passes the same gates in arrival order among the writes it
//! overlaps: no earlier overlapping write in flight (so both nodes apply overlapping writes in
//! the same order), its activity-log extents hot, and the superblock changes it depends on
//! durable. A client write additionally waits for room in the replication window while the
//! peer receives writes (backpressure), and starts a new generation first when it is the first
//! write the peer will not get. A replicated write additionally waits until every write it
//! depends on (`after`) has completed here.
//!
//! A client write completes when the local write is done and, while replicating (protocol C),
//! the peer has acknowledged it. If the peer goes away first, its granules are marked out of
//! sync and the write completes once the generation change that records the divergence is
//! durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::Range;

use super::resync::Resync;
use super::{
    ClientCompletion, ClientOp, ClientRequest, Event, OpPurpose, Output, PlantedBug, Protocol,
    Replica, StorageOp,
};
use crate::buffer::IoBuf;
use crate::codec::checksum;
use crate::journal::record::{self, RecordHeader, RecordKind};
use crate::protocol::messages::{PeerMessage, ReceivedMark, WriteFlags};
use crate::state::{ConnState, DiskState, Role};
use crate::types::{ByteRange, Errno, Instant, RangeSet, RequestTag, SECTOR_BYTES, Seq};

/// Client writes in flight below which a large write is cut into pieces that pipeline.
const PIPELINE_WRITES_MAX: usize = 2;

/// The replica's name for a write it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct WriteId(u64);

#[derive(Clone, Debug)]
enum WriteKind {
    Data(IoBuf),
    Trim,
    Zeroes,
}

/// Where a write came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client request (one chunk of parent request `parent`).
    Client { parent: u64 },
    /// A write replicated from the primary.
    Peer { seq: Seq, after: Seq },
    /// Resync data from the source.
    Resync,
}

/// A client request split into several writes (a trim across extents): it completes when all
/// of them have.
#[derive(Clone, Copy, Debug)]
struct Parent {
    tag: RequestTag,
    remaining: usize,
    failed: bool,
}

#[derive(Clone, Debug)]
struct PendingWrite {
    origin: Origin,
    range: ByteRange,
    kind: WriteKind,
    fua: bool,
    extents: Range<u64>,
    /// Sequence number of a client write, assigned when issued.
    seq: Option<Seq>,
    /// A client write: the newest write completed when the client submitted it. Only those
    /// can be ones it depends on, so the peer applies it after them and may apply it
    /// alongside anything later (captured here, not when issued: under backpressure a write
    /// waits in the queue while others complete, and it does not depend on them).
    after: Seq,
    /// The local storage result, once it is in.
    local: Option<bool>,
    /// A client write sent to the peer and not yet acknowledged.
    awaiting_peer: bool,
    /// The superblock version that must be durable before the write completes (after the peer
    /// was lost while the write was in flight).
    completion_gate: u64,
    /// The connection it arrived on (peer and resync writes): its ack goes only to that one.
    connection: u64,
}

/// A client flush: the local flush and, while replicating, the peer's.
#[derive(Clone, Copy, Debug)]
struct PendingFlush {
    tag: RequestTag,
    local: Option<bool>,
    awaiting_peer: bool,
}

/// Requests held by the replica.
#[derive(Debug, Default)]
pub(super) struct Requests {
    next_write_id: u64,
    next_parent_id: u64,
    parents: HashMap<u64, Parent>,
    /// Writes not yet issued, in arrival order.
    queued: VecDeque<WriteId>,
    /// How many of them are not from the peer (the scan in `advance_writes` ends early when
    /// only peer writes held by their order are left).
    queued_not_peer: usize,
    /// Every write held, queued or issued.
    writes: HashMap<WriteId, PendingWrite>,
    /// Issued writes, in issue order.
    issued: Vec<WriteId>,
    reads_in_flight: usize,
    flushes: HashMap<u64, PendingFlush>,
    next_flush_id: u64,
    /// Client data writes cut into pieces so far.
    pub(super) pieced_writes: u64,
    /// Writes may be issued only once this superblock version is durable.
    superblock_gate: u64,
    /// The next sequence number to assign.
    next_seq: Seq,
    /// The newest sequence number completed to a client (the `after` of the next write).
    completed_seq: Seq,
    /// Client writes sent to the peer that it has not written yet, by sequence number. Each
    /// holds its activity-log extents and its journal record until the peer writes it, whatever
    /// the protocol: a crash or a lost link then never forgets it.
    unacked: BTreeMap<Seq, Unacked>,
    /// Bytes of those writes.
    unacked_bytes: u64,
    /// Ring bytes their journal records take (header and padding included).
    unacked_journal_bytes: u64,
    /// Protocol B: writes whose completion waits for the peer's receipt.
    receipt_waiters: HashMap<Seq, WriteId>,
    /// Replicated writes received and not yet completed here, by the primary's sequence number.
    peer_incomplete: BTreeSet<Seq>,
    /// The newest replicated write received here.
    peer_received_seq: Seq,
    /// The primary's flushes: each runs once every write received before it has completed.
    peer_flushes: Vec<(u64, Seq)>,
    /// Counts lost connections: a write from the peer that completes after its connection is
    /// gone is applied but not acknowledged (the new connection never sent it).
    connection: u64,
    /// When the last client request was accepted (a resync gives way to recent clients).
    pub(super) last_client_request: Option<Instant>,
}

/// Queued writes whose extents one activity-log transaction considers (DRBD batches up to 64
/// extent changes per transaction too).
const EXTENT_LOOKAHEAD: usize = 64;

/// A client write the peer has not written yet.
#[derive(Clone, Debug)]
struct Unacked {
    range: ByteRange,
    extents: Range<u64>,
    /// Protocol C: the write whose completion waits for this ack.
    completion: Option<WriteId>,
    /// Ring bytes of its journal record.
    journal_bytes: u64,
}

impl Requests {
    /// Client requests accepted and not yet completed.
    pub(super) fn in_flight(&self) -> usize {
        self.parents.len() + self.reads_in_flight + self.flushes.len()
    }

    /// Client writes queued or in flight.
    pub(super) fn client_writes(&self) -> usize {
        self.parents.len()
    }

    /// Later writes wait until superblock version `version` is durable.
    pub(super) fn raise_superblock_gate(&mut self, version: u64) {
        self.superblock_gate = self.superblock_gate.max(version);
    }

    /// The next sequence number to assign.
    pub(super) fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Sets the next sequence number (at attach).
    pub(super) fn set_next_seq(&mut self, seq: Seq) {
        self.next_seq = seq;
    }

    /// Whether an issued write overlaps `range`.
    pub(super) fn issued_overlaps(&self, range: ByteRange) -> bool {
        self.issued
            .iter()
            .any(|id| self.writes[id].range.overlaps(range))
    }

    /// Whether resync writes are queued or in flight.
    pub(super) fn resync_writes_pending(&self) -> bool {
        self.writes.values().any(|w| w.origin == Origin::Resync)
    }

    /// Bytes sent to the peer and not yet written there.
    pub(super) fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// Whether no write sent to the peer awaits its acknowledgement.
    pub(super) fn unacked_is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Whether a write sent to the peer before `seq` awaits its acknowledgement.
    pub(super) fn unacked_before(&self, seq: Seq) -> bool {
        self.unacked.range(..seq).next().is_some()
    }

    /// A journal record sent to the peer by a catch-up awaits its acknowledgement.
    pub(super) fn register_unacked(&mut self, seq: Seq, range: ByteRange, journal_bytes: u64) {
        let unacked = Unacked {
            range,
            extents: 0..0,
            completion: None,
            journal_bytes,
        };
        self.unacked_bytes += range.length;
        self.unacked_journal_bytes += journal_bytes;
        self.unacked.insert(seq, unacked);
    }

    /// Writes received from the primary and not yet written here.
    pub(super) fn peer_writes_pending_count(&self) -> u64 {
        self.peer_incomplete.len() as u64
    }

    /// The newest replicated write received from the primary.
    pub(super) fn peer_received_seq(&self) -> Seq {
        self.peer_received_seq
    }

    /// Whether a replicated write received up to `seq` (all of them: `None`) is not written
    /// yet.
    pub(super) fn peer_writes_pending(&self, through: Option<Seq>) -> bool {
        match through {
            Some(seq) => self.peer_incomplete.range(..=seq).next().is_some(),
            None => !self.peer_incomplete.is_empty(),
        }
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
        self.requests.last_client_request = Some(self.now.monotonic);
        match request.op {
            ClientOp::Read { offset, length } => {
                self.requests.reads_in_flight += 1;
                self.submit(
                    StorageOp::Read { offset, length },
                    OpPurpose::ClientRead(tag),
                );
            }
            ClientOp::Flush => self.client_flush(tag),
            ClientOp::Write { offset, data, fua } => {
                let range = ByteRange::new(offset, data.len() as u64);
                self.queue_client_write(tag, range, WriteKind::Data(data), fua);
            }
            ClientOp::Trim {
                offset,
                length,
                fua,
            } => {
                self.queue_client_write(tag, ByteRange::new(offset, length), WriteKind::Trim, fua);
            }
            ClientOp::WriteZeroes {
                offset,
                length,
                fua,
            } => {
                let range = ByteRange::new(offset, length);
                self.queue_client_write(tag, range, WriteKind::Zeroes, fua);
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
        if !self.disk.is_consistent() {
            // An inconsistent primary would need reads from the peer; tandem does not promote one.
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn client_flush(&mut self, tag: RequestTag) {
        let id = self.requests.next_flush_id;
        self.requests.next_flush_id += 1;
        // Under protocol A the peer is behind by design: a flush covers this node only.
        let replicating = self.replicating() && self.config.protocol != Protocol::A;
        let flush = PendingFlush {
            tag,
            local: None,
            awaiting_peer: replicating,
        };
        self.requests.flushes.insert(id, flush);
        self.submit(StorageOp::Flush, OpPurpose::ClientFlush(id));
        if replicating {
            self.send(PeerMessage::Flush { id });
        }
        if self.planted(PlantedBug::AcknowledgeFlushEarly) {
            let flush = self.requests.flushes.remove(&id).expect("just inserted");
            self.complete(flush.tag, Ok(None));
        }
    }

    /// Whether a client data write should be cut into pieces: only when it waits for the peer
    /// (protocols B and C while replicating) and few client writes are in flight. Then the
    /// pieces overlap sealing, transfer and the peer's write within the request; with more
    /// writes in flight the requests already overlap each other, and the pieces would only
    /// cost CPU and I/O operations (measured: depth 32 and local-only writes got slower).
    fn pipeline_pieces(&self) -> bool {
        self.config.protocol != Protocol::A
            && self.requests.client_writes() < PIPELINE_WRITES_MAX
            && self.replicating()
    }

    /// Queues a client write, cut into pieces: data writes every `write_piece_bytes` from their
    /// start when `pipeline_pieces` says so, trims and zeroings at activity-log extent
    /// boundaries (so that one request never needs more of the log than a data write of the
    /// maximum size does).
    fn queue_client_write(
        &mut self,
        tag: RequestTag,
        range: ByteRange,
        kind: WriteKind,
        fua: bool,
    ) {
        if range.length == 0 {
            return self.complete(tag, Ok(None));
        }
        let volume = self.volume.as_ref().expect("serving implies attached");
        // Data pieces are counted from the start of the request, so every piece of an aligned
        // buffer stays aligned (direct I/O); extents from the start of the volume.
        let (boundary, anchor) = match kind {
            WriteKind::Data(_) if self.pipeline_pieces() => (
                self.config.write_piece_bytes.max(SECTOR_BYTES),
                range.offset,
            ),
            WriteKind::Data(_) => (u64::MAX, range.offset),
            WriteKind::Trim | WriteKind::Zeroes => (volume.activity_log.extent_bytes(), 0),
        };
        let pieces = split_at_multiples(range, boundary, anchor);
        if pieces.len() > 1 && matches!(kind, WriteKind::Data(_)) {
            self.requests.pieced_writes += 1;
        }
        let parent = self.requests.next_parent_id;
        self.requests.next_parent_id += 1;
        self.requests.parents.insert(
            parent,
            Parent {
                tag,
                remaining: pieces.len(),
                failed: false,
            },
        );
        for piece in pieces {
            let kind = match &kind {
                WriteKind::Data(data) => {
                    let start = (piece.offset - range.offset) as usize;
                    WriteKind::Data(data.slice(start..start + piece.length as usize))
                }
                other => other.clone(),
            };
            self.queue_write(Origin::Client { parent }, piece, kind, fua);
        }
    }

    /// Queues a write replicated from the primary (and acknowledges its receipt if asked).
    pub(super) fn queue_peer_write(&mut self, message: PeerMessage) -> Result<(), String> {
        let (seq, after, range, kind, flags) = match message {
            PeerMessage::Write {
                seq,
                after,
                offset,
                flags,
                data,
            } => {
                let range = ByteRange::new(offset, data.len() as u64);
                (seq, after, range, WriteKind::Data(data), flags)
            }
            PeerMessage::Trim {
                seq,
                after,
                offset,
                length,
                flags,
            } => {
                let range = ByteRange::new(offset, u64::from(length));
                (seq, after, range, WriteKind::Trim, flags)
            }
            PeerMessage::WriteZeroes {
                seq,
                after,
                offset,
                length,
                flags,
            } => {
                let range = ByteRange::new(offset, u64::from(length));
                (seq, after, range, WriteKind::Zeroes, flags)
            }
            other => unreachable!("not a write: {other}"),
        };
        self.check_peer_range(
            range,
            self.config.request_bytes_max.max(u64::from(u32::MAX)),
        )?;
        if !self.requests.peer_incomplete.insert(seq) {
            return Err(format!("the peer sent write {seq} twice"));
        }
        // The stream is ordered: the last write received is the newest (a new primary starts
        // its own numbering).
        self.requests.peer_received_seq = seq;
        // What a catch-up after a disconnect would start from.
        self.peer.received = self
            .peer
            .remote
            .as_ref()
            .and_then(|remote| remote.journal)
            .map(|journal| ReceivedMark {
                journal: journal.id,
                seq,
            });
        self.catch_up_target_received(range.length);
        if flags.receipt {
            self.send(PeerMessage::Received { seq });
        }
        self.queue_write(Origin::Peer { seq, after }, range, kind, flags.fua);
        Ok(())
    }

    /// The primary asks for a flush: it runs once every write received before it has
    /// completed here.
    pub(super) fn queue_peer_flush(&mut self, id: u64) {
        let bound = self.requests.peer_received_seq;
        self.requests.peer_flushes.push((id, bound));
    }

    /// Starts every flush for the primary whose writes have all completed.
    fn advance_peer_flushes(&mut self) -> bool {
        let incomplete = &self.requests.peer_incomplete;
        let ready: Vec<u64> = self
            .requests
            .peer_flushes
            .iter()
            .filter(|(_, bound)| incomplete.range(..=*bound).next().is_none())
            .map(|(id, _)| *id)
            .collect();
        self.requests
            .peer_flushes
            .retain(|(id, _)| !ready.contains(id));
        for id in &ready {
            self.submit(StorageOp::Flush, OpPurpose::PeerFlush(*id));
        }
        !ready.is_empty()
    }

    /// Queues resync data from the source.
    pub(super) fn queue_resync_write(&mut self, offset: u64, data: IoBuf) -> Result<(), String> {
        let range = ByteRange::new(offset, data.len() as u64);
        self.check_peer_range(range, self.config.resync_chunk_bytes.max(1 << 20) * 4)?;
        self.queue_write(Origin::Resync, range, WriteKind::Data(data), false);
        Ok(())
    }

    fn check_peer_range(&self, range: ByteRange, length_max: u64) -> Result<(), String> {
        let data_bytes = self.volume.as_ref().map_or(0, |v| v.layout.data_bytes);
        let aligned =
            range.offset.is_multiple_of(SECTOR_BYTES) && range.length.is_multiple_of(SECTOR_BYTES);
        let inside = range
            .offset
            .checked_add(range.length)
            .is_some_and(|end| end <= data_bytes);
        if range.length == 0 || !aligned || !inside || range.length > length_max {
            return Err(format!("the peer sent a write to an invalid range {range}"));
        }
        Ok(())
    }

    fn queue_write(&mut self, origin: Origin, range: ByteRange, kind: WriteKind, fua: bool) {
        let volume = self.volume.as_ref().expect("attached");
        let extents = volume.activity_log.extents_of(range.offset, range.length);
        let id = WriteId(self.requests.next_write_id);
        self.requests.next_write_id += 1;
        let write = PendingWrite {
            origin,
            range,
            kind,
            fua,
            extents,
            seq: None,
            after: self.requests.completed_seq,
            local: None,
            awaiting_peer: false,
            completion_gate: 0,
            connection: self.requests.connection,
        };
        self.requests.writes.insert(id, write);
        self.requests.queued.push_back(id);
        if !matches!(origin, Origin::Peer { .. }) {
            self.requests.queued_not_peer += 1;
        }
    }

    /// Issues every queued write whose gates are open, and completes every write that is done.
    /// Returns whether anything changed.
    pub(super) fn advance_writes(&mut self) -> bool {
        if self.volume.is_none() {
            return false;
        }
        let mut progress = self.finish_done_writes();
        progress |= self.advance_peer_flushes();
        if self.disk == DiskState::Failed {
            return progress;
        }
        // One pass, linear in the queue (a catch-up can queue thousands of peer writes): the
        // ranges of the writes that stay queued block later overlapping ones, and once a peer
        // write waits for an earlier one, all later peer writes wait too (at most longer than
        // their own `after` asks: they only ever wait for earlier writes, so nothing deadlocks).
        // When only such held peer writes are left, the scan ends: it stays short however long
        // the catch-up backlog.
        let mut staying = RangeSet::default();
        let mut peer_order_blocked = false;
        let mut not_peer_left = self.requests.queued_not_peer;
        let mut position = 0;
        while position < self.requests.queued.len() {
            if peer_order_blocked && not_peer_left == 0 {
                break;
            }
            let id = self.requests.queued[position];
            let write = &self.requests.writes[&id];
            let (range, origin) = (write.range, write.origin);
            let may_issue = match origin {
                Origin::Peer { after, .. } => {
                    peer_order_blocked = peer_order_blocked
                        || self
                            .requests
                            .peer_incomplete
                            .range(..=after)
                            .next()
                            .is_some();
                    !peer_order_blocked
                }
                Origin::Client { .. } | Origin::Resync => {
                    not_peer_left -= 1;
                    true
                }
            } && !staying.overlaps(range)
                && self.write_may_issue(id);
            if !may_issue {
                staying.insert(range);
                position += 1;
                continue;
            }
            self.requests.queued.remove(position);
            if !matches!(origin, Origin::Peer { .. }) {
                self.requests.queued_not_peer -= 1;
            }
            self.issue_write(id);
            progress = true;
        }
        progress
    }

    /// The gates of a queued write that no earlier queued write holds (see `advance_writes`).
    fn write_may_issue(&mut self, id: WriteId) -> bool {
        let write = &self.requests.writes[&id];
        let (range, extents, origin) = (write.range, write.extents.clone(), write.origin);
        if self.requests.issued_overlaps(range)
            || self.resync_reading_overlaps(range)
            || self.digest_reads_hold(range, origin)
            || self.verify_reading_overlaps(range)
        {
            return false;
        }
        let volume = self.volume.as_ref().expect("attached");
        if !extents
            .clone()
            .all(|extent| volume.activity_log.is_active(extent))
        {
            return false;
        }
        match origin {
            Origin::Peer { .. } => {}
            Origin::Client { .. } if self.peer.conn == ConnState::Connecting => {
                // The handshake is under way: the state this node sent counts every write
                // issued so far, and the decision rests on it. A write issued now would be in
                // neither, so it waits for the outcome (one round trip, or the ping timeout).
                return false;
            }
            Origin::Client { .. } if self.replicating() => {
                let journal_bytes = journal_bytes(&self.requests.writes[&id].kind);
                if !self.backlog_allows(range, journal_bytes) {
                    return false;
                }
            }
            Origin::Client { .. } => {
                // The write will make this node's data differ from the peer's. If the bitmap does
                // not yet count changes from a shared generation, start a new generation first,
                // so that a peer which moved on meanwhile sees a split brain instead of
                // overwriting this write.
                if volume.superblock.generations.bitmap.is_none() {
                    let version = self.start_diverging_generation("first write without the peer");
                    self.requests.raise_superblock_gate(version);
                }
            }
            Origin::Resync => {}
        }
        self.superblock_durable(self.requests.superblock_gate)
    }

    /// Starts a new generation (the data is about to move away from the peer's) and returns the
    /// superblock version that records it.
    pub(super) fn start_diverging_generation(&mut self, reason: &'static str) -> u64 {
        let generation = self.new_generation();
        let unix_millis = self.now.unix_millis;
        let version = self.update_superblock(|superblock| {
            superblock.generations.start_new(generation);
            superblock.current_started_unix_millis = unix_millis;
        });
        let generations = self
            .volume
            .as_ref()
            .expect("attached")
            .superblock
            .generations;
        self.emit(Event::NewGeneration {
            generations,
            reason,
        });
        version
    }

    /// Marks `range` out of sync. On a primary whose bitmap does not yet count from a shared
    /// generation this starts a new one. Returns the superblock version that must be durable
    /// before anything that relies on the mark completes.
    pub(super) fn mark_out_of_sync(&mut self, range: ByteRange) -> u64 {
        let volume = self.volume.as_mut().expect("attached");
        let granules = volume.bitmap.granules_of(range);
        volume.bitmap.set(granules);
        let diverging =
            self.role == Role::Primary && volume.superblock.generations.bitmap.is_none();
        if diverging {
            return self.start_diverging_generation("the peer did not acknowledge a write");
        }
        let volume = self.volume.as_ref().expect("attached");
        volume.superblock_version
    }

    fn issue_write(&mut self, id: WriteId) {
        let replicating = self.replicating();
        let unordered = self.planted(PlantedBug::PeerWriteUnordered);
        let volume = self.volume.as_mut().expect("attached");
        let write = self.requests.writes.get_mut(&id).expect("held");
        for extent in write.extents.clone() {
            volume.activity_log.acquire(extent);
        }
        if let Origin::Client { .. } = write.origin {
            let seq = self.requests.next_seq;
            self.requests.next_seq = seq.next();
            write.seq = Some(seq);
            let after = if unordered { Seq(0) } else { write.after };
            if replicating {
                let protocol = self.config.protocol;
                for extent in write.extents.clone() {
                    volume.activity_log.acquire(extent); // Held until the peer writes it.
                }
                write.awaiting_peer = protocol != Protocol::A;
                let completion = (protocol == Protocol::C).then_some(id);
                let unacked = Unacked {
                    range: write.range,
                    extents: write.extents.clone(),
                    completion,
                    journal_bytes: journal_bytes(&write.kind),
                };
                self.requests.unacked_bytes += unacked.range.length;
                self.requests.unacked_journal_bytes += unacked.journal_bytes;
                self.requests.unacked.insert(seq, unacked);
                if protocol == Protocol::B {
                    self.requests.receipt_waiters.insert(seq, id);
                }
                let message = peer_message(write, seq, after, protocol == Protocol::B);
                self.outputs.push_back(Output::PeerSend(message));
            } else {
                let granules = volume.bitmap.granules_of(write.range);
                volume.bitmap.set(granules);
            }
            journal_append(volume, write, seq);
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
        if let Err(errno) = result {
            self.fail_disk("writing data", errno);
        }
        let failed = self.disk == DiskState::Failed;
        let write = self.requests.writes.get_mut(&id).expect("held");
        write.local = Some(result.is_ok() && !failed);
    }

    /// The peer wrote a replicated client write (or failed to).
    pub(super) fn peer_write_acknowledged(&mut self, seq: Seq, ok: bool) -> Result<(), String> {
        let unacked = self
            .requests
            .unacked
            .remove(&seq)
            .ok_or(format!("unexpected ack of write {seq}"))?;
        self.requests.unacked_bytes -= unacked.range.length;
        self.requests.unacked_journal_bytes -= unacked.journal_bytes;
        let volume = self.volume.as_mut().expect("attached");
        for extent in unacked.extents.clone() {
            volume.activity_log.release(extent);
        }
        // The journal keeps what the peer has not written: everything below the oldest write
        // still unacknowledged (or not yet sent by a catch-up) is now on the peer.
        let oldest = self.requests.unacked.keys().next().copied();
        let unsent = match &self.peer.resync {
            Some(Resync::CatchUp(catch_up)) => catch_up.unsent(),
            _ => None,
        };
        let needed = [oldest, unsent].into_iter().flatten().min();
        let written = Seq(needed.unwrap_or(self.requests.next_seq).0.saturating_sub(1));
        volume.journal.acknowledge_through(written);
        // The peer's storage failed: the write is only here from now on, and the journal no
        // longer holds everything the peer lacks.
        let gate = if ok {
            0
        } else {
            self.drop_journal();
            self.mark_out_of_sync(unacked.range)
        };
        // Protocol C completes the write now. (Under B the receipt came before this ack, since
        // the peer sends it before writing; under A nothing waits.)
        if let Some(write) = unacked
            .completion
            .and_then(|id| self.requests.writes.get_mut(&id))
        {
            write.awaiting_peer = false;
            write.completion_gate = write.completion_gate.max(gate);
        }
        Ok(())
    }

    /// The peer received a write that asked for a receipt (protocol B).
    pub(super) fn peer_write_received(&mut self, seq: Seq) -> Result<(), String> {
        let id = self
            .requests
            .receipt_waiters
            .remove(&seq)
            .ok_or(format!("unexpected receipt of write {seq}"))?;
        if let Some(write) = self.requests.writes.get_mut(&id) {
            write.awaiting_peer = false;
        }
        Ok(())
    }

    /// The peer is gone: writes it has not written are only here. Their granules are marked
    /// out of sync, their extents leave the writes' hold (the bitmap now covers them), and
    /// writes waiting for the peer complete once the generation change that records the
    /// divergence is durable. Replicated writes received here still complete (under protocol B
    /// the primary may already have completed them).
    pub(super) fn writes_lose_peer(&mut self) {
        self.requests.connection += 1;
        let unacked = std::mem::take(&mut self.requests.unacked);
        self.requests.unacked_bytes = 0;
        self.requests.unacked_journal_bytes = 0;
        // A write the peer may lack that the journal does not hold (sent before the journal
        // started): the journal can no longer bring the peer up to date.
        let journal = &self.volume.as_ref().expect("attached").journal;
        if unacked.keys().any(|seq| journal.record(*seq).is_none()) {
            self.drop_journal();
        }
        let mut gate = 0;
        for entry in unacked.values() {
            gate = gate.max(self.mark_out_of_sync(entry.range));
            let volume = self.volume.as_mut().expect("attached");
            for extent in entry.extents.clone() {
                volume.activity_log.release(extent);
            }
        }
        let waiting = unacked
            .values()
            .filter_map(|entry| entry.completion)
            .chain(self.requests.receipt_waiters.drain().map(|(_, id)| id))
            .collect::<Vec<_>>();
        for id in waiting {
            if let Some(write) = self.requests.writes.get_mut(&id) {
                write.awaiting_peer = false;
                write.completion_gate = write.completion_gate.max(gate);
            }
        }
        for flush in self.requests.flushes.values_mut() {
            flush.awaiting_peer = false;
        }
        self.requests.peer_flushes.clear();
        self.finish_flushes();
    }

    /// Backpressure from a slow peer: whether a client write of `range` (whose journal record
    /// takes `journal_bytes`) may go out with what the peer has not written yet. Under
    /// protocols B and C that backlog is bounded by the replication window, in payload bytes.
    /// Under protocol A the journal holds it, so the bound is three quarters of the journal,
    /// counted as the ring counts it (a record takes a header and padding to a block: a 4 KiB
    /// write takes 8 KiB): a peer that merely lags never makes the journal overflow.
    fn backlog_allows(&self, range: ByteRange, journal_bytes: u64) -> bool {
        let volume = self.volume.as_ref().expect("attached");
        let (pending, adding, bound) =
            if self.config.protocol == Protocol::A && volume.journal.is_active() {
                let capacity =
                    self.config.journal_memory_bytes_max + volume.layout.params.journal_bytes;
                let pending = self.requests.unacked_journal_bytes;
                (pending, journal_bytes, capacity * 3 / 4)
            } else {
                let pending = self.requests.unacked_bytes;
                (pending, range.length, self.config.replication_window_bytes)
            };
        pending == 0 || pending + adding <= bound
    }

    /// Completes every issued write whose conditions hold.
    fn finish_done_writes(&mut self) -> bool {
        let done: Vec<WriteId> = self
            .requests
            .issued
            .iter()
            .copied()
            .filter(|id| {
                let write = &self.requests.writes[id];
                write.local.is_some()
                    && !write.awaiting_peer
                    && self.superblock_durable(write.completion_gate)
            })
            .collect();
        for id in &done {
            self.finish_write(*id);
        }
        !done.is_empty()
    }

    fn finish_write(&mut self, id: WriteId) {
        let write = self.requests.writes.remove(&id).expect("held");
        self.requests.issued.retain(|issued| *issued != id);
        if let Some(volume) = self.volume.as_mut() {
            for extent in write.extents.clone() {
                volume.activity_log.release(extent);
            }
        }
        let ok = write.local == Some(true);
        match write.origin {
            Origin::Client { parent } => {
                if let Some(seq) = write.seq {
                    self.requests.completed_seq = self.requests.completed_seq.max(seq);
                }
                self.chunk_done(parent, ok);
            }
            Origin::Peer { seq, .. } => {
                self.requests.peer_incomplete.remove(&seq);
                if write.connection == self.requests.connection {
                    self.send(PeerMessage::WriteAck { seq, ok });
                }
            }
            Origin::Resync => {
                let current = write.connection == self.requests.connection;
                self.resync_write_done(write.range, ok, current);
            }
        }
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

    pub(super) fn flush_completion(&mut self, id: u64, result: Result<(), Errno>) {
        if let Err(errno) = result {
            self.fail_disk("flushing", errno);
        }
        let failed = self.disk == DiskState::Failed;
        if let Some(flush) = self.requests.flushes.get_mut(&id) {
            flush.local = Some(result.is_ok() && !failed);
        }
        self.finish_flushes();
    }

    /// The peer's flush for client flush `id` completed.
    pub(super) fn peer_flush_acknowledged(&mut self, id: u64, ok: bool) {
        if let Some(flush) = self.requests.flushes.get_mut(&id) {
            flush.awaiting_peer = false;
            if !ok {
                tracing::debug!("the peer's flush {id} failed; its disk state will follow");
            }
        }
        self.finish_flushes();
    }

    fn finish_flushes(&mut self) {
        let done: Vec<u64> = self
            .requests
            .flushes
            .iter()
            .filter(|(_, flush)| flush.local.is_some() && !flush.awaiting_peer)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let flush = self.requests.flushes.remove(&id).expect("present");
            let result = if flush.local == Some(true) {
                Ok(None)
            } else {
                Err(Errno::EIO)
            };
            self.complete(flush.tag, result);
        }
    }

    /// The secondary's flush for the primary completed.
    pub(super) fn peer_flush_completion(&mut self, id: u64, result: Result<(), Errno>) {
        if let Err(errno) = result {
            self.fail_disk("flushing for the peer", errno);
        }
        self.send(PeerMessage::FlushAck {
            id,
            ok: result.is_ok(),
        });
    }

    /// Completes every write not yet issued with `EIO` (the disk failed).
    pub(super) fn fail_queued_requests(&mut self) {
        let queued: Vec<WriteId> = self.requests.queued.drain(..).collect();
        self.requests.queued_not_peer = 0;
        for id in queued {
            let write = self.requests.writes.remove(&id).expect("held");
            match write.origin {
                Origin::Client { parent } => self.chunk_done(parent, false),
                Origin::Peer { seq, .. } => {
                    self.requests.peer_incomplete.remove(&seq);
                    if write.connection == self.requests.connection {
                        self.send(PeerMessage::WriteAck { seq, ok: false });
                    }
                }
                Origin::Resync => {
                    let current = write.connection == self.requests.connection;
                    self.resync_write_done(write.range, false, current);
                }
            }
        }
    }

    /// What the next activity-log transaction should do: the cold extents queued writes need,
    /// in queue order, and the hot extents the same writes need (which must not be evicted).
    /// It stops before the wanted and protected extents together would not fit in the log, and
    /// looks at most `EXTENT_LOOKAHEAD` writes ahead: it runs at every step, and a secondary
    /// can hold thousands of queued writes; writes further back get their extents as the head
    /// of the queue drains.
    pub(super) fn wanted_extents(&self) -> (Vec<u64>, Vec<u64>) {
        let Some(volume) = self.volume.as_ref() else {
            return (Vec::new(), Vec::new());
        };
        let log = &volume.activity_log;
        let ahead = || self.requests.queued.iter().take(EXTENT_LOOKAHEAD);
        let cold = |id: &WriteId| {
            let extents = self.requests.writes[id].extents.clone();
            extents.into_iter().any(|extent| !log.is_active(extent))
        };
        if !ahead().any(cold) {
            return (Vec::new(), Vec::new());
        }
        let mut seen: HashSet<u64> = HashSet::new();
        let (mut wanted, mut protected) = (Vec::new(), Vec::new());
        for id in ahead() {
            let extents = self.requests.writes[id].extents.clone();
            let new: Vec<u64> = extents.filter(|extent| !seen.contains(extent)).collect();
            if seen.len() + new.len() > log.slot_count() {
                break;
            }
            for extent in new {
                seen.insert(extent);
                if log.is_active(extent) {
                    protected.push(extent);
                } else {
                    wanted.push(extent);
                }
            }
        }
        (wanted, protected)
    }

    fn complete(&mut self, tag: RequestTag, result: Result<Option<IoBuf>, Errno>) {
        self.outputs
            .push_back(Output::Client(ClientCompletion { tag, result }));
    }
}

/// `range` cut at `anchor` plus every multiple of `boundary` inside it (`anchor` ≤ its start).
fn split_at_multiples(range: ByteRange, boundary: u64, anchor: u64) -> Vec<ByteRange> {
    let mut pieces = Vec::new();
    let mut offset = range.offset;
    while offset < range.end() {
        let end = ((offset - anchor) / boundary)
            .saturating_add(1)
            .saturating_mul(boundary)
            .saturating_add(anchor)
            .min(range.end());
        pieces.push(ByteRange::new(offset, end - offset));
        offset = end;
    }
    pieces
}

/// The message that replicates a client write.
fn peer_message(write: &PendingWrite, seq: Seq, after: Seq, receipt: bool) -> PeerMessage {
    let offset = write.range.offset;
    let flags = WriteFlags {
        fua: write.fua,
        receipt,
    };
    let length = u32::try_from(write.range.length).expect("validated");
    match &write.kind {
        WriteKind::Data(data) => PeerMessage::Write {
            seq,
            after,
            offset,
            flags,
            data: data.clone(),
        },
        WriteKind::Trim => PeerMessage::Trim {
            seq,
            after,
            offset,
            length,
            flags,
        },
        WriteKind::Zeroes => PeerMessage::WriteZeroes {
            seq,
            after,
            offset,
            length,
            flags,
        },
    }
}

/// Ring bytes the journal record of a write takes: trims and zeroings carry no payload.
fn journal_bytes(kind: &WriteKind) -> u64 {
    match kind {
        WriteKind::Data(data) => record::stored_bytes(data.len() as u64),
        WriteKind::Trim | WriteKind::Zeroes => record::stored_bytes(0),
    }
}

/// Records a client write in the journal when the journal is active.
fn journal_append(volume: &mut super::Volume, write: &PendingWrite, seq: Seq) {
    if !volume.journal.is_active() {
        volume.journal.set_next_seq(seq.next());
        return;
    }
    let (kind, payload) = match &write.kind {
        WriteKind::Data(data) => (RecordKind::Write, Some(data.clone())),
        WriteKind::Trim => (RecordKind::Trim, None),
        WriteKind::Zeroes => (RecordKind::WriteZeroes, None),
    };
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
    let length_max = if matches!(op, ClientOp::Write { .. } | ClientOp::Read { .. }) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_at_every_multiple_from_the_anchor() {
        let piece = 256 << 10;
        let cut = |offset, length, anchor| -> Vec<(u64, u64)> {
            split_at_multiples(ByteRange::new(offset, length), piece, anchor)
                .iter()
                .map(|p| (p.offset, p.length))
                .collect()
        };
        // From the volume's start (extents): the first and last pieces are short.
        let expected = [
            (piece - 4096, 4096),
            (piece, piece),
            (2 * piece, piece),
            (3 * piece, 512),
        ];
        assert_eq!(cut(piece - 4096, 4096 + 2 * piece + 512, 0), expected);
        // From the request's start (data): only the last one is.
        let start = piece - 512;
        let expected = [
            (start, piece),
            (start + piece, piece),
            (start + 2 * piece, 1024),
        ];
        assert_eq!(cut(start, 2 * piece + 1024, start), expected);
        assert_eq!(cut(piece + 512, 4096, 0), [(piece + 512, 4096)]);
        let whole = ByteRange::new(3 * piece, 1 << 30);
        assert_eq!(split_at_multiples(whole, u64::MAX, 0), vec![whole]);
        assert_eq!(
            split_at_multiples(whole, u64::MAX, whole.offset),
            vec![whole]
        );
    }
}
