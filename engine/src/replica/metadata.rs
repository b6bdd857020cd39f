//! Metadata writes: the superblock, bitmap pages, activity-log transactions and journal spills.
//!
//! Ordering rules this module keeps:
//! - one superblock write in flight, always to the copy not holding the newest durable version,
//!   always FUA; anything that depends on a superblock change waits for its version to be durable;
//! - one write per bitmap page in flight, FUA;
//! - an activity-log transaction first makes durable the bitmap pages of every extent it evicts,
//!   then writes its blocks (FUA); the extents it adds become usable only when all are durable;
//! - one journal spill write in flight.

use super::{Event, OpPurpose, Replica, StorageOp};
use crate::activity_log::Transaction;
use crate::bitmap::DirtyBitmap;
use crate::buffer::IoBuf;
use crate::generation::Generation;
use crate::journal::{JournalTail, SpillAction};
use crate::superblock::Superblock;
use crate::types::{ByteRange, Errno};

/// An activity-log transaction in flight.
#[derive(Debug)]
pub(super) struct AlTransaction {
    transaction: Transaction,
    /// Bitmap pages (and versions) that must be durable before the blocks are written: those
    /// covering the evicted extents.
    pages_needed: Vec<(u32, u64)>,
    /// Where the storage flush that makes the evicted extents' writes durable stands.
    flush: EvictionFlush,
    /// Block writes not yet completed; `None` until the blocks are written.
    blocks_outstanding: Option<usize>,
}

/// Writes into an evicted extent may still sit in the disk's volatile cache; once the extent is
/// out of the log a crash would lose them unnoticed (their bits are clear: the peer has them).
/// So a transaction that evicts flushes the storage first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EvictionFlush {
    NotNeeded,
    Needed,
    InFlight,
    Done,
}

impl Replica {
    /// Changes the in-memory superblock and returns the version that must become durable for
    /// the change to count.
    pub(super) fn update_superblock(&mut self, change: impl FnOnce(&mut Superblock)) -> u64 {
        let volume = self.volume.as_mut().expect("attached");
        change(&mut volume.superblock);
        volume.superblock_version += 1;
        volume.superblock_version
    }

    /// Whether superblock version `version` is durable.
    pub(super) fn superblock_durable(&self, version: u64) -> bool {
        self.volume
            .as_ref()
            .is_some_and(|v| v.superblock_durable_version >= version)
    }

    /// A fresh generation id, never zero and never one this node already knows.
    pub(super) fn new_generation(&mut self) -> Generation {
        loop {
            let candidate = Generation(self.prng.next_u64());
            let known = self
                .volume
                .as_ref()
                .is_some_and(|v| v.superblock.generations.contains(candidate));
            if !candidate.is_none() && !known {
                return candidate;
            }
        }
    }

    /// Issues whatever metadata writes are possible now.
    pub(super) fn advance_metadata(&mut self) -> bool {
        if self.volume.is_none() || self.disk == crate::state::DiskState::Failed {
            return false;
        }
        let mut progress = self.advance_superblock();
        progress |= self.advance_activity_log();
        progress |= self.advance_journal();
        progress
    }

    fn advance_superblock(&mut self) -> bool {
        let volume = self.volume.as_mut().expect("attached");
        if volume.superblock_writing.is_some()
            || volume.superblock_durable_version >= volume.superblock_version
        {
            return false;
        }
        let version = volume.superblock_version;
        let copy = Superblock::next_copy(volume.superblock_copy);
        volume.superblock.sequence += 1;
        let data = IoBuf::copy_from(&volume.superblock.encode());
        let offset = volume.layout.superblock_offsets[copy];
        volume.superblock_writing = Some(version);
        self.submit(
            StorageOp::Write {
                offset,
                data,
                fua: true,
            },
            OpPurpose::Superblock { version, copy },
        );
        true
    }

    pub(super) fn superblock_completion(
        &mut self,
        version: u64,
        copy: usize,
        result: Result<(), Errno>,
    ) {
        let Some(volume) = self.volume.as_mut() else {
            return;
        };
        volume.superblock_writing = None;
        match result {
            Ok(()) => {
                volume.superblock_copy = copy;
                volume.superblock_durable_version = volume.superblock_durable_version.max(version);
                if let Some((needed, tail)) = volume.journal_tail_persisting
                    && volume.superblock_durable_version >= needed
                {
                    volume.journal.tail_persisted(tail);
                    volume.journal_tail_persisting = None;
                }
            }
            Err(errno) => self.fail_disk("writing the superblock", errno),
        }
    }

    /// Writes every changed bitmap page that has no write in flight.
    pub(super) fn flush_changed_bitmap_pages(&mut self) {
        let Some(volume) = self.volume.as_ref() else {
            return;
        };
        if self.disk == crate::state::DiskState::Failed {
            return;
        }
        let pages: Vec<u32> = volume.bitmap.pages_ready_to_write().collect();
        for page in pages {
            self.write_bitmap_page(page);
        }
    }

    /// Whether no bitmap page changed since it was last made durable and none is being written.
    pub(super) fn bitmap_all_durable(&self) -> bool {
        let Some(volume) = self.volume.as_ref() else {
            return true;
        };
        let pages = volume.layout.bitmap_pages;
        (0..pages).all(|page| {
            !volume.bitmap.page_is_writing(page)
                && volume
                    .bitmap
                    .page_durable_at(page, volume.bitmap.page_version(page))
        })
    }

    fn write_bitmap_page(&mut self, page: u32) {
        let volume = self.volume.as_mut().expect("attached");
        let tag = volume.superblock.instance_tag();
        let image = volume.bitmap.begin_page_write(page, tag);
        let offset = volume.layout.bitmap_page_offset(page);
        let data = IoBuf::copy_from(&image.bytes);
        self.submit(
            StorageOp::Write {
                offset,
                data,
                fua: true,
            },
            OpPurpose::BitmapPage {
                page,
                version: image.version,
            },
        );
    }

    pub(super) fn bitmap_page_completion(
        &mut self,
        page: u32,
        version: u64,
        result: Result<(), Errno>,
    ) {
        let Some(volume) = self.volume.as_mut() else {
            return;
        };
        match result {
            Ok(()) => volume.bitmap.page_write_done(page, version),
            Err(errno) => {
                volume.bitmap.page_write_failed(page);
                self.fail_disk("writing a bitmap page", errno);
            }
        }
    }

    fn advance_activity_log(&mut self) -> bool {
        let has_transaction = self
            .volume
            .as_ref()
            .is_some_and(|v| v.transaction.is_some());
        if has_transaction {
            return self.advance_transaction();
        }
        let (wanted, protected) = self.wanted_extents();
        if wanted.is_empty() {
            return false;
        }
        let volume = self.volume.as_mut().expect("attached");
        let Some(transaction) = volume.activity_log.begin_transaction(&wanted, &protected) else {
            return false;
        };
        let skip_pages = self.planted(super::PlantedBug::SkipBitmapFlushOnEviction);
        let volume = self.volume.as_mut().expect("attached");
        let mut pages_needed: Vec<(u32, u64)> = Vec::new();
        for change in &transaction.changes {
            let Some(evicted) = change.evicted else {
                continue;
            };
            let offset = evicted * volume.activity_log.extent_bytes();
            let length = volume
                .activity_log
                .extent_bytes()
                .min(volume.layout.data_bytes - offset);
            let granules = volume.bitmap.granules_of(ByteRange::new(offset, length));
            if granules.is_empty() {
                continue;
            }
            let first = DirtyBitmap::page_of(granules.start);
            let last = DirtyBitmap::page_of(granules.end - 1);
            for page in first..=last {
                if !pages_needed.iter().any(|(p, _)| *p == page) && !skip_pages {
                    pages_needed.push((page, volume.bitmap.page_version(page)));
                }
            }
        }
        let evicts = transaction
            .changes
            .iter()
            .any(|change| change.evicted.is_some());
        let flush = if evicts {
            EvictionFlush::Needed
        } else {
            EvictionFlush::NotNeeded
        };
        volume.transaction = Some(AlTransaction {
            transaction,
            pages_needed,
            flush,
            blocks_outstanding: None,
        });
        self.advance_transaction();
        true
    }

    fn advance_transaction(&mut self) -> bool {
        let volume = self.volume.as_mut().expect("attached");
        let transaction = volume.transaction.as_ref().expect("transaction in flight");
        if transaction.blocks_outstanding.is_some() {
            return false;
        }
        let mut pending_pages = Vec::new();
        for &(page, version) in &transaction.pages_needed {
            if !volume.bitmap.page_durable_at(page, version) {
                pending_pages.push(page);
            }
        }
        if !pending_pages.is_empty() {
            let mut progress = false;
            for page in pending_pages {
                let volume = self.volume.as_ref().expect("attached");
                if !volume.bitmap.page_is_writing(page) {
                    self.write_bitmap_page(page);
                    progress = true;
                }
            }
            return progress;
        }
        match transaction.flush {
            EvictionFlush::Needed => {
                volume.transaction.as_mut().expect("transaction").flush = EvictionFlush::InFlight;
                self.submit(StorageOp::Flush, OpPurpose::ActivityLogFlush);
                return true;
            }
            EvictionFlush::InFlight => return false,
            EvictionFlush::NotNeeded | EvictionFlush::Done => {}
        }
        let volume = self.volume.as_mut().expect("attached");
        let tag = volume.superblock.instance_tag();
        let transaction = volume.transaction.as_mut().expect("transaction in flight");
        let writes = volume
            .activity_log
            .block_writes(&transaction.transaction, tag);
        transaction.blocks_outstanding = Some(writes.len());
        let requests: Vec<(u64, IoBuf)> = writes
            .into_iter()
            .map(|w| {
                (
                    volume.layout.al_block_offset(w.block, w.copy),
                    IoBuf::copy_from(&w.bytes),
                )
            })
            .collect();
        for (offset, data) in requests {
            self.submit(
                StorageOp::Write {
                    offset,
                    data,
                    fua: true,
                },
                OpPurpose::ActivityLogBlock,
            );
        }
        true
    }

    pub(super) fn activity_log_flush_completion(&mut self, result: Result<(), Errno>) {
        if let Err(errno) = result {
            return self.fail_disk("flushing before an activity-log transaction", errno);
        }
        if let Some(transaction) = self.volume.as_mut().and_then(|v| v.transaction.as_mut()) {
            transaction.flush = EvictionFlush::Done;
        }
    }

    pub(super) fn activity_log_completion(&mut self, result: Result<(), Errno>) {
        if let Err(errno) = result {
            return self.fail_disk("writing the activity log", errno);
        }
        let Some(volume) = self.volume.as_mut() else {
            return;
        };
        let transaction = volume.transaction.as_mut().expect("transaction in flight");
        let outstanding = transaction
            .blocks_outstanding
            .as_mut()
            .expect("blocks written");
        *outstanding -= 1;
        if *outstanding == 0 {
            let transaction = volume.transaction.take().expect("transaction in flight");
            volume.activity_log.commit(&transaction.transaction);
        }
    }

    fn advance_journal(&mut self) -> bool {
        let detaching = self.detaching();
        let volume = self.volume.as_mut().expect("attached");
        if volume.journal_spill_in_flight || volume.journal_tail_persisting.is_some() {
            return false;
        }
        let Some(action) = volume.journal.poll_spill(detaching) else {
            return false;
        };
        match action {
            SpillAction::Write { ring_offset, bytes } => {
                let offset = volume.layout.journal_offset + ring_offset;
                volume.journal_spill_in_flight = true;
                self.submit(
                    StorageOp::Write {
                        offset,
                        data: bytes,
                        fua: false,
                    },
                    OpPurpose::JournalSpill,
                );
            }
            SpillAction::PersistTail(tail) => self.persist_journal_tail(tail),
            SpillAction::Overflow => self.journal_overflow(),
        }
        true
    }

    fn persist_journal_tail(&mut self, tail: JournalTail) {
        let ring_bytes = self
            .volume
            .as_ref()
            .expect("attached")
            .layout
            .params
            .journal_bytes;
        let version = self.update_superblock(|superblock| {
            superblock.journal_tail_offset = tail.position % ring_bytes;
            superblock.journal_tail_seq = tail.seq;
        });
        self.volume
            .as_mut()
            .expect("attached")
            .journal_tail_persisting = Some((version, tail));
    }

    /// The journal has no room: drop it, let the bitmap take over, and make later writes wait
    /// until the superblock says the journal is no longer complete.
    fn journal_overflow(&mut self) {
        let volume = self.volume.as_mut().expect("attached");
        let records_dropped = volume.journal.stats().records;
        volume.journal.deactivate();
        volume.journal.note_overflow();
        let version = self.update_superblock(|superblock| superblock.journal_complete = false);
        self.requests.raise_superblock_gate(version);
        self.emit(Event::JournalOverflow { records_dropped });
    }

    pub(super) fn journal_spill_completion(&mut self, result: Result<(), Errno>) {
        let Some(volume) = self.volume.as_mut() else {
            return;
        };
        volume.journal_spill_in_flight = false;
        match result {
            Ok(()) => volume.journal.spill_done(),
            Err(errno) => self.fail_disk("writing the journal", errno),
        }
    }
}
