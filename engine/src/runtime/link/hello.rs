//! The hello each end sends inside the handshake, and the negotiation of the two.
//!
//! # Layout (little-endian)
//!
//! ```text
//! offset size field
//!      0    1 lowest protocol version spoken
//!      1    1 highest protocol version spoken
//!      2    8 features bitmask
//!     10    4 largest frame payload this end accepts
//!     14    1 cluster name length n (1..=255), then n bytes of UTF-8
//!      .    1 node name length, then its bytes
//!      .    1 volume name length, then its bytes
//!      .    - anything after is ignored, so later versions can append fields
//! ```
//!
//! Negotiation is symmetric: both ends compute it from the same two hellos and reach the same
//! verdict, so a refusal needs no extra message and both ends can name the reason.

use std::fmt;

use crate::codec::{FieldReader, FieldWriter};

/// The peer-protocol version this build speaks (the version of the message table, see
/// `crate::protocol::messages`).
pub const PROTOCOL_VERSION: u8 = 1;

/// The longest name in a hello, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// Bytes of the fixed part of the encoding, before the names.
const FIXED_BYTES: usize = 14;

/// What a node says about itself when a link comes up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The lowest peer-protocol version this node speaks.
    pub protocol_version_min: u8,
    /// The highest peer-protocol version this node speaks.
    pub protocol_version_max: u8,
    /// Optional features this node supports; the link uses those both support.
    pub features: u64,
    /// The cluster both nodes must belong to.
    pub cluster_name: String,
    /// This node's name; the two ends must differ.
    pub node_name: String,
    /// The replicated volume this link carries; both ends must name the same one.
    pub volume_name: String,
}

impl Hello {
    /// A hello speaking only [`PROTOCOL_VERSION`], with no optional features.
    pub fn new(
        cluster_name: impl Into<String>,
        node_name: impl Into<String>,
        volume_name: impl Into<String>,
    ) -> Self {
        Self {
            protocol_version_min: PROTOCOL_VERSION,
            protocol_version_max: PROTOCOL_VERSION,
            features: 0,
            cluster_name: cluster_name.into(),
            node_name: node_name.into(),
            volume_name: volume_name.into(),
        }
    }

    /// Checks that the hello can be sent: a version range that is not empty and names of 1 to
    /// [`NAME_BYTES_MAX`] bytes.
    pub fn validate(&self) -> Result<(), String> {
        if self.protocol_version_min > self.protocol_version_max {
            return Err(format!(
                "protocol versions {}..={} form an empty range",
                self.protocol_version_min, self.protocol_version_max
            ));
        }
        for (what, name) in self.names() {
            if name.is_empty() || name.len() > NAME_BYTES_MAX {
                return Err(format!(
                    "{what} name {name:?} must have 1 to {NAME_BYTES_MAX} bytes"
                ));
            }
        }
        Ok(())
    }

    fn names(&self) -> [(&'static str, &str); 3] {
        [
            ("cluster", &self.cluster_name),
            ("node", &self.node_name),
            ("volume", &self.volume_name),
        ]
    }
}

/// A hello with the receive limit of its sender, as carried in a handshake message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HelloMessage {
    pub(super) hello: Hello,
    pub(super) frame_payload_bytes_max: u32,
}

impl HelloMessage {
    /// The encoding; the hello must be valid.
    pub(super) fn encode(&self) -> Vec<u8> {
        let hello = &self.hello;
        debug_assert!(hello.validate().is_ok());
        let names_bytes: usize = hello.names().iter().map(|(_, name)| 1 + name.len()).sum();
        let mut bytes = vec![0u8; FIXED_BYTES + names_bytes];
        let mut writer = FieldWriter::new(&mut bytes);
        writer.put_u8(hello.protocol_version_min);
        writer.put_u8(hello.protocol_version_max);
        writer.put_u64(hello.features);
        writer.put_u32(self.frame_payload_bytes_max);
        for (_, name) in hello.names() {
            writer.put_u8(u8::try_from(name.len()).expect("validated name length"));
            writer.put_bytes(name.as_bytes());
        }
        assert_eq!(writer.position(), bytes.len());
        bytes
    }

    /// Decodes a hello message; `None` if the bytes are not one.
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = FieldReader::new(bytes);
        let protocol_version_min = reader.u8()?;
        let protocol_version_max = reader.u8()?;
        let features = reader.u64()?;
        let frame_payload_bytes_max = reader.u32()?;
        let mut name = || -> Option<String> {
            let len = reader.u8()?;
            String::from_utf8(reader.bytes(usize::from(len))?.to_vec()).ok()
        };
        let hello = Hello {
            protocol_version_min,
            protocol_version_max,
            features,
            cluster_name: name()?,
            node_name: name()?,
            volume_name: name()?,
        };
        hello.validate().ok()?;
        if frame_payload_bytes_max == 0 {
            return None;
        }
        Some(Self {
            hello,
            frame_payload_bytes_max,
        })
    }
}

/// What two compatible hellos agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Agreement {
    /// The highest protocol version both speak.
    pub(super) protocol_version: u8,
    /// The features both support.
    pub(super) features: u64,
}

/// Why two nodes cannot form a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incompatibility {
    /// The protocol version ranges do not overlap.
    ProtocolVersion {
        /// Our range.
        ours: (u8, u8),
        /// The peer's range.
        theirs: (u8, u8),
    },
    /// The nodes belong to different clusters.
    ClusterName {
        /// Our cluster.
        ours: String,
        /// The peer's cluster.
        theirs: String,
    },
    /// The nodes replicate different volumes over this link.
    VolumeName {
        /// Our volume.
        ours: String,
        /// The peer's volume.
        theirs: String,
    },
    /// The peer has our node name: a node connected to itself, or two nodes share a name.
    SameNodeName(String),
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProtocolVersion { ours, theirs } => write!(
                f,
                "no common protocol version: we speak {}..={}, the peer {}..={}",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            Self::ClusterName { ours, theirs } => write!(
                f,
                "cluster name mismatch: we are in {ours:?}, the peer in {theirs:?}"
            ),
            Self::VolumeName { ours, theirs } => write!(
                f,
                "volume name mismatch: ours is {ours:?}, the peer's is {theirs:?}"
            ),
            Self::SameNodeName(name) => write!(
                f,
                "the peer has our own node name {name:?} (connected to ourselves?)"
            ),
        }
    }
}

/// Decides whether two nodes can form a link; symmetric in its arguments (up to which side the
/// reason calls "ours").
pub(super) fn negotiate(ours: &Hello, theirs: &Hello) -> Result<Agreement, Incompatibility> {
    let low = ours.protocol_version_min.max(theirs.protocol_version_min);
    let high = ours.protocol_version_max.min(theirs.protocol_version_max);
    if low > high {
        return Err(Incompatibility::ProtocolVersion {
            ours: (ours.protocol_version_min, ours.protocol_version_max),
            theirs: (theirs.protocol_version_min, theirs.protocol_version_max),
        });
    }
    if ours.cluster_name != theirs.cluster_name {
        return Err(Incompatibility::ClusterName {
            ours: ours.cluster_name.clone(),
            theirs: theirs.cluster_name.clone(),
        });
    }
    if ours.volume_name != theirs.volume_name {
        return Err(Incompatibility::VolumeName {
            ours: ours.volume_name.clone(),
            theirs: theirs.volume_name.clone(),
        });
    }
    if ours.node_name == theirs.node_name {
        return Err(Incompatibility::SameNodeName(ours.node_name.clone()));
    }
    Ok(Agreement {
        protocol_version: high,
        features: ours.features & theirs.features,
    })
}
