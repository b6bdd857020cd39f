//! Target `metadata`: what opening a volume decodes from its metadata area
//! (`engine::superblock`, `engine::activity_log`, the bitmap pages), then the activity log in use.
//!
//! Input: layout parameters, then operations on a freshly formatted metadata area (from
//! `engine::format::format`): write an activity-log block copy with any slots and sequence,
//! change a superblock byte (and reseal its checksum, or not), damage any byte. Then:
//!
//! - the superblock pair decodes without panicking; a chosen superblock has the layout its sizes
//!   imply and survives re-encoding;
//! - activity-log recovery never panics and lists only extents inside the volume, each once;
//! - the log rebuilt from it works: writes held in its extents while transactions bring other
//!   extents in, then released; and after the transactions, recovery of the blocks they wrote
//!   finds exactly the extents the log holds;
//! - every bitmap page loads, as written or as all dirty.

use std::collections::BTreeSet;

use engine::activity_log::{self, ActivityLog};
use engine::bitmap::DirtyBitmap;
use engine::codec::seal_trailing_checksum;
use engine::format::{FormatOptions, InitialData, format};
use engine::generation::Generation;
use engine::layout::{AL_SLOTS_PER_BLOCK, Layout, LayoutParams};
use engine::superblock::{Superblock, SuperblockPair};
use engine::types::BLOCK_BYTES;

use crate::input::Input;

const BLOCK: usize = BLOCK_BYTES as usize;

/// The metadata regions under test.
struct Regions {
    /// Superblock copy B then copy A: the last 8 KiB of the backing store.
    superblocks: Vec<u8>,
    /// The activity-log block copies, in order.
    activity_log: Vec<u8>,
    /// The bitmap pages, in order.
    bitmap: Vec<u8>,
}

/// The target body.
pub fn metadata(data: &[u8]) {
    let mut input = Input::new(data);
    let params = LayoutParams {
        granule_bytes: 4096 << input.below(3),
        al_extent_bytes: 1 << 20,
        al_slots: 1 + input.below(3 * AL_SLOTS_PER_BLOCK as usize) as u32,
        journal_bytes: if input.bool() { 16 * BLOCK_BYTES } else { 0 },
    };
    let backing_bytes = ((4 + input.below(60) as u64) << 20) + input.below(4096) as u64;
    let options = FormatOptions {
        volume_name: "r0".to_string(),
        params,
        instance_id: [7; 16],
        created_unix_millis: 1_700_000_000_000,
        initial: if input.bool() {
            InitialData::InSync {
                generation: Generation(5),
            }
        } else {
            InitialData::Fresh
        },
    };
    let image = format(backing_bytes, &options).expect("a layout that fits");
    let layout = image.layout;
    let tag = image.superblock.instance_tag();
    let mut regions = regions(&layout, &image.writes);

    while !input.is_empty() {
        match input.u8() % 4 {
            0 => write_al_block(&mut input, &layout, tag, &mut regions.activity_log),
            1 => {
                let copy = input.below(2);
                let at = copy * BLOCK + input.below(BLOCK - 4);
                regions.superblocks[at] ^= input.u8() | 1;
                if input.bool() {
                    seal_trailing_checksum(&mut regions.superblocks[copy * BLOCK..][..BLOCK]);
                }
            }
            _ => {
                let region = match input.below(3) {
                    0 => &mut regions.superblocks,
                    1 => &mut regions.activity_log,
                    _ => &mut regions.bitmap,
                };
                let at = input.below(region.len());
                region[at] ^= input.u8() | 1;
            }
        }
    }

    check_superblocks(&regions.superblocks, backing_bytes);
    check_activity_log(&layout, tag, &mut regions.activity_log);
    let mut bitmap = DirtyBitmap::new(&layout);
    for (page, bytes) in regions.bitmap.chunks(BLOCK).enumerate() {
        let before = bitmap.weight();
        if bitmap.load_page(page as u32, bytes, tag).is_err() {
            assert!(bitmap.weight() >= before, "a damaged page cleared bits");
        }
    }
    assert!(bitmap.weight() <= bitmap.granule_count());
}

fn regions(layout: &Layout, writes: &[(u64, Vec<u8>)]) -> Regions {
    let al_bytes = 2 * layout.al_blocks() as usize * BLOCK;
    let bitmap_bytes = layout.bitmap_pages as usize * BLOCK;
    let mut regions = Regions {
        superblocks: vec![0; 2 * BLOCK],
        activity_log: vec![0; al_bytes],
        bitmap: vec![0; bitmap_bytes],
    };
    let superblocks_at = layout.superblock_offsets[1];
    for (offset, bytes) in writes {
        let (region, start) = if *offset >= superblocks_at {
            (&mut regions.superblocks, superblocks_at)
        } else if *offset >= layout.al_offset {
            (&mut regions.activity_log, layout.al_offset)
        } else if *offset >= layout.bitmap_offset {
            (&mut regions.bitmap, layout.bitmap_offset)
        } else {
            continue; // the journal ring's first block
        };
        let at = (offset - start) as usize;
        region[at..at + bytes.len()].copy_from_slice(bytes);
    }
    regions
}

/// Writes one activity-log block copy with slots and a sequence number from the input.
fn write_al_block(input: &mut Input<'_>, layout: &Layout, tag: u32, region: &mut [u8]) {
    let block = input.below(layout.al_blocks() as usize) as u32;
    let copy = input.below(2);
    let sequence = u64::from(input.u8());
    let mut slots = vec![None; AL_SLOTS_PER_BLOCK as usize];
    for _ in 0..input.below(8) {
        let slot = input.below(AL_SLOTS_PER_BLOCK as usize);
        let extent = u64::from(input.u8()) % (layout.extent_count() + 2);
        slots[slot] = Some(extent);
    }
    let first = block * AL_SLOTS_PER_BLOCK;
    let bytes =
        activity_log::encode_block(block, sequence, tag, |slot| slots[(slot - first) as usize]);
    let at = (2 * block as usize + copy) * BLOCK;
    region[at..at + BLOCK].copy_from_slice(&bytes);
}

fn check_superblocks(last_two_blocks: &[u8], backing_bytes: u64) {
    let pair = SuperblockPair::decode(last_two_blocks, backing_bytes);
    let (copy, superblock) = match pair.choose() {
        Ok(chosen) => chosen,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    assert!(copy < 2);
    let params = superblock.layout.params;
    assert_eq!(
        Layout::compute(backing_bytes, params).ok(),
        Some(superblock.layout),
        "a superblock whose layout is not the one its sizes imply"
    );
    assert_eq!(
        Superblock::decode(&superblock.encode(), backing_bytes),
        Ok(superblock),
        "a superblock does not survive re-encoding"
    );
}

fn check_activity_log(layout: &Layout, tag: u32, region: &mut [u8]) {
    let recovery = activity_log::recover(layout, region, tag);
    let slots = layout.params.al_slots as usize;
    assert_eq!(recovery.slots.len(), slots);
    assert!(recovery.newest_copy.iter().all(|&copy| copy < 2));
    let listed: Vec<u64> = recovery.slots.iter().flatten().copied().collect();
    assert!(listed.iter().all(|&extent| extent < layout.extent_count()));
    let distinct: BTreeSet<u64> = listed.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        listed.len(),
        "an extent listed twice: {listed:?}"
    );

    // The log in use: hold a write in each active extent while transactions bring every other
    // extent they can into the log, then release the writes.
    let mut log = ActivityLog::recovered(layout, &recovery);
    let held: Vec<u64> = log.active_extents().take(4).collect();
    for &extent in &held {
        log.acquire(extent);
    }
    let cold: Vec<u64> = (0..layout.extent_count())
        .filter(|&extent| !log.is_active(extent))
        .take(2 * slots)
        .collect();
    for wanted in cold.chunks(slots.div_ceil(2).max(1)) {
        let Some(transaction) = log.begin_transaction(wanted, &[]) else {
            continue;
        };
        for write in log.block_writes(&transaction, tag) {
            let at = (2 * write.block as usize + write.copy as usize) * BLOCK;
            region[at..at + BLOCK].copy_from_slice(&write.bytes);
        }
        log.commit(&transaction);
    }
    for &extent in &held {
        assert!(
            log.is_active(extent),
            "extent {extent} left the log with a write in it"
        );
        log.release(extent);
    }
    let active: BTreeSet<u64> = log.active_extents().collect();
    let again = activity_log::recover(layout, region, tag);
    let listed: BTreeSet<u64> = again.slots.iter().flatten().copied().collect();
    assert!(
        active.is_subset(&listed),
        "extents the log holds are not on disk: {:?}",
        active.difference(&listed).collect::<Vec<_>>()
    );
}

/// Seeds: fresh metadata of a few shapes, a populated activity log, a torn superblock copy.
pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // 4 KiB granules, 1 AL block, no journal, 20 MiB.
        vec![0, 99, 0, 0, 16, 0, 0, 0],
        // 8 KiB granules, 2 AL blocks, a journal; AL block 1 copy 1 with three slots.
        vec![
            1, 0x10, 0x04, 1, 30, 0, 0, 1, 0, 1, 1, 9, 3, 5, 0, 3, 7, 0, 4, 0x10, 0, 2,
        ],
        // Superblock A damaged and resealed, then B damaged without resealing.
        vec![
            0, 50, 0, 0, 10, 0, 0, 0, 1, 0, 40, 0, 7, 1, 1, 1, 100, 0, 3, 0,
        ],
    ]
}
