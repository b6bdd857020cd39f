//! Reading a fuzz input as a stream of fields: a structure-aware target takes its parameters
//! from the front of the input and treats the rest as the bytes under test. Reads past the end
//! yield zeros, so every input, the empty one included, is a valid instruction stream.

/// A fuzz input, consumed front to back.
#[derive(Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// An input over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes not consumed yet.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The next byte, or 0 past the end.
    pub fn u8(&mut self) -> u8 {
        let Some((&first, rest)) = self.bytes.split_first() else {
            return 0;
        };
        self.bytes = rest;
        first
    }

    /// The next two bytes, little-endian (missing bytes are zero).
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes, little-endian (missing bytes are zero).
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next eight bytes, little-endian (missing bytes are zero).
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// The next byte as a boolean (its lowest bit).
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A number in `0..bound` (`bound` positive), from one byte or, above 256, two.
    pub fn below(&mut self, bound: usize) -> usize {
        assert!(bound > 0, "empty range");
        let raw = if bound <= 256 {
            usize::from(self.u8())
        } else {
            usize::from(self.u16())
        };
        raw % bound
    }

    /// Up to `count` bytes (fewer at the end).
    pub fn bytes(&mut self, count: usize) -> &'a [u8] {
        let (taken, rest) = self.bytes.split_at(count.min(self.bytes.len()));
        self.bytes = rest;
        taken
    }

    /// Everything not consumed yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}
