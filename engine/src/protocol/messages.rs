//! The message table of the peer protocol (version 1).
//!
//! Every message has a 16-bit kind code. Data-path messages (writes, resync data, acks) are
//! hand-framed little-endian; control messages (state, decisions, generations) are postcard
//! encodings of serde types. [`decode`] of any bytes returns a message or a
//! [`ProtocolError`] that says what was wrong: it never panics and allocates at most the size of
//! its input.
//!
//! | code | message | direction | layout |
//! |---|---|---|---|
//! | 0x0001 | State | both | postcard [`PeerState`] |
//! | 0x0002 | Decision | both | postcard (decision, rule) |
//! | 0x0003 | Bitmap | both | u8 last, then a serialized roaring set of granules |
//! | 0x0004 | StartResync | both | u8 flags: bit 0 full, bit 1 checksum |
//! | 0x0005 | Ping | both | u64 id |
//! | 0x0006 | Pong | both | u64 id |
//! | 0x0010 | Write | primary → secondary | u64 seq, u64 after, u64 offset, u8 flags, data |
//! | 0x0011 | Trim | primary → secondary | u64 seq, u64 after, u64 offset, u32 length, u8 flags |
//! | 0x0012 | WriteZeroes | primary → secondary | as Trim |
//! | 0x0013 | Flush | primary → secondary | u64 id |
//! | 0x0020 | WriteAck | secondary → primary | u64 seq, u8 ok |
//! | 0x0021 | FlushAck | secondary → primary | u64 id, u8 ok |
//! | 0x0022 | Received | secondary → primary | u64 seq |
//! | 0x0030 | ResyncData | source → target | u64 offset, data |
//! | 0x0031 | ResyncAck | target → source | u64 offset, u32 length, u8 ok |
//! | 0x0032 | ResyncDone | source → target | postcard [`GenerationSet`] |
//! | 0x0033 | ResyncDoneAck | target → source | empty |
//! | 0x0034 | Digests | source/verifier → peer | u8 purpose (0 resync, 1 verify), u64 offset, u32 length, 16 bytes per granule |
//! | 0x0035 | DigestReply | peer → source/verifier | u8 purpose, u64 offset, u32 length, one bit per granule (set: differs) |
//!
//! Write flags: bit 0 FUA, bit 1 "send a receipt" (protocol B: the primary completes the write
//! when the secondary has received it); other bits must be zero.
//!
//! `after` in a write is the newest sequence number the primary had completed to a client when
//! it issued the write: the secondary starts the write only after every write it received with a
//! sequence number up to `after` has completed, which keeps write-after-completion order.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::buffer::IoBuf;
use crate::codec::{FieldReader, FieldWriter};
use crate::generation::{GenerationSet, SyncDecision, SyncRule};
use crate::state::{DiskState, Role};
use crate::types::{NodeId, Seq};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// The largest payload of a data message (a 32 MiB write and its header).
pub const MESSAGE_BYTES_MAX: usize = (32 << 20) + 64;
/// The largest bitmap chunk sent in one message.
pub const BITMAP_CHUNK_BYTES_MAX: usize = 4 << 20;

/// What a node tells its peer about itself: at connect, and whenever it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// The sender's node id.
    pub node_id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its disk state.
    pub disk: DiskState,
    /// Its generations.
    pub generations: GenerationSet,
    /// When its current generation started (Unix ms).
    pub current_started_unix_millis: u64,
    /// It crashed while primary and has not resynced since.
    pub crashed_primary: bool,
    /// It crashed while secondary and has not resynced since.
    pub crashed_secondary: bool,
    /// Set bits in its bitmap.
    pub out_of_sync_granules: u64,
    /// Size of its data area.
    pub data_bytes: u64,
    /// Its bitmap granule.
    pub granule_bytes: u32,
    /// Its journal, while active: a peer that received records of this run can catch up from
    /// it.
    pub journal: Option<JournalMark>,
    /// The newest replicated write it received, and from which journal run (`None` if it
    /// received anything since that is not in such a run, or crashed).
    pub received: Option<ReceivedMark>,
    /// After a split brain, the operator told it to discard its changes (they were saved).
    pub discard_my_data: bool,
}

/// An active journal, as the peer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMark {
    /// The run's id.
    pub id: u64,
    /// The oldest record held.
    pub tail: Seq,
    /// The sequence number of the next record.
    pub head: Seq,
}

/// What a secondary has received of a primary's journal run: every record up to `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedMark {
    /// The run's id.
    pub journal: u64,
    /// The newest record received.
    pub seq: Seq,
}

/// Flags of a replicated write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteFlags {
    /// Force unit access.
    pub fua: bool,
    /// The primary waits for a [`PeerMessage::Received`] (protocol B).
    pub receipt: bool,
}

impl WriteFlags {
    fn to_byte(self) -> u8 {
        u8::from(self.fua) | u8::from(self.receipt) << 1
    }

    fn from_byte(byte: u8) -> Option<Self> {
        (byte & !0b11 == 0).then_some(Self {
            fua: byte & 1 != 0,
            receipt: byte & 2 != 0,
        })
    }
}

/// One message of the peer protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// The sender's state.
    State(Box<PeerState>),
    /// The decision the sender reached, to be checked against the receiver's mirror image.
    Decision {
        /// The decision.
        decision: SyncDecision,
        /// The rule that made it.
        rule: SyncRule,
    },
    /// Part of the sender's dirty bitmap, as a serialized roaring set of granule indexes.
    Bitmap {
        /// The serialized set.
        granules: Vec<u8>,
        /// The sender's bitmap is complete with this chunk.
        last: bool,
    },
    /// The sender asks to resync as source (after `resync`): full, or the marked granules.
    StartResync {
        /// Every granule.
        full: bool,
        /// Compare digests first and send only the granules that differ.
        checksum: bool,
    },
    /// Liveness probe.
    Ping {
        /// Echoed in the pong.
        id: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's id.
        id: u64,
    },
    /// A replicated write.
    Write {
        /// Its sequence number.
        seq: Seq,
        /// Writes up to this sequence number must complete first.
        after: Seq,
        /// Volume offset.
        offset: u64,
        /// FUA, and whether the primary waits for a receipt (protocol B).
        flags: WriteFlags,
        /// The bytes.
        data: IoBuf,
    },
    /// A replicated trim.
    Trim {
        /// Its sequence number.
        seq: Seq,
        /// Writes up to this sequence number must complete first.
        after: Seq,
        /// Volume offset.
        offset: u64,
        /// Bytes.
        length: u32,
        /// FUA, and whether the primary waits for a receipt (protocol B).
        flags: WriteFlags,
    },
    /// A replicated write of zeros.
    WriteZeroes {
        /// Its sequence number.
        seq: Seq,
        /// Writes up to this sequence number must complete first.
        after: Seq,
        /// Volume offset.
        offset: u64,
        /// Bytes.
        length: u32,
        /// FUA, and whether the primary waits for a receipt (protocol B).
        flags: WriteFlags,
    },
    /// Make every completed write durable and answer.
    Flush {
        /// Echoed in the ack.
        id: u64,
    },
    /// A replicated write completed on the secondary's disk (or failed there).
    WriteAck {
        /// The write's sequence number.
        seq: Seq,
        /// Whether the secondary's storage took it.
        ok: bool,
    },
    /// The secondary received a write that asked for a receipt (protocol B).
    Received {
        /// The write's sequence number.
        seq: Seq,
    },
    /// A flush completed on the secondary.
    FlushAck {
        /// The flush's id.
        id: u64,
        /// Whether it succeeded.
        ok: bool,
    },
    /// Resync data for the target.
    ResyncData {
        /// Volume offset (granule aligned).
        offset: u64,
        /// The bytes.
        data: IoBuf,
    },
    /// The target wrote resync data.
    ResyncAck {
        /// Volume offset.
        offset: u64,
        /// Bytes.
        length: u32,
        /// Whether the target's storage took it.
        ok: bool,
    },
    /// The source has sent everything: the target takes these generations.
    ResyncDone {
        /// The source's generations.
        generations: GenerationSet,
    },
    /// The target is up to date.
    ResyncDoneAck,
    /// Digests of the sender's granules in a range: the receiver reads the same range (after
    /// every replicated write sent before this message, before any sent after it) and answers
    /// which granules differ.
    Digests {
        /// Why: a checksum resync or an online verify.
        purpose: DigestPurpose,
        /// Volume offset (granule aligned).
        offset: u64,
        /// Bytes.
        length: u32,
        /// [`DIGEST_BYTES`] per granule, in order.
        digests: Vec<u8>,
    },
    /// The answer to [`PeerMessage::Digests`].
    DigestReply {
        /// As asked.
        purpose: DigestPurpose,
        /// As asked.
        offset: u64,
        /// As asked.
        length: u32,
        /// One bit per granule (least significant bit first): set where the data differ.
        differing: Vec<u8>,
    },
}

/// Bytes of a granule's digest (SHA-256, truncated).
pub const DIGEST_BYTES: usize = 16;

/// Why digests are exchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestPurpose {
    /// A checksum resync: matching granules are in sync, differing ones are sent.
    Resync,
    /// An online verify: differing granules are reported.
    Verify,
}

impl DigestPurpose {
    fn to_byte(self) -> u8 {
        match self {
            Self::Resync => 0,
            Self::Verify => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Resync),
            1 => Some(Self::Verify),
            _ => None,
        }
    }
}

/// Why bytes from the peer are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The kind code is not in the table.
    #[error("unknown message kind 0x{0:04x}")]
    UnknownKind(u16),
    /// The payload is too short or too long for its kind.
    #[error("malformed {kind} message: {reason}")]
    Malformed {
        /// The message kind's name.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl PeerMessage {
    /// The message's kind code.
    pub fn kind(&self) -> u16 {
        match self {
            Self::State(_) => 0x0001,
            Self::Decision { .. } => 0x0002,
            Self::Bitmap { .. } => 0x0003,
            Self::StartResync { .. } => 0x0004,
            Self::Ping { .. } => 0x0005,
            Self::Pong { .. } => 0x0006,
            Self::Write { .. } => 0x0010,
            Self::Trim { .. } => 0x0011,
            Self::WriteZeroes { .. } => 0x0012,
            Self::Flush { .. } => 0x0013,
            Self::WriteAck { .. } => 0x0020,
            Self::FlushAck { .. } => 0x0021,
            Self::Received { .. } => 0x0022,
            Self::ResyncData { .. } => 0x0030,
            Self::ResyncAck { .. } => 0x0031,
            Self::ResyncDone { .. } => 0x0032,
            Self::ResyncDoneAck => 0x0033,
            Self::Digests { .. } => 0x0034,
            Self::DigestReply { .. } => 0x0035,
        }
    }

    /// Bytes of client data the message carries (for flow control and statistics).
    pub fn data_bytes(&self) -> u64 {
        match self {
            Self::Write { data, .. } | Self::ResyncData { data, .. } => data.len() as u64,
            _ => 0,
        }
    }

    /// Encodes the payload (the kind travels beside it).
    pub fn encode(&self) -> Vec<u8> {
        let postcard = |value: &dyn erased::Encode| value.encode();
        match self {
            Self::State(state) => postcard(state.as_ref()),
            Self::Decision { decision, rule } => postcard(&(*decision, *rule)),
            Self::ResyncDone { generations } => postcard(generations),
            Self::Bitmap { granules, last } => {
                let mut out = vec![u8::from(*last)];
                out.extend_from_slice(granules);
                out
            }
            Self::StartResync { full, checksum } => {
                vec![u8::from(*full) | u8::from(*checksum) << 1]
            }
            Self::Ping { id } | Self::Pong { id } | Self::Flush { id } => id.to_le_bytes().to_vec(),
            Self::Received { seq } => seq.0.to_le_bytes().to_vec(),
            Self::Write {
                seq,
                after,
                offset,
                flags,
                data,
            } => {
                let mut out = vec![0u8; 25 + data.len()];
                let mut w = FieldWriter::new(&mut out);
                w.put_u64(seq.0);
                w.put_u64(after.0);
                w.put_u64(*offset);
                w.put_u8(flags.to_byte());
                w.put_bytes(data.as_slice());
                out
            }
            Self::Trim {
                seq,
                after,
                offset,
                length,
                flags,
            }
            | Self::WriteZeroes {
                seq,
                after,
                offset,
                length,
                flags,
            } => {
                let mut out = vec![0u8; 29];
                let mut w = FieldWriter::new(&mut out);
                w.put_u64(seq.0);
                w.put_u64(after.0);
                w.put_u64(*offset);
                w.put_u32(*length);
                w.put_u8(flags.to_byte());
                out
            }
            Self::WriteAck { seq, ok } => {
                let mut out = seq.0.to_le_bytes().to_vec();
                out.push(u8::from(*ok));
                out
            }
            Self::FlushAck { id, ok } => {
                let mut out = id.to_le_bytes().to_vec();
                out.push(u8::from(*ok));
                out
            }
            Self::ResyncData { offset, data } => {
                let mut out = offset.to_le_bytes().to_vec();
                out.extend_from_slice(data.as_slice());
                out
            }
            Self::ResyncAck { offset, length, ok } => {
                let mut out = vec![0u8; 13];
                let mut w = FieldWriter::new(&mut out);
                w.put_u64(*offset);
                w.put_u32(*length);
                w.put_u8(u8::from(*ok));
                out
            }
            Self::ResyncDoneAck => Vec::new(),
            Self::Digests {
                purpose,
                offset,
                length,
                digests: bytes,
            }
            | Self::DigestReply {
                purpose,
                offset,
                length,
                differing: bytes,
            } => {
                let mut out = vec![0u8; 13];
                let mut w = FieldWriter::new(&mut out);
                w.put_u8(purpose.to_byte());
                w.put_u64(*offset);
                w.put_u32(*length);
                out.extend_from_slice(bytes);
                out
            }
        }
    }

    /// Decodes a message of kind `kind` from `payload`.
    pub fn decode(kind: u16, payload: &[u8]) -> Result<Self, ProtocolError> {
        let name = kind_name(kind).ok_or(ProtocolError::UnknownKind(kind))?;
        let malformed = |reason: &str| ProtocolError::Malformed {
            kind: name,
            reason: reason.to_string(),
        };
        if payload.len() > MESSAGE_BYTES_MAX {
            return Err(malformed("payload too large"));
        }
        let mut r = FieldReader::new(payload);
        let short = || malformed("too short");
        let message = match kind {
            0x0001 => Self::State(Box::new(from_postcard(payload).map_err(|e| malformed(&e))?)),
            0x0002 => {
                let (decision, rule) = from_postcard(payload).map_err(|e| malformed(&e))?;
                Self::Decision { decision, rule }
            }
            0x0003 => {
                let last = flag(r.u8().ok_or_else(short)?).ok_or_else(|| malformed("bad flag"))?;
                Self::Bitmap {
                    granules: payload[1..].to_vec(),
                    last,
                }
            }
            0x0004 => {
                let bits = r.u8().ok_or_else(short)?;
                if bits > 3 {
                    return Err(malformed("bad flags"));
                }
                Self::StartResync {
                    full: bits & 1 != 0,
                    checksum: bits & 2 != 0,
                }
            }
            0x0005 | 0x0006 | 0x0013 => {
                let id = r.u64().ok_or_else(short)?;
                match kind {
                    0x0005 => Self::Ping { id },
                    0x0006 => Self::Pong { id },
                    _ => Self::Flush { id },
                }
            }
            0x0010 => {
                let (seq, after, offset) = (r.u64(), r.u64(), r.u64());
                let flags = r.u8().and_then(WriteFlags::from_byte);
                let (Some(seq), Some(after), Some(offset), Some(flags)) =
                    (seq, after, offset, flags)
                else {
                    return Err(short());
                };
                let data = IoBuf::copy_from(&payload[25..]);
                Self::Write {
                    seq: Seq(seq),
                    after: Seq(after),
                    offset,
                    flags,
                    data,
                }
            }
            0x0011 | 0x0012 => {
                let (seq, after, offset, length) = (r.u64(), r.u64(), r.u64(), r.u32());
                let flags = r.u8().and_then(WriteFlags::from_byte);
                let (Some(seq), Some(after), Some(offset), Some(length), Some(flags)) =
                    (seq, after, offset, length, flags)
                else {
                    return Err(short());
                };
                let (seq, after) = (Seq(seq), Seq(after));
                if kind == 0x0011 {
                    Self::Trim {
                        seq,
                        after,
                        offset,
                        length,
                        flags,
                    }
                } else {
                    Self::WriteZeroes {
                        seq,
                        after,
                        offset,
                        length,
                        flags,
                    }
                }
            }
            0x0020 | 0x0021 => {
                let number = r.u64().ok_or_else(short)?;
                let ok = r.u8().and_then(flag).ok_or_else(short)?;
                if kind == 0x0020 {
                    Self::WriteAck {
                        seq: Seq(number),
                        ok,
                    }
                } else {
                    Self::FlushAck { id: number, ok }
                }
            }
            0x0022 => Self::Received {
                seq: Seq(r.u64().ok_or_else(short)?),
            },
            0x0030 => {
                let offset = r.u64().ok_or_else(short)?;
                Self::ResyncData {
                    offset,
                    data: IoBuf::copy_from(&payload[8..]),
                }
            }
            0x0031 => {
                let (offset, length) = (r.u64(), r.u32());
                let ok = r.u8().and_then(flag);
                let (Some(offset), Some(length), Some(ok)) = (offset, length, ok) else {
                    return Err(short());
                };
                Self::ResyncAck { offset, length, ok }
            }
            0x0032 => Self::ResyncDone {
                generations: from_postcard(payload).map_err(|e| malformed(&e))?,
            },
            0x0033 => Self::ResyncDoneAck,
            0x0034 | 0x0035 => {
                let purpose = r.u8().and_then(DigestPurpose::from_byte);
                let (offset, length) = (r.u64(), r.u32());
                let (Some(purpose), Some(offset), Some(length)) = (purpose, offset, length) else {
                    return Err(short());
                };
                let bytes = payload[13..].to_vec();
                if kind == 0x0034 {
                    Self::Digests {
                        purpose,
                        offset,
                        length,
                        digests: bytes,
                    }
                } else {
                    Self::DigestReply {
                        purpose,
                        offset,
                        length,
                        differing: bytes,
                    }
                }
            }
            _ => return Err(ProtocolError::UnknownKind(kind)),
        };
        let consumed = match &message {
            Self::State(_)
            | Self::Decision { .. }
            | Self::ResyncDone { .. }
            | Self::Bitmap { .. } => payload.len(),
            Self::Write { .. }
            | Self::ResyncData { .. }
            | Self::Digests { .. }
            | Self::DigestReply { .. } => payload.len(),
            _ => r.position(),
        };
        if consumed != payload.len() {
            return Err(malformed("trailing bytes"));
        }
        Ok(message)
    }
}

impl fmt::Display for PeerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = kind_name(self.kind()).unwrap_or("?");
        match self {
            Self::Write {
                seq, offset, data, ..
            } => write!(f, "{name} {seq} @{offset}+{}", data.len()),
            Self::ResyncData { offset, data } => write!(f, "{name} @{offset}+{}", data.len()),
            _ => write!(f, "{name}"),
        }
    }
}

/// The name of a kind code, if it is in the table.
pub fn kind_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        0x0001 => "State",
        0x0002 => "Decision",
        0x0003 => "Bitmap",
        0x0004 => "StartResync",
        0x0005 => "Ping",
        0x0006 => "Pong",
        0x0010 => "Write",
        0x0011 => "Trim",
        0x0012 => "WriteZeroes",
        0x0013 => "Flush",
        0x0020 => "WriteAck",
        0x0021 => "FlushAck",
        0x0022 => "Received",
        0x0030 => "ResyncData",
        0x0031 => "ResyncAck",
        0x0032 => "ResyncDone",
        0x0033 => "ResyncDoneAck",
        0x0034 => "Digests",
        0x0035 => "DigestReply",
        _ => return None,
    })
}

fn flag(byte: u8) -> Option<bool> {
    match byte {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

fn from_postcard<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok(_) => Err("trailing bytes".to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Postcard encoding behind a small object-safe trait, so `encode` can treat the control
/// messages alike.
mod erased {
    pub(super) trait Encode {
        fn encode(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Encode for T {
        fn encode(&self) -> Vec<u8> {
            postcard::to_stdvec(self).expect("control messages always encode")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Generation;
    use crate::prng::Prng;

    fn samples() -> Vec<PeerMessage> {
        let generations = GenerationSet {
            current: Generation(9),
            bitmap: Generation(7),
            history: [
                Generation(3),
                Generation::NONE,
                Generation::NONE,
                Generation::NONE,
            ],
        };
        vec![
            PeerMessage::State(Box::new(PeerState {
                node_id: NodeId(1),
                role: Role::Primary,
                disk: DiskState::UpToDate,
                generations,
                current_started_unix_millis: 5,
                crashed_primary: true,
                crashed_secondary: false,
                out_of_sync_granules: 12,
                data_bytes: 1 << 30,
                granule_bytes: 4096,
                journal: Some(JournalMark {
                    id: 9,
                    tail: Seq(4),
                    head: Seq(8),
                }),
                received: Some(ReceivedMark {
                    journal: 7,
                    seq: Seq(3),
                }),
                discard_my_data: true,
            })),
            PeerMessage::Decision {
                decision: SyncDecision::SourceUseBitmap,
                rule: SyncRule::BitmapSelf,
            },
            PeerMessage::Bitmap {
                granules: vec![1, 2, 3],
                last: true,
            },
            PeerMessage::StartResync {
                full: true,
                checksum: true,
            },
            PeerMessage::StartResync {
                full: false,
                checksum: false,
            },
            PeerMessage::Ping { id: 4 },
            PeerMessage::Pong { id: 4 },
            PeerMessage::Write {
                seq: Seq(10),
                after: Seq(8),
                offset: 4096,
                flags: WriteFlags {
                    fua: true,
                    receipt: true,
                },
                data: IoBuf::copy_from(&[7; 4096]),
            },
            PeerMessage::Trim {
                seq: Seq(11),
                after: Seq(9),
                offset: 0,
                length: 512,
                flags: WriteFlags::default(),
            },
            PeerMessage::WriteZeroes {
                seq: Seq(12),
                after: Seq(9),
                offset: 0,
                length: 512,
                flags: WriteFlags {
                    fua: true,
                    receipt: false,
                },
            },
            PeerMessage::Flush { id: 77 },
            PeerMessage::WriteAck {
                seq: Seq(10),
                ok: true,
            },
            PeerMessage::FlushAck { id: 77, ok: false },
            PeerMessage::Received { seq: Seq(10) },
            PeerMessage::ResyncData {
                offset: 8192,
                data: IoBuf::copy_from(&[1; 512]),
            },
            PeerMessage::ResyncAck {
                offset: 8192,
                length: 512,
                ok: true,
            },
            PeerMessage::ResyncDone { generations },
            PeerMessage::ResyncDoneAck,
            PeerMessage::Digests {
                purpose: DigestPurpose::Verify,
                offset: 4096,
                length: 8192,
                digests: vec![3; 2 * DIGEST_BYTES],
            },
            PeerMessage::DigestReply {
                purpose: DigestPurpose::Resync,
                offset: 4096,
                length: 8192,
                differing: vec![2],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for message in samples() {
            let decoded = PeerMessage::decode(message.kind(), &message.encode()).expect("valid");
            assert_eq!(decoded, message);
            assert!(kind_name(message.kind()).is_some());
        }
    }

    #[test]
    fn truncated_extended_and_random_payloads_are_errors_not_panics() {
        for message in samples() {
            let bytes = message.encode();
            for cut in 0..bytes.len().min(40) {
                let _ = PeerMessage::decode(message.kind(), &bytes[..cut]);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            if !matches!(
                message,
                PeerMessage::Write { .. }
                    | PeerMessage::ResyncData { .. }
                    | PeerMessage::Bitmap { .. }
                    | PeerMessage::Digests { .. }
                    | PeerMessage::DigestReply { .. }
            ) {
                assert!(
                    PeerMessage::decode(message.kind(), &longer).is_err(),
                    "{message}"
                );
            }
        }
        let mut prng = Prng::from_seed(99);
        for _ in 0..20_000 {
            let kind = if prng.chance(1, 2) {
                prng.below(0x40) as u16
            } else {
                prng.next_u64() as u16
            };
            let length = prng.below(64) as usize;
            let bytes: Vec<u8> = (0..length).map(|_| prng.next_u64() as u8).collect();
            let _ = PeerMessage::decode(kind, &bytes);
        }
        assert_eq!(
            PeerMessage::decode(0x7777, &[]),
            Err(ProtocolError::UnknownKind(0x7777))
        );
    }
}
