//! The journal record: one client write (or trim, or zeroing) in write order.
//!
//! Byte layout of a record in the ring (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TJRN` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | kind: 1 write, 2 trim, 3 write zeroes, 4 wrap (the next record is at ring offset 0) |
//! | 6 | 2 | flags: bit 0 FUA |
//! | 8 | 8 | sequence number |
//! | 16 | 8 | volume offset in bytes |
//! | 24 | 4 | length in bytes of the volume range |
//! | 28 | 4 | payload bytes that follow the header (the length for writes, else 0) |
//! | 32 | 4 | instance tag |
//! | 36 | 4 | CRC-32 of the payload |
//! | 40 | 20 | reserved, zero |
//! | 60 | 4 | CRC-32 of bytes 0..60 |
//! | 64 | n | payload |
//!
//! A record is padded with zeros to a multiple of 4 KiB, so every record starts on a block
//! boundary and never straddles the end of the ring (a wrap record fills the gap instead).
//! Limits: a payload is at most [`RECORD_PAYLOAD_BYTES_MAX`].

use crate::codec::{FieldReader, FieldWriter, checksum};
use crate::types::{BLOCK_BYTES, Seq};

/// Magic at the start of every record.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TJRN");
/// Record format version.
pub const RECORD_VERSION: u8 = 1;
/// Header bytes before the payload.
pub const RECORD_HEADER_BYTES: u64 = 64;
/// The largest payload one record carries (the largest client write).
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 32 << 20;

/// What a record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Data written; the payload holds it.
    Write,
    /// A range discarded (reads back as zeros).
    Trim,
    /// A range set to zeros.
    WriteZeroes,
    /// Not a client operation: the ring continues at offset 0.
    Wrap,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            Self::Write => 1,
            Self::Trim => 2,
            Self::WriteZeroes => 3,
            Self::Wrap => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Write,
            2 => Self::Trim,
            3 => Self::WriteZeroes,
            4 => Self::Wrap,
            _ => return None,
        })
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What the record describes.
    pub kind: RecordKind,
    /// The write had FUA set.
    pub fua: bool,
    /// Position in the write history.
    pub seq: Seq,
    /// Volume offset of the range.
    pub offset: u64,
    /// Bytes in the range.
    pub length: u32,
    /// Payload bytes stored after the header.
    pub payload_bytes: u32,
    /// CRC-32 of the payload.
    pub payload_checksum: u32,
}

impl RecordHeader {
    /// Bytes the record takes in the ring, padding included.
    pub fn stored_bytes(&self) -> u64 {
        stored_bytes(u64::from(self.payload_bytes))
    }
}

/// Bytes a record with `payload_bytes` takes in the ring.
pub fn stored_bytes(payload_bytes: u64) -> u64 {
    (RECORD_HEADER_BYTES + payload_bytes).div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Encodes a record (header, payload, padding) and appends it to `out`.
pub fn encode(header: &RecordHeader, payload: &[u8], instance_tag: u32, out: &mut Vec<u8>) {
    assert_eq!(payload.len() as u64, u64::from(header.payload_bytes));
    assert!(u64::from(header.payload_bytes) <= RECORD_PAYLOAD_BYTES_MAX);
    let start = out.len();
    out.resize(start + header.stored_bytes() as usize, 0);
    let record = &mut out[start..];
    let mut w = FieldWriter::new(&mut record[..RECORD_HEADER_BYTES as usize]);
    w.put_u32(RECORD_MAGIC);
    w.put_u8(RECORD_VERSION);
    w.put_u8(header.kind.code());
    w.put_u16(u16::from(header.fua));
    w.put_u64(header.seq.0);
    w.put_u64(header.offset);
    w.put_u32(header.length);
    w.put_u32(header.payload_bytes);
    w.put_u32(instance_tag);
    w.put_u32(checksum(payload));
    w.skip(20);
    let header_sum = checksum(&record[..60]);
    record[60..64].copy_from_slice(&header_sum.to_le_bytes());
    record[RECORD_HEADER_BYTES as usize..][..payload.len()].copy_from_slice(payload);
}

/// Decodes a header from the first 64 bytes of `bytes`; `None` if it is not a valid header of
/// this instance.
pub fn decode_header(bytes: &[u8], instance_tag: u32) -> Option<RecordHeader> {
    let header = bytes.get(..RECORD_HEADER_BYTES as usize)?;
    let stored_sum = u32::from_le_bytes([header[60], header[61], header[62], header[63]]);
    if checksum(&header[..60]) != stored_sum {
        return None;
    }
    let mut r = FieldReader::new(header);
    if r.u32()? != RECORD_MAGIC || r.u8()? != RECORD_VERSION {
        return None;
    }
    let kind = RecordKind::from_code(r.u8()?)?;
    let fua = r.u16()? & 1 != 0;
    let seq = Seq(r.u64()?);
    let offset = r.u64()?;
    let length = r.u32()?;
    let payload_bytes = r.u32()?;
    if r.u32()? != instance_tag || u64::from(payload_bytes) > RECORD_PAYLOAD_BYTES_MAX {
        return None;
    }
    let payload_checksum = r.u32()?;
    let consistent = match kind {
        RecordKind::Write => payload_bytes == length,
        RecordKind::Trim | RecordKind::WriteZeroes | RecordKind::Wrap => payload_bytes == 0,
    };
    consistent.then_some(RecordHeader {
        kind,
        fua,
        seq,
        offset,
        length,
        payload_bytes,
        payload_checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_padding_and_damage() {
        let payload = vec![0xAB; 5000];
        let header = RecordHeader {
            kind: RecordKind::Write,
            fua: true,
            seq: Seq(77),
            offset: 8192,
            length: 5000,
            payload_bytes: 5000,
            payload_checksum: 0,
        };
        let mut out = Vec::new();
        encode(&header, &payload, 3, &mut out);
        assert_eq!(out.len(), 8192);
        let decoded = decode_header(&out, 3).expect("valid");
        assert_eq!(decoded.seq, Seq(77));
        assert_eq!(decoded.payload_checksum, checksum(&payload));
        assert!(
            decode_header(&out, 4).is_none(),
            "another instance's record"
        );
        out[20] ^= 1;
        assert!(decode_header(&out, 3).is_none(), "damaged header");
    }
}
