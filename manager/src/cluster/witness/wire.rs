//! The witness's datagrams: one request, one response, each authenticated with HMAC-SHA256
//! under a key derived from the cluster key and the cluster's name ([`WitnessKey`]), so a host
//! without the key can neither ask for a lease nor forge an answer (S9). Hand-framed; decoding
//! is a pure function of the bytes (and the key) and never panics.
//!
//! Request (integers little-endian), 90..=216 bytes:
//!
//! | bytes      | field                                                       |
//! |------------|-------------------------------------------------------------|
//! | 0..4       | `"TNWR"`                                                    |
//! | 4          | version, 2                                                  |
//! | 5          | kind: 1 acquire, 2 release                                  |
//! | 6          | cluster name length `c`, 1..=64                             |
//! | 7          | node name length `n`, 1..=64                                |
//! | 8..16      | client boot id                                              |
//! | 16..24     | sequence number (increases with every datagram of the boot) |
//! | 24..32     | client nonce (echoed by the answer)                         |
//! | 32..40     | lease ms (0 for a release)                                  |
//! | 40..48     | claims: bit 0 peer behind, 1 forced, 2 in sync; no other    |
//! | 48..56     | the generation of the asker's data                          |
//! | 56..56+c   | cluster name (UTF-8, in clear: the witness derives the key) |
//! | then `n`   | node name (UTF-8)                                           |
//! | last 32    | HMAC-SHA256 over every byte before it                       |
//!
//! Response, 64..=128 bytes:
//!
//! | bytes    | field                                                              |
//! |----------|--------------------------------------------------------------------|
//! | 0..4     | `"TNWA"`                                                           |
//! | 4        | version, 2                                                         |
//! | 5        | verdict: 1 granted, 2 refused, 3 released, 4 restarting, 5 rejected, 6 outdated |
//! | 6        | rejected: 1 lease out of range, 2 too many clusters, 3 too many nodes; else 0 |
//! | 7        | name length `h`: 1..=64 if refused (the holder) or outdated (the node with current data), else 0 |
//! | 8..16    | the request's nonce                                                |
//! | 16..24   | epoch; rejected: the shortest lease (out of range) or 0           |
//! | 24..32   | granted: lease ms; refused, restarting: ms left; rejected: the max |
//! | 32..32+h | the name (UTF-8)                                                   |
//! | last 32  | HMAC-SHA256 over every byte before it                              |
//!
//! Both directions use the same derived key; the magic, which the tag covers, keeps a request
//! from passing for a response. The response names no cluster or node: the nonce, fresh for
//! every call of a client, ties it to the request.

use ring::hmac;

use super::{Claims, Rejection, Verdict};

const REQUEST_MAGIC: &[u8; 4] = b"TNWR";
const RESPONSE_MAGIC: &[u8; 4] = b"TNWA";
const VERSION: u8 = 2;
const TAG_BYTES: usize = 32;
const REQUEST_HEADER: usize = 56;
const RESPONSE_HEADER: usize = 32;
/// The longest cluster or node name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Bytes of the largest request or response: a receive buffer this big holds any of them.
pub const MAX_DATAGRAM_BYTES: usize = REQUEST_HEADER + 2 * MAX_NAME_BYTES + TAG_BYTES;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Take or renew the lease.
    Acquire,
    /// Give the lease back.
    Release,
}

/// One request to the witness (the authenticated payload of a request datagram).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Acquire or release.
    pub kind: Kind,
    /// The cluster's name (1..=64 bytes; it selects the key).
    pub cluster: String,
    /// The asking node's name (1..=64 bytes).
    pub node: String,
    /// The client's boot id: a new, larger one every time a client starts.
    pub boot: u64,
    /// Increases with every datagram of one boot, retransmissions included.
    pub seq: u64,
    /// Random per call; the answer echoes it.
    pub nonce: u64,
    /// The lease asked for (0 for a release).
    pub lease_ms: u64,
    /// What an acquire claims (none for a release).
    pub claims: Claims,
}

/// Why a datagram is not a valid witness request or answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short, too long, or not the length its name lengths say.
    #[error("{0} bytes, not a witness datagram of that shape")]
    Length(usize),
    /// No witness magic (or a request where an answer was expected, and the reverse).
    #[error("not a tandem witness datagram")]
    Magic,
    /// Another version of the protocol.
    #[error("witness protocol version {0}, this side speaks {VERSION}")]
    Version(u8),
    /// A cluster, node or holder name that is empty, too long, not UTF-8 or has control
    /// characters.
    #[error("invalid {0} name")]
    Name(&'static str),
    /// The tag does not match: another cluster key, or a changed datagram.
    #[error("not signed with this cluster's key")]
    Tag,
    /// An unknown request kind.
    #[error("unknown request kind {0}")]
    Kind(u8),
    /// Claim bits this side does not know.
    #[error("unknown claims {0:#x}")]
    Claims(u64),
    /// An unknown verdict or rejection reason, or fields that do not fit the verdict.
    #[error("malformed verdict {0}")]
    Verdict(u8),
    /// An authentic answer to another request.
    #[error("answers another request")]
    Nonce,
}

impl WireError {
    /// A fixed name per variant, to log each kind of error once.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Length(_) => "length",
            Self::Magic => "magic",
            Self::Version(_) => "version",
            Self::Name(_) => "name",
            Self::Tag => "tag",
            Self::Kind(_) => "kind",
            Self::Claims(_) => "claims",
            Self::Verdict(_) => "verdict",
            Self::Nonce => "nonce",
        }
    }
}

/// Checks a cluster or node name: 1..=64 bytes of UTF-8 without control characters.
pub fn check_name(what: &'static str, name: &str) -> Result<(), WireError> {
    let fits = (1..=MAX_NAME_BYTES).contains(&name.len());
    if fits && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(WireError::Name(what))
    }
}

fn name_from(what: &'static str, bytes: &[u8]) -> Result<String, WireError> {
    let name = std::str::from_utf8(bytes).map_err(|_| WireError::Name(what))?;
    check_name(what, name)?;
    Ok(name.to_string())
}

fn word(bytes: &[u8], at: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(value)
}

/// Signs and checks the witness datagrams of one cluster.
#[derive(Debug)]
pub struct WitnessKey(hmac::Key);

impl WitnessKey {
    /// The witness key of cluster `cluster` with key `cluster_key` (distinct from the
    /// heartbeat key of the same cluster).
    pub fn new(cluster_key: &[u8; 32], cluster: &str) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, cluster_key);
        let mut label = b"tandem witness v1 ".to_vec();
        label.extend_from_slice(cluster.as_bytes());
        let derived = hmac::sign(&derive, &label);
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    fn seal(&self, mut packet: Vec<u8>) -> Vec<u8> {
        let tag = hmac::sign(&self.0, &packet);
        packet.extend_from_slice(tag.as_ref());
        packet
    }

    fn verify(&self, packet: &[u8]) -> Result<(), WireError> {
        let (signed, tag) = packet.split_at(packet.len() - TAG_BYTES);
        hmac::verify(&self.0, signed, tag).map_err(|_| WireError::Tag)
    }

    /// The datagram of `request`, which must be of this key's cluster (fails on a bad name).
    pub fn encode_request(&self, request: &Request) -> Result<Vec<u8>, WireError> {
        check_name("cluster", &request.cluster)?;
        check_name("node", &request.node)?;
        let mut packet = Vec::with_capacity(MAX_DATAGRAM_BYTES);
        packet.extend_from_slice(REQUEST_MAGIC);
        packet.push(VERSION);
        packet.push(match request.kind {
            Kind::Acquire => 1,
            Kind::Release => 2,
        });
        packet.push(request.cluster.len() as u8);
        packet.push(request.node.len() as u8);
        let claims = u64::from(request.claims.peer_behind)
            | u64::from(request.claims.force) << 1
            | u64::from(request.claims.in_sync) << 2;
        for value in [
            request.boot,
            request.seq,
            request.nonce,
            request.lease_ms,
            claims,
            request.claims.generation,
        ] {
            packet.extend_from_slice(&value.to_le_bytes());
        }
        packet.extend_from_slice(request.cluster.as_bytes());
        packet.extend_from_slice(request.node.as_bytes());
        Ok(self.seal(packet))
    }

    /// The answer `verdict` to the request with nonce `nonce`.
    ///
    /// # Panics
    /// If a refusal names a holder that is not a valid node name (the lease table only holds
    /// names that came in valid requests).
    pub fn encode_response(&self, nonce: u64, verdict: &Verdict) -> Vec<u8> {
        let (code, reason, epoch, ms, holder) = match verdict {
            Verdict::Granted { epoch, lease_ms } => (1, 0, *epoch, *lease_ms, ""),
            Verdict::Refused {
                holder,
                epoch,
                remaining_ms,
            } => (2, 0, *epoch, *remaining_ms, holder.as_str()),
            Verdict::Released { epoch } => (3, 0, *epoch, 0, ""),
            Verdict::Restarting { remaining_ms } => (4, 0, 0, *remaining_ms, ""),
            Verdict::Outdated { current, epoch } => (6, 0, *epoch, 0, current.as_str()),
            Verdict::Rejected(Rejection::LeaseOutOfRange { min_ms, max_ms }) => {
                (5, 1, *min_ms, *max_ms, "")
            }
            Verdict::Rejected(Rejection::TooManyClusters { max }) => (5, 2, 0, *max, ""),
            Verdict::Rejected(Rejection::TooManyNodes { max }) => (5, 3, 0, *max, ""),
        };
        if code == 2 || code == 6 {
            check_name("holder", holder).expect("the lease table holds valid names");
        }
        let mut packet = Vec::with_capacity(RESPONSE_HEADER + holder.len() + TAG_BYTES);
        packet.extend_from_slice(RESPONSE_MAGIC);
        packet.extend_from_slice(&[VERSION, code, reason, holder.len() as u8]);
        for value in [nonce, epoch, ms] {
            packet.extend_from_slice(&value.to_le_bytes());
        }
        packet.extend_from_slice(holder.as_bytes());
        self.seal(packet)
    }

    /// The verdict in `packet`, if it is an authentic answer of this cluster's witness to the
    /// request with nonce `nonce`.
    pub fn decode_response(&self, nonce: u64, packet: &[u8]) -> Result<Verdict, WireError> {
        let length = packet.len();
        let shortest = RESPONSE_HEADER + TAG_BYTES;
        if !(shortest..=shortest + MAX_NAME_BYTES).contains(&length) {
            return Err(WireError::Length(length));
        }
        if &packet[..4] != RESPONSE_MAGIC {
            return Err(WireError::Magic);
        }
        if packet[4] != VERSION {
            return Err(WireError::Version(packet[4]));
        }
        let holder_bytes = usize::from(packet[7]);
        if length != shortest + holder_bytes {
            return Err(WireError::Length(length));
        }
        self.verify(packet)?;
        if word(packet, 8) != nonce {
            return Err(WireError::Nonce);
        }
        let (code, reason) = (packet[5], packet[6]);
        let (epoch, ms) = (word(packet, 16), word(packet, 24));
        let named = code == 2 || code == 6;
        if named != (holder_bytes > 0) || (code == 5) != (reason != 0) {
            return Err(WireError::Verdict(code));
        }
        let zero_epoch = |verdict: Verdict| {
            if epoch == 0 {
                Ok(verdict)
            } else {
                Err(WireError::Verdict(code))
            }
        };
        match (code, reason) {
            (1, _) => Ok(Verdict::Granted {
                epoch,
                lease_ms: ms,
            }),
            (2, _) => Ok(Verdict::Refused {
                holder: name_from("holder", &packet[RESPONSE_HEADER..length - TAG_BYTES])?,
                epoch,
                remaining_ms: ms,
            }),
            (3, _) if ms == 0 => Ok(Verdict::Released { epoch }),
            (6, _) if ms == 0 => Ok(Verdict::Outdated {
                current: name_from("holder", &packet[RESPONSE_HEADER..length - TAG_BYTES])?,
                epoch,
            }),
            (4, _) => zero_epoch(Verdict::Restarting { remaining_ms: ms }),
            (5, 1) => Ok(Verdict::Rejected(Rejection::LeaseOutOfRange {
                min_ms: epoch,
                max_ms: ms,
            })),
            (5, 2) => zero_epoch(Verdict::Rejected(Rejection::TooManyClusters { max: ms })),
            (5, 3) => zero_epoch(Verdict::Rejected(Rejection::TooManyNodes { max: ms })),
            _ => Err(WireError::Verdict(code)),
        }
    }
}

/// The request in `packet`, if it is an authentic request of a cluster whose key is
/// `cluster_key` (the witness derives the cluster's [`WitnessKey`] from the name in clear).
pub fn decode_request(cluster_key: &[u8; 32], packet: &[u8]) -> Result<Request, WireError> {
    let length = packet.len();
    let shortest = REQUEST_HEADER + 2 + TAG_BYTES;
    if !(shortest..=MAX_DATAGRAM_BYTES).contains(&length) {
        return Err(WireError::Length(length));
    }
    if &packet[..4] != REQUEST_MAGIC {
        return Err(WireError::Magic);
    }
    if packet[4] != VERSION {
        return Err(WireError::Version(packet[4]));
    }
    let (cluster_bytes, node_bytes) = (usize::from(packet[6]), usize::from(packet[7]));
    if length != REQUEST_HEADER + cluster_bytes + node_bytes + TAG_BYTES {
        return Err(WireError::Length(length));
    }
    let node_at = REQUEST_HEADER + cluster_bytes;
    let cluster = name_from("cluster", &packet[REQUEST_HEADER..node_at])?;
    WitnessKey::new(cluster_key, &cluster).verify(packet)?;
    let node = name_from("node", &packet[node_at..node_at + node_bytes])?;
    let kind = match packet[5] {
        1 => Kind::Acquire,
        2 => Kind::Release,
        other => return Err(WireError::Kind(other)),
    };
    let claims = word(packet, 40);
    if claims & !0b111 != 0 {
        return Err(WireError::Claims(claims));
    }
    Ok(Request {
        kind,
        cluster,
        node,
        boot: word(packet, 8),
        seq: word(packet, 16),
        nonce: word(packet, 24),
        lease_ms: word(packet, 32),
        claims: Claims {
            peer_behind: claims & 1 != 0,
            force: claims & 2 != 0,
            in_sync: claims & 4 != 0,
            generation: word(packet, 48),
        },
    })
}
