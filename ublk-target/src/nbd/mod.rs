//! The NBD server frontend: serves tandem volumes to NBD clients (the Linux kernel through
//! `nbd-client`, QEMU, libnbd tools such as `nbdinfo` and `nbdcopy`).
//!
//! The server speaks the fixed newstyle handshake (options `NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_LIST`, `NBD_OPT_ABORT`, `NBD_OPT_EXPORT_NAME`; everything else is answered
//! `NBD_REP_ERR_UNSUP`) and simple replies in the transmission phase (read, write, flush, trim,
//! write-zeroes, FUA, disconnect), with replies sent as requests complete, possibly out of
//! order. What the exports are comes from an [`ExportRegistry`], which the daemon updates when a
//! volume is promoted or demoted.
//!
//! # Robustness
//!
//! Nothing a client sends can panic the server or make its memory grow without bound. Every
//! client input goes through the pure parsers of [`wire`]; a message that breaks framing closes
//! that connection only. Memory per connection is bounded by [`NbdLimits`]: requests in flight
//! and their payload bytes (when either limit is reached the server stops reading from that
//! client until replies go out), option data (bounded by [`wire::OPTION_DATA_BYTES_MAX`]), and
//! the handshake must end within [`NbdLimits::handshake_timeout`]. The number of connections is
//! bounded too; connections beyond it are closed at once.

mod handshake;
mod server;
#[cfg(test)]
mod tests;
mod transmission;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

pub use crate::BlockBackend;
pub use server::serve;

/// Whether an export can be used on this node.
#[derive(Clone)]
pub enum ExportState {
    /// Clients may connect and do I/O.
    Serving(Arc<dyn BlockBackend>),
    /// The export exists but cannot be used here; the reason is shown to clients that try
    /// (e.g. "volume r0 is secondary on this node; use the primary").
    Unavailable(String),
}

impl fmt::Debug for ExportState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serving(backend) => write!(f, "Serving({} bytes)", backend.size_bytes()),
            Self::Unavailable(reason) => f.debug_tuple("Unavailable").field(reason).finish(),
        }
    }
}

/// The exports of the server by name, shared between the daemon and the server.
///
/// A change applies to connections that negotiate afterwards; a connection already in the
/// transmission phase keeps the backend it started with (the volume itself refuses I/O once it
/// is no longer primary).
#[derive(Default)]
pub struct ExportRegistry {
    exports: RwLock<BTreeMap<String, ExportState>>,
}

impl fmt::Debug for ExportRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exports = self.exports.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_map().entries(exports.iter()).finish()
    }
}

impl ExportRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the export `name`, or changes its state; returns the previous state.
    pub fn set(&self, name: impl Into<String>, state: ExportState) -> Option<ExportState> {
        self.exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.into(), state)
    }

    /// Removes the export `name`; returns its state.
    pub fn remove(&self, name: &str) -> Option<ExportState> {
        self.exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
    }

    /// The state of the export `name`.
    pub fn get(&self, name: &str) -> Option<ExportState> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The names of all exports, available or not, in order.
    pub fn names(&self) -> Vec<String> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// The names of the exports that are serving, in order (what `NBD_OPT_LIST` shows).
    pub fn serving_names(&self) -> Vec<String> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, state)| matches!(state, ExportState::Serving(_)))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Resource limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct NbdLimits {
    /// Connections served at once; more are closed as soon as they are accepted (at least 1).
    pub connections_max: usize,
    /// Requests of one connection accepted and not yet answered; at the limit the server stops
    /// reading from that client (at least 1). Keep `connections_max` times this within the
    /// volume's `ReplicaConfig::requests_in_flight_max`: the engine refuses requests beyond it
    /// with `EAGAIN`, which NBD can only report as `NBD_EIO`.
    pub requests_in_flight_per_connection: usize,
    /// The largest read or write payload, advertised in `NBD_INFO_BLOCK_SIZE` (at least 4096;
    /// the engine accepts at most 32 MiB).
    pub request_bytes_max: u32,
    /// Read and write payload bytes of one connection in flight; at the limit the server stops
    /// reading from that client (at least `request_bytes_max`).
    pub payload_bytes_in_flight_per_connection: u64,
    /// Time a client has from connecting to the end of option haggling.
    pub handshake_timeout: Duration,
}

impl Default for NbdLimits {
    fn default() -> Self {
        Self {
            connections_max: 64,
            requests_in_flight_per_connection: 128,
            request_bytes_max: 32 << 20,
            payload_bytes_in_flight_per_connection: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

impl NbdLimits {
    /// The limits with every field raised to its smallest workable value.
    fn effective(self) -> Self {
        let request_bytes_max = self.request_bytes_max.max(wire::BLOCK_BYTES_PREFERRED);
        Self {
            connections_max: self.connections_max.max(1),
            requests_in_flight_per_connection: self.requests_in_flight_per_connection.max(1),
            request_bytes_max,
            payload_bytes_in_flight_per_connection: self
                .payload_bytes_in_flight_per_connection
                .max(u64::from(request_bytes_max)),
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// Speaks NBD over one connection given as any reader and writer (an in-memory client stream,
/// say) until it ends; returns why it ended, as the server logs it, and the export it used.
/// For the fuzz targets (`fuzz/`); the server itself uses [`serve`].
#[doc(hidden)]
pub async fn serve_stream<R, W>(
    reader: R,
    writer: W,
    registry: &ExportRegistry,
    limits: NbdLimits,
) -> (String, Option<String>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (reason, export) =
        server::serve_connection(reader, writer, registry, limits.effective()).await;
    (reason.to_string(), export)
}
