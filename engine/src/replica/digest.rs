//! Digests: a checksum resync and an online verify compare granules by digest instead of
//! sending their data.
//!
//! One side reads a range and sends the digests of its granules ([`PeerMessage::Digests`]);
//! the other reads the same range and answers which granules differ. Both reads see the same
//! writes. The sender's read waits for its writes in flight there and holds new ones back until
//! it completes (as a resync read does), so every replicated write that reached the data it read
//! was sent before the digests, and every later one after them. The receiver starts its read
//! once every replicated write received before the digests has completed, and holds back later
//! writes to the range until its read is done. So a block written during a verify is compared
//! at the same point of the write history on both sides: no false mismatch.
//!
//! Only a primary (or either side when neither is primary) starts a verify, and the target of a
//! checksum resync is never primary, so the receiving side has no client writes of its own.

use std::collections::VecDeque;

use super::requests::Origin;
use super::resync::Resync;
use super::{OpPurpose, Replica, StorageOp};
use crate::buffer::IoBuf;
use crate::protocol::messages::{DIGEST_BYTES, DigestPurpose, PeerMessage};
use crate::state::ReplState;
use crate::types::{ByteRange, Errno, Seq};

/// The digests of each granule of `data` (the last one may be short), concatenated.
pub(super) fn granule_digests(data: &[u8], granule_bytes: u64) -> Vec<u8> {
    let granule = usize::try_from(granule_bytes).expect("a granule fits in memory");
    let mut out = Vec::with_capacity(data.len().div_ceil(granule) * DIGEST_BYTES);
    for chunk in data.chunks(granule) {
        let digest = ring::digest::digest(&ring::digest::SHA256, chunk);
        out.extend_from_slice(&digest.as_ref()[..DIGEST_BYTES]);
    }
    out
}

/// Granules whose digests differ, as a bit set (least significant bit first).
pub(super) fn differing_bits(ours: &[u8], theirs: &[u8]) -> Vec<u8> {
    let count = ours.len() / DIGEST_BYTES;
    let mut bits = vec![0u8; count.div_ceil(8)];
    for (index, (a, b)) in ours
        .chunks(DIGEST_BYTES)
        .zip(theirs.chunks(DIGEST_BYTES))
        .enumerate()
    {
        if a != b {
            bits[index / 8] |= 1 << (index % 8);
        }
    }
    bits
}

/// Whether granule `index` is set in a bit set from [`differing_bits`].
pub(super) fn bit(bits: &[u8], index: u64) -> bool {
    let index = usize::try_from(index).expect("bounded by the message size");
    bits.get(index / 8)
        .is_some_and(|byte| byte & (1 << (index % 8)) != 0)
}

/// A range the peer sent digests for, to read and compare here.
#[derive(Debug)]
struct DigestRead {
    id: u64,
    purpose: DigestPurpose,
    range: ByteRange,
    digests: Vec<u8>,
    /// The newest replicated write received before the digests.
    position: Seq,
    reading: bool,
}

/// The peer's digests waiting to be compared here.
#[derive(Debug, Default)]
pub(super) struct DigestReads {
    next_id: u64,
    pending: VecDeque<DigestRead>,
}

impl Replica {
    /// Checks a range named by the peer in digest messages: granule aligned, inside the volume,
    /// no larger than resync data may be, with the right number of entries. Returns its granule
    /// count.
    pub(super) fn check_digest_range(
        &self,
        offset: u64,
        length: u32,
        entry_bytes: usize,
        entries_len: usize,
        per_byte: bool,
    ) -> Result<u64, String> {
        let volume = self.volume.as_ref().expect("attached");
        let granule = volume.bitmap.granule_bytes();
        let length = u64::from(length);
        // The peer chunks by its own configuration: accept what a resync data message may hold.
        let chunk_max = self.config.resync_chunk_bytes.max(1 << 20) * 4;
        if !offset.is_multiple_of(granule)
            || length == 0
            || length > chunk_max
            || offset
                .checked_add(length)
                .is_none_or(|end| end > volume.layout.data_bytes)
        {
            return Err(format!("digests for a bad range at {offset}+{length}"));
        }
        let granules = length.div_ceil(granule);
        let entries = usize::try_from(granules).expect("bounded by the chunk size");
        let expected = if per_byte {
            entries * entry_bytes
        } else {
            entries.div_ceil(8)
        };
        if entries_len != expected {
            return Err(format!(
                "digests for {granules} granules in {entries_len} bytes"
            ));
        }
        Ok(granules)
    }

    /// The peer sent digests of a range: read it here once the writes before them are done.
    pub(super) fn digests_received(
        &mut self,
        purpose: DigestPurpose,
        offset: u64,
        length: u32,
        digests: Vec<u8>,
    ) -> Result<(), String> {
        self.check_digest_range(offset, length, DIGEST_BYTES, digests.len(), true)?;
        match purpose {
            DigestPurpose::Resync => {
                let Some(Resync::Target(_)) = &self.peer.resync else {
                    return Err("resync digests outside a resync".to_string());
                };
            }
            DigestPurpose::Verify => {
                if self.peer.repl != ReplState::Established {
                    return Err("verify digests while not established".to_string());
                }
            }
        }
        let position = self.requests.peer_received_seq();
        let reads = &mut self.peer.digest_reads;
        reads.next_id += 1;
        reads.pending.push_back(DigestRead {
            id: reads.next_id,
            purpose,
            range: ByteRange::new(offset, u64::from(length)),
            digests,
            position,
            reading: false,
        });
        Ok(())
    }

    /// Starts the reads whose earlier writes are done.
    pub(super) fn advance_digest_reads(&mut self) -> bool {
        let unordered = self.planted(super::PlantedBug::DigestReadUnordered);
        let mut start = Vec::new();
        for read in self.peer.digest_reads.pending.iter_mut() {
            let ordered = !self.requests.peer_writes_pending(Some(read.position))
                && !self.requests.issued_overlaps(read.range);
            if read.reading || !(ordered || unordered) {
                continue;
            }
            read.reading = true;
            start.push((read.id, read.range));
        }
        let progress = !start.is_empty();
        for (id, range) in start {
            let op = StorageOp::Read {
                offset: range.offset,
                length: range.length,
            };
            self.submit(op, OpPurpose::DigestRead(id));
        }
        progress
    }

    /// Whether a write must wait for a digest read of the peer's that came before it.
    pub(super) fn digest_reads_hold(&self, range: ByteRange, origin: Origin) -> bool {
        if self.planted(super::PlantedBug::DigestReadUnordered) {
            return false;
        }
        self.peer.digest_reads.pending.iter().any(|read| {
            let earlier = match origin {
                Origin::Peer { seq, .. } => read.position < seq,
                Origin::Client { .. } | Origin::Resync => true,
            };
            earlier && read.range.overlaps(range)
        })
    }

    /// A digest read completed: compare and answer.
    pub(super) fn digest_read_completion(&mut self, id: u64, result: Result<Option<IoBuf>, Errno>) {
        let reads = &mut self.peer.digest_reads.pending;
        let Some(index) = reads.iter().position(|read| read.id == id) else {
            return; // The connection that asked is gone.
        };
        let read = reads.remove(index).expect("found");
        let Some(data) = self.read_data(result, "reading to compare digests") else {
            return;
        };
        let volume = self.volume.as_mut().expect("attached");
        let granule = volume.bitmap.granule_bytes();
        let ours = granule_digests(data.as_slice(), granule);
        let differing = differing_bits(&ours, &read.digests);
        if read.purpose == DigestPurpose::Resync {
            // The granules that match are in sync here.
            let first = read.range.offset / granule;
            let mut same_bytes = 0;
            for index in 0..read.range.length.div_ceil(granule) {
                if !bit(&differing, index) {
                    volume.bitmap.clear(first + index..first + index + 1);
                    same_bytes += granule.min(read.range.end() - (first + index) * granule);
                }
            }
            let now = self.now.monotonic;
            if let Some(Resync::Target(target)) = &mut self.peer.resync {
                target.progress.add(now, same_bytes);
            }
        }
        let length = u32::try_from(read.range.length).expect("checked on receipt");
        self.send(PeerMessage::DigestReply {
            purpose: read.purpose,
            offset: read.range.offset,
            length,
            differing,
        });
    }

    /// The connection is gone: pending comparisons are dropped (reads in flight finish unseen).
    pub(super) fn digest_reads_lose_peer(&mut self) {
        self.peer.digest_reads.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_differ_exactly_where_the_granules_differ() {
        let mut a = vec![7u8; 4096 * 10 + 512];
        let mut b = a.clone();
        b[4096 * 3 + 17] ^= 1;
        b[4096 * 10 + 511] ^= 0x80;
        a[4096 * 9] = 1;
        b[4096 * 9] = 1;
        let bits = differing_bits(&granule_digests(&a, 4096), &granule_digests(&b, 4096));
        let set: Vec<u64> = (0..11).filter(|&i| bit(&bits, i)).collect();
        assert_eq!(set, vec![3, 10]);
    }
}
