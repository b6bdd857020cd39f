//! The replication link: an authenticated, encrypted, compressed message stream between two
//! tandem nodes over TCP.
//!
//! # Layers, bottom up
//!
//! 1. TCP, with Nagle off.
//! 2. The handshake (module `handshake`): Noise `NNpsk0` with the cluster key as pre-shared key, a
//!    [`Hello`] each way, negotiation, and a key confirmation from the initiator.
//! 3. Records ([`crate::protocol::seal`]): `[u32 LE length][AES-256-GCM ciphertext][tag]`, one
//!    key per direction from the handshake, implicit counters as nonces, deterministic rekeying.
//! 4. Frames ([`crate::protocol::frame`]): a 16-byte header (magic, version, codec, kind,
//!    length, CRC-32) and the payload, compressed with the sender's [`Compression`] when that
//!    shrinks it ([`crate::protocol::compress`]).
//!
//! [`connect`] and [`accept`] return the two halves of a link, [`LinkSender`] and
//! [`LinkReceiver`], which can live in different tasks, and the peer's [`PeerHello`]. Message
//! kinds are opaque here; `crate::protocol::messages` gives them meaning.
//!
//! # Failures
//!
//! Every failure is a [`LinkError`] whose `Display` is a one-line reason. A failed handshake is
//! also logged once, at `warn`, by the side that saw it ("link with peer 10.0.0.2:41234 failed:
//! handshake: cluster key mismatch"), so the caller need not log it again; connection errors
//! before the handshake (peer down) are only returned, since reconnect loops hit them often.
//! A record that fails authentication or does not decode ends the link: the receiver shuts the
//! socket down both ways and the peer sees it close.

mod error;
mod handshake;
mod hello;
#[cfg(test)]
mod tests;
mod transport;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

pub use error::{LinkError, Refusal};
pub use handshake::{HANDSHAKE_PREAMBLE, NOISE_PATTERN};
pub use hello::{Hello, Incompatibility, NAME_BYTES_MAX, PROTOCOL_VERSION};
pub use transport::{LinkCounters, LinkReceiver, LinkSender, LinkTraffic, RECORD_OVERHEAD_BYTES};

use crate::protocol::compress::Compression;
use crate::protocol::frame::FRAME_PAYLOAD_BYTES_MAX;
use crate::protocol::seal::RekeyPolicy;
use handshake::Role;
use hello::HelloMessage;

/// How long a handshake may take unless configured otherwise.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// What one end of a link needs to know.
#[derive(Clone)]
pub struct LinkConfig {
    /// The cluster's shared secret: the handshake's pre-shared key. Generate it randomly.
    pub cluster_key: [u8; 32],
    /// What we tell the peer about ourselves.
    pub hello: Hello,
    /// How we compress what we send (the peer decodes any codec).
    pub compression: Compression,
    /// The largest payload we accept, at most [`FRAME_PAYLOAD_BYTES_MAX`]; the peer learns it
    /// in the handshake and never sends more.
    pub frame_payload_bytes_max: u32,
    /// How long connecting plus the handshake may take.
    pub handshake_timeout: Duration,
}

impl LinkConfig {
    /// A configuration with LZ4, the largest frames and a 5 s handshake timeout.
    pub fn new(cluster_key: [u8; 32], hello: Hello) -> Self {
        Self {
            cluster_key,
            hello,
            compression: Compression::default(),
            frame_payload_bytes_max: FRAME_PAYLOAD_BYTES_MAX,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), LinkError> {
        self.hello.validate().map_err(LinkError::InvalidConfig)?;
        if !(1..=FRAME_PAYLOAD_BYTES_MAX).contains(&self.frame_payload_bytes_max) {
            return Err(LinkError::InvalidConfig(format!(
                "frame_payload_bytes_max {} is outside 1..={FRAME_PAYLOAD_BYTES_MAX}",
                self.frame_payload_bytes_max
            )));
        }
        if self.handshake_timeout.is_zero() {
            return Err(LinkError::InvalidConfig(
                "handshake_timeout must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkConfig")
            .field("cluster_key", &"<redacted>")
            .field("hello", &self.hello)
            .field("compression", &self.compression)
            .field("frame_payload_bytes_max", &self.frame_payload_bytes_max)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// What the handshake taught us about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHello {
    /// The peer's address.
    pub address: SocketAddr,
    /// The peer's hello.
    pub hello: Hello,
    /// The protocol version both speak: the highest in both ranges.
    pub protocol_version: u8,
    /// The features both support.
    pub features: u64,
    /// The largest payload the peer accepts.
    pub frame_payload_bytes_max: u32,
}

/// Connects to `address` and runs the handshake as initiator.
pub async fn connect(
    address: SocketAddr,
    config: &LinkConfig,
) -> Result<(LinkSender, LinkReceiver, PeerHello), LinkError> {
    connect_with_policy(address, config, RekeyPolicy::DEFAULT).await
}

/// Runs the handshake as responder on an accepted connection.
pub async fn accept(
    stream: TcpStream,
    config: &LinkConfig,
) -> Result<(LinkSender, LinkReceiver, PeerHello), LinkError> {
    accept_with_policy(stream, config, RekeyPolicy::DEFAULT).await
}

async fn connect_with_policy(
    address: SocketAddr,
    config: &LinkConfig,
    policy: RekeyPolicy,
) -> Result<(LinkSender, LinkReceiver, PeerHello), LinkError> {
    config.validate()?;
    let stream = tokio::time::timeout(config.handshake_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| LinkError::HandshakeTimeout(config.handshake_timeout))?
        .map_err(|error| LinkError::io("connect", error))?;
    establish(stream, address, config, Role::Initiator, policy).await
}

async fn accept_with_policy(
    stream: TcpStream,
    config: &LinkConfig,
    policy: RekeyPolicy,
) -> Result<(LinkSender, LinkReceiver, PeerHello), LinkError> {
    config.validate()?;
    let address = stream
        .peer_addr()
        .map_err(|error| LinkError::io("accept", error))?;
    establish(stream, address, config, Role::Responder, policy).await
}

async fn establish(
    mut stream: TcpStream,
    address: SocketAddr,
    config: &LinkConfig,
    role: Role,
    policy: RekeyPolicy,
) -> Result<(LinkSender, LinkReceiver, PeerHello), LinkError> {
    // Small messages (acks) must not wait for Nagle; large ones are written in one call anyway.
    let _ = stream.set_nodelay(true);
    let local = HelloMessage {
        hello: config.hello.clone(),
        frame_payload_bytes_max: config.frame_payload_bytes_max,
    };
    let handshake = handshake::run(&mut stream, role, &local, &config.cluster_key, policy);
    let established = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(established)) => established,
        Ok(Err(error)) => return Err(log_failure(address, error)),
        Err(_) => {
            let error = LinkError::HandshakeTimeout(config.handshake_timeout);
            return Err(log_failure(address, error));
        }
    };
    let peer = PeerHello {
        address,
        hello: established.peer.hello,
        protocol_version: established.agreement.protocol_version,
        features: established.agreement.features,
        frame_payload_bytes_max: established.peer.frame_payload_bytes_max,
    };
    let counters = Arc::new(LinkCounters::default());
    let (reader, writer) = stream.into_split();
    let sender = LinkSender::new(
        writer,
        established.sealer,
        config.compression,
        config
            .frame_payload_bytes_max
            .min(peer.frame_payload_bytes_max),
        Arc::clone(&counters),
    );
    let receiver = LinkReceiver::new(
        reader,
        established.opener,
        config.frame_payload_bytes_max,
        counters,
    );
    Ok((sender, receiver, peer))
}

fn log_failure(address: SocketAddr, error: LinkError) -> LinkError {
    tracing::warn!("link with peer {address} failed: {error}");
    error
}

/// The handshake's hello codec and negotiation, reachable for the fuzz targets (`fuzz/`); not
/// part of the link's API.
#[doc(hidden)]
pub mod fuzzing {
    use super::hello::{HelloMessage, negotiate};
    use super::{Hello, Incompatibility};

    /// Decodes a hello message as the handshake does: the hello and the sender's frame payload
    /// limit, or `None`.
    pub fn decode_hello_message(bytes: &[u8]) -> Option<(Hello, u32)> {
        HelloMessage::decode(bytes).map(|message| (message.hello, message.frame_payload_bytes_max))
    }

    /// Encodes a hello message; `hello` must be valid.
    pub fn encode_hello_message(hello: &Hello, frame_payload_bytes_max: u32) -> Vec<u8> {
        HelloMessage {
            hello: hello.clone(),
            frame_payload_bytes_max,
        }
        .encode()
    }

    /// Negotiates two hellos as the handshake does: the protocol version and features agreed.
    pub fn negotiate_hellos(ours: &Hello, theirs: &Hello) -> Result<(u8, u64), Incompatibility> {
        negotiate(ours, theirs).map(|agreement| (agreement.protocol_version, agreement.features))
    }
}
