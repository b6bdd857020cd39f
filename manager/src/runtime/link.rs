//! The link task of one volume: keeps a link to the peer while the replica wants one.
//!
//! The node listed first in the configuration connects; the other accepts. The connecting side
//! retries with a backoff from 200 ms to 5 s and logs a failure once per distinct reason. A new
//! connection on the accepting side replaces the current one (the peer only connects when it
//! has no link, so the old one is dead). While a session runs, messages from the peer go to the
//! replica and the replica's messages go to the peer, in order ([`engine::runtime::session`]);
//! when either direction fails, the replica hears why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use engine::runtime::link::{self, LinkConfig, LinkCounters, LinkReceiver, LinkSender};
use engine::runtime::{PeerOutput, VolumeHandle, session};
use engine::state::ConnState;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Mutex, oneshot};

/// Which end of the link this node is.
#[derive(Debug)]
pub enum LinkEnd {
    /// Connects to the peer at this address.
    Connect(SocketAddr),
    /// Accepts on this listener.
    Accept(TcpListener),
}

/// Wire counters of the current and past sessions, for status.
#[derive(Debug, Default)]
pub struct LinkTotals {
    current: std::sync::Mutex<Option<Arc<LinkCounters>>>,
    finished: std::sync::Mutex<(u64, u64)>,
}

impl LinkTotals {
    /// Wire bytes (sent, received) since the daemon started.
    pub fn wire_bytes(&self) -> (u64, u64) {
        let lock = |m: &std::sync::Mutex<(u64, u64)>| {
            *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (mut sent, mut received) = lock(&self.finished);
        let current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(counters) = current.as_ref() {
            let traffic = counters.snapshot();
            sent += traffic.wire_bytes_sent;
            received += traffic.wire_bytes_received;
        }
        (sent, received)
    }

    fn start(&self, counters: Arc<LinkCounters>) {
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(counters);
    }

    fn finish(&self) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(counters) = current.take() {
            let traffic = counters.snapshot();
            let mut finished = self
                .finished
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            finished.0 += traffic.wire_bytes_sent;
            finished.1 += traffic.wire_bytes_received;
        }
    }
}

/// Runs the link of one volume until the task is aborted.
pub async fn run(
    volume: String,
    handle: VolumeHandle,
    end: LinkEnd,
    config: LinkConfig,
    totals: Arc<LinkTotals>,
) {
    let outputs = Arc::new(Mutex::new(handle.peer_channel()));
    match end {
        LinkEnd::Connect(address) => {
            connect_loop(&volume, &handle, address, &config, &outputs, &totals).await
        }
        LinkEnd::Accept(listener) => {
            accept_loop(&volume, &handle, listener, &config, &outputs, &totals).await
        }
    }
}

fn wants_link(handle: &VolumeHandle) -> bool {
    handle.status().connection == ConnState::Unconnected
}

async fn connect_loop(
    volume: &str,
    handle: &VolumeHandle,
    address: SocketAddr,
    config: &LinkConfig,
    outputs: &Arc<Mutex<UnboundedReceiver<PeerOutput>>>,
    totals: &Arc<LinkTotals>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut last_error = String::new();
    loop {
        if !wants_link(handle) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        match link::connect(address, config).await {
            Ok((sender, receiver, _peer)) => {
                last_error.clear();
                backoff = Duration::from_millis(200);
                tracing::info!(volume, "link to {address} up");
                let (_stop, stopped) = oneshot::channel();
                let reason = session(handle, sender, receiver, outputs, totals, stopped).await;
                tracing::info!(volume, "link to {address} down: {reason}");
            }
            Err(error) => {
                let reason = error.to_string();
                if reason != last_error {
                    tracing::warn!(volume, "cannot link to the peer at {address}: {reason}");
                    last_error = reason;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn accept_loop(
    volume: &str,
    handle: &VolumeHandle,
    listener: TcpListener,
    config: &LinkConfig,
    outputs: &Arc<Mutex<UnboundedReceiver<PeerOutput>>>,
    totals: &Arc<LinkTotals>,
) {
    let mut current: Option<(oneshot::Sender<String>, tokio::task::JoinHandle<()>)> = None;
    loop {
        let Ok((stream, address)) = listener.accept().await else {
            continue;
        };
        let (sender, receiver, _peer) = match link::accept(stream, config).await {
            Ok(link) => link,
            Err(error) => {
                tracing::warn!(volume, "refused a link from {address}: {error}");
                continue;
            }
        };
        if let Some((stop, task)) = current.take() {
            let _ = stop.send("replaced by a new connection from the peer".to_string());
            let _ = task.await;
        }
        if !wants_link(handle) {
            let state = handle.status();
            let why = state.connection_reason.unwrap_or_default();
            tracing::info!(
                volume,
                "closing a link from {address}: this node is {} ({why})",
                state.connection
            );
            let _ = sender.close().await;
            continue;
        }
        tracing::info!(volume, "link from {address} up");
        let (stop, stopped) = oneshot::channel();
        let (handle, outputs, totals, volume) = (
            handle.clone(),
            Arc::clone(outputs),
            Arc::clone(totals),
            volume.to_string(),
        );
        let task = tokio::spawn(async move {
            let reason = session(&handle, sender, receiver, &outputs, &totals, stopped).await;
            tracing::info!(volume, "link from {address} down: {reason}");
        });
        current = Some((stop, task));
    }
}

/// One connected session ([`engine::runtime::session::run`]), counted in `totals`; returns
/// why it ended.
async fn session(
    handle: &VolumeHandle,
    sender: LinkSender,
    receiver: LinkReceiver,
    outputs: &Arc<Mutex<UnboundedReceiver<PeerOutput>>>,
    totals: &Arc<LinkTotals>,
    stop: oneshot::Receiver<String>,
) -> String {
    let outputs = Arc::clone(outputs).lock_owned().await;
    totals.start(sender.counters());
    let reason = session::run(handle.clone(), sender, receiver, outputs, stop).await;
    totals.finish();
    reason
}
