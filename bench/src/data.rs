//! What the benchmark writes: data as it would be in real life.
//!
//! Real clients write data that differs from one write to the next and is, more often than
//! not, already compressed or encrypted (databases with page compression, media, backups, VM
//! images of encrypted guests). The default is therefore random, incompressible data; the
//! compressible variant shows what compression buys when the data allows it.

use std::fmt;

use engine::buffer::{IoBuf, IoBufMut};
use engine::prng::Prng;

/// Bytes of the page the compressible pattern repeats in.
const PAGE_BYTES: usize = 4096;

/// What the written blocks contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Random bytes: incompressible, like encrypted or already-compressed data.
    Random,
    /// Each 4 KiB page holds 2 KiB of random bytes, then 2 KiB of zeros: lz4 and zstd shrink it
    /// to about half (fio's `buffer_compress_percentage=50`, `buffer_compress_chunk=4k`).
    Compressible,
}

impl DataKind {
    /// The name used in tables and results.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Compressible => "compressible",
        }
    }

    /// Random bytes per 4 KiB page (the rest are zeros).
    const fn random_bytes_per_page(self) -> usize {
        match self {
            Self::Random => PAGE_BYTES,
            Self::Compressible => PAGE_BYTES / 2,
        }
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A pool of distinct aligned blocks. Writers cycle through it, so consecutive writes carry
/// different bytes and the pool (64 MiB by default) does not stay in the CPU caches, as client
/// data arriving from elsewhere would not.
#[derive(Debug)]
pub struct DataSet {
    kind: DataKind,
    blocks: Vec<IoBuf>,
}

impl DataSet {
    /// Blocks in a pool unless told otherwise.
    pub const BLOCKS_DEFAULT: usize = 64;

    /// `count` blocks of `block_bytes` of `kind`, from a fixed seed (the same bytes every run).
    pub fn new(kind: DataKind, block_bytes: usize, count: usize) -> Self {
        let mut prng = Prng::from_seed(0x7A4D_E11A ^ block_bytes as u64);
        let blocks = (0..count.max(1))
            .map(|_| fill_block(kind, block_bytes, &mut prng))
            .collect();
        Self { kind, blocks }
    }

    /// One block, repeated: the fixed pattern of the local benchmark.
    pub fn constant(byte: u8, block_bytes: usize) -> Self {
        Self {
            kind: DataKind::Compressible,
            blocks: vec![IoBuf::copy_from(&vec![byte; block_bytes])],
        }
    }

    /// What the blocks contain.
    pub fn kind(&self) -> DataKind {
        self.kind
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> usize {
        self.blocks.first().map_or(0, IoBuf::len)
    }

    /// The `index`-th block, cycling through the pool.
    pub fn block(&self, index: u64) -> &IoBuf {
        &self.blocks[(index % self.blocks.len() as u64) as usize]
    }

    /// Every block of the pool.
    pub fn blocks(&self) -> &[IoBuf] {
        &self.blocks
    }
}

fn fill_block(kind: DataKind, block_bytes: usize, prng: &mut Prng) -> IoBuf {
    let mut block = IoBufMut::zeroed(block_bytes);
    let random_bytes = kind.random_bytes_per_page();
    for page in block.as_mut_slice().chunks_mut(PAGE_BYTES) {
        let end = random_bytes.min(page.len());
        for word in page[..end].chunks_mut(8) {
            let bytes = prng.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
    block.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_blocks_differ_and_do_not_compress() {
        let set = DataSet::new(DataKind::Random, 1 << 20, 2);
        assert_ne!(set.block(0).as_slice(), set.block(1).as_slice());
        assert_eq!(set.block(2).as_slice(), set.block(0).as_slice());
        let (codec, _) = engine::protocol::compress::compress(
            engine::protocol::compress::Compression::Lz4,
            set.block(0).as_slice(),
        );
        assert_eq!(codec, engine::protocol::compress::Compression::None);
    }

    #[test]
    fn compressible_blocks_shrink_to_about_half() {
        let set = DataSet::new(DataKind::Compressible, 1 << 20, 1);
        let payload = set.block(0).as_slice();
        assert!(payload[PAGE_BYTES / 2..PAGE_BYTES].iter().all(|&b| b == 0));
        let (_, compressed) = engine::protocol::compress::compress(
            engine::protocol::compress::Compression::Lz4,
            payload,
        );
        let ratio = compressed.len() as f64 / payload.len() as f64;
        assert!((0.45..0.6).contains(&ratio), "lz4 ratio {ratio}");
    }
}
