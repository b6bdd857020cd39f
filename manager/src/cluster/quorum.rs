//! The quorum disk (仲裁盘): a lease kept in two blocks of a device both nodes can write (a
//! shared LUN), for clusters without a third machine for a witness. Sans-IO: the runtime reads
//! and writes the blocks ([`SLOT_BYTES`] at offset `node × SLOT_BYTES`) and feeds what it read
//! here with its monotonic time in milliseconds.
//!
//! Each node writes only its own slot: a sequence number that grows with every write, whether
//! it holds (or claims) the lease, and whether it has writes its peer lacks. A node tells
//! whether its peer's claim is live from how long the peer's sequence number has stood still,
//! on its own clock: a claim is live until it has not changed for `lease_ms`. The holder
//! renews every interval; a holder that cannot write for `lease_ms` has lost the lease, and its
//! cluster core has fenced it before (`sent + lease_ms - fence_ms`), because the peer saw each
//! of its writes only after it was made.
//!
//! One acquire (or renewal): read the peer's slot; a live claim there refuses. Else write a
//! claim, read the peer's slot again, and if a live claim is there now, withdraw and refuse.
//! Both nodes write before they read again, so of two claims at once at least one sees the
//! other and withdraws: never both. (Both may withdraw; node 1 then keeps out for half a lease,
//! so node 0 gets it next.)
//!
//! A node that starts knows nothing of how long the peer's sequence number has stood still: it
//! watches for `lease_ms` before it may claim over a peer's slot that says it holds.
//!
//! Outdated data, as with the witness: a slot that says its node has writes the peer lacks
//! refuses the peer ([`Verdict::Outdated`]) unless the peer's data has the same generation (a
//! resync gave it), it asks in sync, or forced.

use super::witness::Claims;

/// Bytes of a slot: one 4 KiB block per node (any logical block size divides it).
pub const SLOT_BYTES: usize = 4096;
const MAGIC: &[u8; 4] = b"TNQD";
const VERSION: u8 = 1;
/// magic 4, version 1, node 1, flags 1, pad 1, cluster 4, seq 8, generation 8, had 8, crc 4.
const USED_BYTES: usize = 40;

/// What a node's slot says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// Fingerprint of the cluster's name: a slot of another cluster is not ours.
    pub cluster: u32,
    /// The node's index in the configuration.
    pub node: u8,
    /// Grows with every write of the slot.
    pub seq: u64,
    /// The node holds or claims the lease.
    pub holds: bool,
    /// The node has writes its peer lacks.
    pub peer_behind: bool,
    /// The generation of the node's data when it wrote the slot.
    pub generation: u64,
    /// The peer's slot sequence number whose mark (writes this node lacked) this node has
    /// had the data of since: that mark is old news.
    pub had: u64,
}

impl Slot {
    /// The block to write.
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; SLOT_BYTES];
        block[..4].copy_from_slice(MAGIC);
        block[4] = VERSION;
        block[5] = self.node;
        block[6] = u8::from(self.holds) | u8::from(self.peer_behind) << 1;
        block[8..12].copy_from_slice(&self.cluster.to_le_bytes());
        block[12..20].copy_from_slice(&self.seq.to_le_bytes());
        block[20..28].copy_from_slice(&self.generation.to_le_bytes());
        block[28..36].copy_from_slice(&self.had.to_le_bytes());
        let crc = crc32fast::hash(&block[..36]);
        block[36..USED_BYTES].copy_from_slice(&crc.to_le_bytes());
        block
    }

    /// The slot in `block`: `Ok(None)` for a block never written (all zero), an error for
    /// anything else that is not a slot.
    pub fn decode(block: &[u8]) -> Result<Option<Self>, String> {
        let Some(head) = block.get(..USED_BYTES) else {
            return Err(format!("{} bytes, not a quorum-disk slot", block.len()));
        };
        if head.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if &head[..4] != MAGIC {
            return Err("not a tandem quorum-disk slot (is this the right device?)".into());
        }
        if head[4] != VERSION {
            return Err(format!("quorum-disk slot version {}", head[4]));
        }
        let crc = u32::from_le_bytes(head[36..40].try_into().expect("four bytes"));
        if crc32fast::hash(&head[..36]) != crc || head[6] & !3 != 0 {
            return Err("a damaged quorum-disk slot".into());
        }
        Ok(Some(Self {
            cluster: u32::from_le_bytes(head[8..12].try_into().expect("four bytes")),
            node: head[5],
            seq: u64::from_le_bytes(head[12..20].try_into().expect("eight bytes")),
            holds: head[6] & 1 != 0,
            peer_behind: head[6] & 2 != 0,
            generation: u64::from_le_bytes(head[20..28].try_into().expect("eight bytes")),
            had: u64::from_le_bytes(head[28..36].try_into().expect("eight bytes")),
        }))
    }
}

/// The answer to an acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This node holds the lease (from before the write of its claim).
    Granted,
    /// The peer's claim is live.
    Refused,
    /// The peer has writes this node lacks.
    Outdated,
    /// Not yet: watching the peer's slot after a start.
    Watching {
        /// Milliseconds left.
        remaining_ms: u64,
    },
}

/// What to do next in an acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write this block to this node's slot, then read the peer's slot and call
    /// [`QuorumDisk::after_claim`].
    Claim(Vec<u8>),
    /// Write this block to this node's slot (a withdrawal or a release), and answer.
    Write(Vec<u8>, Verdict),
    /// Answer without writing.
    Answer(Verdict),
}

/// One node's side of the quorum disk.
#[derive(Debug)]
pub struct QuorumDisk {
    cluster: u32,
    me: u8,
    lease_ms: u64,
    started_ms: u64,
    seq: u64,
    /// The peer's last slot, and when this node first read its sequence number.
    peer: Option<(Slot, u64)>,
    /// After two claims at once, node 1 claims nothing before this.
    backoff_until_ms: u64,
    /// See [`Slot::had`] (kept in this node's slot across restarts).
    had: u64,
}

impl QuorumDisk {
    /// Node `me` of cluster `cluster` (its name), started at `now_ms`; `own` is what its slot
    /// holds now (sequence numbers go on from there).
    pub fn new(cluster: &str, me: u8, lease_ms: u64, own: Option<Slot>, now_ms: u64) -> Self {
        Self {
            cluster: crc32fast::hash(cluster.as_bytes()),
            me,
            lease_ms,
            started_ms: now_ms,
            seq: own.map_or(0, |slot| slot.seq),
            peer: None,
            backoff_until_ms: 0,
            had: own.map_or(0, |slot| slot.had),
        }
    }

    /// The peer's slot as read at `now_ms` (`None`: never written).
    pub fn observe(&mut self, slot: Option<Slot>, now_ms: u64) -> Result<(), String> {
        let Some(slot) = slot else {
            self.peer = None;
            return Ok(());
        };
        if slot.cluster != self.cluster {
            return Err("the peer's quorum-disk slot belongs to another cluster".into());
        }
        if slot.node == self.me {
            return Err("the peer's quorum-disk slot names this node".into());
        }
        let first_seen = match self.peer {
            Some((old, at)) if old.seq == slot.seq => at,
            _ => now_ms,
        };
        self.peer = Some((slot, first_seen));
        Ok(())
    }

    /// Starts an acquire, with the peer's slot just observed.
    pub fn acquire(&mut self, claims: Claims, now_ms: u64) -> Step {
        if let Some(verdict) = self.refusal(claims, now_ms) {
            return Step::Answer(verdict);
        }
        if now_ms < self.backoff_until_ms {
            return Step::Answer(Verdict::Refused);
        }
        Step::Claim(self.write(true, claims))
    }

    /// Ends an acquire, with the peer's slot observed again after the claim was written.
    pub fn after_claim(&mut self, claims: Claims, now_ms: u64) -> Step {
        match self.refusal(claims, now_ms) {
            Some(verdict) => {
                if verdict == Verdict::Refused && self.me == 1 {
                    self.backoff_until_ms = now_ms + self.lease_ms / 2;
                }
                Step::Write(self.write(false, claims), verdict)
            }
            None => Step::Answer(Verdict::Granted),
        }
    }

    /// Gives the lease back (keeping what `claims` say of the data): the block to write.
    pub fn release(&mut self, claims: Claims) -> Vec<u8> {
        self.write(false, claims)
    }

    /// Whether the peer's slot holds a live claim at `now_ms`: it holds, and its sequence
    /// number changed within the lease (or this node has not watched it that long).
    fn peer_live(&self, now_ms: u64) -> bool {
        self.peer.is_some_and(|(slot, first_seen)| {
            slot.holds
                && (now_ms.saturating_sub(first_seen) < self.lease_ms
                    || now_ms.saturating_sub(self.started_ms) < self.lease_ms)
        })
    }

    fn refusal(&self, claims: Claims, now_ms: u64) -> Option<Verdict> {
        let (slot, _) = self.peer?;
        if slot.peer_behind
            && slot.generation != claims.generation
            && slot.seq != self.had
            && !claims.force
            && !claims.in_sync
        {
            return Some(Verdict::Outdated);
        }
        if !self.peer_live(now_ms) {
            return None;
        }
        let watched = now_ms.saturating_sub(self.started_ms);
        if slot.holds && watched < self.lease_ms {
            return Some(Verdict::Watching {
                remaining_ms: self.lease_ms - watched,
            });
        }
        Some(Verdict::Refused)
    }

    fn write(&mut self, holds: bool, claims: Claims) -> Vec<u8> {
        // This node has the data the peer's mark refers to: from now on the mark is old news.
        if let Some((slot, _)) = self.peer
            && slot.peer_behind
            && (slot.generation == claims.generation || claims.in_sync)
        {
            self.had = slot.seq;
        }
        self.seq += 1;
        Slot {
            cluster: self.cluster,
            node: self.me,
            seq: self.seq,
            holds,
            peer_behind: claims.peer_behind || claims.force,
            generation: claims.generation,
            had: self.had,
        }
        .encode()
    }
}

#[cfg(test)]
mod tests;
