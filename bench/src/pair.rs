//! Two nodes of a replicated volume in one process, linked over 127.0.0.1 as two daemons would
//! be: each node has its own backing file and metadata, its own [`LocalVolume`] and its own
//! async runtime (two workers, like the daemon's), and the link is a real
//! [`link::connect`]/[`link::accept`] pair (Noise handshake, AES-256-GCM records, the configured
//! compression), pumped by [`engine::runtime::session::run`] as in the daemon.
//!
//! Both metadata copies are created `InSync` in the same generation, so the nodes connect with
//! the rule `reconnected` and need no initial sync; the first node connects (as the node listed
//! first in the configuration does) and is promoted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engine::format::InitialData;
use engine::generation::Generation;
use engine::layout::LayoutParams;
use engine::protocol::compress::Compression;
use engine::replica::{AdminCommand, Protocol, ReplicaConfig};
use engine::runtime::link::{self, Hello, LinkConfig, LinkCounters, LinkTraffic};
use engine::runtime::{
    LocalVolume, RuntimeOptions, VolumeHandle, metadata, os_random_u64, session,
};
use engine::state::{ConnState, DiskState, ReplState};
use engine::types::NodeId;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::delay::{self, Shaping};

/// The volume's name on both nodes.
pub const VOLUME_NAME: &str = "bench";

/// The largest client request, as the daemon configures it.
const REQUEST_BYTES_MAX: u64 = 32 << 20;

/// How long connecting and reaching `established` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a session may take to end once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The names of the two nodes; the first is the primary.
const NODE_NAMES: [&str; 2] = ["alpha", "beta"];

/// What a pair is made of.
#[derive(Clone, Debug)]
pub struct PairConfig {
    /// The backing files of the primary and the secondary.
    pub files: [PathBuf; 2],
    /// How each node compresses what it sends.
    pub compression: Compression,
    /// When a client write completes (both nodes use the same, as the daemon's configuration
    /// makes them).
    pub protocol: Protocol,
    /// The metadata layout both backing files are formatted with (the journal ring's size is
    /// `journal_bytes`).
    pub layout: LayoutParams,
    /// Payload bytes of the journal's memory tier on each node.
    pub journal_memory_bytes: u64,
    /// How a relay ([`crate::delay`]) shapes each direction of the link; none by default.
    pub link_shaping: Shaping,
}

impl PairConfig {
    /// Protocol C, the default layout and journal memory, as the daemon's defaults are.
    pub fn new(files: [PathBuf; 2], compression: Compression) -> Self {
        Self {
            files,
            compression,
            protocol: Protocol::C,
            layout: LayoutParams::default(),
            journal_memory_bytes: ReplicaConfig::new(VOLUME_NAME, NodeId(0))
                .journal_memory_bytes_max,
            link_shaping: Shaping::default(),
        }
    }
}

/// How far the peer is behind a primary at one moment, and what its journal holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    /// Bytes sent to the peer that it has not written yet.
    pub unacked_bytes: u64,
    /// Payload bytes in the journal's memory tier.
    pub journal_memory_bytes: u64,
    /// Bytes of the journal ring in use.
    pub journal_ring_bytes: u64,
    /// Journal overflows since the volume opened.
    pub journal_overflows: u64,
}

impl Backlog {
    /// `volume`'s backlog now.
    pub fn of(volume: &VolumeHandle) -> Self {
        let status = volume.status();
        Self {
            unacked_bytes: status.unacked_bytes,
            journal_memory_bytes: status.journal.memory_bytes,
            journal_ring_bytes: status.journal.ring_used_bytes,
            journal_overflows: status.journal.overflows,
        }
    }

    /// The larger of each field.
    pub fn max(self, other: Self) -> Self {
        Self {
            unacked_bytes: self.unacked_bytes.max(other.unacked_bytes),
            journal_memory_bytes: self.journal_memory_bytes.max(other.journal_memory_bytes),
            journal_ring_bytes: self.journal_ring_bytes.max(other.journal_ring_bytes),
            journal_overflows: self.journal_overflows.max(other.journal_overflows),
        }
    }
}

/// The sessions of a link, with the index of the node each belongs to.
type Sessions = Vec<(usize, Session)>;

/// One node's session task and the means to stop it.
struct Session {
    stop: oneshot::Sender<String>,
    task: JoinHandle<String>,
}

/// A connected pair, the first node primary.
pub struct Pair {
    /// Primary, secondary. Declared before the runtimes so that on an early drop the volumes
    /// stop first and the link tasks see them gone.
    volumes: [LocalVolume; 2],
    sessions: Sessions,
    runtimes: [Runtime; 2],
    counters: Arc<LinkCounters>,
    /// The traffic of the links before the current one (see [`Self::relink`]).
    earlier_traffic: LinkTraffic,
    /// What every link of this pair is made with (the cluster key, codec, shaping).
    link_configs: [LinkConfig; 2],
    link_shaping: Shaping,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

impl Pair {
    /// Formats both backing files in one generation, opens both nodes, links them and promotes
    /// the first. Returns once the link is `established` and the primary serves writes.
    pub fn start(config: &PairConfig) -> anyhow::Result<Self> {
        let generation = Generation(os_random_u64() | 1);
        for file in &config.files {
            metadata::create(
                file,
                VOLUME_NAME,
                config.layout,
                InitialData::InSync { generation },
                true,
            )
            .with_context(|| format!("creating metadata on {}", file.display()))?;
        }
        let volumes = [
            open_node(&config.files[0], 0, config)?,
            open_node(&config.files[1], 1, config)?,
        ];
        for volume in &volumes {
            admin(&volume.handle(), AdminCommand::Connect)?;
        }
        let runtimes = [runtime("primary-async")?, runtime("secondary-async")?];
        let key = random_key();
        let link_configs = NODE_NAMES.map(|node| {
            let mut link_config = LinkConfig::new(key, Hello::new("bench", node, VOLUME_NAME));
            link_config.compression = config.compression;
            link_config
        });
        let (sessions, counters) = link(&runtimes, &volumes, &link_configs, config.link_shaping)?;
        let pair = Self {
            volumes,
            sessions,
            runtimes,
            counters,
            earlier_traffic: LinkTraffic::default(),
            link_configs,
            link_shaping: config.link_shaping,
        };
        pair.wait_established()?;
        admin(&pair.primary(), AdminCommand::Promote { force: false })?;
        Ok(pair)
    }

    /// The primary's handle: where clients write.
    pub fn primary(&self) -> VolumeHandle {
        self.volumes[0].handle()
    }

    /// The secondary's handle.
    pub fn secondary(&self) -> VolumeHandle {
        self.volumes[1].handle()
    }

    /// How far the secondary is behind, as the primary sees it.
    pub fn backlog(&self) -> Backlog {
        Backlog::of(&self.primary())
    }

    /// Waits until the secondary has written everything the primary sent (under protocols A
    /// and B writes complete before that); returns how long that took. Fails after `timeout`,
    /// or if the link goes down meanwhile.
    pub fn wait_caught_up(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            self.check_replicating()?;
            let primary = self.primary().status();
            let secondary = self.secondary().status();
            if primary.unacked_bytes == 0 && secondary.peer_writes_pending == 0 {
                return Ok(started.elapsed());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "the secondary did not catch up within {timeout:?}: {} bytes unacknowledged, \
                 {} writes pending on the secondary",
                primary.unacked_bytes,
                secondary.peer_writes_pending
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `command` on the primary (`node` 0) or the secondary (1).
    pub fn admin(&self, node: usize, command: AdminCommand) -> anyhow::Result<()> {
        admin(&self.volumes[node].handle(), command)
    }

    /// The primary's async runtime (the daemon runs its frontend there too).
    pub fn primary_runtime(&self) -> &Runtime {
        &self.runtimes[0]
    }

    /// The traffic of every link of this pair so far, as the primary counts it.
    pub fn traffic(&self) -> LinkTraffic {
        let now = self.counters.snapshot();
        let earlier = self.earlier_traffic;
        LinkTraffic {
            frames_sent: earlier.frames_sent + now.frames_sent,
            payload_bytes_sent: earlier.payload_bytes_sent + now.payload_bytes_sent,
            wire_bytes_sent: earlier.wire_bytes_sent + now.wire_bytes_sent,
            frames_received: earlier.frames_received + now.frames_received,
            payload_bytes_received: earlier.payload_bytes_received + now.payload_bytes_received,
            wire_bytes_received: earlier.wire_bytes_received + now.wire_bytes_received,
        }
    }

    /// Fails if the link went down or either node left `established`: a run during which that
    /// happened measured local writes, not replication.
    pub fn check_replicating(&self) -> anyhow::Result<()> {
        for (node, session) in &self.sessions {
            anyhow::ensure!(
                !session.task.is_finished(),
                "the link session of {} ended during the run",
                NODE_NAMES[*node]
            );
        }
        for (node, volume) in self.volumes.iter().enumerate() {
            let status = volume.handle().status();
            anyhow::ensure!(
                status.connection == ConnState::Connected
                    && status.replication == ReplState::Established,
                "{} is {} / {} ({})",
                NODE_NAMES[node],
                status.connection,
                status.replication,
                status.connection_reason.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Stops the link, then detaches both volumes cleanly.
    pub fn close(mut self) -> anyhow::Result<()> {
        self.stop_sessions("stopped by the benchmark")?;
        let Self {
            volumes, runtimes, ..
        } = self;
        for (node, volume) in volumes.into_iter().enumerate() {
            volume
                .close()
                .map_err(|refusal| anyhow::anyhow!("closing {}: {refusal}", NODE_NAMES[node]))?;
        }
        for runtime in runtimes {
            runtime.shutdown_timeout(STOP_TIMEOUT);
        }
        Ok(())
    }

    /// Ends the link as a network failure would: both nodes see it go and keep wanting a
    /// connection (their writes meanwhile go to the journal and the dirty bitmap).
    pub fn cut(&mut self) -> anyhow::Result<()> {
        self.stop_sessions("cut by the benchmark")?;
        let started = Instant::now();
        while self
            .volumes
            .iter()
            .any(|volume| volume.handle().status().connection == ConnState::Connected)
        {
            anyhow::ensure!(
                started.elapsed() < CONNECT_TIMEOUT,
                "the volumes still say connected {CONNECT_TIMEOUT:?} after the link was cut"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Links the nodes again after [`Self::cut`]; returns once both say connected (they may
    /// then resync or catch up: see [`Self::wait_synced`]).
    pub fn relink(&mut self) -> anyhow::Result<()> {
        let (sessions, counters) = link(
            &self.runtimes,
            &self.volumes,
            &self.link_configs,
            self.link_shaping,
        )?;
        self.earlier_traffic = self.traffic();
        self.sessions = sessions;
        self.counters = counters;
        let started = Instant::now();
        while !self
            .volumes
            .iter()
            .all(|volume| volume.handle().status().connection == ConnState::Connected)
        {
            if let Some((node, _)) = self.sessions.iter().find(|(_, s)| s.task.is_finished()) {
                anyhow::bail!("the link of {} ended while reconnecting", NODE_NAMES[*node]);
            }
            anyhow::ensure!(
                started.elapsed() < CONNECT_TIMEOUT,
                "not connected {CONNECT_TIMEOUT:?} after relinking"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until both nodes are `established` and `up_to_date` with nothing out of sync and
    /// nothing unacknowledged; returns the kinds of sync the primary reported meanwhile (`full`,
    /// `bitmap`, `journal`, `checksum`). Fails after `timeout` or if the link drops.
    pub fn wait_synced(&self, timeout: Duration) -> anyhow::Result<Vec<&'static str>> {
        let started = Instant::now();
        let mut kinds = Vec::new();
        loop {
            for (node, session) in &self.sessions {
                anyhow::ensure!(
                    !session.task.is_finished(),
                    "the link session of {} ended while syncing",
                    NODE_NAMES[*node]
                );
            }
            let statuses = self
                .volumes
                .each_ref()
                .map(|volume| volume.handle().status());
            // As the primary (the source of every sync here) names it.
            if let Some(sync) = &statuses[0].sync {
                let kind = if sync.full && sync.kind == "bitmap" {
                    "full"
                } else {
                    sync.kind
                };
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            let synced = statuses.iter().all(|status| {
                status.replication == ReplState::Established
                    && status.disk == DiskState::UpToDate
                    && status.peer_disk == DiskState::UpToDate
                    && status.out_of_sync_bytes == 0
                    && status.sync.is_none()
                    && status.unacked_bytes == 0
                    && status.peer_writes_pending == 0
            });
            if synced {
                return Ok(kinds);
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "not in sync after {timeout:?}: the primary is {} / {} / {}, {} bytes out of sync",
                statuses[0].replication,
                statuses[0].disk,
                statuses[0].peer_disk,
                statuses[0].out_of_sync_bytes
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stop_sessions(&mut self, reason: &str) -> anyhow::Result<()> {
        for (node, session) in self.sessions.drain(..) {
            let _ = session.stop.send(reason.to_string());
            let runtime = &self.runtimes[node];
            // The timer must be created inside the runtime.
            let ended =
                runtime.block_on(async { tokio::time::timeout(STOP_TIMEOUT, session.task).await });
            match ended {
                Ok(Ok(_reason)) => {}
                Ok(Err(join)) => anyhow::bail!("{}: link task failed: {join}", NODE_NAMES[node]),
                Err(_) => anyhow::bail!("{}: the link did not stop", NODE_NAMES[node]),
            }
        }
        Ok(())
    }

    fn wait_established(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some((node, _)) = self.sessions.iter().find(|(_, s)| s.task.is_finished()) {
                anyhow::bail!("the link of {} ended while connecting", NODE_NAMES[*node]);
            }
            let established = self.volumes.iter().all(|volume| {
                let status = volume.handle().status();
                status.connection == ConnState::Connected
                    && status.replication == ReplState::Established
            });
            if established {
                return Ok(());
            }
            if started.elapsed() > CONNECT_TIMEOUT {
                let status = self.primary().status();
                anyhow::bail!(
                    "not established after {CONNECT_TIMEOUT:?}: the primary is {} / {} ({})",
                    status.connection,
                    status.replication,
                    status.connection_reason.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Opens one node's volume as the daemon does (default runtime options, 32 MiB requests),
/// with the pair's protocol and journal memory.
fn open_node(file: &Path, node: u8, pair: &PairConfig) -> anyhow::Result<LocalVolume> {
    let mut config = ReplicaConfig::new(VOLUME_NAME, NodeId(node));
    config.protocol = pair.protocol;
    config.journal_memory_bytes_max = pair.journal_memory_bytes;
    config.request_bytes_max = REQUEST_BYTES_MAX;
    LocalVolume::open(file, config, RuntimeOptions::default())
        .with_context(|| format!("opening {}", file.display()))
}

/// One node alone, as the primary of a pair would be without its peer: fresh metadata with the
/// pair's layout, the same volume configuration, promoted by force (no peer was ever seen).
/// Its writes complete when they are on the local disk, plus whatever the engine keeps for a
/// peer that is away (the dirty bitmap, the journal while it is active).
pub fn open_local_only(file: &Path, pair: &PairConfig) -> anyhow::Result<LocalVolume> {
    metadata::create(file, VOLUME_NAME, pair.layout, InitialData::Fresh, true)
        .with_context(|| format!("creating metadata on {}", file.display()))?;
    let volume = open_node(file, 0, pair)?;
    admin(&volume.handle(), AdminCommand::Promote { force: true })?;
    Ok(volume)
}

fn admin(handle: &VolumeHandle, command: AdminCommand) -> anyhow::Result<()> {
    let what = format!("{command:?}");
    handle
        .admin(command)
        .map_err(|refusal| anyhow::anyhow!("{what}: {refusal}"))
}

/// An async runtime like the daemon's: two workers, all drivers.
pub(crate) fn runtime(thread_name: &str) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name(thread_name)
        .build()
        .context("starting an async runtime")
}

/// A fresh cluster key.
pub(crate) fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&os_random_u64().to_le_bytes());
    }
    key
}

/// The traffic between two snapshots of the same counters.
pub fn traffic_since(now: LinkTraffic, before: LinkTraffic) -> LinkTraffic {
    LinkTraffic {
        frames_sent: now.frames_sent - before.frames_sent,
        payload_bytes_sent: now.payload_bytes_sent - before.payload_bytes_sent,
        wire_bytes_sent: now.wire_bytes_sent - before.wire_bytes_sent,
        frames_received: now.frames_received - before.frames_received,
        payload_bytes_received: now.payload_bytes_received - before.payload_bytes_received,
        wire_bytes_received: now.wire_bytes_received - before.wire_bytes_received,
    }
}

/// Links the two volumes: the second accepts on loopback (behind a shaping relay if asked),
/// the first connects; returns both sessions and the first's link counters.
fn link(
    runtimes: &[Runtime; 2],
    volumes: &[LocalVolume; 2],
    configs: &[LinkConfig; 2],
    shaping: Shaping,
) -> anyhow::Result<(Sessions, Arc<LinkCounters>)> {
    let (mut address, accepting) = accept_one(&runtimes[1], &volumes[1], configs[1].clone())?;
    if !shaping.is_none() {
        address = delay::start(&runtimes[0], address, shaping)?;
    }
    let (connecting, counters) = connect_one(&runtimes[0], &volumes[0], address, &configs[0])?;
    Ok((vec![(0, connecting), (1, accepting)], counters))
}

/// Listens on an ephemeral loopback port and, in the background, accepts one link there and
/// runs its session for `volume`.
fn accept_one(
    runtime: &Runtime,
    volume: &LocalVolume,
    config: LinkConfig,
) -> anyhow::Result<(SocketAddr, Session)> {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .context("listening for the link")?;
    let address = listener.local_addr().context("the link's address")?;
    let handle = volume.handle();
    let outputs = handle.peer_channel();
    let (stop, stopped) = oneshot::channel();
    let task = runtime.spawn(async move {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => return format!("accept: {error}"),
        };
        match link::accept(stream, &config).await {
            Ok((sender, receiver, _peer)) => {
                session::run(handle, sender, receiver, Box::new(outputs), stopped).await
            }
            Err(error) => format!("accepting the link: {error}"),
        }
    });
    Ok((address, Session { stop, task }))
}

/// Connects `volume`'s link to `address` and starts its session; returns the session and the
/// link's counters.
fn connect_one(
    runtime: &Runtime,
    volume: &LocalVolume,
    address: SocketAddr,
    config: &LinkConfig,
) -> anyhow::Result<(Session, Arc<LinkCounters>)> {
    let handle = volume.handle();
    let outputs = handle.peer_channel();
    let (sender, receiver, _peer) = runtime
        .block_on(link::connect(address, config))
        .with_context(|| format!("connecting the link to {address}"))?;
    let counters = sender.counters();
    let (stop, stopped) = oneshot::channel();
    let task = runtime.spawn(session::run(
        handle,
        sender,
        receiver,
        Box::new(outputs),
        stopped,
    ));
    Ok((Session { stop, task }, counters))
}
