//! The Noise handshake that opens a link.
//!
//! Pattern `Noise_NNpsk0_25519_AESGCM_SHA256`: the cluster key is the pre-shared key, mixed in
//! before anything else, and both ends contribute an ephemeral X25519 key. Only holders of the
//! cluster key can complete it (mutual authentication by knowledge of the key), and the session
//! keys come from the ephemeral exchange (forward secrecy: a stolen cluster key does not decrypt
//! recorded sessions). The handshake is snow's; the only things added here are the byte framing
//! below, the refusal marker and the key confirmation.
//!
//! # Wire layout (lengths little-endian)
//!
//! ```text
//! initiator -> responder  preamble b"tandem\0\x01" (8 bytes; also the Noise prologue)
//!                         u16 length, Noise message 1: -> psk, e   (payload: our hello)
//! responder -> initiator  u16 length, Noise message 2: <- e, ee    (payload: its hello)
//!                   or    u16 0, u8 refusal code, then close       (see `Refusal`)
//! initiator -> responder  key confirmation: the first record of the initiator's direction,
//!                         [u32 length][sealed b"tandem link key confirmation"]
//! ```
//!
//! The preamble's last byte is the handshake version; the refusal marker keeps its form in
//! every version, so a responder can tell a newer initiator what it does not speak.
//!
//! Then both directions carry records (see `crate::protocol::seal`). The initiator seals with
//! the first key of Noise's split and the responder with the second.
//!
//! The initiator's hello travels under a key derived from the cluster key alone (message 1 has
//! no Diffie-Hellman result yet), so it is confidential against outsiders but not forward
//! secret; it holds only names and numbers. Message 1 can be replayed by an outsider, which is
//! why the responder waits for the key confirmation, which only the holder of the initiator's
//! ephemeral key can produce, before it reports a link.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::seal::{Opener, RECORD_PREFIX_BYTES, RekeyPolicy, Sealer, TAG_BYTES};
use crate::runtime::link::error::{LinkError, Refusal};
use crate::runtime::link::hello::{Agreement, HelloMessage, negotiate};

/// The bytes an initiator opens a connection with; also the Noise prologue, so both ends agree
/// on it cryptographically.
pub const HANDSHAKE_PREAMBLE: [u8; 8] = *b"tandem\x00\x01";

/// The Noise protocol name.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// The largest Noise message (the Noise specification's limit).
const NOISE_MESSAGE_BYTES_MAX: usize = 65_535;

/// Bytes a Noise message of this pattern adds to its payload: an ephemeral key and a tag.
const NOISE_OVERHEAD_BYTES: usize = 32 + 16;

/// How long a refusing responder waits for the initiator to read its marker and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The most a refusing responder reads (and discards) while it waits.
const REFUSAL_DRAIN_BYTES_MAX: usize = 2 * NOISE_MESSAGE_BYTES_MAX;

/// The plaintext of the initiator's key-confirmation record.
const CONFIRMATION: &[u8] = b"tandem link key confirmation";

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// We connected.
    Initiator,
    /// We accepted.
    Responder,
}

/// A completed handshake.
#[derive(Debug)]
pub(super) struct Established {
    pub(super) sealer: Sealer,
    pub(super) opener: Opener,
    pub(super) peer: HelloMessage,
    pub(super) agreement: Agreement,
}

/// Runs our side of the handshake over `stream`.
pub(super) async fn run<S>(
    stream: &mut S,
    role: Role,
    local: &HelloMessage,
    cluster_key: &[u8; 32],
    policy: RekeyPolicy,
) -> Result<Established, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let params = NOISE_PATTERN.parse().expect("a valid Noise pattern");
    let builder = snow::Builder::new(params)
        .psk(0, cluster_key)
        .and_then(|builder| builder.prologue(&HANDSHAKE_PREAMBLE));
    let noise = match role {
        Role::Initiator => builder.and_then(snow::Builder::build_initiator),
        Role::Responder => builder.and_then(snow::Builder::build_responder),
    }
    .map_err(|error| LinkError::InvalidConfig(format!("noise: {error}")))?;
    match role {
        Role::Initiator => initiate(stream, noise, local, policy).await,
        Role::Responder => respond(stream, noise, local, policy).await,
    }
}

async fn initiate<S>(
    stream: &mut S,
    mut noise: snow::HandshakeState,
    local: &HelloMessage,
    policy: RekeyPolicy,
) -> Result<Established, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut message = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let written = noise
        .write_message(&local.encode(), &mut message)
        .map_err(|error| LinkError::InvalidConfig(format!("noise: {error}")))?;
    let mut first = Vec::with_capacity(HANDSHAKE_PREAMBLE.len() + 2 + written);
    first.extend_from_slice(&HANDSHAKE_PREAMBLE);
    first.extend_from_slice(
        &u16::try_from(written)
            .expect("noise caps messages")
            .to_le_bytes(),
    );
    first.extend_from_slice(&message[..written]);
    stream.write_all(&first).await.map_err(handshake_io)?;

    let length = usize::from(read_u16(stream).await?);
    if length == 0 {
        let code = read_u8(stream).await?;
        return Err(LinkError::Refused(Refusal::from_code(code)));
    }
    if length < NOISE_OVERHEAD_BYTES {
        return Err(LinkError::MalformedHandshake("second message too short"));
    }
    stream
        .read_exact(&mut message[..length])
        .await
        .map_err(handshake_io)?;
    let mut payload = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let read = noise
        .read_message(&message[..length], &mut payload)
        .map_err(|error| match error {
            // Only a responder holding our key can answer; a responder with another key refuses
            // instead, so this takes a forger on the path.
            snow::Error::Decrypt => LinkError::KeyMismatch,
            _ => LinkError::MalformedHandshake("second message"),
        })?;
    let peer = HelloMessage::decode(&payload[..read])
        .ok_or(LinkError::MalformedHandshake("peer hello"))?;
    let agreement = negotiate(&local.hello, &peer.hello).map_err(LinkError::Incompatible)?;

    let (mut send_key, mut receive_key) = noise.dangerously_get_raw_split();
    let mut sealer = Sealer::new(send_key, policy);
    let opener = Opener::new(receive_key, policy);
    send_key.fill(0);
    receive_key.fill(0);

    let mut record = vec![0u8; RECORD_PREFIX_BYTES];
    record.extend_from_slice(CONFIRMATION);
    let sealed = sealer
        .seal(&mut record, RECORD_PREFIX_BYTES)
        .expect("a short record seals");
    record[..RECORD_PREFIX_BYTES].copy_from_slice(&sealed.to_le_bytes());
    stream.write_all(&record).await.map_err(handshake_io)?;
    Ok(Established {
        sealer,
        opener,
        peer,
        agreement,
    })
}

async fn respond<S>(
    stream: &mut S,
    mut noise: snow::HandshakeState,
    local: &HelloMessage,
    policy: RekeyPolicy,
) -> Result<Established, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut preamble = [0u8; HANDSHAKE_PREAMBLE.len()];
    stream
        .read_exact(&mut preamble)
        .await
        .map_err(handshake_io)?;
    if preamble != HANDSHAKE_PREAMBLE {
        let (magic, version) = HANDSHAKE_PREAMBLE.split_at(HANDSHAKE_PREAMBLE.len() - 1);
        if preamble.starts_with(magic) && preamble[magic.len()] != version[0] {
            refuse(stream, Refusal::HandshakeVersion).await;
            return Err(LinkError::HandshakeVersion(preamble[magic.len()]));
        }
        return Err(LinkError::NotTandem);
    }
    let length = usize::from(read_u16(stream).await?);
    if length < NOISE_OVERHEAD_BYTES {
        refuse(stream, Refusal::Malformed).await;
        return Err(LinkError::MalformedHandshake("first message too short"));
    }
    let mut message = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    stream
        .read_exact(&mut message[..length])
        .await
        .map_err(handshake_io)?;
    let mut payload = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let read = match noise.read_message(&message[..length], &mut payload) {
        Ok(read) => read,
        Err(snow::Error::Decrypt) => {
            refuse(stream, Refusal::KeyMismatch).await;
            return Err(LinkError::KeyMismatch);
        }
        Err(_) => {
            refuse(stream, Refusal::Malformed).await;
            return Err(LinkError::MalformedHandshake("first message"));
        }
    };
    let Some(peer) = HelloMessage::decode(&payload[..read]) else {
        refuse(stream, Refusal::Malformed).await;
        return Err(LinkError::MalformedHandshake("peer hello"));
    };

    // Answer even if the hellos are incompatible: the initiator then reaches the same verdict
    // from the same two hellos and can log the same reason.
    let written = noise
        .write_message(&local.encode(), &mut message)
        .map_err(|error| LinkError::InvalidConfig(format!("noise: {error}")))?;
    let mut second = Vec::with_capacity(2 + written);
    second.extend_from_slice(
        &u16::try_from(written)
            .expect("noise caps messages")
            .to_le_bytes(),
    );
    second.extend_from_slice(&message[..written]);
    stream.write_all(&second).await.map_err(handshake_io)?;
    let agreement = negotiate(&local.hello, &peer.hello).map_err(LinkError::Incompatible)?;

    let (mut receive_key, mut send_key) = noise.dangerously_get_raw_split();
    let sealer = Sealer::new(send_key, policy);
    let mut opener = Opener::new(receive_key, policy);
    send_key.fill(0);
    receive_key.fill(0);

    let mut prefix = [0u8; RECORD_PREFIX_BYTES];
    stream.read_exact(&mut prefix).await.map_err(handshake_io)?;
    if u32::from_le_bytes(prefix) as usize != CONFIRMATION.len() + TAG_BYTES {
        return Err(LinkError::ConfirmationFailed);
    }
    let mut record = vec![0u8; CONFIRMATION.len() + TAG_BYTES];
    stream.read_exact(&mut record).await.map_err(handshake_io)?;
    if opener.open(&mut record).is_err() || record != CONFIRMATION {
        return Err(LinkError::ConfirmationFailed);
    }
    Ok(Established {
        sealer,
        opener,
        peer,
        agreement,
    })
}

/// Tells the initiator why we refuse, best effort, and closes our side.
///
/// The marker is plaintext and unauthenticated: an attacker on the path can forge it, which
/// only costs the initiator a retry (the same attacker could simply cut the connection).
async fn refuse<S>(stream: &mut S, refusal: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let marker = [0, 0, refusal.code()];
    if stream.write_all(&marker).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // Read what the initiator sent until it closes too: closing a socket with unread bytes
    // sends a reset, which can destroy the marker before the initiator has read it.
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES_MAX {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

async fn read_u16<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u16, LinkError> {
    let mut bytes = [0u8; 2];
    stream.read_exact(&mut bytes).await.map_err(handshake_io)?;
    Ok(u16::from_le_bytes(bytes))
}

async fn read_u8<S: AsyncRead + Unpin>(stream: &mut S) -> Result<u8, LinkError> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.map_err(handshake_io)?;
    Ok(byte[0])
}

/// A socket error during the handshake; the peer going away is the common, named case.
fn handshake_io(error: std::io::Error) -> LinkError {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => LinkError::HandshakeClosed,
        _ => LinkError::io("handshake", error),
    }
}
