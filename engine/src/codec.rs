//! Little-endian field readers and writers for the hand-framed on-disk and wire formats.
//!
//! A [`FieldWriter`] fills a pre-sized slice front to back; a [`FieldReader`] consumes one and
//! reports a short read as `None`, never a panic, so decoders of untrusted bytes stay total.

/// Writes fixed-size little-endian fields into a slice, front to back.
#[derive(Debug)]
pub struct FieldWriter<'a> {
    bytes: &'a mut [u8],
    position: usize,
}

impl<'a> FieldWriter<'a> {
    /// A writer at the start of `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// Writes raw bytes. Panics if they do not fit: layouts are fixed at compile time.
    pub fn put_bytes(&mut self, value: &[u8]) {
        self.bytes[self.position..self.position + value.len()].copy_from_slice(value);
        self.position += value.len();
    }

    /// Writes one byte.
    pub fn put_u8(&mut self, value: u8) {
        self.put_bytes(&[value]);
    }

    /// Writes a little-endian u16.
    pub fn put_u16(&mut self, value: u16) {
        self.put_bytes(&value.to_le_bytes());
    }

    /// Writes a little-endian u32.
    pub fn put_u32(&mut self, value: u32) {
        self.put_bytes(&value.to_le_bytes());
    }

    /// Writes a little-endian u64.
    pub fn put_u64(&mut self, value: u64) {
        self.put_bytes(&value.to_le_bytes());
    }

    /// Skips `count` bytes, leaving them as they are.
    pub fn skip(&mut self, count: usize) {
        assert!(
            self.position + count <= self.bytes.len(),
            "skip past the end"
        );
        self.position += count;
    }

    /// Bytes written or skipped so far.
    pub fn position(&self) -> usize {
        self.position
    }
}

/// Reads fixed-size little-endian fields from a slice, front to back.
#[derive(Debug)]
pub struct FieldReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> FieldReader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// The next `count` bytes, or `None` if fewer remain.
    pub fn bytes(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(count)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    /// The next byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        let b = self.bytes(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Some(u64::from_le_bytes(word))
    }

    /// Skips `count` bytes.
    pub fn skip(&mut self, count: usize) -> Option<()> {
        self.bytes(count).map(|_| ())
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }
}

/// CRC-32 (IEEE) of `bytes`: detects torn and damaged metadata blocks and journal records.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Reads a block whose last four bytes hold the CRC-32 of the rest; `None` if the CRC differs.
pub fn verify_trailing_checksum(block: &[u8]) -> Option<&[u8]> {
    let split = block.len().checked_sub(4)?;
    let (body, trailer) = block.split_at(split);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    (checksum(body) == stored).then_some(body)
}

/// Writes the CRC-32 of everything before the last four bytes into the last four bytes.
pub fn seal_trailing_checksum(block: &mut [u8]) {
    let split = block.len() - 4;
    let sum = checksum(&block[..split]);
    block[split..].copy_from_slice(&sum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_reads() {
        let mut block = [0u8; 32];
        let mut writer = FieldWriter::new(&mut block);
        writer.put_u8(1);
        writer.put_u16(0x0203);
        writer.put_u32(0x0405_0607);
        writer.put_u64(0x0809_0A0B_0C0D_0E0F);
        seal_trailing_checksum(&mut block);
        let body = verify_trailing_checksum(&block).expect("checksum verifies");
        let mut reader = FieldReader::new(body);
        assert_eq!(reader.u8(), Some(1));
        assert_eq!(reader.u16(), Some(0x0203));
        assert_eq!(reader.u32(), Some(0x0405_0607));
        assert_eq!(reader.u64(), Some(0x0809_0A0B_0C0D_0E0F));
        assert_eq!(reader.bytes(100), None);
        block[3] ^= 1;
        assert!(verify_trailing_checksum(&block).is_none());
    }
}
