//! Feeding a target: the committed corpus, and pseudo-random inputs made from it (mutations:
//! bit flips, interesting values, insertions, deletions, truncation, splicing) or from nothing.
//! Deterministic for a seed, so a failure found by `cargo test` or `fuzz-run` replays.

use std::path::{Path, PathBuf};

use engine::prng::Prng;

/// Where the corpus of target `name` lives: `fuzz/corpus/<name>/`.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// The corpus files of target `name`, in file-name order, with their contents.
pub fn load_corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(corpus_dir(name)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect()
}

/// A short stable name for an input: FNV-1a, 64 bits, in hex.
pub fn input_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Values that often sit on a boundary of some check.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1000,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Makes inputs for one target: mutations of a pool (the corpus) or random bytes.
#[derive(Debug)]
pub struct Generator {
    prng: Prng,
    pool: Vec<Vec<u8>>,
    max_len: usize,
}

impl Generator {
    /// A generator seeded with `seed`, mutating `pool`, making inputs of at most `max_len`
    /// bytes (or of the longest pool entry, if longer).
    pub fn new(seed: u64, pool: Vec<Vec<u8>>, max_len: usize) -> Self {
        let longest = pool.iter().map(Vec::len).max().unwrap_or(0);
        Self {
            prng: Prng::from_seed(seed),
            pool,
            max_len: max_len.max(longest).max(1),
        }
    }

    /// The next input.
    pub fn next_input(&mut self) -> Vec<u8> {
        if self.pool.is_empty() || self.prng.chance(1, 8) {
            return self.random_bytes();
        }
        let base = self.prng.below(self.pool.len() as u64) as usize;
        let mut bytes = self.pool[base].clone();
        let rounds = 1 + self.prng.below(4) + self.prng.below(2) * self.prng.below(8);
        for _ in 0..rounds {
            self.mutate(&mut bytes);
        }
        bytes
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        // Mostly short inputs; sometimes up to the maximum.
        let bound = if self.prng.chance(3, 4) {
            self.max_len.min(64)
        } else {
            self.max_len
        };
        let length = self.prng.below(bound as u64 + 1) as usize;
        (0..length).map(|_| self.prng.next_u64() as u8).collect()
    }

    fn mutate(&mut self, bytes: &mut Vec<u8>) {
        let position = |prng: &mut Prng, len: usize| prng.below(len as u64 + 1) as usize;
        match self.prng.below(10) {
            0 | 1 if !bytes.is_empty() => {
                let at = self.prng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.prng.below(8);
            }
            2 if !bytes.is_empty() => {
                let at = self.prng.below(bytes.len() as u64) as usize;
                bytes[at] = self.prng.next_u64() as u8;
            }
            3 if !bytes.is_empty() => {
                // An interesting value, 1, 2, 4 or 8 bytes wide, either byte order.
                let width = 1usize << self.prng.below(4);
                let value = INTERESTING[self.prng.below(INTERESTING.len() as u64) as usize];
                let (little, big) = (value.to_le_bytes(), value.to_be_bytes());
                let field = if self.prng.chance(1, 2) {
                    &little[..width]
                } else {
                    &big[8 - width..]
                };
                let at = self.prng.below(bytes.len() as u64) as usize;
                let end = (at + width).min(bytes.len());
                bytes[at..end].copy_from_slice(&field[..end - at]);
            }
            4 if bytes.len() < self.max_len => {
                let at = position(&mut self.prng, bytes.len());
                let count = 1 + self.prng.below(16) as usize;
                let inserted: Vec<u8> = (0..count).map(|_| self.prng.next_u64() as u8).collect();
                bytes.splice(at..at, inserted);
            }
            5 if !bytes.is_empty() => {
                let at = self.prng.below(bytes.len() as u64) as usize;
                let end = (at + 1 + self.prng.below(16) as usize).min(bytes.len());
                bytes.drain(at..end);
            }
            6 => {
                let at = position(&mut self.prng, bytes.len());
                bytes.truncate(at);
            }
            7 if !bytes.is_empty() => {
                // Duplicate a chunk elsewhere.
                let from = self.prng.below(bytes.len() as u64) as usize;
                let end = (from + 1 + self.prng.below(32) as usize).min(bytes.len());
                let chunk = bytes[from..end].to_vec();
                let at = position(&mut self.prng, bytes.len());
                bytes.splice(at..at, chunk);
            }
            8 | 9 if !self.pool.is_empty() => {
                // Splice: our head with another entry's tail.
                let other = &self.pool[self.prng.below(self.pool.len() as u64) as usize];
                let cut = position(&mut self.prng, bytes.len());
                let other_cut = self.prng.below(other.len() as u64 + 1) as usize;
                bytes.truncate(cut);
                bytes.extend_from_slice(&other[other_cut..]);
            }
            _ => {
                let at = position(&mut self.prng, bytes.len());
                bytes.insert(at, self.prng.next_u64() as u8);
            }
        }
        bytes.truncate(self.max_len);
    }
}
