//! Aligned, shareable I/O buffers.
//!
//! Backing stores opened with `O_DIRECT` need buffers whose address is aligned to the logical
//! block size. [`IoBufMut`] is filled once (from a socket, a storage read, a client) and then
//! frozen into an [`IoBuf`], which is immutable and cheap to clone, so the same bytes can go to
//! the local disk, the journal and the peer without copies. Alignment is obtained without unsafe
//! code: the allocation is over-sized and the view starts at the first aligned address.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The alignment of every buffer's first byte.
pub const BUFFER_ALIGN_BYTES: usize = 4096;

/// A mutable aligned buffer, being filled.
pub struct IoBufMut {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl IoBufMut {
    /// A zero-filled buffer of `len` bytes whose first byte is aligned to [`BUFFER_ALIGN_BYTES`].
    pub fn zeroed(len: usize) -> Self {
        let storage = vec![0u8; len + BUFFER_ALIGN_BYTES];
        let start = storage.as_ptr().align_offset(BUFFER_ALIGN_BYTES);
        assert!(
            start < BUFFER_ALIGN_BYTES,
            "align_offset of a u8 pointer is always reachable"
        );
        Self {
            storage,
            start,
            len,
        }
    }

    /// The buffer's bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes the buffer immutable and shareable.
    pub fn freeze(self) -> IoBuf {
        IoBuf {
            storage: Arc::new(self.storage),
            start: self.start,
            len: self.len,
        }
    }
}

impl fmt::Debug for IoBufMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoBufMut({} bytes)", self.len)
    }
}

/// An immutable aligned buffer (or a view into one), cheap to clone.
#[derive(Clone)]
pub struct IoBuf {
    storage: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl IoBuf {
    /// An aligned buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        IoBufMut::zeroed(len).freeze()
    }

    /// An aligned copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut buffer = IoBufMut::zeroed(bytes.len());
        buffer.as_mut_slice().copy_from_slice(bytes);
        buffer.freeze()
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A view of `range` of this buffer, sharing its storage.
    pub fn slice(&self, range: Range<usize>) -> Self {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "slice out of bounds"
        );
        Self {
            storage: Arc::clone(&self.storage),
            start: self.start + range.start,
            len: range.len(),
        }
    }

    /// The storage back as a mutable buffer of `len` bytes (holding what it held), if no
    /// other clone or view still has it and it is large enough; otherwise the buffer itself.
    /// A frontend reuses its request buffers this way instead of allocating one per request.
    pub fn try_reclaim(self, len: usize) -> Result<IoBufMut, Self> {
        let (view_start, view_len) = (self.start, self.len);
        let kept = |storage| Self {
            storage,
            start: view_start,
            len: view_len,
        };
        match Arc::try_unwrap(self.storage) {
            Ok(storage) => {
                let start = storage.as_ptr().align_offset(BUFFER_ALIGN_BYTES);
                if start + len <= storage.len() {
                    Ok(IoBufMut {
                        storage,
                        start,
                        len,
                    })
                } else {
                    Err(kept(Arc::new(storage)))
                }
            }
            Err(storage) => Err(kept(storage)),
        }
    }

    /// Whether the first byte is aligned to `align` bytes.
    pub fn is_aligned_to(&self, align: usize) -> bool {
        self.as_slice().as_ptr().align_offset(align) == 0
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len)
    }
}

impl PartialEq for IoBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for IoBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_views_share_bytes() {
        for len in [0usize, 1, 511, 4096, 65_536 + 7] {
            let mut buffer = IoBufMut::zeroed(len);
            assert!(buffer.as_slice().as_ptr().align_offset(BUFFER_ALIGN_BYTES) == 0);
            buffer
                .as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8);
            let frozen = buffer.freeze();
            assert!(frozen.is_aligned_to(BUFFER_ALIGN_BYTES));
            assert_eq!(frozen.len(), len);
            if len > 10 {
                let view = frozen.slice(3..10);
                assert_eq!(view.as_slice(), &[3, 4, 5, 6, 7, 8, 9]);
            }
        }
    }

    #[test]
    fn a_buffer_is_reclaimed_only_when_nobody_else_holds_it_and_it_is_large_enough() {
        let mut buffer = IoBufMut::zeroed(8192);
        buffer.as_mut_slice()[0] = 7;
        let frozen = buffer.freeze();
        let address = frozen.as_slice().as_ptr();
        let held = frozen.clone();
        let frozen = frozen.try_reclaim(4096).expect_err("a clone holds it");
        assert_eq!(frozen.len(), 8192, "the same view back");
        drop(held);
        let frozen = frozen.try_reclaim(16384).expect_err("too small");
        assert_eq!(frozen.as_slice()[0], 7);
        let reclaimed = frozen.try_reclaim(4096).expect("free and large enough");
        assert_eq!(reclaimed.len(), 4096);
        assert_eq!(reclaimed.as_slice().as_ptr(), address, "the same memory");
        assert!(reclaimed.freeze().is_aligned_to(BUFFER_ALIGN_BYTES));
    }
}
