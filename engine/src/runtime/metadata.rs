//! Creating and inspecting metadata on a real backing store (`tandem create-md`, `dump-md`).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::backing::Backing;
use super::{os_random_u64, unix_millis};
use crate::activity_log;
use crate::bitmap::DirtyBitmap;
use crate::error::{Error, Result};
use crate::format::{FormatOptions, InitialData, format};
use crate::journal::recovery::{self, RecoveredRecord};
use crate::layout::{Layout, LayoutParams};
use crate::superblock::{SUPERBLOCK_MAGIC, Superblock, SuperblockPair};
use crate::types::BLOCK_BYTES;

/// Bytes at the start of the backing store checked for signatures of other content.
const SIGNATURE_BYTES: u64 = 128 << 10;

/// What `create-md` made.
#[derive(Clone, Debug, Serialize)]
pub struct Created {
    /// Bytes of the data area clients will see.
    pub data_bytes: u64,
    /// Bytes of metadata at the end of the backing store.
    pub metadata_bytes: u64,
}

/// Writes fresh metadata for `volume_name` on the backing store at `path`.
///
/// Without `force` it refuses a backing store that already holds tandem metadata, a known
/// file-system, partition or volume signature, or any non-zero byte where the metadata would go;
/// each refusal is one line that says what was found.
pub fn create(
    path: &Path,
    volume_name: &str,
    params: LayoutParams,
    initial: InitialData,
    force: bool,
) -> Result<Created> {
    let backing = Backing::open(path)?;
    let size = backing.size_bytes();
    let mut instance_id = [0u8; 16];
    instance_id[..8].copy_from_slice(&os_random_u64().to_le_bytes());
    instance_id[8..].copy_from_slice(&os_random_u64().to_le_bytes());
    let options = FormatOptions {
        volume_name: volume_name.to_string(),
        params,
        instance_id,
        created_unix_millis: unix_millis(),
        initial,
    };
    let image = format(size, &options)?;
    if !force && let Some(found) = existing_content(&backing, &image.layout)? {
        return Err(Error::ForeignContent(found));
    }
    let context = |e: crate::types::Errno| {
        Error::io(
            format!("writing metadata to {}", path.display()),
            std::io::Error::from_raw_os_error(e.0),
        )
    };
    for (offset, bytes) in &image.writes {
        let data = crate::buffer::IoBuf::copy_from(bytes);
        backing
            .execute(&crate::replica::StorageOp::Write {
                offset: *offset,
                data,
                fua: false,
            })
            .map_err(context)?;
    }
    backing.sync()?;
    Ok(Created {
        data_bytes: image.layout.data_bytes,
        metadata_bytes: image.layout.metadata_bytes(),
    })
}

/// Describes what is already on the backing store where `create-md` would write, if anything.
fn existing_content(backing: &Backing, layout: &Layout) -> Result<Option<String>> {
    let size = backing.size_bytes();
    let read = |offset: u64, length: u64| {
        backing.read(offset, length).map_err(|e| {
            Error::io(
                format!("reading {}", backing.path().display()),
                std::io::Error::from_raw_os_error(e.0),
            )
        })
    };
    let last = read(layout.backing_bytes - 2 * BLOCK_BYTES, 2 * BLOCK_BYTES)?;
    let pair = SuperblockPair::decode(last.as_slice(), size);
    if let Some((_, superblock)) = pair.newest() {
        let generation = match superblock.generations.current {
            generation if generation.is_none() => "fresh, never promoted".to_string(),
            generation => format!("generation {generation}"),
        };
        return Ok(Some(format!(
            "holds tandem metadata of volume {:?} ({generation})",
            superblock.volume_name
        )));
    }
    let magic_found = [&last.as_slice()[..8], &last.as_slice()[4096..4104]]
        .iter()
        .any(|bytes| *bytes == SUPERBLOCK_MAGIC);
    if magic_found {
        return Ok(Some("holds damaged tandem metadata".to_string()));
    }
    let head = read(0, SIGNATURE_BYTES.min(size - size % BLOCK_BYTES))?;
    if let Some(signature) = known_signature(head.as_slice()) {
        return Ok(Some(format!("holds {signature}")));
    }
    let metadata_start = layout.data_bytes;
    let mut offset = metadata_start;
    while offset < layout.backing_bytes {
        let length = (layout.backing_bytes - offset).min(8 << 20);
        if read(offset, length)?.as_slice().iter().any(|&b| b != 0) {
            return Ok(Some(format!(
                "holds data in its last {} bytes, where the metadata would go",
                layout.metadata_bytes()
            )));
        }
        offset += length;
    }
    Ok(None)
}

/// Names a file-system, volume-manager or partition-table signature at the start of `head`.
fn known_signature(head: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    let signatures: [(usize, &[u8], &'static str); 9] = [
        (1080, &[0x53, 0xEF], "an ext2/3/4 file system"),
        (0, b"XFSB", "an XFS file system"),
        (65_600, b"_BHRfS_M", "a btrfs file system"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (512, b"LABELONE", "an LVM physical volume"),
        (4086, b"SWAPSPACE2", "a swap area"),
        (512, b"EFI PART", "a GPT partition table"),
        (3, b"NTFS    ", "an NTFS file system"),
        (510, &[0x55, 0xAA], "a partition table or boot sector"),
    ];
    signatures
        .iter()
        .find(|(offset, magic, _)| at(*offset, magic))
        .map(|(_, _, name)| *name)
}

/// Everything `dump-md` shows.
#[derive(Clone, Debug, Serialize)]
pub struct MetadataReport {
    /// The backing store.
    pub path: String,
    /// Its size.
    pub backing_bytes: u64,
    /// "A" or "B": the copy in use.
    pub superblock_copy: &'static str,
    /// Why the other copy is not usable, if it is not.
    pub other_superblock_problem: Option<String>,
    /// The volume name.
    pub volume_name: String,
    /// Write counter of the copy in use.
    pub superblock_sequence: u64,
    /// The data area.
    pub data_bytes: u64,
    /// Bitmap granule.
    pub granule_bytes: u32,
    /// Activity-log extent size and slot count.
    pub al_extent_bytes: u32,
    /// Activity-log slots.
    pub al_slots: u32,
    /// Journal ring size.
    pub journal_bytes: u64,
    /// Current, bitmap and history generations, in hex.
    pub generations: Vec<String>,
    /// When the current generation started (Unix ms).
    pub current_started_unix_millis: u64,
    /// Persisted disk state.
    pub disk_state: String,
    /// Role when last written.
    pub last_role: String,
    /// Whether the last shutdown was clean.
    pub clean_shutdown: bool,
    /// Whether the node crashed while primary and has not resynced since.
    pub crashed_primary: bool,
    /// Whether the node crashed while secondary and has not resynced since.
    pub crashed_secondary: bool,
    /// Whether the journal holds every change since the last sync.
    pub journal_complete: bool,
    /// Extents listed in the activity log.
    pub al_extents: u64,
    /// Activity-log copies torn, and blocks damaged in both copies.
    pub al_torn_copies: u32,
    /// Damaged activity-log blocks.
    pub al_damaged_blocks: Vec<u32>,
    /// Set bits in the on-disk bitmap.
    pub bitmap_weight: u64,
    /// Bytes those bits cover.
    pub out_of_sync_bytes: u64,
    /// Bitmap pages that fail their checks.
    pub bitmap_pages_damaged: Vec<u32>,
    /// Journal tail (ring offset, sequence number).
    pub journal_tail: (u64, u64),
    /// Records found from the tail, first and last sequence numbers.
    pub journal_records: u64,
    /// First and last sequence numbers found.
    pub journal_seq_range: Option<(u64, u64)>,
    /// Ring bytes the records occupy.
    pub journal_used_bytes: u64,
    /// Why the scan stopped.
    pub journal_end: String,
    /// The records found: (sequence number, ring offset, volume offset, length).
    #[serde(skip)]
    pub journal_entries: Vec<RecoveredRecord>,
    /// Where the journal ring starts on the backing store.
    pub journal_offset: u64,
}

/// Reads the metadata of the backing store at `path` without changing anything.
pub fn inspect(path: &Path) -> Result<MetadataReport> {
    let backing = Backing::open(path)?;
    let size = backing.size_bytes();
    let io = |e: crate::types::Errno| {
        Error::io(
            format!("reading {}", path.display()),
            std::io::Error::from_raw_os_error(e.0),
        )
    };
    let rounded = size - size % BLOCK_BYTES;
    if rounded < 2 * BLOCK_BYTES {
        return Err(Error::NoMetadata(format!(
            "{} is too small to hold metadata",
            path.display()
        )));
    }
    let last = backing
        .read(rounded - 2 * BLOCK_BYTES, 2 * BLOCK_BYTES)
        .map_err(io)?;
    let pair = SuperblockPair::decode(last.as_slice(), size);
    let (copy, superblock) = pair.choose()?;
    let other = if copy == 0 { &pair.b } else { &pair.a };
    let layout = superblock.layout;
    let tag = superblock.instance_tag();
    let al_bytes = 2 * u64::from(layout.al_blocks()) * BLOCK_BYTES;
    let al_region = backing.read(layout.al_offset, al_bytes).map_err(io)?;
    let al = activity_log::recover(&layout, al_region.as_slice(), tag);
    let bitmap_region = backing
        .read(
            layout.bitmap_offset,
            u64::from(layout.bitmap_pages) * BLOCK_BYTES,
        )
        .map_err(io)?;
    let mut bitmap = DirtyBitmap::new(&layout);
    let mut damaged = Vec::new();
    for page in 0..layout.bitmap_pages {
        let start = (u64::from(page) * BLOCK_BYTES) as usize;
        let bytes = &bitmap_region.as_slice()[start..start + BLOCK_BYTES as usize];
        if bitmap.load_page(page, bytes, tag).is_err() {
            damaged.push(page);
        }
    }
    let ring = if layout.params.journal_bytes > 0 {
        backing
            .read(layout.journal_offset, layout.params.journal_bytes)
            .map_err(io)?
    } else {
        crate::buffer::IoBuf::zeroed(0)
    };
    let scan = recovery::scan(
        ring.as_slice(),
        superblock.journal_tail_offset,
        superblock.journal_tail_seq,
        tag,
    );
    Ok(report(
        path,
        size,
        copy,
        other.as_ref().err().cloned(),
        &superblock,
        &al,
        &bitmap,
        damaged,
        scan,
    ))
}

#[allow(clippy::too_many_arguments)]
fn report(
    path: &Path,
    size: u64,
    copy: usize,
    other_problem: Option<String>,
    superblock: &Superblock,
    al: &activity_log::AlRecovery,
    bitmap: &DirtyBitmap,
    bitmap_pages_damaged: Vec<u32>,
    scan: recovery::JournalRecovery,
) -> MetadataReport {
    let layout = superblock.layout;
    let generations = &superblock.generations;
    let mut listed = vec![
        generations.current.to_string(),
        generations.bitmap.to_string(),
    ];
    listed.extend(generations.history.iter().map(ToString::to_string));
    MetadataReport {
        path: path.display().to_string(),
        backing_bytes: size,
        superblock_copy: if copy == 0 { "A" } else { "B" },
        other_superblock_problem: other_problem,
        volume_name: superblock.volume_name.clone(),
        superblock_sequence: superblock.sequence,
        data_bytes: layout.data_bytes,
        granule_bytes: layout.params.granule_bytes,
        al_extent_bytes: layout.params.al_extent_bytes,
        al_slots: layout.params.al_slots,
        journal_bytes: layout.params.journal_bytes,
        generations: listed,
        current_started_unix_millis: superblock.current_started_unix_millis,
        disk_state: superblock.disk_state.to_string(),
        last_role: superblock.last_role.to_string(),
        clean_shutdown: superblock.clean_shutdown,
        crashed_primary: superblock.crashed_primary,
        crashed_secondary: superblock.crashed_secondary,
        journal_complete: superblock.journal_complete,
        al_extents: al.slots.iter().flatten().count() as u64,
        al_torn_copies: al.torn_copies,
        al_damaged_blocks: al.damaged_blocks.clone(),
        bitmap_weight: bitmap.weight(),
        out_of_sync_bytes: (bitmap.weight() * bitmap.granule_bytes()).min(layout.data_bytes),
        bitmap_pages_damaged,
        journal_tail: (
            superblock.journal_tail_offset,
            superblock.journal_tail_seq.0,
        ),
        journal_records: scan.records.len() as u64,
        journal_seq_range: scan
            .records
            .first()
            .zip(scan.records.last())
            .map(|(a, b)| (a.header.seq.0, b.header.seq.0)),
        journal_used_bytes: scan.used_bytes,
        journal_end: scan.end.to_string(),
        journal_entries: scan.records,
        journal_offset: layout.journal_offset,
    }
}

impl MetadataReport {
    /// The human-readable form `dump-md` prints.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            let _ = writeln!(out, "{label:<22} {value}");
        };
        line(
            "backing store",
            format!("{} ({} bytes)", self.path, self.backing_bytes),
        );
        line("volume", self.volume_name.clone());
        let other = self
            .other_superblock_problem
            .as_deref()
            .map_or("ok".to_string(), |p| p.to_string());
        line(
            "superblock",
            format!(
                "copy {} in use, sequence {}; other copy: {other}",
                self.superblock_copy, self.superblock_sequence
            ),
        );
        line("data area", format!("{} bytes", self.data_bytes));
        line("bitmap granule", format!("{} bytes", self.granule_bytes));
        line(
            "activity log",
            format!("{} slots of {} bytes", self.al_slots, self.al_extent_bytes),
        );
        line("journal ring", format!("{} bytes", self.journal_bytes));
        line(
            "generations",
            format!(
                "current {} bitmap {} history {}",
                self.generations[0],
                self.generations[1],
                self.generations[2..].join(" ")
            ),
        );
        line("disk state", self.disk_state.clone());
        line("last role", self.last_role.clone());
        line("clean shutdown", yes_no(self.clean_shutdown));
        line("crashed primary", yes_no(self.crashed_primary));
        line("crashed secondary", yes_no(self.crashed_secondary));
        let al = format!(
            "{} extents listed, {} torn copies, damaged blocks {:?}",
            self.al_extents, self.al_torn_copies, self.al_damaged_blocks
        );
        line("activity log state", al);
        line(
            "bitmap weight",
            format!(
                "{} granules ({} bytes out of sync), damaged pages {:?}",
                self.bitmap_weight, self.out_of_sync_bytes, self.bitmap_pages_damaged
            ),
        );
        line(
            "journal tail",
            format!(
                "ring offset {} sequence #{}",
                self.journal_tail.0, self.journal_tail.1
            ),
        );
        let head = match self.journal_seq_range {
            Some((first, last)) => format!(
                "{} records #{first}..#{last}, {} bytes; ends: {}",
                self.journal_records, self.journal_used_bytes, self.journal_end
            ),
            None => format!("no records; ends: {}", self.journal_end),
        };
        line("journal head", head);
        line("journal complete", yes_no(self.journal_complete));
        out
    }
}

fn yes_no(value: bool) -> String {
    (if value { "yes" } else { "no" }).to_string()
}
