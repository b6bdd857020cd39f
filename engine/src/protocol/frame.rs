//! The frame: one message of the replication link, inside one sealed record.
//!
//! # Layout
//!
//! A 16-byte header, then the payload (compressed or not), all little-endian:
//!
//! ```text
//! offset size field
//!      0    4 magic, b"TNDF"
//!      4    1 frame format version, 1
//!      5    1 flags: bits 0-1 the compression codec of the payload (see `Compression::id`),
//!             bits 2-7 zero
//!      6    2 message kind, opaque at this layer
//!      8    4 length of the payload that follows, as sent (after compression)
//!     12    4 CRC-32 (IEEE) of header bytes 0..12 followed by the *decompressed* payload
//!     16    - payload
//! ```
//!
//! The record layer already authenticates every byte; the CRC covers the payload as the sender
//! handed it over, so it also catches a codec that decodes to something else than was encoded.
//!
//! Decoding is total: any byte string yields a [`Frame`] or a [`FrameError`], never a panic,
//! and never allocates more than the payload limit the caller passes (at most
//! [`FRAME_PAYLOAD_BYTES_MAX`]).

use crate::protocol::compress::{Compression, Compressor, DecompressError, Decompressor};

/// The frame's magic bytes.
pub const FRAME_MAGIC: [u8; 4] = *b"TNDF";

/// The frame format version this build writes and reads.
pub const FRAME_VERSION: u8 = 1;

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 16;

/// The largest payload a frame can carry: a 32 MiB write plus room for its request header.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 33 * 1024 * 1024;

/// The bits of the flags byte that hold the compression codec.
const FLAGS_CODEC_MASK: u8 = 0b11;

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message kind.
    pub kind: u16,
    /// The codec the payload travelled with.
    pub compression: Compression,
    /// The payload, decompressed.
    pub payload: Vec<u8>,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message kind.
    pub kind: u16,
    /// The codec of the payload.
    pub compression: Compression,
    /// Bytes of payload after the header, as sent.
    pub length: u32,
    /// The CRC-32 field.
    pub checksum: u32,
}

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame: {bytes} bytes, shorter than a header")]
    Truncated {
        /// Bytes present.
        bytes: usize,
    },
    /// The magic bytes are wrong.
    #[error("frame: bad magic")]
    BadMagic,
    /// A frame format this build does not read.
    #[error("frame: unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The flags name an unknown codec or set reserved bits.
    #[error("frame: unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The length field disagrees with the bytes present.
    #[error("frame: header announces {announced} payload bytes, {present} present")]
    LengthMismatch {
        /// The length field.
        announced: u32,
        /// Bytes after the header.
        present: usize,
    },
    /// The payload is larger than the limit.
    #[error("frame: payload of {bytes} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload bytes.
        bytes: u64,
        /// The limit.
        max: u32,
    },
    /// The payload does not decompress.
    #[error("frame: {0}")]
    Decompress(#[from] DecompressError),
    /// The CRC does not match the header and decompressed payload.
    #[error("frame: checksum mismatch")]
    Checksum,
}

/// Appends a frame carrying `payload` to `out`, compressed with `compression` if that makes it
/// smaller. Returns the codec actually used.
pub fn encode(
    kind: u16,
    payload: &[u8],
    compression: Compression,
    compressor: &mut Compressor,
    out: &mut Vec<u8>,
) -> Result<Compression, FrameError> {
    if payload.len() > FRAME_PAYLOAD_BYTES_MAX as usize {
        return Err(FrameError::TooLarge {
            bytes: payload.len() as u64,
            max: FRAME_PAYLOAD_BYTES_MAX,
        });
    }
    let header_at = out.len();
    out.resize(header_at + FRAME_HEADER_BYTES, 0);
    let used = compressor.compress_into(compression, payload, out);
    let length = u32::try_from(out.len() - header_at - FRAME_HEADER_BYTES)
        .expect("a frame payload never grows past its uncompressed size");
    debug_assert!(length as usize <= payload.len());

    let header = &mut out[header_at..header_at + FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4] = FRAME_VERSION;
    header[5] = used.id();
    header[6..8].copy_from_slice(&kind.to_le_bytes());
    header[8..12].copy_from_slice(&length.to_le_bytes());
    let checksum = frame_checksum(&header[..12], payload);
    header[12..16].copy_from_slice(&checksum.to_le_bytes());
    Ok(used)
}

/// Parses and checks the header of `frame` (a whole frame: header and payload), refusing a
/// payload above `payload_bytes_max` (capped at [`FRAME_PAYLOAD_BYTES_MAX`]).
pub fn decode_header(frame: &[u8], payload_bytes_max: u32) -> Result<FrameHeader, FrameError> {
    let Some((header, payload)) = frame.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        return Err(FrameError::Truncated { bytes: frame.len() });
    };
    if header[0..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[4] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(header[4]));
    }
    let flags = header[5];
    let compression = Compression::from_id(flags & FLAGS_CODEC_MASK)
        .filter(|_| flags & !FLAGS_CODEC_MASK == 0)
        .ok_or(FrameError::UnknownFlags(flags))?;
    let kind = u16::from_le_bytes([header[6], header[7]]);
    let length = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let checksum = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let max = payload_bytes_max.min(FRAME_PAYLOAD_BYTES_MAX);
    if length > max {
        return Err(FrameError::TooLarge {
            bytes: u64::from(length),
            max,
        });
    }
    if length as usize != payload.len() {
        return Err(FrameError::LengthMismatch {
            announced: length,
            present: payload.len(),
        });
    }
    Ok(FrameHeader {
        kind,
        compression,
        length,
        checksum,
    })
}

/// Decodes a whole frame, copying or decompressing its payload.
pub fn decode(
    frame: &[u8],
    payload_bytes_max: u32,
    decompressor: &mut Decompressor,
) -> Result<Frame, FrameError> {
    let header = decode_header(frame, payload_bytes_max)?;
    let wire_payload = &frame[FRAME_HEADER_BYTES..];
    let payload = match header.compression {
        Compression::None => wire_payload.to_vec(),
        codec => decompress(codec, wire_payload, payload_bytes_max, decompressor)?,
    };
    verify(frame, &header, &payload)?;
    Ok(Frame {
        kind: header.kind,
        compression: header.compression,
        payload,
    })
}

/// Decodes the whole frame held in `buffer` without copying an uncompressed payload: that
/// payload is moved to the front of `buffer` and the buffer itself becomes the frame's payload
/// (leaving `buffer` empty). A compressed payload is decompressed into a new vector and
/// `buffer` is left as it was, for the caller to reuse.
pub fn decode_vec(
    buffer: &mut Vec<u8>,
    payload_bytes_max: u32,
    decompressor: &mut Decompressor,
) -> Result<Frame, FrameError> {
    let header = decode_header(buffer, payload_bytes_max)?;
    let payload = match header.compression {
        Compression::None => {
            verify(buffer, &header, &buffer[FRAME_HEADER_BYTES..])?;
            buffer.drain(..FRAME_HEADER_BYTES);
            std::mem::take(buffer)
        }
        codec => {
            let wire_payload = &buffer[FRAME_HEADER_BYTES..];
            let payload = decompress(codec, wire_payload, payload_bytes_max, decompressor)?;
            verify(buffer, &header, &payload)?;
            payload
        }
    };
    Ok(Frame {
        kind: header.kind,
        compression: header.compression,
        payload,
    })
}

fn decompress(
    codec: Compression,
    wire_payload: &[u8],
    payload_bytes_max: u32,
    decompressor: &mut Decompressor,
) -> Result<Vec<u8>, FrameError> {
    let max = payload_bytes_max.min(FRAME_PAYLOAD_BYTES_MAX);
    Ok(decompressor.decompress(codec, wire_payload, max as usize)?)
}

fn verify(frame: &[u8], header: &FrameHeader, payload: &[u8]) -> Result<(), FrameError> {
    if frame_checksum(&frame[..12], payload) == header.checksum {
        Ok(())
    } else {
        Err(FrameError::Checksum)
    }
}

fn frame_checksum(header_head: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_head);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::Prng;

    fn encode_one(kind: u16, payload: &[u8], compression: Compression) -> (Compression, Vec<u8>) {
        let mut out = Vec::new();
        let used =
            encode(kind, payload, compression, &mut Compressor::new(), &mut out).expect("encodes");
        (used, out)
    }

    fn decode_one(frame: &[u8]) -> Result<Frame, FrameError> {
        decode(frame, FRAME_PAYLOAD_BYTES_MAX, &mut Decompressor::new())
    }

    #[test]
    fn round_trip_with_every_codec() {
        let compressible = vec![b'z'; 10_000];
        for codec in Compression::ALL {
            for payload in [&b""[..], b"x", &compressible] {
                let (used, frame) = encode_one(0xBEEF, payload, codec);
                let expected_codec = if payload.len() > 100 {
                    codec
                } else {
                    Compression::None
                };
                assert_eq!(used, expected_codec);
                assert_eq!(&frame[0..4], b"TNDF");
                assert_eq!(frame[4], 1);
                assert_eq!(frame[5], used.id());
                assert_eq!(&frame[6..8], &0xBEEFu16.to_le_bytes());
                let expected = Frame {
                    kind: 0xBEEF,
                    compression: used,
                    payload: payload.to_vec(),
                };
                assert_eq!(decode_one(&frame), Ok(expected.clone()));
                let mut buffer = frame.clone();
                let decoded = decode_vec(&mut buffer, 20_000, &mut Decompressor::new());
                assert_eq!(decoded, Ok(expected));
            }
        }
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut out = vec![1, 2, 3, 4];
        encode(
            7,
            b"abc",
            Compression::None,
            &mut Compressor::new(),
            &mut out,
        )
        .expect("encodes");
        assert_eq!(&out[..4], &[1, 2, 3, 4]);
        assert_eq!(out.len(), 4 + FRAME_HEADER_BYTES + 3);
        assert_eq!(decode_one(&out[4..]).expect("decodes").payload, b"abc");
    }

    #[test]
    fn malformed_headers_have_reasons() {
        let (_, frame) = encode_one(1, b"payload", Compression::None);
        assert_eq!(
            decode_one(&frame[..10]),
            Err(FrameError::Truncated { bytes: 10 })
        );
        let mut bad = frame.clone();
        bad[0] = b'X';
        assert_eq!(decode_one(&bad), Err(FrameError::BadMagic));
        assert_eq!(FrameError::BadMagic.to_string(), "frame: bad magic");
        let mut bad = frame.clone();
        bad[4] = 2;
        assert_eq!(decode_one(&bad), Err(FrameError::UnsupportedVersion(2)));
        for flags in [3u8, 0x04, 0x81] {
            let mut bad = frame.clone();
            bad[5] = flags;
            assert_eq!(decode_one(&bad), Err(FrameError::UnknownFlags(flags)));
        }
        assert_eq!(
            decode_one(&frame[..frame.len() - 1]),
            Err(FrameError::LengthMismatch {
                announced: 7,
                present: 6
            })
        );
        let mut bad = frame.clone();
        bad[20] ^= 1;
        assert_eq!(decode_one(&bad), Err(FrameError::Checksum));
        let mut bad = frame.clone();
        bad[7] ^= 1; // the kind is covered by the CRC too
        assert_eq!(decode_one(&bad), Err(FrameError::Checksum));
    }

    #[test]
    fn payload_limits_are_enforced_both_ways() {
        let payload = vec![0u8; 1000];
        let (_, frame) = encode_one(1, &payload, Compression::None);
        assert_eq!(
            decode(&frame, 999, &mut Decompressor::new()),
            Err(FrameError::TooLarge {
                bytes: 1000,
                max: 999
            })
        );
        // Compressed, the wire payload is small but the decompressed one is not.
        let (used, frame) = encode_one(1, &payload, Compression::Lz4);
        assert_eq!(used, Compression::Lz4);
        assert!(matches!(
            decode(&frame, 999, &mut Decompressor::new()),
            Err(FrameError::Decompress(DecompressError::TooLarge { .. }))
        ));
        let too_big = vec![0u8; FRAME_PAYLOAD_BYTES_MAX as usize + 1];
        let mut out = Vec::new();
        let result = encode(
            1,
            &too_big,
            Compression::None,
            &mut Compressor::new(),
            &mut out,
        );
        assert!(matches!(result, Err(FrameError::TooLarge { .. })));
        // A header announcing more than the absolute maximum is refused before anything else.
        let mut header = frame[..FRAME_HEADER_BYTES].to_vec();
        header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&header, u32::MAX, &mut Decompressor::new()),
            Err(FrameError::TooLarge {
                max: FRAME_PAYLOAD_BYTES_MAX,
                ..
            })
        ));
    }

    #[test]
    fn compressed_payload_damage_is_caught() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let (used, frame) = encode_one(9, &payload, codec);
            assert_eq!(used, codec);
            for at in [FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 5, frame.len() - 1] {
                let mut bad = frame.clone();
                bad[at] ^= 0x10;
                assert!(decode_one(&bad).is_err(), "{codec}: byte {at} flipped");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut prng = Prng::from_seed(0xF4A3E);
        let mut decompressor = Decompressor::new();
        let (_, lz4) = encode_one(3, &[7u8; 5000], Compression::Lz4);
        let (_, zstd) = encode_one(3, &[7u8; 5000], Compression::Zstd);
        for round in 0..20_000u32 {
            let mut bytes: Vec<u8> = match round % 4 {
                0 => {
                    let len = prng.below(64) as usize;
                    (0..len).map(|_| prng.next_u64() as u8).collect()
                }
                1 => lz4.clone(),
                2 => zstd.clone(),
                _ => {
                    // A valid-looking header with random fields and a random body.
                    let len = prng.below(100) as usize;
                    let mut bytes = vec![0u8; FRAME_HEADER_BYTES + len];
                    bytes.iter_mut().for_each(|b| *b = prng.next_u64() as u8);
                    bytes[..4].copy_from_slice(&FRAME_MAGIC);
                    bytes[4] = FRAME_VERSION;
                    bytes[5] = (prng.below(3)) as u8;
                    bytes[8..12].copy_from_slice(&(len as u32).to_le_bytes());
                    bytes
                }
            };
            if round % 4 == 1 || round % 4 == 2 {
                for _ in 0..prng.range_inclusive(1, 3) {
                    let at = prng.below(bytes.len() as u64) as usize;
                    bytes[at] = prng.next_u64() as u8;
                }
                if prng.chance(1, 3) {
                    bytes.truncate(prng.below(bytes.len() as u64) as usize);
                }
            }
            if let Ok(frame) = decode(&bytes, 10_000, &mut decompressor) {
                assert!(frame.payload.len() <= 10_000);
            }
            let mut buffer = bytes.clone();
            if let Ok(frame) = decode_vec(&mut buffer, 10_000, &mut decompressor) {
                assert!(frame.payload.len() <= 10_000);
            }
        }
    }
}
