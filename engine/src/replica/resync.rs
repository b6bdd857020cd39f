//! Resync: bringing the peer's out-of-sync granules in line, as source or as target.
//!
//! For a bitmap resync both sides first send their dirty bitmaps and OR in the other's, so both
//! know the union: every granule either side changed. For a full sync both mark everything.
//! The target records `inconsistent` (durably) before it takes any resync data.
//!
//! The source walks its bitmap in order, reads runs of set granules (up to `resync_chunk_bytes`)
//! and sends them. A resync read and a client write to the same range never overlap: the read
//! waits for writes in flight there, and writes there wait while the read is in flight; since
//! the resync data is queued to the peer before any later write, the target applies them in the
//! same order and never lets stale resync data overwrite a newer write. The source clears a
//! granule when the target acknowledges writing it. Bytes in flight are bounded by a window
//! that drops to one chunk while clients write (their latency comes first), and optionally by a
//! rate cap.
//!
//! A checksum resync (`resync --checksum`, and by default after a crashed primary, whose
//! in-flight regions are usually identical on both sides) reads runs the same way but sends
//! their digests first (see `digest`): granules that match are cleared on both sides, and only
//! those that differ are read again and sent.
//!
//! When the source's bitmap is empty it sends its generations; the target adopts them, becomes
//! `up_to_date` (durably) and answers; then the source ends its bitmap generation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use roaring::RoaringTreemap;
use serde::Serialize;

use super::digest::{bit, granule_digests};
use super::{OpPurpose, Replica, StorageOp};
use crate::buffer::IoBuf;
use crate::generation::{GenerationSet, SyncDecision};
use crate::protocol::messages::{BITMAP_CHUNK_BYTES_MAX, DigestPurpose, PeerMessage};
use crate::state::{DiskState, ReplState};
use crate::types::{ByteRange, Errno, Instant, Seq};

/// Granules per bitmap message.
const BITMAP_GRANULES_PER_MESSAGE: u64 = 1 << 20;
/// Throughput samples kept for the rate estimate.
const RATE_WINDOW_SECONDS: u64 = 5;

/// Resync progress for status.
#[derive(Clone, Debug, Serialize)]
pub struct SyncProgress {
    /// "source" or "target".
    pub direction: &'static str,
    /// "full" (every granule), "bitmap" (the granules either side marked) or "journal" (a
    /// catch-up: the journal's records in write order).
    pub kind: &'static str,
    /// Percent done: of the granules out of sync at the start, or of the journal records.
    pub percent: f64,
    /// Recent throughput.
    pub bytes_per_second: u64,
    /// Estimated seconds to go, when the rate is known.
    pub eta_seconds: Option<u64>,
    /// Bytes still to send (unknown to the target of a catch-up).
    pub remaining_bytes: Option<u64>,
    /// A full sync (every granule).
    pub full: bool,
}

/// A resync in progress.
#[derive(Debug)]
pub(super) enum Resync {
    Source(Source),
    Target(Target),
    /// The source of a catch-up from the journal (its target is a [`Target`] too).
    CatchUp(super::catchup::CatchUp),
}

impl Resync {
    /// The replication state it stands for.
    pub(super) fn repl_state(&self) -> ReplState {
        match self {
            Self::Source(_) | Self::CatchUp(_) => ReplState::SyncSource,
            Self::Target(_) => ReplState::SyncTarget,
        }
    }
}

#[derive(Debug)]
pub(super) struct Source {
    full: bool,
    /// Digests first; data only for the granules that differ.
    checksum: bool,
    /// Granules whose digests differed: their data is sent.
    needs_data: RoaringTreemap,
    /// Reads in flight and ranges sent that are digests, not data (by offset).
    digest_offsets: BTreeSet<u64>,
    waiting_for_bitmap: bool,
    cursor: u64,
    /// Reads in flight: offset → length. Client writes there wait.
    reading: BTreeMap<u64, u64>,
    /// Sent, not yet acknowledged: offset → length.
    sent: BTreeMap<u64, u64>,
    in_flight_bytes: u64,
    done_sent: bool,
    progress: Progress,
    tokens_bytes: u64,
    tokens_refilled: Instant,
}

#[derive(Debug)]
pub(super) struct Target {
    full: bool,
    waiting_for_bitmap: bool,
    /// The source's generations, once it said it is done, and the newest replicated write
    /// received before: the target is up to date only once that one and all before it are
    /// written, so resync data never runs ahead of the writes replicated alongside it.
    done: Option<(GenerationSet, Seq)>,
    /// How far finishing has come.
    finishing: Finishing,
    pub(super) progress: Progress,
    /// A catch-up from the source's journal: the last record this node had, and the source's
    /// journal head, at the start.
    catch_up: Option<(Seq, Seq)>,
}

/// The target's last steps: resync data durable (a storage flush), then the superblock that
/// says `up_to_date`, then the answer to the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finishing {
    NotYet,
    Flushing,
    Flushed,
    WritingSuperblock(u64),
}

#[derive(Debug)]
pub(super) struct Progress {
    initial_granules: u64,
    /// (when, bytes) of recent acknowledged chunks.
    samples: VecDeque<(Instant, u64)>,
}

impl Progress {
    pub(super) fn new(initial_granules: u64) -> Self {
        Self {
            initial_granules,
            samples: VecDeque::new(),
        }
    }

    pub(super) fn add(&mut self, now: Instant, bytes: u64) {
        self.samples.push_back((now, bytes));
        let horizon = std::time::Duration::from_secs(RATE_WINDOW_SECONDS);
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.since(*at) > horizon)
        {
            self.samples.pop_front();
        }
    }

    pub(super) fn bytes_per_second(&self, now: Instant) -> u64 {
        let Some((first, _)) = self.samples.front() else {
            return 0;
        };
        let elapsed = now.since(*first).as_secs_f64().max(0.001);
        let bytes: u64 = self.samples.iter().map(|(_, b)| b).sum();
        (bytes as f64 / elapsed) as u64
    }
}

impl Replica {
    /// Starts a resync after a decision.
    pub(super) fn start_resync(&mut self, decision: SyncDecision) {
        self.drop_journal();
        let full = decision.is_full_sync();
        if decision.is_source() {
            // After a crashed primary the regions it had in flight are marked on both sides
            // but usually hold the same data: compare digests before sending.
            let crashed = self
                .volume
                .as_ref()
                .expect("attached")
                .superblock
                .crashed_primary
                || self.peer.remote.as_ref().is_some_and(|r| r.crashed_primary);
            self.begin_source(full, crashed && !full);
        } else {
            self.begin_target(full);
        }
    }

    fn begin_source(&mut self, full: bool, checksum: bool) {
        let volume = self.volume.as_mut().expect("attached");
        if full {
            volume.bitmap.set_all();
        }
        let initial = volume.bitmap.weight();
        self.peer.resync = Some(Resync::Source(Source {
            full,
            checksum,
            needs_data: RoaringTreemap::new(),
            digest_offsets: BTreeSet::new(),
            waiting_for_bitmap: !full,
            cursor: 0,
            reading: BTreeMap::new(),
            sent: BTreeMap::new(),
            in_flight_bytes: 0,
            done_sent: false,
            progress: Progress::new(initial),
            tokens_bytes: 0,
            tokens_refilled: self.now.monotonic,
        }));
        if !full {
            self.send_bitmap();
        }
        let how = match (full, checksum) {
            (_, true) => "checksum resync",
            (true, false) => "full sync",
            (false, false) => "bitmap resync",
        };
        self.set_repl(
            ReplState::SyncSource,
            format!("{how}: {initial} granules to send"),
        );
    }

    fn begin_target(&mut self, full: bool) {
        let volume = self.volume.as_mut().expect("attached");
        if full {
            volume.bitmap.set_all();
        }
        let initial = volume.bitmap.weight();
        let version =
            self.update_superblock(|superblock| superblock.disk_state = DiskState::Inconsistent);
        self.requests.raise_superblock_gate(version);
        self.set_disk_state(DiskState::Inconsistent, "resync target");
        self.peer.resync = Some(Resync::Target(Target {
            full,
            waiting_for_bitmap: !full,
            done: None,
            finishing: Finishing::NotYet,
            progress: Progress::new(initial),
            catch_up: None,
        }));
        // Resync data is not part of any journal run: no catch-up can start from here.
        self.peer.received = None;
        if !full {
            self.send_bitmap();
        }
        let how = if full { "full sync" } else { "bitmap resync" };
        self.set_repl(
            ReplState::SyncTarget,
            format!("{how}: {initial} granules to receive"),
        );
        self.announce_state();
    }

    /// Becomes the target of a catch-up from the peer's journal, which starts after record
    /// `from`: consistent but behind (`outdated`, recorded durably) until it ends.
    pub(super) fn begin_catch_up_target(&mut self, from: Seq) {
        let head = self
            .peer
            .remote
            .as_ref()
            .and_then(|r| r.journal)
            .map_or(from.next(), |j| j.head);
        let version =
            self.update_superblock(|superblock| superblock.disk_state = DiskState::Outdated);
        self.requests.raise_superblock_gate(version);
        self.set_disk_state(DiskState::Outdated, "catching up from the peer's journal");
        self.peer.resync = Some(Resync::Target(Target {
            full: false,
            waiting_for_bitmap: false,
            done: None,
            finishing: Finishing::NotYet,
            progress: Progress::new(0),
            catch_up: Some((from, head)),
        }));
        let records = head.0.saturating_sub(from.next().0);
        self.set_repl(
            ReplState::SyncTarget,
            format!("catch-up from the peer's journal: {records} records to receive, in order"),
        );
        self.announce_state();
    }

    /// A replicated write arrived: during a catch-up it counts as progress.
    pub(super) fn catch_up_target_received(&mut self, bytes: u64) {
        let now = self.now.monotonic;
        if let Some(Resync::Target(target)) = &mut self.peer.resync
            && target.catch_up.is_some()
        {
            target.progress.add(now, bytes);
        }
    }

    /// Sends the set granules of the bitmap, in chunks.
    pub(super) fn send_bitmap(&mut self) {
        let bitmap = &self.volume.as_ref().expect("attached").bitmap;
        let mut messages = Vec::new();
        let mut chunk = RoaringTreemap::new();
        for granule in bitmap.iter_set() {
            chunk.insert(granule);
            if chunk.len() >= BITMAP_GRANULES_PER_MESSAGE {
                messages.push(std::mem::take(&mut chunk));
            }
        }
        messages.push(chunk);
        let count = messages.len();
        for (index, granules) in messages.into_iter().enumerate() {
            let mut bytes = Vec::with_capacity(granules.serialized_size());
            granules
                .serialize_into(&mut bytes)
                .expect("writing to a Vec cannot fail");
            self.send(PeerMessage::Bitmap {
                granules: bytes,
                last: index + 1 == count,
            });
        }
    }

    pub(super) fn resync_bitmap_received(
        &mut self,
        bytes: &[u8],
        last: bool,
    ) -> Result<(), String> {
        let waiting = match &mut self.peer.resync {
            Some(Resync::Source(source)) => &mut source.waiting_for_bitmap,
            Some(Resync::Target(target)) => &mut target.waiting_for_bitmap,
            Some(Resync::CatchUp(_)) | None => {
                return Err("a bitmap outside a bitmap resync".to_string());
            }
        };
        if !*waiting {
            return Err("a bitmap after the last chunk".to_string());
        }
        if bytes.len() > BITMAP_CHUNK_BYTES_MAX {
            return Err("bitmap chunk too large".to_string());
        }
        let granules =
            RoaringTreemap::deserialize_from(bytes).map_err(|e| format!("bitmap: {e}"))?;
        let volume = self.volume.as_mut().expect("attached");
        let count = volume.bitmap.granule_count();
        if granules.max().is_some_and(|max| max >= count) {
            return Err("bitmap names granules past the end of the volume".to_string());
        }
        for granule in &granules {
            volume.bitmap.set(granule..granule + 1);
        }
        if last {
            *waiting = false;
            let weight = volume.bitmap.weight();
            match &mut self.peer.resync {
                Some(Resync::Source(source)) => source.progress.initial_granules = weight,
                Some(Resync::Target(target)) => target.progress.initial_granules = weight,
                Some(Resync::CatchUp(_)) | None => {}
            }
        }
        Ok(())
    }

    /// The peer asks this node to become the target of a resync.
    pub(super) fn resync_requested(&mut self, full: bool) -> Result<(), String> {
        if self.peer.resync.is_some() || self.peer.repl != ReplState::Established {
            return Err("a resync request while not established".to_string());
        }
        if self.role == crate::state::Role::Primary {
            self.close_link("the peer asked to resync over this primary's data");
            return Ok(());
        }
        self.drop_journal();
        self.begin_target(full);
        Ok(())
    }

    /// `tandem volume resync`: this node becomes the source of the marked granules, of every
    /// granule (`full`), or of every granule compared by digest first (`checksum`).
    pub(super) fn admin_resync(
        &mut self,
        full: bool,
        checksum: bool,
    ) -> Result<(), super::Refusal> {
        let full = full || checksum;
        use super::Refusal;
        if self.peer.conn != crate::state::ConnState::Connected {
            return Err(Refusal::NotConnected(self.peer.conn));
        }
        if self.peer.repl != ReplState::Established {
            return Err(Refusal::ResyncRunning(self.peer.repl));
        }
        if self.disk != DiskState::UpToDate {
            return Err(Refusal::NoUpToDateDisk(self.disk));
        }
        if self
            .peer
            .remote
            .as_ref()
            .is_some_and(|r| r.role == crate::state::Role::Primary)
        {
            return Err(Refusal::PeerIsPrimary);
        }
        let weight = self.volume.as_ref().expect("attached").bitmap.weight();
        if !full && weight == 0 {
            return Err(Refusal::Nothing(
                "nothing is marked out of sync; use --full to resync everything",
            ));
        }
        self.send(PeerMessage::StartResync { full, checksum });
        self.drop_journal();
        self.begin_source(full, checksum);
        Ok(())
    }

    /// Issues resync reads, finishes a resync. Returns whether anything changed.
    pub(super) fn advance_resync(&mut self) -> bool {
        match &self.peer.resync {
            Some(Resync::Source(_)) => self.advance_source(),
            Some(Resync::Target(_)) => self.advance_target(),
            Some(Resync::CatchUp(_)) => self.advance_catch_up(),
            None => false,
        }
    }

    fn advance_source(&mut self) -> bool {
        if self.disk == DiskState::Failed || self.volume.is_none() {
            return false;
        }
        let now = self.now.monotonic;
        let chunk_bytes = self.config.resync_chunk_bytes;
        let window = resync_window(
            &self.config,
            self.requests.in_flight(),
            self.requests.last_client_request,
            now,
        );
        let rate = self.config.resync_rate_bytes_per_second_max;
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return false;
        };
        if source.waiting_for_bitmap || source.done_sent {
            return false;
        }
        if let Some(rate) = rate {
            let elapsed = now.since(source.tokens_refilled).as_secs_f64();
            let refill = (rate as f64 * elapsed) as u64;
            if refill > 0 {
                source.tokens_bytes = (source.tokens_bytes + refill).min(rate.max(chunk_bytes));
                source.tokens_refilled = now;
            }
        }
        let mut progress = false;
        let mut wrapped = false;
        for _ in 0..4096 {
            let Some(Resync::Source(source)) = &self.peer.resync else {
                break;
            };
            let budget_ok = rate.is_none() || source.tokens_bytes >= chunk_bytes;
            if source.in_flight_bytes >= window || !budget_ok {
                break;
            }
            match self.next_resync_run(wrapped) {
                RunSearch::Found(range, digests) => {
                    self.issue_resync_read(range, rate.is_some(), digests);
                    progress = true;
                }
                RunSearch::Skip => {}
                RunSearch::Wrap => wrapped = true,
                RunSearch::Exhausted => break,
            }
        }
        let volume = self.volume.as_ref().expect("attached");
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return progress;
        };
        if volume.bitmap.weight() == 0 && source.reading.is_empty() && source.sent.is_empty() {
            source.done_sent = true;
            let generations = volume.superblock.generations;
            self.send(PeerMessage::ResyncDone { generations });
            return true;
        }
        progress
    }

    /// The next run of set granules to read, from the cursor.
    fn next_resync_run(&mut self, wrapped: bool) -> RunSearch {
        let volume = self.volume.as_ref().expect("attached");
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return RunSearch::Exhausted;
        };
        let Some(start) = volume.bitmap.next_set(source.cursor) else {
            if wrapped || source.cursor == 0 {
                return RunSearch::Exhausted;
            }
            source.cursor = 0;
            return RunSearch::Wrap;
        };
        let granule_bytes = volume.bitmap.granule_bytes();
        let in_flight = |offset: u64| {
            let overlaps = |map: &BTreeMap<u64, u64>| {
                map.range(..=offset)
                    .next_back()
                    .is_some_and(|(at, length)| offset < at + length)
            };
            overlaps(&source.reading) || overlaps(&source.sent)
        };
        if in_flight(start * granule_bytes) {
            source.cursor = start + 1;
            return RunSearch::Skip;
        }
        let granules_max = (self.config.resync_chunk_bytes / granule_bytes).max(1);
        // A run is all digests (granules not compared yet) or all data.
        let digests = |granule: u64| source.checksum && !source.needs_data.contains(granule);
        let run_digests = digests(start);
        let mut end = start + 1;
        while end - start < granules_max
            && end < volume.bitmap.granule_count()
            && volume.bitmap.is_set(end)
            && !in_flight(end * granule_bytes)
            && digests(end) == run_digests
        {
            end += 1;
        }
        source.cursor = end;
        let offset = start * granule_bytes;
        let range = ByteRange::new(
            offset,
            (end * granule_bytes).min(volume.layout.data_bytes) - offset,
        );
        if self.requests.issued_overlaps(range) {
            return RunSearch::Skip; // A client write is in flight there: come back later.
        }
        RunSearch::Found(range, run_digests)
    }

    fn issue_resync_read(&mut self, range: ByteRange, metered: bool, digests: bool) {
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return;
        };
        source.reading.insert(range.offset, range.length);
        if digests {
            source.digest_offsets.insert(range.offset);
        }
        source.in_flight_bytes += range.length;
        if metered && !digests {
            source.tokens_bytes = source.tokens_bytes.saturating_sub(range.length);
        }
        let op = StorageOp::Read {
            offset: range.offset,
            length: range.length,
        };
        self.submit(
            op,
            OpPurpose::ResyncRead {
                offset: range.offset,
            },
        );
    }

    /// Whether a resync read in flight overlaps `range` (client writes there wait).
    pub(super) fn resync_reading_overlaps(&self, range: ByteRange) -> bool {
        let Some(Resync::Source(source)) = &self.peer.resync else {
            return false;
        };
        reads_overlap(&source.reading, range)
    }

    pub(super) fn resync_read_completion(
        &mut self,
        offset: u64,
        result: Result<Option<IoBuf>, Errno>,
    ) {
        let Some(data) = self.read_data(result, "reading for the resync") else {
            return;
        };
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return;
        };
        let Some(length) = source.reading.remove(&offset) else {
            return;
        };
        source.sent.insert(offset, length);
        if source.digest_offsets.contains(&offset) {
            let granule = self
                .volume
                .as_ref()
                .expect("attached")
                .bitmap
                .granule_bytes();
            let length = u32::try_from(length).expect("bounded by the chunk size");
            let digests = granule_digests(data.as_slice(), granule);
            self.send(PeerMessage::Digests {
                purpose: DigestPurpose::Resync,
                offset,
                length,
                digests,
            });
            return;
        }
        self.send(PeerMessage::ResyncData { offset, data });
    }

    /// The target compared digests: matching granules are in sync, the others are sent next.
    pub(super) fn resync_digests_compared(
        &mut self,
        offset: u64,
        length: u32,
        differing: &[u8],
    ) -> Result<(), String> {
        let now = self.now.monotonic;
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return Err("a digest reply outside a resync".to_string());
        };
        if !source.digest_offsets.remove(&offset)
            || source.sent.remove(&offset) != Some(u64::from(length))
        {
            return Err(format!("a digest reply for digests never sent at {offset}"));
        }
        source.in_flight_bytes -= u64::from(length);
        let volume = self.volume.as_mut().expect("attached");
        let granule = volume.bitmap.granule_bytes();
        let first = offset / granule;
        let range = ByteRange::new(offset, u64::from(length));
        let mut same_bytes = 0;
        for index in 0..u64::from(length).div_ceil(granule) {
            let granule_index = first + index;
            if bit(differing, index) {
                source.needs_data.insert(granule_index);
            } else {
                volume.bitmap.clear(granule_index..granule_index + 1);
                same_bytes += granule.min(range.end() - granule_index * granule);
            }
        }
        source.progress.add(now, same_bytes);
        // The differing granules are behind the cursor: look again from there.
        source.cursor = source.cursor.min(first);
        Ok(())
    }

    pub(super) fn resync_acknowledged(
        &mut self,
        offset: u64,
        length: u32,
        ok: bool,
    ) -> Result<(), String> {
        let now = self.now.monotonic;
        let Some(Resync::Source(source)) = &mut self.peer.resync else {
            return Err("a resync ack outside a resync".to_string());
        };
        if source.sent.remove(&offset) != Some(u64::from(length)) {
            return Err(format!("an ack for resync data never sent at {offset}"));
        }
        source.in_flight_bytes -= u64::from(length);
        if !ok {
            self.close_link("the peer failed to write resync data");
            return Ok(());
        }
        source.progress.add(now, u64::from(length));
        let volume = self.volume.as_mut().expect("attached");
        let granules = volume.whole_granules(ByteRange::new(offset, u64::from(length)));
        volume.bitmap.clear(granules);
        Ok(())
    }

    pub(super) fn resync_data_received(&mut self, offset: u64, data: IoBuf) -> Result<(), String> {
        let Some(Resync::Target(target)) = &self.peer.resync else {
            return Err("resync data outside a resync".to_string());
        };
        if target.done.is_some() {
            return Err("resync data after the source said it was done".to_string());
        }
        let granule = self
            .volume
            .as_ref()
            .expect("attached")
            .bitmap
            .granule_bytes();
        if !offset.is_multiple_of(granule) {
            return Err(format!(
                "resync data at {offset}, not on a granule boundary"
            ));
        }
        self.queue_resync_write(offset, data)
    }

    /// A resync write on the target completed (`current`: on this connection; the source of an
    /// earlier one is not told).
    pub(super) fn resync_write_done(&mut self, range: ByteRange, ok: bool, current: bool) {
        let now = self.now.monotonic;
        if ok && let Some(volume) = self.volume.as_mut() {
            let granules = volume.whole_granules(range);
            volume.bitmap.clear(granules);
        }
        if !current {
            return;
        }
        if let Some(Resync::Target(target)) = &mut self.peer.resync {
            target.progress.add(now, range.length);
        }
        let length = u32::try_from(range.length).expect("bounded by the chunk size");
        self.send(PeerMessage::ResyncAck {
            offset: range.offset,
            length,
            ok,
        });
    }

    pub(super) fn resync_done_received(
        &mut self,
        generations: GenerationSet,
    ) -> Result<(), String> {
        let received = self.requests.peer_received_seq();
        let Some(Resync::Target(target)) = &mut self.peer.resync else {
            return Err("resync done outside a resync".to_string());
        };
        target.done = Some((generations, received));
        Ok(())
    }

    fn advance_target(&mut self) -> bool {
        let Some(Resync::Target(target)) = &self.peer.resync else {
            return false;
        };
        let Some((generations, received)) = target.done else {
            return false;
        };
        match target.finishing {
            Finishing::NotYet => {
                if self.requests.resync_writes_pending()
                    || self.requests.peer_writes_pending(Some(received))
                {
                    return false;
                }
                let weight = self.volume.as_ref().expect("attached").bitmap.weight();
                if weight > 0 {
                    let reason = format!(
                        "the source finished with {weight} granules still out of sync here"
                    );
                    self.close_link(&reason);
                    return true;
                }
                // The resync data must be durable before this node claims to be up to date.
                self.set_finishing(Finishing::Flushing);
                self.submit(StorageOp::Flush, OpPurpose::ResyncFlush);
                true
            }
            Finishing::Flushing => false,
            Finishing::Flushed => {
                let version = self.update_superblock(|superblock| {
                    superblock.generations.finish_as_sync_target(&generations);
                    superblock.disk_state = DiskState::UpToDate;
                    superblock.crashed_primary = false;
                    superblock.crashed_secondary = false;
                });
                self.flush_changed_bitmap_pages();
                self.set_finishing(Finishing::WritingSuperblock(version));
                true
            }
            Finishing::WritingSuperblock(version) => {
                if !self.bitmap_all_durable() {
                    self.flush_changed_bitmap_pages();
                    return false;
                }
                if !self.superblock_durable(version) {
                    return false;
                }
                self.peer.resync = None;
                self.set_disk_state(DiskState::UpToDate, "resync finished");
                self.send(PeerMessage::ResyncDoneAck);
                self.set_repl(ReplState::Established, "resync finished");
                self.announce_state();
                true
            }
        }
    }

    fn set_finishing(&mut self, finishing: Finishing) {
        if let Some(Resync::Target(target)) = &mut self.peer.resync {
            target.finishing = finishing;
        }
    }

    /// The target's flush before it claims to be up to date completed.
    pub(super) fn resync_flush_completion(&mut self, result: Result<(), Errno>) {
        if let Err(errno) = result {
            return self.fail_disk("flushing resync data", errno);
        }
        if let Some(Resync::Target(target)) = &mut self.peer.resync
            && target.finishing == Finishing::Flushing
        {
            target.finishing = Finishing::Flushed;
        }
    }

    pub(super) fn resync_done_acknowledged(&mut self) -> Result<(), String> {
        match &self.peer.resync {
            Some(Resync::Source(source)) if source.done_sent => {}
            Some(Resync::CatchUp(catch_up)) if catch_up.done_sent => {}
            _ => return Err("an unexpected resync-done ack".to_string()),
        }
        self.peer.resync = None;
        self.update_superblock(|superblock| {
            superblock.generations.finish_as_sync_source();
            superblock.crashed_primary = false;
            superblock.crashed_secondary = false;
        });
        self.flush_changed_bitmap_pages();
        self.set_repl(ReplState::Established, "resync finished");
        self.confirm_up_to_date("resync finished as source");
        Ok(())
    }

    /// The peer is gone: the resync stops; the bits still set say what is left.
    pub(super) fn resync_lose_peer(&mut self) {
        self.peer.resync = None;
    }

    /// Progress for status.
    pub(super) fn sync_progress(&self) -> Option<SyncProgress> {
        let resync = self.peer.resync.as_ref()?;
        let volume = self.volume.as_ref()?;
        let now = self.now.monotonic;
        let (direction, full, progress, kind) = match resync {
            Resync::CatchUp(catch_up) => return Some(self.catch_up_progress(catch_up)),
            Resync::Source(source) => {
                let kind = source.checksum.then_some("checksum");
                ("source", source.full, &source.progress, kind)
            }
            Resync::Target(target) => {
                if let Some((start, head)) = target.catch_up {
                    // The source's journal head at the start tells how many records come.
                    let received = self.requests.peer_received_seq().0.max(start.0);
                    let total = head.0.saturating_sub(start.0).max(1);
                    let done = (received - start.0).min(total);
                    return Some(SyncProgress {
                        direction: "target",
                        kind: "journal",
                        percent: 100.0 * done as f64 / total as f64,
                        bytes_per_second: target.progress.bytes_per_second(now),
                        eta_seconds: None,
                        remaining_bytes: None,
                        full: false,
                    });
                }
                ("target", target.full, &target.progress, None)
            }
        };
        let remaining = volume.bitmap.weight();
        let initial = progress.initial_granules.max(remaining).max(1);
        let granule = volume.bitmap.granule_bytes();
        let remaining_bytes = (remaining * granule).min(volume.layout.data_bytes);
        let rate = progress.bytes_per_second(now);
        Some(SyncProgress {
            direction,
            kind: kind.unwrap_or(if full { "full" } else { "bitmap" }),
            percent: 100.0 * (initial - remaining) as f64 / initial as f64,
            bytes_per_second: rate,
            eta_seconds: (rate > 0).then(|| remaining_bytes / rate),
            remaining_bytes: Some(remaining_bytes),
            full,
        })
    }
}

/// Whether a read in flight (offset → length, disjoint) overlaps `range`.
pub(super) fn reads_overlap(reading: &BTreeMap<u64, u64>, range: ByteRange) -> bool {
    reading
        .range(..range.end())
        .next_back()
        .is_some_and(|(offset, length)| ByteRange::new(*offset, *length).overlaps(range))
}

enum RunSearch {
    /// A run to read, and whether its digests (not its data) go to the peer.
    Found(ByteRange, bool),
    Skip,
    Wrap,
    Exhausted,
}

/// Bytes a resync source keeps in flight: one chunk while clients are active (a request in
/// flight, or one accepted within `resync_client_quiet`), the whole window otherwise. A
/// client at queue depth 1 has nothing in flight between its requests; a whole window queued
/// ahead of its next write on the link and the peer's disk costs it milliseconds
/// (`tandem-bench resync`: 4 KiB writes at depth 1 during a full sync had a p50 of 11.5 ms
/// against 0.23 ms idle when only requests in flight counted; 0.8 ms with this rule).
fn resync_window(
    config: &super::ReplicaConfig,
    requests_in_flight: usize,
    last_client_request: Option<Instant>,
    now: Instant,
) -> u64 {
    let recent = last_client_request.is_some_and(|at| now.since(at) < config.resync_client_quiet);
    if requests_in_flight > 0 || recent {
        config.resync_chunk_bytes
    } else {
        config.resync_window_bytes
    }
}

#[cfg(test)]
mod window_tests {
    use std::time::Duration;

    use super::*;
    use crate::replica::ReplicaConfig;
    use crate::types::NodeId;

    #[test]
    fn a_resync_keeps_one_chunk_in_flight_while_clients_are_active() {
        let config = ReplicaConfig::new("r0", NodeId(0));
        let (chunk, window) = (config.resync_chunk_bytes, config.resync_window_bytes);
        assert!(chunk < window);
        let now = Instant::from_nanos(10_000_000_000);
        let ago = |millis: u64| Some(Instant::from_nanos(now.as_nanos() - millis * 1_000_000));
        assert_eq!(
            resync_window(&config, 0, None, now),
            window,
            "never a client"
        );
        assert_eq!(
            resync_window(&config, 1, None, now),
            chunk,
            "a request in flight"
        );
        assert_eq!(
            resync_window(&config, 0, ago(0), now),
            chunk,
            "one just now"
        );
        assert_eq!(resync_window(&config, 0, ago(99), now), chunk, "99 ms ago");
        assert_eq!(
            resync_window(&config, 0, ago(100), now),
            window,
            "100 ms ago"
        );
        assert_eq!(config.resync_client_quiet, Duration::from_millis(100));
    }
}
