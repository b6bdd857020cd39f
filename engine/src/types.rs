//! Units and identifiers shared by the whole engine.
//!
//! Time is a value here, never a call: the driver (the real runtime or the simulator) passes
//! [`Now`] with every input, so the same replica code runs against a wall clock or a simulated one.

use std::fmt;

/// Bytes in one sector, the smallest unit a client may address.
pub const SECTOR_BYTES: u64 = 512;
/// Bytes in one metadata block; every metadata structure is a whole number of these.
pub const BLOCK_BYTES: u64 = 4096;

/// A point on the driver's monotonic clock, in nanoseconds since an arbitrary origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `nanos` nanoseconds after the clock's origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The instant `duration` later, saturating at the end of time.
    pub fn after(self, duration: std::time::Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The time of an input: the monotonic instant for deadlines and the wall clock for stamps that
/// people read (when a generation started, when a node was primary).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// For deadlines and durations.
    pub monotonic: Instant,
    /// Milliseconds since the Unix epoch, for human-facing timestamps only.
    pub unix_millis: u64,
}

/// The position of a write in a volume's write history. Strictly increasing on a node, also across
/// restarts: the journal persists the sequence numbers it holds.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Seq(pub u64);

impl Seq {
    /// The next sequence number.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A node's index in the cluster configuration (0 or 1 for a two-node cluster).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct NodeId(pub u8);

/// The frontend's name for one client request (a ublk tag or an NBD handle, made unique by the
/// frontend). The replica hands it back in the request's completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestTag(pub u64);

/// The replica's name for one storage operation it asked the driver to perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorageOpId(pub u64);

/// A Linux errno value, positive (`libc::EIO` is `Errno(5)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Input/output error: the storage failed or the disk is `Failed`.
    pub const EIO: Self = Self(libc::EIO);
    /// Invalid argument: misaligned or malformed request.
    pub const EINVAL: Self = Self(libc::EINVAL);
    /// No space: the request reaches past the end of the volume.
    pub const ENOSPC: Self = Self(libc::ENOSPC);
    /// Read-only: writes to a volume that is not Primary.
    pub const EROFS: Self = Self(libc::EROFS);
    /// Operation not permitted: I/O to a volume that may not serve it (Secondary, detached).
    pub const EPERM: Self = Self(libc::EPERM);
    /// Try again: the replica's request limit is reached.
    pub const EAGAIN: Self = Self(libc::EAGAIN);
    /// Not supported by the backing store.
    pub const EOPNOTSUPP: Self = Self(libc::EOPNOTSUPP);
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// A byte range `[offset, offset + length)` of the volume or of the backing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl ByteRange {
    /// The range starting at `offset` spanning `length` bytes.
    pub const fn new(offset: u64, length: u64) -> Self {
        Self { offset, length }
    }

    /// One past the last byte.
    pub const fn end(self) -> u64 {
        self.offset + self.length
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(self, other: Self) -> bool {
        self.offset < other.end() && other.offset < self.end()
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.offset, self.end())
    }
}

/// A set of bytes kept as disjoint, merged ranges: overlap queries in `O(log n)`.
#[derive(Clone, Debug, Default)]
pub struct RangeSet {
    /// Start → end of each disjoint range.
    ranges: std::collections::BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Whether some byte of `range` is in the set.
    pub fn overlaps(&self, range: ByteRange) -> bool {
        range.length > 0
            && self
                .ranges
                .range(..range.end())
                .next_back()
                .is_some_and(|(_, &end)| end > range.offset)
    }

    /// Adds the bytes of `range`, merging it with the ranges it touches.
    pub fn insert(&mut self, range: ByteRange) {
        if range.length == 0 {
            return;
        }
        let (mut start, mut end) = (range.offset, range.end());
        while let Some((&s, &e)) = self.ranges.range(..=end).next_back() {
            if e < start {
                break;
            }
            start = start.min(s);
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::{ByteRange, RangeSet};

    #[test]
    fn a_range_set_answers_overlaps_like_the_list_of_its_ranges() {
        let mut prng = crate::prng::Prng::from_seed(7);
        let mut set = RangeSet::default();
        let mut list: Vec<ByteRange> = Vec::new();
        for _ in 0..2_000 {
            let range = ByteRange::new(prng.below(1_000), 1 + prng.below(40));
            let want = list.iter().any(|r| r.overlaps(range));
            assert_eq!(set.overlaps(range), want, "{range} against {list:?}");
            if prng.below(2) == 0 {
                set.insert(range);
                list.push(range);
            }
        }
    }
}
