//! Per-volume payload compression for the replication link.
//!
//! A payload is compressed with the volume's [`Compression`] only if that makes it smaller;
//! otherwise it travels as-is and the frame says [`Compression::None`]. Both compressed formats
//! describe their own decompressed size, which the decoder checks against a caller-given limit
//! *before* allocating, so a peer cannot make the receiver allocate more than that limit.
//!
//! # Layouts
//!
//! - [`Compression::None`]: the payload bytes.
//! - [`Compression::Lz4`]: `[u32 LE decompressed size][LZ4 block]` (lz4_flex's size-prepended
//!   block format).
//! - [`Compression::Zstd`]: one zstd frame whose header carries the content size (zstd's
//!   single-shot compression always writes it).
//!
//! Decompression is total: any byte string yields a payload or a [`DecompressError`], never a
//! panic.

use std::fmt;

/// The codec of a payload on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// The payload as-is.
    None,
    /// LZ4 block format: fast enough for any LAN link; the default.
    #[default]
    Lz4,
    /// zstd, for slow links where the better ratio pays for the CPU.
    Zstd,
}

impl Compression {
    /// Every codec, in id order.
    pub const ALL: [Self; 3] = [Self::None, Self::Lz4, Self::Zstd];

    /// The codec's id on the wire.
    pub const fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
            Self::Zstd => 2,
        }
    }

    /// The codec with wire id `id`, if there is one.
    pub const fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Self::None),
            1 => Some(Self::Lz4),
            2 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The codec's name, as in configuration files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The zstd level used unless told otherwise: level 1 compresses at about 0.4 GiB/s per core
/// here with a ratio close to level 3's (crates.md §1.4).
pub const ZSTD_LEVEL_DEFAULT: i32 = 1;

/// Why a payload could not be decompressed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The payload claims a decompressed size above the caller's limit.
    #[error("{codec} payload claims {claimed} bytes, more than the limit of {max}")]
    TooLarge {
        /// The codec of the payload.
        codec: Compression,
        /// The size the payload claims.
        claimed: u64,
        /// The caller's limit.
        max: usize,
    },
    /// The payload is not valid data of its codec.
    #[error("corrupt {codec} payload: {reason}")]
    Corrupt {
        /// The codec of the payload.
        codec: Compression,
        /// What the decoder found wrong.
        reason: String,
    },
}

impl DecompressError {
    fn corrupt(codec: Compression, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            codec,
            reason: reason.into(),
        }
    }
}

/// Compresses payloads; keeps a zstd context between calls, as one stream should.
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    zstd_level: i32,
}

impl Compressor {
    /// A compressor using zstd level [`ZSTD_LEVEL_DEFAULT`].
    pub fn new() -> Self {
        Self::with_zstd_level(ZSTD_LEVEL_DEFAULT)
    }

    /// A compressor using zstd level `zstd_level` (negative levels are faster still).
    pub fn with_zstd_level(zstd_level: i32) -> Self {
        Self {
            zstd: None,
            zstd_level,
        }
    }

    /// Appends `payload` to `out`, compressed with `codec` if that makes it strictly smaller,
    /// and returns the codec actually used.
    pub fn compress_into(
        &mut self,
        codec: Compression,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Compression {
        let start = out.len();
        let compressed = match codec {
            Compression::None => false,
            Compression::Lz4 => compress_lz4(payload, out),
            Compression::Zstd => self.compress_zstd(payload, out),
        };
        if compressed {
            debug_assert!(out.len() - start < payload.len());
            return codec;
        }
        out.truncate(start);
        out.extend_from_slice(payload);
        Compression::None
    }

    /// Compresses into `out` after its current end; false (with `out` in any state) if the
    /// result would not be smaller.
    fn compress_zstd(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        if payload.len() < 2 {
            return false;
        }
        if self.zstd.is_none() {
            // Context creation only fails when memory runs out; then send the payload as-is.
            self.zstd = zstd::bulk::Compressor::new(self.zstd_level).ok();
        }
        let Some(zstd) = self.zstd.as_mut() else {
            return false;
        };
        let start = out.len();
        // The output must be strictly smaller; zstd stops with an error when it does not fit.
        out.resize(start + payload.len() - 1, 0);
        match zstd.compress_to_buffer(payload, &mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                true
            }
            Err(_) => false,
        }
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("zstd_level", &self.zstd_level)
            .finish_non_exhaustive()
    }
}

/// LZ4 with a 4-byte size prefix, after the current end of `out`; false if not smaller.
fn compress_lz4(payload: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(size) = u32::try_from(payload.len()) else {
        return false;
    };
    if payload.len() <= 4 {
        return false;
    }
    let start = out.len();
    out.resize(
        start + 4 + lz4_flex::block::get_maximum_output_size(payload.len()),
        0,
    );
    out[start..start + 4].copy_from_slice(&size.to_le_bytes());
    let Ok(written) = lz4_flex::block::compress_into(payload, &mut out[start + 4..]) else {
        return false;
    };
    out.truncate(start + 4 + written);
    4 + written < payload.len()
}

/// Decompresses payloads; keeps a zstd context between calls.
#[derive(Default)]
pub struct Decompressor {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decompressor {
    /// A decompressor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decompresses `bytes` of codec `codec`, refusing (before allocating) anything that claims
    /// more than `size_max` bytes.
    pub fn decompress(
        &mut self,
        codec: Compression,
        bytes: &[u8],
        size_max: usize,
    ) -> Result<Vec<u8>, DecompressError> {
        let too_large = |claimed: u64| DecompressError::TooLarge {
            codec,
            claimed,
            max: size_max,
        };
        match codec {
            Compression::None => {
                if bytes.len() > size_max {
                    return Err(too_large(bytes.len() as u64));
                }
                Ok(bytes.to_vec())
            }
            Compression::Lz4 => {
                let Some((prefix, block)) = bytes.split_first_chunk::<4>() else {
                    return Err(DecompressError::corrupt(
                        codec,
                        "shorter than its size prefix",
                    ));
                };
                let size = u32::from_le_bytes(*prefix);
                if size as usize > size_max {
                    return Err(too_large(u64::from(size)));
                }
                let mut out = vec![0u8; size as usize];
                match lz4_flex::block::decompress_into(block, &mut out) {
                    Ok(written) if written == out.len() => Ok(out),
                    Ok(written) => Err(DecompressError::corrupt(
                        codec,
                        format!("{written} bytes decoded, {size} announced"),
                    )),
                    Err(error) => Err(DecompressError::corrupt(codec, error.to_string())),
                }
            }
            Compression::Zstd => {
                let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
                    Ok(Some(size)) => size,
                    Ok(None) => {
                        return Err(DecompressError::corrupt(codec, "no content size"));
                    }
                    Err(_) => return Err(DecompressError::corrupt(codec, "bad frame header")),
                };
                if size > size_max as u64 {
                    return Err(too_large(size));
                }
                if self.zstd.is_none() {
                    let context = zstd::bulk::Decompressor::new()
                        .map_err(|error| DecompressError::corrupt(codec, error.to_string()))?;
                    self.zstd = Some(context);
                }
                let zstd = self.zstd.as_mut().expect("created above");
                // The output is capped at the announced size: a stream that decodes to more
                // fails with "destination buffer too small" instead of growing the buffer.
                let mut out = Vec::with_capacity(size as usize);
                let written = zstd
                    .decompress_to_buffer(bytes, &mut out)
                    .map_err(|error| DecompressError::corrupt(codec, error.to_string()))?;
                if written as u64 != size || out.len() != written {
                    return Err(DecompressError::corrupt(
                        codec,
                        format!("{written} bytes decoded, {size} announced"),
                    ));
                }
                Ok(out)
            }
        }
    }
}

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor")
            .field("zstd_context", &self.zstd.is_some())
            .finish()
    }
}

/// Compresses `payload` with `codec` if that makes it smaller; returns the codec used and the
/// bytes to send. A convenience over [`Compressor::compress_into`] for one-off use.
pub fn compress(codec: Compression, payload: &[u8]) -> (Compression, Vec<u8>) {
    let mut out = Vec::new();
    let used = Compressor::new().compress_into(codec, payload, &mut out);
    (used, out)
}

/// Decompresses `bytes` of codec `codec`, refusing anything above `size_max` bytes. A
/// convenience over [`Decompressor::decompress`] for one-off use.
pub fn decompress(
    codec: Compression,
    bytes: &[u8],
    size_max: usize,
) -> Result<Vec<u8>, DecompressError> {
    Decompressor::new().decompress(codec, bytes, size_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::Prng;

    fn random_bytes(prng: &mut Prng, len: usize) -> Vec<u8> {
        (0..len).map(|_| prng.next_u64() as u8).collect()
    }

    /// Half text-like, half zero: compresses well with both codecs.
    fn compressible(len: usize) -> Vec<u8> {
        let text = b"2026-01-01 replica 3 wrote block 42 at generation 7; ";
        (0..len)
            .map(|i| {
                if i % 8192 < 4096 {
                    text[i % text.len()]
                } else {
                    0
                }
            })
            .collect()
    }

    #[test]
    fn codec_ids_round_trip() {
        for codec in Compression::ALL {
            assert_eq!(Compression::from_id(codec.id()), Some(codec));
        }
        assert_eq!(Compression::from_id(3), None);
        assert_eq!(Compression::default(), Compression::Lz4);
        assert_eq!(Compression::Zstd.to_string(), "zstd");
    }

    #[test]
    fn compressible_payloads_shrink_and_round_trip() {
        let mut compressor = Compressor::new();
        let mut decompressor = Decompressor::new();
        for len in [256usize, 4096, 65_536, 1 << 20] {
            let payload = compressible(len);
            for codec in [Compression::Lz4, Compression::Zstd] {
                let mut out = vec![0xEE; 3];
                let used = compressor.compress_into(codec, &payload, &mut out);
                assert_eq!(used, codec, "{len} bytes compress with {codec}");
                assert_eq!(&out[..3], &[0xEE; 3], "existing bytes are kept");
                assert!(
                    out.len() - 3 < len / 2,
                    "{codec} {len}: {} bytes",
                    out.len()
                );
                let back = decompressor
                    .decompress(used, &out[3..], len)
                    .expect("decompresses");
                assert_eq!(back, payload);
            }
        }
    }

    #[test]
    fn incompressible_and_tiny_payloads_travel_as_is() {
        let mut prng = Prng::from_seed(1);
        let mut compressor = Compressor::new();
        for len in [0usize, 1, 2, 4, 5, 100, 4096, 100_000] {
            let payload = random_bytes(&mut prng, len);
            for codec in Compression::ALL {
                let mut out = Vec::new();
                let used = compressor.compress_into(codec, &payload, &mut out);
                assert_eq!(used, Compression::None, "{len} random bytes with {codec}");
                assert_eq!(out, payload);
                assert_eq!(decompress(used, &out, len), Ok(payload.clone()));
            }
        }
    }

    #[test]
    fn one_off_helpers_agree_with_the_contexts() {
        let payload = compressible(10_000);
        for codec in Compression::ALL {
            let (used, bytes) = compress(codec, &payload);
            assert_eq!(used, codec);
            assert_eq!(decompress(used, &bytes, payload.len()), Ok(payload.clone()));
        }
    }

    #[test]
    fn claimed_sizes_above_the_limit_are_refused() {
        let payload = compressible(100_000);
        for codec in Compression::ALL {
            let (used, bytes) = compress(codec, &payload);
            assert_eq!(
                decompress(used, &bytes, payload.len() - 1),
                Err(DecompressError::TooLarge {
                    codec,
                    claimed: payload.len() as u64,
                    max: payload.len() - 1,
                })
            );
        }
        // A 4 GiB claim in an LZ4 prefix is refused without allocating it.
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            decompress(Compression::Lz4, &huge, 1 << 20),
            Err(DecompressError::TooLarge { claimed, .. }) if claimed == u64::from(u32::MAX)
        ));
    }

    #[test]
    fn lying_sizes_are_corrupt() {
        let payload = compressible(10_000);
        let (_, mut bytes) = compress(Compression::Lz4, &payload);
        bytes[..4].copy_from_slice(&9_000u32.to_le_bytes());
        assert!(matches!(
            decompress(Compression::Lz4, &bytes, 20_000),
            Err(DecompressError::Corrupt { .. })
        ));
        bytes[..4].copy_from_slice(&11_000u32.to_le_bytes());
        assert!(matches!(
            decompress(Compression::Lz4, &bytes, 20_000),
            Err(DecompressError::Corrupt { .. })
        ));
        // Two zstd frames back to back decode to more than the first one announces.
        let (_, mut two) = compress(Compression::Zstd, &payload);
        let second = two.clone();
        two.extend_from_slice(&second);
        assert!(matches!(
            decompress(Compression::Zstd, &two, 100_000),
            Err(DecompressError::Corrupt { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut prng = Prng::from_seed(0x5EED);
        let mut decompressor = Decompressor::new();
        let samples: Vec<Vec<u8>> = [Compression::Lz4, Compression::Zstd]
            .iter()
            .map(|&codec| compress(codec, &compressible(20_000)).1)
            .collect();
        for round in 0..3000 {
            let mut bytes = match round % 3 {
                // Pure noise.
                0 => {
                    let len = prng.below(200) as usize;
                    random_bytes(&mut prng, len)
                }
                // A valid stream with a few bytes changed.
                1 => {
                    let mut bytes = samples[round % 2].clone();
                    for _ in 0..prng.range_inclusive(1, 4) {
                        let at = prng.below(bytes.len() as u64) as usize;
                        bytes[at] = prng.next_u64() as u8;
                    }
                    bytes
                }
                // A valid stream cut short.
                _ => {
                    let bytes = &samples[round % 2];
                    bytes[..prng.below(bytes.len() as u64) as usize].to_vec()
                }
            };
            if round % 7 == 0 && bytes.len() >= 4 {
                // A plausible LZ4 size prefix makes the decoder actually run.
                bytes[..4].copy_from_slice(&(prng.below(50_000) as u32).to_le_bytes());
            }
            for codec in Compression::ALL {
                if let Ok(out) = decompressor.decompress(codec, &bytes, 40_000) {
                    assert!(out.len() <= 40_000);
                }
            }
        }
    }
}
