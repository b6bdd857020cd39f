//! Catch-up from the journal: after a disconnect, the side whose journal still holds every
//! write the other lacks sends those records in order, so the other stays a crash-consistent
//! prefix of its history the whole time (S2). A bitmap resync instead copies granules in
//! address order and leaves its target inconsistent until it ends.
//!
//! Both sides decide from the states they exchanged ([`catch_up_from`]): the source's active
//! journal must be the run the target received its last replicated write from and still hold
//! every record after it; the target must have nothing else out of sync and must not have
//! crashed. The source trims what the target already has and sends the rest as replicated
//! writes, each after the one before (records do not keep the original write ordering, so the
//! target applies them one at a time). While it sends, client writes here go to the journal and
//! the bitmap, as while disconnected; once the last record is sent, client writes replicate
//! directly. When the target has written every record the catch-up sent, the granules those
//! records cover are cleared here and the catch-up ends like a resync: the target adopts this
//! side's generations and is `up_to_date`. Until then it is `outdated`: consistent, behind.
//!
//! If the journal is dropped meanwhile (it overflows: records stay until the target writes
//! them), or granules the journal does not cover are out of sync at the end, the link is
//! closed; the next handshake finds no usable journal and runs a bitmap resync.

use std::collections::BTreeMap;

use roaring::RoaringTreemap;

use super::resync::{Progress, Resync, SyncProgress};
use super::{OpPurpose, Replica, StorageOp};
use crate::buffer::IoBuf;
use crate::journal::RecordData;
use crate::journal::record::{self, RecordHeader, RecordKind};
use crate::protocol::messages::{PeerMessage, PeerState, WriteFlags};
use crate::state::ReplState;
use crate::types::{ByteRange, Errno, Seq};

/// Ring reads in flight at most.
const READS_MAX: usize = 16;

/// Where a catch-up from `source`'s journal to `target` would start (the last record the
/// target has), if one can bring the target up to date. Both sides evaluate it on the states
/// they exchanged, so they agree.
pub(super) fn catch_up_from(source: &PeerState, target: &PeerState) -> Option<Seq> {
    let journal = source.journal?;
    let received = target.received?;
    let usable = received.journal == journal.id
        && journal.tail <= received.seq.next()
        && received.seq < journal.head
        && target.out_of_sync_granules == 0
        && target.disk.is_consistent()
        && !target.crashed_primary
        && !target.crashed_secondary
        && !source.crashed_primary;
    usable.then_some(received.seq)
}

/// The source's side of a catch-up.
#[derive(Debug)]
pub(super) struct CatchUp {
    /// The journal run it sends from.
    journal: u64,
    /// The next record to send.
    next: Seq,
    /// The next record to stage (read from the ring, or taken from memory).
    staged: Seq,
    /// Staged records waiting for their turn, and their payload bytes.
    ready: BTreeMap<Seq, PeerMessage>,
    /// Ring reads in flight: the header each must decode to.
    reading: BTreeMap<Seq, RecordHeader>,
    /// Payload bytes staged or being read.
    staged_bytes: u64,
    /// Granules of every record sent, and of those the target already had.
    covered: RoaringTreemap,
    /// Once every record was sent: the first sequence number client writes sent directly.
    switched_at: Option<Seq>,
    /// The end was announced to the target.
    pub(super) done_sent: bool,
    /// Records to send at the start.
    initial_records: u64,
    /// Bytes sent, for the rate.
    progress: Progress,
}

impl CatchUp {
    /// Whether client writes still go to the journal and the bitmap instead of the peer.
    pub(super) fn holds_client_writes(&self) -> bool {
        self.switched_at.is_none()
    }

    /// The oldest record not sent yet, while records remain to send (the journal must keep
    /// it even when every write sent so far is acknowledged).
    pub(super) fn unsent(&self) -> Option<Seq> {
        self.switched_at.is_none().then_some(self.next)
    }
}

impl Replica {
    /// The point a catch-up starts from on this connection, if the exchanged states allow
    /// one, with this node as the source (`true`) or the target.
    pub(super) fn catch_up_point(&self, source: bool) -> Option<Seq> {
        let local = self.peer.sent.as_ref()?;
        let remote = self.peer.remote.as_ref()?;
        if source {
            catch_up_from(local, remote)
        } else {
            catch_up_from(remote, local)
        }
    }

    /// Starts sending the journal's records after `from` to the peer.
    pub(super) fn begin_catch_up(&mut self, from: Seq) {
        let expected = self
            .peer
            .sent
            .as_ref()
            .and_then(|s| s.journal)
            .map(|j| j.id);
        let volume = self.volume.as_mut().expect("attached");
        let journal_id = volume.journal.id();
        if journal_id.is_none() || journal_id != expected {
            return self.close_link("the journal changed during the handshake; reconnecting");
        }
        let mut covered = RoaringTreemap::new();
        for (header, _) in volume.journal.records() {
            let range = ByteRange::new(header.offset, u64::from(header.length));
            covered.insert_range(volume.bitmap.granules_of(range));
        }
        volume.journal.acknowledge_through(from);
        let head = volume.journal.next_seq();
        let initial_records = head.0 - from.next().0;
        self.peer.resync = Some(Resync::CatchUp(CatchUp {
            journal: journal_id.expect("checked"),
            next: from.next(),
            staged: from.next(),
            ready: BTreeMap::new(),
            reading: BTreeMap::new(),
            staged_bytes: 0,
            covered,
            switched_at: None,
            done_sent: false,
            initial_records,
            progress: Progress::new(0),
        }));
        self.set_repl(
            ReplState::SyncSource,
            format!("catch-up from the journal: {initial_records} records to send, in order"),
        );
    }

    /// Progress for status: records and bytes not sent yet, or sent and not yet written by
    /// the peer.
    pub(super) fn catch_up_progress(&self, catch_up: &CatchUp) -> SyncProgress {
        let journal = &self.volume.as_ref().expect("attached").journal;
        let sending = catch_up.switched_at.is_none();
        let unsent: u64 = journal
            .records()
            .filter(|(header, _)| sending && header.seq >= catch_up.next)
            .map(|(header, _)| u64::from(header.payload_bytes))
            .sum();
        let remaining_bytes = unsent + self.requests.unacked_bytes();
        let remaining_records = if sending {
            journal.next_seq().0.saturating_sub(catch_up.next.0)
        } else {
            0
        };
        let total = catch_up.initial_records.max(remaining_records).max(1);
        let rate = catch_up.progress.bytes_per_second(self.now.monotonic);
        SyncProgress {
            direction: "source",
            kind: "journal",
            percent: 100.0 * (total - remaining_records.min(total)) as f64 / total as f64,
            bytes_per_second: rate,
            eta_seconds: (rate > 0).then(|| remaining_bytes / rate),
            remaining_bytes: Some(remaining_bytes),
            full: false,
        }
    }

    /// Stages and sends records; switches client writes to the peer once all are sent; ends
    /// the catch-up once the peer wrote them all. Returns whether anything changed.
    pub(super) fn advance_catch_up(&mut self) -> bool {
        let Some(Resync::CatchUp(catch_up)) = &self.peer.resync else {
            return false;
        };
        if catch_up.done_sent {
            return false;
        }
        let journal = catch_up.journal;
        if self.volume.as_ref().expect("attached").journal.id() != Some(journal) {
            self.close_link(
                "the journal was dropped during the catch-up (it overflowed); a bitmap resync \
                 follows",
            );
            return true;
        }
        let mut progress = self.send_ready_records();
        progress |= self.stage_records();
        progress |= self.send_ready_records();
        progress |= self.maybe_switch();
        progress | self.maybe_finish_catch_up()
    }

    /// Sends staged records in order, as far as they are ready.
    fn send_ready_records(&mut self) -> bool {
        let mut progress = false;
        loop {
            let Some(Resync::CatchUp(catch_up)) = &mut self.peer.resync else {
                return progress;
            };
            let next = catch_up.next;
            let Some(message) = catch_up.ready.remove(&next) else {
                return progress;
            };
            let range = message_range(&message);
            catch_up.staged_bytes -= message.data_bytes();
            catch_up
                .progress
                .add(self.now.monotonic, message.data_bytes());
            catch_up.next = next.next();
            let volume = self.volume.as_ref().expect("attached");
            catch_up
                .covered
                .insert_range(volume.bitmap.granules_of(range));
            let journal_bytes = record::stored_bytes(message.data_bytes());
            self.requests.register_unacked(next, range, journal_bytes);
            self.send(message);
            progress = true;
        }
    }

    /// Takes records from memory or starts ring reads, within the replication window.
    fn stage_records(&mut self) -> bool {
        let window = self.config.replication_window_bytes;
        let unordered = self.planted(super::PlantedBug::CatchUpUnordered);
        let mut progress = false;
        loop {
            let unacked = self.requests.unacked_bytes();
            let volume = self.volume.as_ref().expect("attached");
            let head = volume.journal.next_seq();
            let Some(Resync::CatchUp(catch_up)) = &self.peer.resync else {
                return progress;
            };
            let seq = catch_up.staged;
            let full = catch_up.staged_bytes > 0 && unacked + catch_up.staged_bytes >= window;
            // Once switched, new records are client writes already sent directly.
            let switched = catch_up.switched_at.is_some();
            if switched || seq >= head || full || catch_up.reading.len() >= READS_MAX {
                return progress;
            }
            let Some((header, data)) = volume.journal.record(seq) else {
                let reason = format!("the journal no longer holds record {seq}; reconnecting");
                self.close_link(&reason);
                return true;
            };
            let Some(Resync::CatchUp(catch_up)) = &mut self.peer.resync else {
                return progress;
            };
            catch_up.staged = seq.next();
            catch_up.staged_bytes += u64::from(header.payload_bytes);
            progress = true;
            match data {
                RecordData::Memory(payload) => {
                    let message = record_message(&header, payload, unordered);
                    catch_up.ready.insert(seq, message);
                }
                RecordData::Ring { offset } => {
                    catch_up.reading.insert(seq, header);
                    let offset = volume.layout.journal_offset + offset;
                    let length = header.stored_bytes();
                    self.submit(
                        StorageOp::Read { offset, length },
                        OpPurpose::CatchUpRead(seq),
                    );
                }
            }
        }
    }

    /// A record read back from the ring.
    pub(super) fn catch_up_read_completion(
        &mut self,
        seq: Seq,
        result: Result<Option<IoBuf>, Errno>,
    ) {
        let Some(stored) = self.read_data(result, "reading the journal for a catch-up") else {
            return;
        };
        let unordered = self.planted(super::PlantedBug::CatchUpUnordered);
        let volume = self.volume.as_ref().expect("attached");
        let Some(Resync::CatchUp(catch_up)) = &mut self.peer.resync else {
            return; // The catch-up ended meanwhile.
        };
        let Some(header) = catch_up.reading.remove(&seq) else {
            return;
        };
        match volume.journal.decode_stored(&header, stored.as_slice()) {
            Some(payload) => {
                catch_up
                    .ready
                    .insert(seq, record_message(&header, payload, unordered));
            }
            None => {
                // The ring no longer holds what the journal says: trust the bitmap instead.
                self.drop_journal();
                self.close_link(&format!(
                    "journal record {seq} reads back damaged; a bitmap resync follows"
                ));
            }
        }
    }

    /// Once every record is sent, client writes go to the peer directly.
    fn maybe_switch(&mut self) -> bool {
        let head = self.volume.as_ref().expect("attached").journal.next_seq();
        let Some(Resync::CatchUp(catch_up)) = &mut self.peer.resync else {
            return false;
        };
        let idle = catch_up.ready.is_empty() && catch_up.reading.is_empty();
        if catch_up.switched_at.is_some() || catch_up.next < head || !idle {
            return false;
        }
        catch_up.switched_at = Some(head);
        true
    }

    /// Once the peer wrote every record the catch-up sent, clears what they cover and tells
    /// the peer it is up to date.
    fn maybe_finish_catch_up(&mut self) -> bool {
        let Some(Resync::CatchUp(catch_up)) = &self.peer.resync else {
            return false;
        };
        let Some(switched_at) = catch_up.switched_at else {
            return false;
        };
        if self.requests.unacked_before(switched_at) {
            return false;
        }
        let Some(Resync::CatchUp(catch_up)) = &mut self.peer.resync else {
            return false;
        };
        let covered = std::mem::take(&mut catch_up.covered);
        let volume = self.volume.as_mut().expect("attached");
        for granule in &covered {
            volume.bitmap.clear(granule..granule + 1);
        }
        let left = volume.bitmap.weight();
        if left > 0 {
            // The journal cannot bring the peer up to date: the bitmap must.
            self.drop_journal();
            self.close_link(&format!(
                "{left} granules the journal did not cover are out of sync; a bitmap resync \
                 follows"
            ));
            return true;
        }
        let generations = volume.superblock.generations;
        if let Some(Resync::CatchUp(catch_up)) = &mut self.peer.resync {
            catch_up.done_sent = true;
        }
        self.send(PeerMessage::ResyncDone { generations });
        true
    }
}

/// The replicated write that carries a journal record; it waits for the record before it
/// (unless the `unordered` bug is planted).
fn record_message(header: &RecordHeader, payload: Option<IoBuf>, unordered: bool) -> PeerMessage {
    let (seq, offset, length) = (header.seq, header.offset, header.length);
    let after = if unordered {
        Seq(0)
    } else {
        Seq(seq.0.saturating_sub(1))
    };
    let flags = WriteFlags {
        fua: header.fua,
        receipt: false,
    };
    match header.kind {
        RecordKind::Write => PeerMessage::Write {
            seq,
            after,
            offset,
            flags,
            data: payload.expect("a write record has a payload"),
        },
        RecordKind::Trim => PeerMessage::Trim {
            seq,
            after,
            offset,
            length,
            flags,
        },
        RecordKind::WriteZeroes => PeerMessage::WriteZeroes {
            seq,
            after,
            offset,
            length,
            flags,
        },
        RecordKind::Wrap => unreachable!("wrap markers are not journal entries"),
    }
}

fn message_range(message: &PeerMessage) -> ByteRange {
    match message {
        PeerMessage::Write { offset, data, .. } => ByteRange::new(*offset, data.len() as u64),
        PeerMessage::Trim { offset, length, .. }
        | PeerMessage::WriteZeroes { offset, length, .. } => {
            ByteRange::new(*offset, u64::from(*length))
        }
        other => unreachable!("not a write: {other}"),
    }
}
