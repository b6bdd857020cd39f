//! Creating fresh metadata: the blocks `create-md` writes.
//!
//! [`format`] is pure: it returns the layout and the list of blocks to write. The runtime writes
//! them to a real backing store; the simulator and the tests write them to a simulated one.

use crate::activity_log;
use crate::bitmap::DirtyBitmap;
use crate::error::{Error, Result};
use crate::generation::{Generation, GenerationSet};
use crate::layout::{Layout, LayoutParams};
use crate::state::{DiskState, Role};
use crate::superblock::{Superblock, VOLUME_NAME_BYTES_MAX, instance_tag};
use crate::types::{BLOCK_BYTES, Seq};

/// What the data on the backing store is, when the metadata is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialData {
    /// Unknown: the disk is `Inconsistent` until a resync or a forced promotion decides.
    Fresh,
    /// Known identical on both nodes (both zeroed, say): the disk starts `UpToDate` in
    /// `generation`, in sync with the peer, and the journal starts complete.
    InSync {
        /// The generation both nodes start in (the same value on both).
        generation: Generation,
    },
}

/// Everything `create-md` needs to know.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// The volume's name.
    pub volume_name: String,
    /// Layout parameters.
    pub params: LayoutParams,
    /// Random identity of this metadata instance.
    pub instance_id: [u8; 16],
    /// Creation time (Unix ms).
    pub created_unix_millis: u64,
    /// What the data is.
    pub initial: InitialData,
}

/// The layout and the blocks to write, as (backing offset, bytes).
#[derive(Clone, Debug)]
pub struct MetadataImage {
    /// The layout.
    pub layout: Layout,
    /// The superblock written.
    pub superblock: Superblock,
    /// Blocks to write.
    pub writes: Vec<(u64, Vec<u8>)>,
}

/// Checks a volume name: 1 to 64 bytes of letters, digits, `.`, `_` and `-`.
pub fn validate_volume_name(name: &str) -> Result<()> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name.is_empty() || name.len() > VOLUME_NAME_BYTES_MAX || !valid_chars {
        return Err(Error::InvalidConfig(format!(
            "volume name {name:?}: use 1 to {VOLUME_NAME_BYTES_MAX} letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(())
}

/// The metadata for a backing store of `backing_bytes`.
pub fn format(backing_bytes: u64, options: &FormatOptions) -> Result<MetadataImage> {
    validate_volume_name(&options.volume_name)?;
    let layout = Layout::compute(backing_bytes, options.params)?;
    let (generations, disk_state, journal_complete, started) = match options.initial {
        InitialData::Fresh => (GenerationSet::default(), DiskState::Inconsistent, false, 0),
        InitialData::InSync { generation } => {
            assert!(!generation.is_none(), "an in-sync start needs a generation");
            let set = GenerationSet {
                current: generation,
                ..GenerationSet::default()
            };
            (set, DiskState::UpToDate, true, options.created_unix_millis)
        }
    };
    let superblock = Superblock {
        sequence: 1,
        instance_id: options.instance_id,
        layout,
        generations,
        current_started_unix_millis: started,
        clean_shutdown: true,
        crashed_primary: false,
        crashed_secondary: false,
        journal_complete,
        last_role: Role::Secondary,
        disk_state,
        journal_tail_seq: Seq(1),
        journal_tail_offset: 0,
        created_unix_millis: options.created_unix_millis,
        volume_name: options.volume_name.clone(),
    };
    let tag = instance_tag(&options.instance_id);
    let mut writes = Vec::new();
    if layout.params.journal_bytes > 0 {
        writes.push((layout.journal_offset, vec![0u8; BLOCK_BYTES as usize]));
    }
    let bitmap = DirtyBitmap::new(&layout);
    for page in 0..layout.bitmap_pages {
        writes.push((
            layout.bitmap_page_offset(page),
            bitmap.encode_page(page, tag),
        ));
    }
    for block in 0..layout.al_blocks() {
        let bytes = activity_log::encode_block(block, 0, tag, |_| None);
        writes.push((layout.al_block_offset(block, 0), bytes.clone()));
        writes.push((layout.al_block_offset(block, 1), bytes));
    }
    // Both superblock copies are valid; A (sequence 1) is the newer.
    let older = Superblock {
        sequence: 0,
        ..superblock.clone()
    };
    writes.push((layout.superblock_offsets[1], older.encode()));
    writes.push((layout.superblock_offsets[0], superblock.encode()));
    Ok(MetadataImage {
        layout,
        superblock,
        writes,
    })
}
