//! The superblock: identity, layout, generations and flags of one node's copy of a volume.
//!
//! Two copies, A (the last 4 KiB block of the backing store) and B (the block before). Each write
//! goes to the copy not holding the newest valid superblock, with `sequence` one higher, and is
//! made durable (FUA) before anything that depends on it; a torn write therefore damages at most
//! the copy being written, and opening picks the valid copy with the highest `sequence`.
//!
//! Byte layout (format version 1, little-endian, one 4096-byte block):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `TANDEMSB` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | reserved, zero |
//! | 16 | 8 | sequence: write counter, the higher valid copy wins |
//! | 24 | 16 | instance id: random, chosen by `create-md` |
//! | 40 | 8 | backing store bytes |
//! | 48 | 8 | data area bytes |
//! | 56 | 4 | granule bytes |
//! | 60 | 4 | activity-log extent bytes |
//! | 64 | 4 | activity-log slots |
//! | 68 | 4 | bitmap pages |
//! | 72 | 8 | journal ring bytes |
//! | 80 | 8 | current generation |
//! | 88 | 8 | bitmap generation |
//! | 96 | 32 | history generations, newest first |
//! | 128 | 8 | when the current generation started (Unix ms) |
//! | 136 | 1 | flags: bit 0 clean shutdown, bit 1 crashed primary, bit 2 journal complete, bit 3 crashed secondary |
//! | 137 | 1 | last role: 0 secondary, 1 primary |
//! | 138 | 1 | disk state: 0 inconsistent, 1 outdated, 2 consistent, 3 up to date |
//! | 139 | 5 | reserved, zero |
//! | 144 | 8 | journal tail sequence number |
//! | 152 | 8 | journal tail offset within the ring |
//! | 160 | 8 | metadata created (Unix ms) |
//! | 168 | 64 | volume name, UTF-8, zero padded |
//! | 232 | 3860 | reserved, zero |
//! | 4092 | 4 | CRC-32 of bytes 0..4092 |
//!
//! The layout offsets are not stored: they are recomputed from the sizes above, which makes a
//! superblock that disagrees with its own sizes detectable.

use crate::codec::{FieldReader, FieldWriter, seal_trailing_checksum, verify_trailing_checksum};
use crate::error::{Error, Result};
use crate::generation::{Generation, GenerationSet, HISTORY_LEN};
use crate::layout::{Layout, LayoutParams};
use crate::state::{DiskState, Role};
use crate::types::{BLOCK_BYTES, Seq};

/// The superblock's magic bytes.
pub const SUPERBLOCK_MAGIC: &[u8; 8] = b"TANDEMSB";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest volume name the superblock stores.
pub const VOLUME_NAME_BYTES_MAX: usize = 64;

const FLAG_CLEAN_SHUTDOWN: u8 = 1 << 0;
const FLAG_CRASHED_PRIMARY: u8 = 1 << 1;
const FLAG_JOURNAL_COMPLETE: u8 = 1 << 2;
const FLAG_CRASHED_SECONDARY: u8 = 1 << 3;

/// The decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Write counter: the higher of two valid copies is the current one.
    pub sequence: u64,
    /// Random identity chosen when the metadata was created.
    pub instance_id: [u8; 16],
    /// The layout, recomputed from the stored sizes.
    pub layout: Layout,
    /// The node's generations.
    pub generations: GenerationSet,
    /// When the current generation started (Unix ms), 0 if unknown.
    pub current_started_unix_millis: u64,
    /// The node was shut down cleanly: no recovery is needed on open.
    pub clean_shutdown: bool,
    /// The node crashed while primary and has not yet resynced its activity-log extents.
    pub crashed_primary: bool,
    /// The node crashed while secondary and has not yet resynced its activity-log extents.
    pub crashed_secondary: bool,
    /// The on-disk journal holds every write since the peer was last in sync, so a catch-up can
    /// replay it in order; when false the bitmap alone describes what the peer lacks.
    pub journal_complete: bool,
    /// The role when this superblock was written.
    pub last_role: Role,
    /// The persisted disk state.
    pub disk_state: DiskState,
    /// Sequence number of the oldest record the journal still needs.
    pub journal_tail_seq: Seq,
    /// Offset of that record within the ring.
    pub journal_tail_offset: u64,
    /// When the metadata was created (Unix ms).
    pub created_unix_millis: u64,
    /// The volume's name from the configuration.
    pub volume_name: String,
}

/// The two superblock copies as found on disk.
#[derive(Clone, Debug)]
pub struct SuperblockPair {
    /// Copy A (the last block), decoded or the reason it is unusable.
    pub a: std::result::Result<Superblock, String>,
    /// Copy B (the block before), decoded or the reason it is unusable.
    pub b: std::result::Result<Superblock, String>,
}

impl SuperblockPair {
    /// Decodes both copies from the last 8 KiB of the backing store (B first, then A).
    pub fn decode(last_two_blocks: &[u8], backing_bytes: u64) -> Self {
        assert_eq!(last_two_blocks.len() as u64, 2 * BLOCK_BYTES);
        let (b, a) = last_two_blocks.split_at(BLOCK_BYTES as usize);
        Self {
            a: Superblock::decode(a, backing_bytes),
            b: Superblock::decode(b, backing_bytes),
        }
    }

    /// The newest valid copy and its index (0 for A, 1 for B).
    pub fn newest(&self) -> Option<(usize, &Superblock)> {
        match (&self.a, &self.b) {
            (Ok(a), Ok(b)) if b.sequence > a.sequence => Some((1, b)),
            (Ok(a), _) => Some((0, a)),
            (Err(_), Ok(b)) => Some((1, b)),
            (Err(_), Err(_)) => None,
        }
    }

    /// The newest valid copy, or an error that says what was found instead.
    pub fn choose(&self) -> Result<(usize, Superblock)> {
        if let Some((index, superblock)) = self.newest() {
            return Ok((index, superblock.clone()));
        }
        let (a, b) = (self.a.as_ref().unwrap_err(), self.b.as_ref().unwrap_err());
        let foreign = a.starts_with("no tandem") && b.starts_with("no tandem");
        if foreign {
            Err(Error::NoMetadata(format!("copy A: {a}; copy B: {b}")))
        } else if let Some(version) = [a, b].iter().find_map(|e| e.strip_prefix("version ")) {
            let found = version
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok());
            Err(Error::UnsupportedVersion {
                found: found.unwrap_or(0),
                supported: FORMAT_VERSION,
            })
        } else {
            Err(Error::MetadataCorrupt(format!(
                "both superblocks unusable: A: {a}; B: {b}"
            )))
        }
    }
}

impl Superblock {
    /// Encodes the superblock into one 4096-byte block.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        let mut w = FieldWriter::new(&mut block);
        w.put_bytes(SUPERBLOCK_MAGIC);
        w.put_u32(FORMAT_VERSION);
        w.put_u32(0);
        w.put_u64(self.sequence);
        w.put_bytes(&self.instance_id);
        w.put_u64(self.layout.backing_bytes);
        w.put_u64(self.layout.data_bytes);
        w.put_u32(self.layout.params.granule_bytes);
        w.put_u32(self.layout.params.al_extent_bytes);
        w.put_u32(self.layout.params.al_slots);
        w.put_u32(self.layout.bitmap_pages);
        w.put_u64(self.layout.params.journal_bytes);
        w.put_u64(self.generations.current.0);
        w.put_u64(self.generations.bitmap.0);
        for generation in self.generations.history {
            w.put_u64(generation.0);
        }
        w.put_u64(self.current_started_unix_millis);
        let mut flags = 0;
        if self.clean_shutdown {
            flags |= FLAG_CLEAN_SHUTDOWN;
        }
        if self.crashed_primary {
            flags |= FLAG_CRASHED_PRIMARY;
        }
        if self.journal_complete {
            flags |= FLAG_JOURNAL_COMPLETE;
        }
        if self.crashed_secondary {
            flags |= FLAG_CRASHED_SECONDARY;
        }
        w.put_u8(flags);
        w.put_u8(u8::from(self.last_role == Role::Primary));
        w.put_u8(self.disk_state.to_code());
        w.skip(5);
        w.put_u64(self.journal_tail_seq.0);
        w.put_u64(self.journal_tail_offset);
        w.put_u64(self.created_unix_millis);
        let mut name = [0u8; VOLUME_NAME_BYTES_MAX];
        let name_bytes = self.volume_name.as_bytes();
        assert!(
            name_bytes.len() <= VOLUME_NAME_BYTES_MAX,
            "volume names are validated"
        );
        name[..name_bytes.len()].copy_from_slice(name_bytes);
        w.put_bytes(&name);
        assert_eq!(w.position(), 232);
        seal_trailing_checksum(&mut block);
        block
    }

    /// Decodes one copy; the error says in a few words why the copy is unusable.
    pub fn decode(block: &[u8], backing_bytes: u64) -> std::result::Result<Self, String> {
        if block.len() as u64 != BLOCK_BYTES {
            return Err(format!("block is {} bytes", block.len()));
        }
        if &block[..8] != SUPERBLOCK_MAGIC {
            return Err("no tandem magic".to_string());
        }
        let body = verify_trailing_checksum(block).ok_or("checksum mismatch")?;
        let mut r = FieldReader::new(body);
        r.skip(8).ok_or("short")?;
        let version = r.u32().ok_or("short")?;
        if version != FORMAT_VERSION {
            return Err(format!(
                "version {version} (this build reads {FORMAT_VERSION})"
            ));
        }
        Self::decode_fields(&mut r, backing_bytes)
            .ok_or_else(|| "field out of range".to_string())?
    }

    fn decode_fields(
        r: &mut FieldReader<'_>,
        backing_bytes: u64,
    ) -> Option<std::result::Result<Self, String>> {
        r.skip(4)?;
        let sequence = r.u64()?;
        let mut instance_id = [0u8; 16];
        instance_id.copy_from_slice(r.bytes(16)?);
        let stored_backing_bytes = r.u64()?;
        let data_bytes = r.u64()?;
        let params = LayoutParams {
            granule_bytes: r.u32()?,
            al_extent_bytes: r.u32()?,
            al_slots: r.u32()?,
            journal_bytes: 0,
        };
        let bitmap_pages = r.u32()?;
        let params = LayoutParams {
            journal_bytes: r.u64()?,
            ..params
        };
        let current = Generation(r.u64()?);
        let bitmap = Generation(r.u64()?);
        let mut history = [Generation::NONE; HISTORY_LEN];
        for slot in &mut history {
            *slot = Generation(r.u64()?);
        }
        let current_started_unix_millis = r.u64()?;
        let flags = r.u8()?;
        let last_role = if r.u8()? == 1 {
            Role::Primary
        } else {
            Role::Secondary
        };
        let disk_state = DiskState::from_code(r.u8()?)?;
        r.skip(5)?;
        let journal_tail_seq = Seq(r.u64()?);
        let journal_tail_offset = r.u64()?;
        let created_unix_millis = r.u64()?;
        let name = r.bytes(VOLUME_NAME_BYTES_MAX)?;
        let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let volume_name = String::from_utf8(name[..name_len].to_vec()).ok()?;

        let rounded_backing = backing_bytes - backing_bytes % BLOCK_BYTES;
        if stored_backing_bytes != rounded_backing {
            return Some(Err(format!(
                "written for a backing store of {stored_backing_bytes} bytes, this one has \
                 {rounded_backing} (was it resized?)"
            )));
        }
        let layout = match Layout::compute(stored_backing_bytes, params) {
            Ok(layout) => layout,
            Err(error) => return Some(Err(format!("layout: {error}"))),
        };
        if layout.data_bytes != data_bytes || layout.bitmap_pages != bitmap_pages {
            return Some(Err("sizes disagree with the layout they imply".to_string()));
        }
        if journal_tail_offset >= params.journal_bytes.max(1)
            || !journal_tail_offset.is_multiple_of(BLOCK_BYTES)
        {
            return Some(Err("journal tail outside the ring".to_string()));
        }
        Some(Ok(Self {
            sequence,
            instance_id,
            layout,
            generations: GenerationSet {
                current,
                bitmap,
                history,
            },
            current_started_unix_millis,
            clean_shutdown: flags & FLAG_CLEAN_SHUTDOWN != 0,
            crashed_primary: flags & FLAG_CRASHED_PRIMARY != 0,
            crashed_secondary: flags & FLAG_CRASHED_SECONDARY != 0,
            journal_complete: flags & FLAG_JOURNAL_COMPLETE != 0,
            last_role,
            disk_state,
            journal_tail_seq,
            journal_tail_offset,
            created_unix_millis,
            volume_name,
        }))
    }

    /// A 32-bit tag derived from the instance id, stamped into every other metadata block and
    /// journal record so that blocks left over from earlier metadata are never mistaken for ours.
    pub fn instance_tag(&self) -> u32 {
        instance_tag(&self.instance_id)
    }

    /// The index (0 for A, 1 for B) of the copy the next write goes to, given the copy that
    /// holds the newest superblock now.
    pub fn next_copy(newest_copy: usize) -> usize {
        1 - newest_copy
    }
}

/// The 32-bit tag of an instance id (see [`Superblock::instance_tag`]).
pub fn instance_tag(instance_id: &[u8; 16]) -> u32 {
    crate::codec::checksum(instance_id) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(backing_bytes: u64) -> Superblock {
        let params = LayoutParams {
            journal_bytes: 1 << 20,
            ..LayoutParams::default()
        };
        Superblock {
            sequence: 3,
            instance_id: [7; 16],
            layout: Layout::compute(backing_bytes, params).expect("fits"),
            generations: GenerationSet {
                current: Generation(0xABCD),
                bitmap: Generation(0x1234),
                history: [
                    Generation(9),
                    Generation(8),
                    Generation::NONE,
                    Generation::NONE,
                ],
            },
            current_started_unix_millis: 1_700_000_000_000,
            clean_shutdown: true,
            crashed_primary: false,
            crashed_secondary: true,
            journal_complete: true,
            last_role: Role::Primary,
            disk_state: DiskState::UpToDate,
            journal_tail_seq: Seq(42),
            journal_tail_offset: 8192,
            created_unix_millis: 1_600_000_000_000,
            volume_name: "r0".to_string(),
        }
    }

    #[test]
    fn round_trip_and_newest_copy_wins() {
        let backing = 64 << 20;
        let older = sample(backing);
        let newer = Superblock {
            sequence: 4,
            clean_shutdown: false,
            ..older.clone()
        };
        assert_eq!(
            Superblock::decode(&older.encode(), backing),
            Ok(older.clone())
        );
        let mut both = newer.encode();
        both.extend_from_slice(&older.encode());
        let pair = SuperblockPair::decode(&both, backing);
        let (index, chosen) = pair.choose().expect("valid");
        assert_eq!(
            (index, chosen.sequence),
            (1, 4),
            "copy B holds the newer one"
        );
    }

    #[test]
    fn damage_falls_back_to_the_other_copy_and_both_damaged_is_an_error() {
        let backing = 64 << 20;
        let good = sample(backing);
        let mut torn = Superblock {
            sequence: 9,
            ..good.clone()
        }
        .encode();
        torn[2000] ^= 0xFF;
        let mut both = torn.clone();
        both.extend_from_slice(&good.encode());
        let (_, chosen) = SuperblockPair::decode(&both, backing)
            .choose()
            .expect("A survives");
        assert_eq!(chosen.sequence, 3);
        let mut both_bad = torn.clone();
        both_bad.extend_from_slice(&torn);
        let err = SuperblockPair::decode(&both_bad, backing)
            .choose()
            .unwrap_err();
        assert!(matches!(err, Error::MetadataCorrupt(_)), "{err}");
        let zeros = vec![0u8; 8192];
        let err = SuperblockPair::decode(&zeros, backing)
            .choose()
            .unwrap_err();
        assert!(matches!(err, Error::NoMetadata(_)), "{err}");
    }

    #[test]
    fn a_resized_backing_store_is_refused() {
        let good = sample(64 << 20);
        let err = Superblock::decode(&good.encode(), 128 << 20).unwrap_err();
        assert!(err.contains("resized"), "{err}");
    }
}
