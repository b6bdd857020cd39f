//! Where tandem's metadata lives on the backing store.
//!
//! Metadata is internal, at the end of the backing store, so one device or file carries a volume
//! and everything needed to recover it. From the end backwards, in 4 KiB blocks:
//!
//! ```text
//! 0                                   data_bytes                                  backing_bytes
//! | data area (what clients see)       | journal ring | bitmap pages | AL blocks | SB B | SB A |
//! ```
//!
//! - superblock A is the last block and superblock B the one before (see [`crate::superblock`]);
//! - the activity log takes `2 × al_blocks` blocks, two copies of each logical block
//!   (see [`crate::activity_log`]);
//! - the dirty bitmap takes `bitmap_pages` blocks of 32 640 bits each (see [`crate::bitmap`]);
//! - the journal ring takes `journal_bytes` (see [`crate::journal`]); it may be empty.
//!
//! Sizing (LIMITATIONS): at the default 4 KiB granule one bitmap page covers 127.5 MiB of data,
//! so 1 TiB needs 8 224 pages = 32.1 MiB on disk and 32 MiB of RAM; at a 1 MiB granule 1 TiB needs
//! 33 pages. The data area is limited to 2^50 bytes (1 PiB).

use crate::error::{Error, Result};
use crate::types::BLOCK_BYTES;

/// Granule bits held by one bitmap page (4080 bytes of bits, 16 bytes of trailer).
pub const BITMAP_BITS_PER_PAGE: u64 = 32_640;
/// Activity-log slots held by one activity-log block.
pub const AL_SLOTS_PER_BLOCK: u32 = 1015;
/// The smallest data area tandem accepts.
pub const DATA_BYTES_MIN: u64 = 1 << 20;
/// The largest data area tandem accepts.
pub const DATA_BYTES_MAX: u64 = 1 << 50;
/// The largest journal ring.
pub const JOURNAL_BYTES_MAX: u64 = 1 << 30;

/// The tunable parts of the layout, chosen at `create-md` time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutParams {
    /// Bytes tracked by one bitmap bit: a power of two from 4 KiB to 1 MiB.
    pub granule_bytes: u32,
    /// Bytes covered by one activity-log extent: a power of two, at least one granule, at most
    /// 64 MiB.
    pub al_extent_bytes: u32,
    /// Number of extents the activity log holds hot at once: 1 to 65 536.
    pub al_slots: u32,
    /// Size of the on-disk journal ring: a multiple of 4 KiB, at most 1 GiB; 0 disables spilling
    /// the journal to disk (it then lives in memory only).
    pub journal_bytes: u64,
}

impl Default for LayoutParams {
    fn default() -> Self {
        Self {
            granule_bytes: 4096,
            al_extent_bytes: 4 << 20,
            al_slots: AL_SLOTS_PER_BLOCK,
            journal_bytes: 64 << 20,
        }
    }
}

impl LayoutParams {
    /// Checks every parameter against its documented range.
    pub fn validate(&self) -> Result<()> {
        let granule = self.granule_bytes;
        if !granule.is_power_of_two() || !(4096..=1 << 20).contains(&granule) {
            return Err(Error::InvalidConfig(format!(
                "bitmap granule {granule} bytes: must be a power of two from 4096 to 1048576"
            )));
        }
        let extent = self.al_extent_bytes;
        if !extent.is_power_of_two() || extent < granule || extent > 64 << 20 {
            return Err(Error::InvalidConfig(format!(
                "activity-log extent {extent} bytes: must be a power of two from the granule \
                 ({granule}) to 67108864"
            )));
        }
        if !(1..=65_536).contains(&self.al_slots) {
            return Err(Error::InvalidConfig(format!(
                "activity-log slots {}: must be from 1 to 65536",
                self.al_slots
            )));
        }
        if !self.journal_bytes.is_multiple_of(BLOCK_BYTES) || self.journal_bytes > JOURNAL_BYTES_MAX
        {
            return Err(Error::InvalidConfig(format!(
                "journal size {} bytes: must be a multiple of 4096 and at most 1 GiB",
                self.journal_bytes
            )));
        }
        Ok(())
    }

    /// Logical activity-log blocks needed for the slots.
    pub fn al_blocks(&self) -> u32 {
        self.al_slots.div_ceil(AL_SLOTS_PER_BLOCK)
    }
}

/// The computed positions of every region, all in bytes from the start of the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The parameters the layout was computed from.
    pub params: LayoutParams,
    /// Size of the backing store, rounded down to 4 KiB.
    pub backing_bytes: u64,
    /// Size of the data area that clients see, a multiple of 4 KiB.
    pub data_bytes: u64,
    /// Start of the journal ring (equal to `data_bytes`).
    pub journal_offset: u64,
    /// Start of the bitmap pages.
    pub bitmap_offset: u64,
    /// Number of bitmap pages.
    pub bitmap_pages: u32,
    /// Start of the activity-log blocks.
    pub al_offset: u64,
    /// Offsets of superblock copies A and B.
    pub superblock_offsets: [u64; 2],
}

impl Layout {
    /// The layout for a backing store of `backing_bytes` with `params`.
    pub fn compute(backing_bytes: u64, params: LayoutParams) -> Result<Self> {
        params.validate()?;
        let backing_bytes = backing_bytes - backing_bytes % BLOCK_BYTES;
        let al_bytes = 2 * u64::from(params.al_blocks()) * BLOCK_BYTES;
        let fixed_bytes = 2 * BLOCK_BYTES + al_bytes + params.journal_bytes;
        let need_bytes = fixed_bytes + BLOCK_BYTES + DATA_BYTES_MIN;
        if backing_bytes < need_bytes {
            return Err(Error::TooSmall {
                have_bytes: backing_bytes,
                need_bytes,
            });
        }
        // Size the bitmap for everything that is not fixed metadata: a slight overestimate of
        // the data area, so the pages always suffice.
        let available_bytes = (backing_bytes - fixed_bytes).min(DATA_BYTES_MAX);
        let granules = available_bytes.div_ceil(u64::from(params.granule_bytes));
        let bitmap_pages = granules.div_ceil(BITMAP_BITS_PER_PAGE);
        let superblock_a = backing_bytes - BLOCK_BYTES;
        let superblock_b = superblock_a - BLOCK_BYTES;
        let al_offset = superblock_b - al_bytes;
        let bitmap_offset = al_offset - bitmap_pages * BLOCK_BYTES;
        let journal_offset = bitmap_offset - params.journal_bytes;
        let data_bytes = journal_offset.min(DATA_BYTES_MAX);
        if data_bytes < DATA_BYTES_MIN {
            return Err(Error::TooSmall {
                have_bytes: backing_bytes,
                need_bytes,
            });
        }
        let layout = Self {
            params,
            backing_bytes,
            data_bytes,
            journal_offset,
            bitmap_offset,
            bitmap_pages: u32::try_from(bitmap_pages).expect("bounded by DATA_BYTES_MAX"),
            al_offset,
            superblock_offsets: [superblock_a, superblock_b],
        };
        assert!(layout.granule_count() <= bitmap_pages * BITMAP_BITS_PER_PAGE);
        assert!(layout.data_bytes.is_multiple_of(BLOCK_BYTES));
        Ok(layout)
    }

    /// Number of granules in the data area (the last one may be partial).
    pub fn granule_count(&self) -> u64 {
        self.data_bytes
            .div_ceil(u64::from(self.params.granule_bytes))
    }

    /// Number of activity-log extents in the data area (the last one may be partial).
    pub fn extent_count(&self) -> u64 {
        self.data_bytes
            .div_ceil(u64::from(self.params.al_extent_bytes))
    }

    /// Granules per activity-log extent.
    pub fn granules_per_extent(&self) -> u64 {
        u64::from(self.params.al_extent_bytes / self.params.granule_bytes)
    }

    /// Logical activity-log blocks.
    pub fn al_blocks(&self) -> u32 {
        self.params.al_blocks()
    }

    /// Offset of copy `copy` (0 or 1) of logical activity-log block `block`.
    pub fn al_block_offset(&self, block: u32, copy: u32) -> u64 {
        assert!(block < self.al_blocks() && copy < 2);
        self.al_offset + u64::from(2 * block + copy) * BLOCK_BYTES
    }

    /// Offset of bitmap page `page`.
    pub fn bitmap_page_offset(&self, page: u32) -> u64 {
        assert!(page < self.bitmap_pages);
        self.bitmap_offset + u64::from(page) * BLOCK_BYTES
    }

    /// Bytes of all metadata: everything after the data area.
    pub fn metadata_bytes(&self) -> u64 {
        self.backing_bytes - self.data_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_contiguous_aligned_and_in_order() {
        for backing in [8u64 << 20, 100 << 20, (1 << 30) + 12_345, 1 << 40] {
            let params = LayoutParams {
                journal_bytes: 1 << 20,
                ..LayoutParams::default()
            };
            let layout = Layout::compute(backing, params).expect("fits");
            assert_eq!(layout.journal_offset, layout.data_bytes);
            assert_eq!(
                layout.bitmap_offset,
                layout.journal_offset + params.journal_bytes
            );
            assert_eq!(
                layout.al_offset,
                layout.bitmap_offset + u64::from(layout.bitmap_pages) * BLOCK_BYTES
            );
            assert_eq!(
                layout.superblock_offsets[1],
                layout.al_offset + 2 * BLOCK_BYTES
            );
            assert_eq!(
                layout.superblock_offsets[0] + BLOCK_BYTES,
                layout.backing_bytes
            );
            assert!(
                layout.granule_count() <= u64::from(layout.bitmap_pages) * BITMAP_BITS_PER_PAGE
            );
        }
    }

    #[test]
    fn bitmap_is_32_mib_per_tib_at_the_default_granule() {
        let layout = Layout::compute(1 << 40, LayoutParams::default()).expect("fits");
        let bitmap_bytes = u64::from(layout.bitmap_pages) * BLOCK_BYTES;
        assert!(
            bitmap_bytes <= (32 << 20) + (1 << 20),
            "bitmap {bitmap_bytes} bytes"
        );
    }

    #[test]
    fn too_small_and_bad_parameters_are_refused() {
        let err = Layout::compute(1 << 20, LayoutParams::default()).unwrap_err();
        assert!(matches!(err, Error::TooSmall { .. }), "{err}");
        let bad = LayoutParams {
            granule_bytes: 3000,
            ..LayoutParams::default()
        };
        assert!(matches!(
            Layout::compute(1 << 30, bad),
            Err(Error::InvalidConfig(_))
        ));
        let bad = LayoutParams {
            journal_bytes: 4097,
            ..LayoutParams::default()
        };
        assert!(matches!(
            Layout::compute(1 << 30, bad),
            Err(Error::InvalidConfig(_))
        ));
    }
}
