//! Target `bitmap`: the dirty bitmap (`engine::bitmap`) against a model, a `Vec<bool>` per
//! granule plus what each on-disk page holds.
//!
//! Input: the layout (data size and granule), then operations, one or a few bytes each: set or
//! clear a granule range, set all, query (`is_set`, `next_set`), map a byte range to granules,
//! flush (hand out every page that needs writing), complete or fail a page write, crash and
//! load every page from its last completed write, load one page with a damaged byte, and a full
//! comparison. After every operation the weight matches the model; queries, the pages ready to
//! write, and what a reload yields all match the model.

use engine::bitmap::{DirtyBitmap, PageImage, decode_page};
use engine::layout::{BITMAP_BITS_PER_PAGE, Layout, LayoutParams};
use engine::types::ByteRange;

use crate::input::Input;

/// The instance tag of the volume under test.
const TAG: u32 = 0x5501;

struct Model {
    bits: Vec<bool>,
    /// Per page: changed since last handed out for writing.
    needs_write: Vec<bool>,
    /// Per page: the image of the write in flight and the model's bits when it was taken.
    writing: Vec<Option<(PageImage, Vec<bool>)>>,
    /// Per page: the bytes on disk and the bits they hold.
    disk: Vec<(Vec<u8>, Vec<bool>)>,
}

impl Model {
    fn update(&mut self, range: std::ops::Range<u64>, value: bool) -> u64 {
        let mut changed = 0;
        for granule in range {
            let bit = &mut self.bits[granule as usize];
            if *bit != value {
                *bit = value;
                changed += 1;
                self.needs_write[DirtyBitmap::page_of(granule) as usize] = true;
            }
        }
        changed
    }

    fn weight(&self) -> u64 {
        self.bits.iter().filter(|&&bit| bit).count() as u64
    }

    fn page_bits(&self, page: usize) -> Vec<bool> {
        let first = page * BITMAP_BITS_PER_PAGE as usize;
        let end = (first + BITMAP_BITS_PER_PAGE as usize).min(self.bits.len());
        self.bits[first..end].to_vec()
    }
}

/// The target body.
pub fn bitmap(data: &[u8]) {
    let mut input = Input::new(data);
    let granule_bytes = 4096u32 << input.below(9);
    let data_mib = 1 + input.below(256) as u64;
    let params = LayoutParams {
        granule_bytes,
        al_extent_bytes: 1 << 20,
        al_slots: 1,
        journal_bytes: 0,
    };
    let backing_bytes = (data_mib << 20) + 16 * 4096 + input.below(16) as u64 * 4096;
    let layout = Layout::compute(backing_bytes, params).expect("a layout that fits");
    let mut bitmap = DirtyBitmap::new(&layout);
    let count = bitmap.granule_count();
    assert_eq!(count, layout.data_bytes.div_ceil(u64::from(granule_bytes)));
    let pages = layout.bitmap_pages as usize;
    let empty = DirtyBitmap::new(&layout);
    let mut model = Model {
        bits: vec![false; count as usize],
        needs_write: vec![false; pages],
        writing: vec![None; pages],
        disk: (0..pages)
            .map(|page| {
                let bits = vec![false; page_len(count, page)];
                (empty.encode_page(page as u32, TAG), bits)
            })
            .collect(),
    };

    let mut operations = 0;
    while !input.is_empty() && operations < 256 {
        operations += 1;
        let op = input.u8();
        match op % 10 {
            code @ (0 | 1) => {
                let range = granule_range(&mut input, count);
                let value = code == 0;
                let changed = if value {
                    bitmap.set(range.clone())
                } else {
                    bitmap.clear(range.clone())
                };
                assert_eq!(changed, model.update(range, value), "changed granules");
            }
            2 => {
                bitmap.set_all();
                model.update(0..count, true);
            }
            3 => {
                let from = input.below(count as usize + 8) as u64;
                let expected = (from..count).find(|&g| model.bits[g as usize]);
                assert_eq!(bitmap.next_set(from), expected, "next_set({from})");
                if from < count {
                    assert_eq!(bitmap.is_set(from), model.bits[from as usize]);
                }
            }
            4 => {
                let offset = input.u64() % layout.data_bytes;
                let length = input.u64() % (layout.data_bytes - offset + 1);
                let granules = bitmap.granules_of(ByteRange::new(offset, length));
                let g = u64::from(granule_bytes);
                let expected = if length == 0 {
                    0..0
                } else {
                    offset / g..(offset + length).div_ceil(g).min(count)
                };
                assert_eq!(granules, expected, "granules of {offset}+{length}");
            }
            5 => {
                let ready: Vec<u32> = bitmap.pages_ready_to_write().collect();
                let expected: Vec<u32> = (0..pages)
                    .filter(|&p| model.needs_write[p] && model.writing[p].is_none())
                    .map(|p| p as u32)
                    .collect();
                assert_eq!(ready, expected, "pages ready to write");
                for page in ready {
                    let image = bitmap.begin_page_write(page, TAG);
                    assert!(bitmap.page_is_writing(page));
                    let p = page as usize;
                    model.needs_write[p] = false;
                    model.writing[p] = Some((image, model.page_bits(p)));
                }
            }
            6 => {
                let page = input.below(pages);
                if let Some((image, bits)) = model.writing[page].take() {
                    if input.bool() {
                        bitmap.page_write_failed(page as u32);
                        model.needs_write[page] = true;
                    } else {
                        bitmap.page_write_done(page as u32, image.version);
                        assert!(bitmap.page_durable_at(page as u32, image.version));
                        model.disk[page] = (image.bytes, bits);
                    }
                    assert!(!bitmap.page_is_writing(page as u32));
                }
            }
            7 => {
                // Crash: what memory held is gone; load every page from disk.
                let mut loaded = DirtyBitmap::new(&layout);
                for (page, (bytes, _)) in model.disk.iter().enumerate() {
                    loaded
                        .load_page(page as u32, bytes, TAG)
                        .expect("a page the bitmap wrote loads");
                }
                loaded.loaded(&[]);
                model.bits = model
                    .disk
                    .iter()
                    .flat_map(|(_, bits)| bits.clone())
                    .collect();
                model.needs_write.iter_mut().for_each(|flag| *flag = false);
                model.writing.iter_mut().for_each(|slot| *slot = None);
                bitmap = loaded;
                compare(&bitmap, &model);
                assert_eq!(bitmap.pages_ready_to_write().count(), 0);
            }
            8 => {
                // Load one page, perhaps damaged, into a fresh bitmap.
                let page = input.below(pages);
                let mut bytes = bitmap.encode_page(page as u32, TAG);
                let damage = input.u8();
                if damage & 1 != 0 {
                    let at = input.below(bytes.len());
                    bytes[at] ^= damage | 1;
                }
                let mut fresh = DirtyBitmap::new(&layout);
                let result = fresh.load_page(page as u32, &bytes, TAG);
                let first = page as u64 * BITMAP_BITS_PER_PAGE;
                let end = (first + BITMAP_BITS_PER_PAGE).min(count);
                let expected_weight = if result.is_ok() {
                    assert!(decode_page(&bytes, page as u32, TAG).is_ok());
                    model.bits[first as usize..end as usize]
                        .iter()
                        .filter(|&&bit| bit)
                        .count() as u64
                } else {
                    end - first
                };
                if damage & 1 == 0 {
                    assert!(
                        result.is_ok(),
                        "an undamaged page fails to load: {result:?}"
                    );
                }
                assert_eq!(fresh.weight(), expected_weight, "page {page} loaded");
            }
            _ => compare(&bitmap, &model),
        }
        assert_eq!(bitmap.weight(), model.weight(), "weight after op {op}");
    }
    compare(&bitmap, &model);
}

fn page_len(count: u64, page: usize) -> usize {
    let first = page as u64 * BITMAP_BITS_PER_PAGE;
    ((first + BITMAP_BITS_PER_PAGE).min(count) - first.min(count)) as usize
}

fn granule_range(input: &mut Input<'_>, count: u64) -> std::ops::Range<u64> {
    let start = input.below(count as usize) as u64;
    let room = count - start;
    let length = match input.u8() % 4 {
        0 => room,
        1 => u64::from(input.u16()) % (room + 1),
        _ => u64::from(input.u8()) % (room + 1),
    };
    start..start + length
}

fn compare(bitmap: &DirtyBitmap, model: &Model) {
    assert_eq!(bitmap.weight(), model.weight());
    let set: Vec<u64> = bitmap.iter_set().collect();
    let expected: Vec<u64> = (0..model.bits.len() as u64)
        .filter(|&g| model.bits[g as usize])
        .collect();
    assert_eq!(set, expected, "set granules");
}

/// Seeds: a few layouts with sets, clears, flushes, completions, crashes and page loads.
pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        // 4 KiB granules, 100 MiB: set, clear, flush, complete, crash.
        vec![0, 99, 0, 0, 10, 1, 200, 1, 12, 2, 50, 5, 6, 0, 0, 7, 9],
        // 64 KiB granules, 3 MiB: set all, flush, fail, flush, complete, crash, query.
        vec![4, 2, 3, 2, 5, 6, 0, 1, 5, 6, 0, 0, 7, 3, 5, 9],
        // 4 KiB granules, 255 MiB (two pages): ranges across the page boundary, damage.
        vec![
            0, 254, 0, 0, 0x70, 0x7f, 1, 0x80, 0, 5, 6, 1, 0, 8, 0, 1, 100, 8, 1, 0, 4, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 9,
        ],
    ]
}
