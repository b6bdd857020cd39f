//! Attaching a backing store: reading the metadata and recovering after an unclean shutdown.
//!
//! Steps: read both superblock copies and choose the newest valid one; read the activity log,
//! the bitmap pages and the journal ring; rebuild the in-memory state; after an unclean shutdown
//! mark every activity-log extent dirty in the bitmap and cut the journal to its longest valid
//! prefix; write the superblock back as "in use" (FUA); report what was done.

use std::fmt;

use super::{AdminCommand, Event, OpPurpose, Refusal, Replica, StorageOp, Volume};
use crate::activity_log::{self, ActivityLog};
use crate::bitmap::DirtyBitmap;
use crate::buffer::IoBuf;
use crate::journal::recovery::{self, ScanEnd};
use crate::journal::{Journal, JournalConfig, JournalTail};
use crate::state::{DiskState, Role};
use crate::superblock::{Superblock, SuperblockPair};
use crate::types::{BLOCK_BYTES, Errno, Seq};

/// A metadata region read during attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Region {
    ActivityLog,
    Bitmap,
    Journal,
}

/// An attach in progress.
#[derive(Debug)]
pub(super) struct AttachJob {
    admin_id: u64,
    backing_bytes: u64,
    chosen: Option<(usize, Superblock)>,
    other_copy_problem: Option<String>,
    activity_log: Option<IoBuf>,
    bitmap: Option<IoBuf>,
    journal: Option<IoBuf>,
}

/// What opening the metadata found and did. One log line (its `Display`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The volume name.
    pub volume_name: String,
    /// The previous shutdown was clean: nothing needed recovering.
    pub clean_shutdown: bool,
    /// The superblock copy used ("A" or "B").
    pub superblock_copy: &'static str,
    /// Why the other copy was not used, if it was unusable.
    pub other_superblock_problem: Option<String>,
    /// Activity-log extents marked out of sync.
    pub activity_log_extents_marked: u64,
    /// Activity-log copies torn by the crash (the other copy was used).
    pub activity_log_torn_copies: u32,
    /// Activity-log blocks damaged in both copies: the whole volume was marked out of sync.
    pub activity_log_damaged_blocks: Vec<u32>,
    /// Bitmap pages that failed their checks and were marked entirely out of sync.
    pub bitmap_pages_damaged: Vec<u32>,
    /// Journal records recovered.
    pub journal_records: u64,
    /// First and last recovered sequence numbers.
    pub journal_range: Option<(Seq, Seq)>,
    /// Why the journal scan stopped.
    pub journal_end: String,
    /// The journal still holds every change since the peer was last in sync.
    pub journal_complete: bool,
    /// The node crashed while primary.
    pub crashed_primary: bool,
    /// The node crashed while secondary.
    pub crashed_secondary: bool,
    /// Granules out of sync after recovery.
    pub out_of_sync_granules: u64,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.clean_shutdown {
            "after a clean shutdown"
        } else {
            "after a crash"
        };
        write!(
            f,
            "attached {} {how}: superblock copy {}",
            self.volume_name, self.superblock_copy
        )?;
        if let Some(problem) = &self.other_superblock_problem {
            write!(f, " (other copy: {problem})")?;
        }
        if !self.clean_shutdown {
            write!(
                f,
                "; activity log: {} extents marked out of sync",
                self.activity_log_extents_marked
            )?;
            if self.activity_log_torn_copies > 0 {
                write!(f, ", {} torn copy", self.activity_log_torn_copies)?;
            }
        }
        if !self.activity_log_damaged_blocks.is_empty() {
            write!(
                f,
                "; activity log blocks {:?} damaged: whole volume marked out of sync",
                self.activity_log_damaged_blocks
            )?;
        }
        if !self.bitmap_pages_damaged.is_empty() {
            write!(
                f,
                "; bitmap pages {:?} damaged, marked out of sync",
                self.bitmap_pages_damaged
            )?;
        }
        match self.journal_range {
            Some((first, last)) => write!(
                f,
                "; journal: {} records {first}..{last} ({})",
                self.journal_records, self.journal_end
            )?,
            None => write!(f, "; journal: empty ({})", self.journal_end)?,
        }
        if !self.journal_complete {
            write!(f, ", not complete")?;
        }
        if self.crashed_primary {
            write!(f, "; crashed primary")?;
        }
        if self.crashed_secondary {
            write!(f, "; crashed secondary")?;
        }
        write!(f, "; {} granules out of sync", self.out_of_sync_granules)
    }
}

impl Replica {
    pub(super) fn start_attach(&mut self, id: u64, backing_bytes: u64) {
        if self.disk != DiskState::Diskless || self.attach.is_some() {
            self.admin_done(id, Err(Refusal::AlreadyAttached));
            return;
        }
        let backing_bytes = backing_bytes - backing_bytes % BLOCK_BYTES;
        if backing_bytes < 2 * BLOCK_BYTES {
            let message = format!("backing store of {backing_bytes} bytes holds no metadata");
            self.admin_done(id, Err(Refusal::Attach(message)));
            return;
        }
        self.failure = None;
        self.set_disk_state(DiskState::Attaching, "attach");
        self.attach = Some(AttachJob {
            admin_id: id,
            backing_bytes,
            chosen: None,
            other_copy_problem: None,
            activity_log: None,
            bitmap: None,
            journal: None,
        });
        let offset = backing_bytes - 2 * BLOCK_BYTES;
        self.submit(
            StorageOp::Read {
                offset,
                length: 2 * BLOCK_BYTES,
            },
            OpPurpose::AttachSuperblocks,
        );
    }

    pub(super) fn attach_completion(
        &mut self,
        purpose: OpPurpose,
        result: Result<Option<IoBuf>, Errno>,
    ) {
        let data = match result {
            Ok(Some(data)) => data,
            Ok(None) => unreachable!("reads return data"),
            Err(errno) => return self.attach_failed(format!("reading metadata: {errno}")),
        };
        match purpose {
            OpPurpose::AttachSuperblocks => self.superblocks_read(data),
            OpPurpose::AttachRegion(region) => {
                let job = self.attach.as_mut().expect("attach in progress");
                match region {
                    Region::ActivityLog => job.activity_log = Some(data),
                    Region::Bitmap => job.bitmap = Some(data),
                    Region::Journal => job.journal = Some(data),
                }
                self.regions_maybe_complete();
            }
            _ => unreachable!("not an attach op"),
        }
    }

    fn superblocks_read(&mut self, data: IoBuf) {
        let job = self.attach.as_mut().expect("attach in progress");
        let pair = SuperblockPair::decode(data.as_slice(), job.backing_bytes);
        let (copy, superblock) = match pair.choose() {
            Ok(chosen) => chosen,
            Err(error) => return self.attach_failed(error.to_string()),
        };
        if superblock.volume_name != self.config.volume_name {
            let message = format!(
                "the metadata belongs to volume {:?}, not {:?}",
                superblock.volume_name, self.config.volume_name
            );
            return self.attach_failed(message);
        }
        let extent_bytes = u64::from(superblock.layout.params.al_extent_bytes);
        let slots_needed = self.config.request_bytes_max.div_ceil(extent_bytes) + 2;
        if u64::from(superblock.layout.params.al_slots) < slots_needed {
            let message = format!(
                "the activity log has {} slots of {} bytes; a {}-byte write needs {slots_needed}: \
                 recreate the metadata with more slots or larger extents",
                superblock.layout.params.al_slots, extent_bytes, self.config.request_bytes_max
            );
            return self.attach_failed(message);
        }
        let other = if copy == 0 { &pair.b } else { &pair.a };
        let job = self.attach.as_mut().expect("attach in progress");
        job.other_copy_problem = other.as_ref().err().cloned();
        let layout = superblock.layout;
        job.chosen = Some((copy, superblock));
        let al_bytes = 2 * u64::from(layout.al_blocks()) * BLOCK_BYTES;
        self.submit(
            StorageOp::Read {
                offset: layout.al_offset,
                length: al_bytes,
            },
            OpPurpose::AttachRegion(Region::ActivityLog),
        );
        let bitmap_bytes = u64::from(layout.bitmap_pages) * BLOCK_BYTES;
        self.submit(
            StorageOp::Read {
                offset: layout.bitmap_offset,
                length: bitmap_bytes,
            },
            OpPurpose::AttachRegion(Region::Bitmap),
        );
        if layout.params.journal_bytes > 0 {
            self.submit(
                StorageOp::Read {
                    offset: layout.journal_offset,
                    length: layout.params.journal_bytes,
                },
                OpPurpose::AttachRegion(Region::Journal),
            );
        } else {
            self.attach.as_mut().expect("attach").journal = Some(IoBuf::zeroed(0));
        }
    }

    fn regions_maybe_complete(&mut self) {
        let job = self.attach.as_ref().expect("attach in progress");
        if job.activity_log.is_none() || job.bitmap.is_none() || job.journal.is_none() {
            return;
        }
        let job = self.attach.take().expect("attach in progress");
        let journal_id = self.prng.next_u64();
        let (volume, report) = recover(
            job,
            &self.config.volume_name,
            self.config.journal_memory_bytes_max,
            journal_id,
        );
        let admin_id = report.0;
        let report = report.1;
        self.requests.set_next_seq(volume.journal.next_seq());
        self.volume = Some(volume);
        self.role = Role::Secondary;
        let version = self.update_superblock(|superblock| {
            superblock.clean_shutdown = false;
            // A replica always starts as secondary; if it crashes before a promotion, it
            // crashed as a secondary.
            superblock.last_role = Role::Secondary;
        });
        self.emit(Event::Recovered(Box::new(report)));
        self.wait_for_superblock(admin_id, version, AdminCommand::Attach { backing_bytes: 0 });
        self.next_bitmap_flush = Some(self.now.monotonic.after(self.config.bitmap_flush_interval));
    }

    fn attach_failed(&mut self, message: String) {
        let Some(job) = self.attach.take() else {
            return;
        };
        self.set_disk_state(DiskState::Diskless, format!("attach failed: {message}"));
        self.admin_done(job.admin_id, Err(Refusal::Attach(message)));
    }

    /// The attach's superblock write is durable: the disk takes its persisted state.
    pub(super) fn finish_attach(&mut self) {
        let volume = self.volume.as_ref().expect("attached");
        let superblock = &volume.superblock;
        if superblock.crashed_secondary && superblock.disk_state == DiskState::UpToDate {
            // Writes it acknowledged may have been lost from its disk cache: the data is
            // consistent but may be older than the primary's until a resync from it.
            let reason = "crashed while secondary: up to date again after a resync from the peer";
            return self.set_disk_state(DiskState::Consistent, reason);
        }
        self.set_disk_state(superblock.disk_state, "metadata recovered");
    }
}

/// Rebuilds the in-memory state from the regions read; returns the volume and, with the attach's
/// admin id, the report.
fn recover(
    job: AttachJob,
    volume_name: &str,
    journal_memory_bytes_max: u64,
    journal_id: u64,
) -> (Volume, (u64, RecoveryReport)) {
    let (copy, mut superblock) = job.chosen.expect("superblock chosen");
    let layout = superblock.layout;
    let tag = superblock.instance_tag();
    let clean = superblock.clean_shutdown;

    let al = activity_log::recover(&layout, job.activity_log.expect("read").as_slice(), tag);
    let activity_log = ActivityLog::recovered(&layout, &al);

    let mut bitmap = DirtyBitmap::new(&layout);
    let bitmap_region = job.bitmap.expect("read");
    let mut bitmap_pages_damaged = Vec::new();
    for page in 0..layout.bitmap_pages {
        let start = (u64::from(page) * BLOCK_BYTES) as usize;
        let bytes = &bitmap_region.as_slice()[start..start + BLOCK_BYTES as usize];
        if bitmap.load_page(page, bytes, tag).is_err() {
            bitmap_pages_damaged.push(page);
        }
    }
    // What was loaded is what is on disk; damaged pages were loaded as all-dirty and differ from
    // the disk, so they are rewritten by the next flush.
    bitmap.loaded(&bitmap_pages_damaged);

    let mut extents_marked = 0;
    if !clean {
        for extent in activity_log.active_extents().collect::<Vec<_>>() {
            let offset = extent * activity_log.extent_bytes();
            let length = activity_log.extent_bytes().min(layout.data_bytes - offset);
            let granules = bitmap.granules_of(crate::types::ByteRange::new(offset, length));
            bitmap.set(granules);
            extents_marked += 1;
        }
        match superblock.last_role {
            Role::Primary => superblock.crashed_primary = true,
            Role::Secondary => superblock.crashed_secondary = true,
        }
    }
    if !al.damaged_blocks.is_empty() {
        bitmap.set_all();
    }

    let ring = job.journal.expect("read");
    let tail = JournalTail {
        position: superblock.journal_tail_offset,
        seq: superblock.journal_tail_seq,
    };
    let scan = recovery::scan(ring.as_slice(), tail.position, tail.seq, tag);
    let journal_config = JournalConfig {
        ring_bytes: layout.params.journal_bytes,
        memory_bytes_max: journal_memory_bytes_max,
        instance_tag: tag,
    };
    let mut journal = Journal::recovered(journal_config, tail, &scan);
    // After a crash the memory tier is gone, so the journal no longer holds every change.
    let complete = clean && superblock.journal_complete && scan.end != ScanEnd::RingFull;
    superblock.journal_complete = complete;
    if complete {
        journal.resume(journal_id);
    } else {
        journal.deactivate();
    }

    let report = RecoveryReport {
        volume_name: volume_name.to_string(),
        clean_shutdown: clean,
        superblock_copy: if copy == 0 { "A" } else { "B" },
        other_superblock_problem: job.other_copy_problem,
        activity_log_extents_marked: extents_marked,
        activity_log_torn_copies: al.torn_copies,
        activity_log_damaged_blocks: al.damaged_blocks.clone(),
        bitmap_pages_damaged,
        journal_records: scan.records.len() as u64,
        journal_range: scan
            .records
            .first()
            .zip(scan.records.last())
            .map(|(first, last)| (first.header.seq, last.header.seq)),
        journal_end: scan.end.to_string(),
        journal_complete: complete,
        crashed_primary: superblock.crashed_primary,
        crashed_secondary: superblock.crashed_secondary,
        out_of_sync_granules: bitmap.weight(),
    };
    let volume = Volume {
        layout,
        superblock,
        superblock_copy: copy,
        superblock_version: 0,
        superblock_durable_version: 0,
        superblock_writing: None,
        bitmap,
        activity_log,
        transaction: None,
        journal,
        journal_spill_in_flight: false,
        journal_tail_persisting: None,
    };
    (volume, (job.admin_id, report))
}
