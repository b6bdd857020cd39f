//! The dirty bitmap: one bit per granule, set when the granule may differ from the peer's copy.
//!
//! "Dirty" here means exactly "out of sync": the granule may hold data the peer lacks (or, on a
//! resync target, data the source will overwrite). A set bit is cleared only when a resync or a
//! replicated write proves the two copies equal. A clear bit is a promise, so every bit that is
//! set must reach the disk before the activity log stops covering its extent (see
//! [`crate::activity_log`]).
//!
//! Words are plain `u64`s owned by the replica's single thread: every mutation goes through the
//! replica, so no atomics are needed, and readers get a snapshot through the replica's status.
//!
//! On disk the bitmap is a run of 4 KiB pages. Byte layout of one page:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4080 | 510 little-endian u64 words; bit `i` of word `w` is granule `page × 32640 + w × 64 + i` |
//! | 4080 | 4 | magic `TBMP` |
//! | 4084 | 4 | page index |
//! | 4088 | 4 | instance tag (see [`crate::superblock::Superblock::instance_tag`]) |
//! | 4092 | 4 | CRC-32 of bytes 0..4092 |
//!
//! Flush policy: a page is written (FUA) when an activity-log extent it covers is about to be
//! evicted, on every bitmap flush timer tick if it changed, and at role changes, detach and
//! clean shutdown. A page whose checksum fails on open is treated as entirely dirty: a torn or
//! damaged page costs a larger resync, never a missed block.
//!
//! Sizing (LIMITATIONS): 2^28 bits = 32 MiB of RAM per TiB at a 4 KiB granule.

use crate::codec::{FieldReader, FieldWriter, seal_trailing_checksum, verify_trailing_checksum};
use crate::layout::{BITMAP_BITS_PER_PAGE, Layout};
use crate::types::{BLOCK_BYTES, ByteRange};

/// The bitmap page magic.
pub const BITMAP_PAGE_MAGIC: u32 = u32::from_le_bytes(*b"TBMP");
const WORDS_PER_PAGE: u64 = BITMAP_BITS_PER_PAGE / 64;

/// The in-memory dirty bitmap with per-page change tracking.
#[derive(Clone, Debug)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    granule_count: u64,
    granule_shift: u32,
    weight: u64,
    /// Bumped whenever a bit in the page changes.
    page_versions: Vec<u64>,
    /// The version last handed out for writing.
    page_written_versions: Vec<u64>,
    /// The version the last completed write captured: what the disk holds.
    page_durable_versions: Vec<u64>,
    /// A write of the page is in flight (at most one, so writes never overtake each other).
    page_writing: Vec<bool>,
}

/// What a page write carries: the encoded page and the version it captured.
#[derive(Clone, Debug)]
pub struct PageImage {
    /// The page index.
    pub page: u32,
    /// The page's 4 KiB encoding.
    pub bytes: Vec<u8>,
    /// The page version this encoding captured.
    pub version: u64,
}

impl DirtyBitmap {
    /// An all-clear bitmap for `layout`.
    pub fn new(layout: &Layout) -> Self {
        let granule_count = layout.granule_count();
        let pages = layout.bitmap_pages as usize;
        Self {
            words: vec![0; granule_count.div_ceil(64) as usize],
            granule_count,
            granule_shift: layout.params.granule_bytes.trailing_zeros(),
            weight: 0,
            page_versions: vec![0; pages],
            page_written_versions: vec![0; pages],
            page_durable_versions: vec![0; pages],
            page_writing: vec![false; pages],
        }
    }

    /// Number of granules.
    pub fn granule_count(&self) -> u64 {
        self.granule_count
    }

    /// Bytes per granule.
    pub fn granule_bytes(&self) -> u64 {
        1 << self.granule_shift
    }

    /// Number of set bits.
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// The granules a byte range touches, as `first..end`.
    pub fn granules_of(&self, range: ByteRange) -> std::ops::Range<u64> {
        if range.length == 0 {
            return 0..0;
        }
        let first = range.offset >> self.granule_shift;
        let end = ((range.end() - 1) >> self.granule_shift) + 1;
        first..end.min(self.granule_count)
    }

    /// The byte range of a granule (the last one is cut at `data_bytes` by the caller).
    pub fn granule_range(&self, granule: u64) -> ByteRange {
        ByteRange::new(granule << self.granule_shift, self.granule_bytes())
    }

    /// Whether granule `granule` is set.
    pub fn is_set(&self, granule: u64) -> bool {
        assert!(granule < self.granule_count);
        self.words[(granule / 64) as usize] & (1 << (granule % 64)) != 0
    }

    /// Sets every granule in `granules`; returns how many were newly set.
    pub fn set(&mut self, granules: std::ops::Range<u64>) -> u64 {
        self.update(granules, true)
    }

    /// Clears every granule in `granules`; returns how many were newly cleared.
    pub fn clear(&mut self, granules: std::ops::Range<u64>) -> u64 {
        self.update(granules, false)
    }

    /// Sets every granule.
    pub fn set_all(&mut self) {
        self.set(0..self.granule_count);
    }

    /// The first set granule at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.granule_count {
            return None;
        }
        let mut word_index = (from / 64) as usize;
        let mut word = self.words[word_index] & (!0u64 << (from % 64));
        loop {
            if word != 0 {
                let granule = word_index as u64 * 64 + u64::from(word.trailing_zeros());
                return (granule < self.granule_count).then_some(granule);
            }
            word_index += 1;
            word = *self.words.get(word_index)?;
        }
    }

    /// Every set granule, in order.
    pub fn iter_set(&self) -> impl Iterator<Item = u64> + '_ {
        let mut next = 0;
        std::iter::from_fn(move || {
            let granule = self.next_set(next)?;
            next = granule + 1;
            Some(granule)
        })
    }

    /// The page holding granule `granule`.
    pub fn page_of(granule: u64) -> u32 {
        u32::try_from(granule / BITMAP_BITS_PER_PAGE).expect("bounded by the layout")
    }

    /// Whether page `page` changed since it was last handed out for writing.
    pub fn page_needs_write(&self, page: u32) -> bool {
        self.page_versions[page as usize] != self.page_written_versions[page as usize]
    }

    /// Pages that changed since they were last handed out for writing and have no write in
    /// flight: the ones a flush may write now.
    pub fn pages_ready_to_write(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.page_versions.len() as u32)
            .filter(|&page| self.page_needs_write(page) && !self.page_writing[page as usize])
    }

    /// Whether a write of page `page` is in flight.
    pub fn page_is_writing(&self, page: u32) -> bool {
        self.page_writing[page as usize]
    }

    /// The page's current version.
    pub fn page_version(&self, page: u32) -> u64 {
        self.page_versions[page as usize]
    }

    /// Whether the disk holds page `page` at version `version` or later.
    pub fn page_durable_at(&self, page: u32, version: u64) -> bool {
        self.page_durable_versions[page as usize] >= version
    }

    /// Encodes page `page` for writing and records that its current version is being written.
    /// One write per page is in flight at a time.
    pub fn begin_page_write(&mut self, page: u32, instance_tag: u32) -> PageImage {
        assert!(
            !self.page_writing[page as usize],
            "one write per page at a time"
        );
        let version = self.page_versions[page as usize];
        self.page_written_versions[page as usize] = version;
        self.page_writing[page as usize] = true;
        PageImage {
            page,
            bytes: self.encode_page(page, instance_tag),
            version,
        }
    }

    /// A page write completed (it was FUA, so the version it captured is durable).
    pub fn page_write_done(&mut self, page: u32, version: u64) {
        assert!(self.page_writing[page as usize]);
        self.page_writing[page as usize] = false;
        let durable = &mut self.page_durable_versions[page as usize];
        *durable = (*durable).max(version);
    }

    /// A page write failed: the page must be written again.
    pub fn page_write_failed(&mut self, page: u32) {
        self.page_writing[page as usize] = false;
        self.page_versions[page as usize] += 1;
    }

    /// Right after loading from disk: what memory holds is what the disk holds, except for
    /// `damaged` pages, which must be rewritten.
    pub fn loaded(&mut self, damaged: &[u32]) {
        self.page_written_versions
            .copy_from_slice(&self.page_versions);
        self.page_durable_versions
            .copy_from_slice(&self.page_versions);
        for &page in damaged {
            self.page_versions[page as usize] += 1;
        }
    }

    /// Encodes page `page` without recording anything.
    pub fn encode_page(&self, page: u32, instance_tag: u32) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        let mut w = FieldWriter::new(&mut block);
        let first_word = u64::from(page) * WORDS_PER_PAGE;
        for index in first_word..first_word + WORDS_PER_PAGE {
            w.put_u64(self.words.get(index as usize).copied().unwrap_or(0));
        }
        w.put_u32(BITMAP_PAGE_MAGIC);
        w.put_u32(page);
        w.put_u32(instance_tag);
        seal_trailing_checksum(&mut block);
        block
    }

    /// Loads page `page` from its on-disk bytes. A page that fails its checks is loaded as all
    /// dirty and the reason is returned.
    pub fn load_page(&mut self, page: u32, bytes: &[u8], instance_tag: u32) -> Result<(), String> {
        let first_word = u64::from(page) * WORDS_PER_PAGE;
        let words = match decode_page(bytes, page, instance_tag) {
            Ok(words) => words,
            Err(reason) => {
                let first = first_word * 64;
                let end = (first + BITMAP_BITS_PER_PAGE).min(self.granule_count);
                self.set(first.min(end)..end);
                return Err(reason);
            }
        };
        for (offset, word) in words.into_iter().enumerate() {
            let index = first_word as usize + offset;
            if index >= self.words.len() {
                break;
            }
            let word = word & self.valid_mask(index);
            self.weight -= u64::from(self.words[index].count_ones());
            self.weight += u64::from(word.count_ones());
            self.words[index] = word;
        }
        Ok(())
    }

    fn valid_mask(&self, word_index: usize) -> u64 {
        let first = word_index as u64 * 64;
        if first + 64 <= self.granule_count {
            !0
        } else {
            (1u64 << (self.granule_count - first)) - 1
        }
    }

    fn update(&mut self, granules: std::ops::Range<u64>, value: bool) -> u64 {
        assert!(granules.end <= self.granule_count, "granule out of range");
        let mut changed = 0;
        let mut granule = granules.start;
        while granule < granules.end {
            let word_index = (granule / 64) as usize;
            let bit = granule % 64;
            let span = (64 - bit).min(granules.end - granule);
            let mask = if span == 64 {
                !0
            } else {
                ((1u64 << span) - 1) << bit
            };
            let old = self.words[word_index];
            let new = if value { old | mask } else { old & !mask };
            if new != old {
                let delta = u64::from((old ^ new).count_ones());
                changed += delta;
                self.words[word_index] = new;
                let page = (word_index as u64 / WORDS_PER_PAGE) as usize;
                self.page_versions[page] += 1;
            }
            granule += span;
        }
        if value {
            self.weight += changed;
        } else {
            self.weight -= changed;
        }
        changed
    }
}

/// Decodes a bitmap page into its words, checking checksum, magic, index and instance tag.
pub fn decode_page(bytes: &[u8], page: u32, instance_tag: u32) -> Result<Vec<u64>, String> {
    if bytes.len() as u64 != BLOCK_BYTES {
        return Err(format!("bitmap page {page}: {} bytes", bytes.len()));
    }
    let body = verify_trailing_checksum(bytes).ok_or(format!("bitmap page {page}: checksum"))?;
    let mut r = FieldReader::new(body);
    let words: Vec<u64> = (0..WORDS_PER_PAGE).map_while(|_| r.u64()).collect();
    let (magic, index, tag) = (r.u32(), r.u32(), r.u32());
    if magic != Some(BITMAP_PAGE_MAGIC) || index != Some(page) || tag != Some(instance_tag) {
        return Err(format!("bitmap page {page}: not this volume's page"));
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutParams;

    fn layout(backing: u64) -> Layout {
        let params = LayoutParams {
            journal_bytes: 0,
            ..LayoutParams::default()
        };
        Layout::compute(backing, params).expect("fits")
    }

    #[test]
    fn set_clear_weight_and_scan_agree_with_a_model() {
        let layout = layout(600 << 20);
        let mut bitmap = DirtyBitmap::new(&layout);
        let mut model = vec![false; bitmap.granule_count() as usize];
        let mut prng = crate::prng::Prng::from_seed(1);
        for _ in 0..2000 {
            let start = prng.below(bitmap.granule_count());
            let end = (start + prng.below(300)).min(bitmap.granule_count());
            let value = prng.chance(2, 3);
            if value {
                bitmap.set(start..end)
            } else {
                bitmap.clear(start..end)
            };
            model[start as usize..end as usize]
                .iter_mut()
                .for_each(|bit| *bit = value);
        }
        let model_weight = model.iter().filter(|&&bit| bit).count() as u64;
        assert_eq!(bitmap.weight(), model_weight);
        let set: Vec<u64> = bitmap.iter_set().collect();
        let expected: Vec<u64> = model
            .iter()
            .enumerate()
            .filter(|(_, b)| **b)
            .map(|(i, _)| i as u64)
            .collect();
        assert_eq!(set, expected);
    }

    #[test]
    fn pages_round_trip_and_a_damaged_page_loads_all_dirty() {
        let layout = layout(600 << 20);
        let mut bitmap = DirtyBitmap::new(&layout);
        bitmap.set(10..20);
        bitmap.set(40_000..40_010);
        let tag = 0x55;
        let ready: Vec<u32> = bitmap.pages_ready_to_write().collect();
        assert_eq!(ready, vec![0, 1], "two pages changed");
        let images: Vec<PageImage> = ready
            .iter()
            .map(|&p| bitmap.begin_page_write(p, tag))
            .collect();
        assert_eq!(bitmap.pages_ready_to_write().count(), 0);
        bitmap.set(30..31);
        assert_eq!(
            bitmap.pages_ready_to_write().count(),
            0,
            "page 0 is still being written"
        );
        bitmap.page_write_done(0, images[0].version);
        assert!(bitmap.page_durable_at(0, images[0].version));
        assert!(!bitmap.page_durable_at(0, bitmap.page_version(0)));
        assert_eq!(bitmap.pages_ready_to_write().collect::<Vec<_>>(), vec![0]);
        let mut loaded = DirtyBitmap::new(&layout);
        for page in 0..layout.bitmap_pages {
            let bytes = bitmap.encode_page(page, tag);
            loaded.load_page(page, &bytes, tag).expect("valid page");
        }
        assert_eq!(loaded.weight(), 21);
        let mut damaged = bitmap.encode_page(0, tag);
        damaged[100] ^= 1;
        let mut reloaded = DirtyBitmap::new(&layout);
        assert!(reloaded.load_page(0, &damaged, tag).is_err());
        assert_eq!(
            reloaded.weight(),
            BITMAP_BITS_PER_PAGE.min(layout.granule_count())
        );
        assert!(
            reloaded
                .load_page(1, &bitmap.encode_page(1, tag), tag + 2)
                .is_err()
        );
    }

    #[test]
    fn granules_of_a_byte_range() {
        let layout = layout(600 << 20);
        let bitmap = DirtyBitmap::new(&layout);
        assert_eq!(bitmap.granules_of(ByteRange::new(0, 512)), 0..1);
        assert_eq!(bitmap.granules_of(ByteRange::new(4095, 2)), 0..2);
        assert_eq!(bitmap.granules_of(ByteRange::new(8192, 8192)), 2..4);
        assert_eq!(bitmap.granules_of(ByteRange::new(8192, 0)), 0..0);
    }
}
