//! The witness over UDP (`tandem witness --listen ADDR --key FILE`) and the client a node uses
//! to ask it for the lease. What the witness decides is [`crate::cluster::witness`]'s job.
//!
//! The witness answers every authentic request with one datagram to the address it came
//! from; anything else is dropped (each kind of error logged once), and it never stops on
//! bad input (S8). It logs every grant that changes the holder, every release and every
//! refusal once per (cluster, node, epoch); renewals are silent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use crate::cluster::witness::wire::{MAX_DATAGRAM_BYTES, check_name};
use crate::cluster::witness::{
    Answer, Claims, Dropped, Kind, Limits, Rejection, Request, Stale, Verdict, Witness, WitnessKey,
};

/// Retransmissions of one call, the first transmission included.
const ATTEMPTS: u32 = 3;

/// Serves the witness on `socket` for every cluster whose key is `key`, with the default
/// [`Limits`] (so it grants nothing during its first minute). Bad datagrams and failed
/// receives do not stop it: it runs until its task is dropped.
pub async fn serve(socket: UdpSocket, key: [u8; 32]) -> Result<(), String> {
    serve_with(socket, key, Limits::default()).await
}

/// [`serve`] with other limits (tests use a short restart grace).
pub async fn serve_with(socket: UdpSocket, key: [u8; 32], limits: Limits) -> Result<(), String> {
    let started = Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut witness = Witness::new(key, limits, now_ms());
    let mut log = Log::default();
    let mut buffer = [0u8; MAX_DATAGRAM_BYTES + 1];
    loop {
        let (bytes, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                if log.once(format!("receive {}", error.kind())) {
                    tracing::warn!("witness: receive failed: {error}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match witness.handle(&buffer[..bytes], now_ms()) {
            Ok(answer) => {
                log.answer(&answer, from);
                if let Err(error) = socket.send_to(&answer.reply, from).await {
                    tracing::debug!("witness: cannot answer {from}: {error}");
                }
            }
            Err(Dropped::Wire(error)) => {
                if log.once(error.kind().to_string()) {
                    tracing::warn!("witness: dropped a datagram from {from}: {error}");
                }
            }
            Err(Dropped::Stale {
                stale,
                cluster,
                node,
            }) => {
                let why = match stale {
                    Stale::Sequence => "a replay or a late duplicate",
                    Stale::Boot => "a replay, or that node's clock was set back",
                };
                if log.once(format!("stale {stale:?}")) {
                    tracing::warn!(
                        "witness: dropped an old request from node {node:?} of cluster \
                         {cluster:?} at {from}: {why}"
                    );
                }
            }
        }
    }
}

/// What the witness has logged already.
#[derive(Debug, Default)]
struct Log {
    /// Kinds of dropped datagrams and rejections (a fixed, small set of names).
    kinds: BTreeSet<String>,
    /// Per (cluster, node), the epoch whose refusal was logged (bounded by the lease table's
    /// limits: only admitted clusters and nodes are refused).
    refused: BTreeMap<(String, String), u64>,
}

impl Log {
    fn once(&mut self, kind: String) -> bool {
        self.kinds.insert(kind)
    }

    fn answer(&mut self, answer: &Answer, from: SocketAddr) {
        let Request { cluster, node, .. } = &answer.request;
        match &answer.verdict {
            Verdict::Granted { epoch, lease_ms } if answer.new_epoch => tracing::info!(
                "witness: cluster {cluster:?}: {node:?} at {from} holds the lease, epoch {epoch} \
                 ({lease_ms} ms)"
            ),
            Verdict::Refused {
                holder,
                epoch,
                remaining_ms,
            } => {
                let key = (cluster.clone(), node.clone());
                if self.refused.insert(key, *epoch) != Some(*epoch) {
                    tracing::info!(
                        "witness: cluster {cluster:?}: refused {node:?} at {from}: {holder:?} \
                         holds the lease, epoch {epoch}, {remaining_ms} ms left"
                    );
                }
            }
            Verdict::Outdated { current, .. } => {
                let key = format!("outdated {cluster} {node} {current}");
                if self.once(key) {
                    tracing::info!(
                        "witness: cluster {cluster:?}: refused {node:?} at {from}: {current:?} \
                         ran without it, its data is outdated"
                    );
                }
            }
            Verdict::Released { epoch } if answer.released => {
                tracing::info!(
                    "witness: cluster {cluster:?}: {node:?} released the lease, epoch {epoch}"
                );
            }
            Verdict::Restarting { remaining_ms } => {
                if self.once("restarting".into()) {
                    tracing::info!(
                        "witness: granting no lease for {remaining_ms} ms more: a lease granted \
                         before this witness started may still run"
                    );
                }
            }
            Verdict::Rejected(rejection) => {
                let kind = match rejection {
                    Rejection::LeaseOutOfRange { .. } => "lease out of range",
                    Rejection::TooManyClusters { .. } => "too many clusters",
                    Rejection::TooManyNodes { .. } => "too many nodes",
                };
                if self.once(kind.to_string()) {
                    tracing::warn!(
                        "witness: cluster {cluster:?}: rejected {node:?} at {from}: {rejection}"
                    );
                }
            }
            Verdict::Granted { .. } | Verdict::Released { .. } => {}
        }
    }
}

/// Runs the witness on `listen` (`IP:PORT`) with the cluster key in `key_file` and `limits`
/// (`tandem witness --restart-grace-ms` sets the restart grace) until SIGTERM or SIGINT.
pub fn run(listen: &str, key_file: &Path, limits: Limits) -> Result<(), String> {
    let key = crate::key::read(key_file)?;
    if crate::key::readable_by_others(key_file) {
        tracing::warn!(
            "the cluster key {} is readable by others; chmod 600 it",
            key_file.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let socket = UdpSocket::bind(listen)
            .await
            .map_err(|e| format!("witness: cannot listen on {listen}: {e}"))?;
        let address = socket
            .local_addr()
            .map_or(listen.to_string(), |a| a.to_string());
        tracing::info!(
            "tandem witness listening on {address}; granting no lease for the first {} ms",
            limits.restart_grace_ms
        );
        tokio::select! {
            served = serve_with(socket, key, limits) => served,
            () = super::wait_for_signal() => {
                tracing::info!("witness: stopping");
                Ok(())
            }
        }
    })
}

/// A boot id for a new client: microseconds since the epoch, larger than any handed out
/// before in this process (the witness refuses a boot older than one it has seen).
fn new_boot() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(0);
    now.max(previous + 1)
}

/// One node's client of the witness. A grant holds from the moment the call started (take
/// the time before calling [`WitnessClient::acquire`]), not from when it returned.
#[derive(Debug)]
pub struct WitnessClient {
    socket: UdpSocket,
    witness: SocketAddr,
    key: WitnessKey,
    cluster: String,
    node: String,
    boot: u64,
    seq: AtomicU64,
}

impl WitnessClient {
    /// A client of the witness at `witness` for node `node` of cluster `cluster`, whose key
    /// is `key`; its socket is bound to `bind` (any address if `None`).
    pub async fn new(
        witness: SocketAddr,
        bind: Option<IpAddr>,
        key: &[u8; 32],
        cluster: &str,
        node: &str,
    ) -> Result<Self, String> {
        check_name("cluster", cluster).map_err(|e| format!("witness client: {e} {cluster:?}"))?;
        check_name("node", node).map_err(|e| format!("witness client: {e} {node:?}"))?;
        let local = bind.unwrap_or(match witness {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let socket = UdpSocket::bind(SocketAddr::new(local, 0))
            .await
            .map_err(|e| format!("witness client: cannot bind {local}: {e}"))?;
        socket
            .connect(witness)
            .await
            .map_err(|e| format!("witness client: cannot reach {witness} from {local}: {e}"))?;
        Ok(Self {
            socket,
            witness,
            key: WitnessKey::new(key, cluster),
            cluster: cluster.to_string(),
            node: node.to_string(),
            boot: new_boot(),
            seq: AtomicU64::new(0),
        })
    }

    /// Asks for (or renews) the lease for `lease_ms`, with `claims`. `Err`: no valid answer
    /// within `timeout` (the witness is unreachable, or does not have this cluster's key).
    pub async fn acquire(
        &self,
        lease_ms: u64,
        claims: Claims,
        timeout: Duration,
    ) -> Result<Verdict, String> {
        self.call(Kind::Acquire, lease_ms, claims, timeout).await
    }

    /// Gives the lease back (if this node holds it). `Err` as for [`Self::acquire`].
    pub async fn release(&self, timeout: Duration) -> Result<Verdict, String> {
        self.call(Kind::Release, 0, Claims::default(), timeout)
            .await
    }

    /// Sends the request up to [`ATTEMPTS`] times within `timeout` (the same nonce, a new
    /// sequence number each time) and returns the first authentic answer to it.
    async fn call(
        &self,
        kind: Kind,
        lease_ms: u64,
        claims: Claims,
        timeout: Duration,
    ) -> Result<Verdict, String> {
        let nonce = engine::runtime::os_random_u64();
        let started = tokio::time::Instant::now();
        let mut trouble = None;
        let mut buffer = [0u8; MAX_DATAGRAM_BYTES + 1];
        for attempt in 1..=ATTEMPTS {
            let request = Request {
                kind,
                cluster: self.cluster.clone(),
                node: self.node.clone(),
                boot: self.boot,
                seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
                nonce,
                lease_ms,
                claims,
            };
            let packet = self
                .key
                .encode_request(&request)
                .map_err(|e| format!("witness client: {e}"))?;
            if let Err(error) = self.socket.send(&packet).await {
                trouble = Some(format!("send: {error}"));
            }
            let resend_at = started + timeout * attempt / ATTEMPTS;
            while let Ok(received) =
                tokio::time::timeout_at(resend_at, self.socket.recv(&mut buffer)).await
            {
                match received {
                    Ok(bytes) => match self.key.decode_response(nonce, &buffer[..bytes]) {
                        Ok(verdict) => return Ok(verdict),
                        Err(error) => trouble = Some(format!("dropped an answer: {error}")),
                    },
                    Err(error) => {
                        trouble = Some(format!("receive: {error}"));
                        tokio::time::sleep_until(resend_at).await;
                    }
                }
            }
        }
        let trouble = trouble.map_or(String::new(), |t| format!(" (last: {t})"));
        Err(format!(
            "witness {}: no valid answer within {} ms{trouble}",
            self.witness,
            timeout.as_millis()
        ))
    }
}
