//! Accepting connections and running each one: handshake, then transmission.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::wire::ProtocolViolation;
use super::{ExportRegistry, NbdLimits, handshake, transmission};

/// Bytes of the buffer in front of each connection's socket.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// How long to wait before accepting again after `accept` failed (out of descriptors, say).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why a connection ended; logged once per connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum CloseReason {
    /// The client sent `NBD_CMD_DISC`; the requests in flight were answered first.
    #[error("client sent NBD_CMD_DISC")]
    Disconnected,
    /// The client closed the connection between messages.
    #[error("client closed the connection")]
    ClientClosed,
    /// The client sent `NBD_OPT_ABORT`.
    #[error("client aborted the handshake (NBD_OPT_ABORT)")]
    Aborted,
    /// The handshake took too long.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// `NBD_OPT_EXPORT_NAME` named an export that cannot be served (no error reply exists).
    #[error("NBD_OPT_EXPORT_NAME refused: {0}")]
    ExportRefused(String),
    /// The client broke framing.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolViolation),
    /// The connection ended in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// Reading or writing the socket failed.
    #[error("I/O error: {0}")]
    Io(io::Error),
    /// The connection limit was reached.
    #[error("too many connections (limit {0})")]
    TooManyConnections(usize),
}

impl From<io::Error> for CloseReason {
    fn from(error: io::Error) -> Self {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            Self::Truncated
        } else {
            Self::Io(error)
        }
    }
}

impl CloseReason {
    /// Whether the connection ended the way the protocol intends.
    fn is_orderly(&self) -> bool {
        matches!(
            self,
            Self::Disconnected | Self::ClientClosed | Self::Aborted
        )
    }
}

/// Serves NBD on an already-bound listener until the returned future is dropped or aborted;
/// dropping it also closes every connection it accepted.
pub async fn serve(listener: TcpListener, registry: Arc<ExportRegistry>, limits: NbdLimits) {
    let limits = limits.effective();
    let connection_slots = Arc::new(Semaphore::new(limits.connections_max));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&connection_slots).try_acquire_owned() {
                    Ok(slot) => {
                        let registry = Arc::clone(&registry);
                        connections.spawn(run_connection(stream, peer, registry, limits, slot));
                    }
                    Err(_) => {
                        log_close(peer, None, &CloseReason::TooManyConnections(
                            limits.connections_max,
                        ));
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "NBD accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                }
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "NBD connection task failed");
                }
            }
        }
    }
}

/// Runs one accepted connection to its end and logs why it ended.
async fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<ExportRegistry>,
    limits: NbdLimits,
    _slot: OwnedSemaphorePermit,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "NBD: cannot set TCP_NODELAY");
    }
    tracing::debug!(%peer, "NBD connection accepted");
    let (read_half, write_half) = stream.into_split();
    let (reason, export) = serve_connection(read_half, write_half, &registry, limits).await;
    log_close(peer, export.as_deref(), &reason);
}

/// Speaks NBD over one connection until it ends; returns why, and the export it used. `limits`
/// must be [`NbdLimits::effective`].
pub(super) async fn serve_connection<R, W>(
    reader: R,
    mut writer: W,
    registry: &ExportRegistry,
    limits: NbdLimits,
) -> (CloseReason, Option<String>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let negotiation = handshake::negotiate(&mut reader, &mut writer, registry, &limits);
    let session = match tokio::time::timeout(limits.handshake_timeout, negotiation).await {
        Err(_) => {
            return (
                CloseReason::HandshakeTimeout(limits.handshake_timeout),
                None,
            );
        }
        Ok(Err(reason)) => return (reason, None),
        Ok(Ok(session)) => session,
    };
    let reason = transmission::serve_requests(reader, writer, &session, &limits).await;
    (reason, Some(session.export_name))
}

fn log_close(peer: SocketAddr, export: Option<&str>, reason: &CloseReason) {
    let export = export.unwrap_or("-");
    if reason.is_orderly() {
        tracing::info!(%peer, export, %reason, "NBD connection closed");
    } else {
        tracing::warn!(%peer, export, %reason, "NBD connection closed");
    }
}
