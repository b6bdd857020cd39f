//! Why a link could not be set up or had to close.

use std::fmt;
use std::time::Duration;

use crate::protocol::frame::FrameError;
use crate::runtime::link::hello::Incompatibility;

/// Everything that ends a link (or prevents one). The `Display` text is the one-line reason a
/// log line or an operator needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// An operating-system socket call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection between two records.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a record.
    #[error("peer closed the connection in the middle of a record")]
    Truncated,
    /// Connecting or the handshake took longer than allowed.
    #[error("handshake: timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer closed the connection before the handshake completed.
    #[error("handshake: peer closed the connection (wrong cluster key, or not a tandem node)")]
    HandshakeClosed,
    /// The peer did not open with tandem's handshake preamble.
    #[error("handshake: not a tandem node (unexpected preamble)")]
    NotTandem,
    /// The peer speaks a handshake version this build does not (the last preamble byte).
    #[error("handshake: unsupported handshake version {0} (this build speaks 1)")]
    HandshakeVersion(u8),
    /// The peer's handshake message did not decrypt: it holds another cluster key.
    #[error("handshake: cluster key mismatch")]
    KeyMismatch,
    /// The peer refused our handshake and said why.
    #[error("peer refused the handshake: {0}")]
    Refused(Refusal),
    /// A handshake message was not well formed.
    #[error("handshake: malformed message: {0}")]
    MalformedHandshake(&'static str),
    /// The initiator's key confirmation did not verify: someone replayed an old first message.
    #[error("handshake: key confirmation failed (replayed or forged handshake)")]
    ConfirmationFailed,
    /// Both ends hold the cluster key but cannot work together.
    #[error("handshake: {0}")]
    Incompatible(Incompatibility),
    /// A record did not verify: it was modified, replayed, reordered, or one went missing.
    #[error("record failed authentication (tampered or replayed)")]
    Authentication,
    /// A record's length prefix is outside what the frame limits allow.
    #[error("record length {bytes} is outside the allowed {min}..={max} bytes")]
    RecordLength {
        /// The length prefix.
        bytes: u32,
        /// The smallest valid record.
        min: u32,
        /// The largest valid record.
        max: u32,
    },
    /// An authenticated record did not hold a valid frame (a bug or version skew at the peer).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The payload handed to `send` is larger than the peer accepts; the link stays up.
    #[error("payload of {bytes} bytes exceeds the link's limit of {max} bytes")]
    PayloadTooLarge {
        /// Payload bytes.
        bytes: usize,
        /// The limit: the smaller of ours and the peer's.
        max: u32,
    },
    /// An earlier error (or a cancelled send) already ended this link.
    #[error("link already failed: {0}")]
    Broken(String),
    /// The link configuration cannot be used.
    #[error("invalid link configuration: {0}")]
    InvalidConfig(String),
}

/// Why a responder refused a handshake, as it tells the initiator in a plaintext marker.
///
/// The marker is not authenticated (it cannot be: the two ends share no key yet), so an
/// attacker on the path can forge it; that costs the initiator only a retry, which an attacker
/// on the path can always cause by cutting the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The responder could not decrypt our first message.
    KeyMismatch,
    /// The responder could not parse our first message.
    Malformed,
    /// The responder does not speak our handshake version.
    HandshakeVersion,
    /// A reason code this build does not know.
    Unknown(u8),
}

impl Refusal {
    pub(super) fn code(self) -> u8 {
        match self {
            Self::KeyMismatch => 1,
            Self::Malformed => 2,
            Self::HandshakeVersion => 3,
            Self::Unknown(code) => code,
        }
    }

    pub(super) fn from_code(code: u8) -> Self {
        match code {
            1 => Self::KeyMismatch,
            2 => Self::Malformed,
            3 => Self::HandshakeVersion,
            other => Self::Unknown(other),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyMismatch => f.write_str("cluster key mismatch"),
            Self::Malformed => f.write_str("malformed handshake"),
            Self::HandshakeVersion => f.write_str("unsupported handshake version"),
            Self::Unknown(code) => write!(f, "unknown reason {code}"),
        }
    }
}

impl LinkError {
    /// An [`LinkError::Io`] with its context.
    pub(super) fn io(context: &'static str, source: std::io::Error) -> Self {
        Self::Io { context, source }
    }
}
