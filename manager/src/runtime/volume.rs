//! One volume on this node: the engine's volume, its link to the peer, its frontend.

use std::net::SocketAddr;
use std::sync::Arc;

use engine::replica::{AdminCommand, ReplicaConfig, ReplicaStatus, SplitBrainPolicy};
use engine::runtime::link::{Hello, LinkConfig};
use engine::runtime::{LocalVolume, RuntimeOptions, VolumeHandle};
use engine::state::{DiskState, Role};
use engine::types::NodeId;
use ublk_target::nbd::{self, BlockBackend, ExportRegistry, ExportState, NbdLimits};

use super::link::{self, LinkEnd, LinkTotals};
use super::ublk::UblkFrontend;
use crate::config::{AfterSplitBrain, Compression, Config, Frontend, VolumeSection};
use crate::status::{JournalReport, SyncReport, VolumeReport};

/// The engine's largest client request, and the NBD server's.
const REQUEST_BYTES_MAX: u64 = 32 << 20;

/// A running volume.
#[derive(Debug)]
pub struct VolumeService {
    /// The volume's configuration.
    pub section: VolumeSection,
    local: Option<LocalVolume>,
    handle: Option<VolumeHandle>,
    open_error: Option<String>,
    exports: Arc<ExportRegistry>,
    nbd_device: Option<String>,
    ublk: Option<Arc<UblkFrontend>>,
    frontend_error: std::sync::Mutex<Option<String>>,
    link_totals: Arc<LinkTotals>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    node_name: String,
    /// Where a split-brain policy saves this node's discarded blocks.
    pub discard_dir: std::path::PathBuf,
    /// An automatic split-brain resolution ran (it runs once per daemon start).
    auto_resolution: Arc<std::sync::atomic::AtomicBool>,
}

/// Adapts a volume handle to the NBD server.
struct VolumeBackend {
    handle: VolumeHandle,
    size_bytes: u64,
}

impl BlockBackend for VolumeBackend {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn submit(&self, op: engine::replica::ClientOp, completion: engine::runtime::Completion) {
        self.handle.submit(op, completion);
    }
}

impl VolumeService {
    /// Opens the volume on this node's backing store (a failure leaves it down, with the
    /// reason in status), then starts its link and frontend tasks. Must run inside the tokio
    /// runtime.
    pub async fn start(
        config: &Config,
        node_name: &str,
        section: &VolumeSection,
        key: [u8; 32],
    ) -> Self {
        let mut service = Self {
            section: section.clone(),
            local: None,
            handle: None,
            open_error: None,
            exports: Arc::new(ExportRegistry::new()),
            nbd_device: None,
            ublk: None,
            frontend_error: std::sync::Mutex::new(None),
            link_totals: Arc::new(LinkTotals::default()),
            tasks: Vec::new(),
            node_name: node_name.to_string(),
            discard_dir: section.discard_dir.clone().unwrap_or_else(|| {
                config
                    .node(node_name)
                    .map(|node| node.state_dir.join("discarded"))
                    .expect("validated")
            }),
            auto_resolution: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let node_index = config
            .nodes
            .iter()
            .position(|n| n.name == node_name)
            .expect("validated");
        let replica_config = replica_config(section, node_index);
        let path = section
            .backing_for(node_name)
            .expect("validated")
            .to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            LocalVolume::open(&path, replica_config, RuntimeOptions::default())
        })
        .await;
        let local = match opened {
            Ok(Ok(local)) => local,
            Ok(Err(error)) => {
                let message = error.to_string();
                tracing::error!(volume = %section.name, "cannot open the volume: {message}");
                service.open_error = Some(message);
                return service;
            }
            Err(join) => {
                service.open_error = Some(format!("opening panicked: {join}"));
                return service;
            }
        };
        let handle = local.handle();
        service.local = Some(local);
        service.handle = Some(handle.clone());
        if let Err(refusal) = admin_blocking(&handle, AdminCommand::Connect).await {
            tracing::warn!(volume = %section.name, "connect: {refusal}");
        }
        service.start_link(config, node_index, key, &handle).await;
        service.start_frontend(config, node_name, &handle).await;
        service
    }

    async fn start_link(
        &mut self,
        config: &Config,
        node_index: usize,
        key: [u8; 32],
        handle: &VolumeHandle,
    ) {
        let section = &self.section;
        let peer_index = 1 - node_index;
        let end = if node_index < peer_index {
            let ip = config.nodes[peer_index].ip();
            Ok(LinkEnd::Connect(SocketAddr::new(ip, section.port)))
        } else {
            let ip = config.nodes[node_index].listen_ip();
            match tokio::net::TcpListener::bind(SocketAddr::new(ip, section.port)).await {
                Ok(listener) => Ok(LinkEnd::Accept(listener)),
                Err(e) => Err(format!("cannot listen on {ip}:{}: {e}", section.port)),
            }
        };
        let end = match end {
            Ok(end) => end,
            Err(error) => {
                tracing::error!(volume = %section.name, "replication link: {error}");
                return;
            }
        };
        let hello = Hello::new(&config.cluster.name, &self.node_name, &section.name);
        let mut link_config = LinkConfig::new(key, hello);
        link_config.compression = match section.compression {
            Compression::None => engine::protocol::compress::Compression::None,
            Compression::Lz4 => engine::protocol::compress::Compression::Lz4,
            Compression::Zstd => engine::protocol::compress::Compression::Zstd,
        };
        let task = tokio::spawn(link::run(
            section.name.clone(),
            handle.clone(),
            end,
            link_config,
            Arc::clone(&self.link_totals),
        ));
        self.tasks.push(task);
    }

    async fn start_frontend(&mut self, config: &Config, node_name: &str, handle: &VolumeHandle) {
        let section = &self.section;
        let node = config.node(node_name).expect("validated");
        let error = match section.frontend {
            Frontend::Ublk => {
                let state_dir = node.state_dir.clone();
                match UblkFrontend::new(&section.name, section.ublk_options(), state_dir) {
                    Ok(frontend) => {
                        self.ublk = Some(Arc::new(frontend));
                        None
                    }
                    Err(error) => Some(format!("frontend ublk: {error}")),
                }
            }
            Frontend::Nbd => match section.nbd_port {
                None => Some("frontend nbd needs nbd_port".to_string()),
                Some(port) => {
                    let ip = node.listen_ip();
                    match tokio::net::TcpListener::bind(SocketAddr::new(ip, port)).await {
                        Err(e) => Some(format!("cannot listen for NBD on {ip}:{port}: {e}")),
                        Ok(listener) => {
                            let limits = NbdLimits {
                                connections_max: 16,
                                requests_in_flight_per_connection: 128,
                                request_bytes_max: REQUEST_BYTES_MAX as u32,
                                ..NbdLimits::default()
                            };
                            let exports = Arc::clone(&self.exports);
                            self.tasks
                                .push(tokio::spawn(nbd::serve(listener, exports, limits)));
                            self.nbd_device = Some(format!("nbd://{ip}:{port}/{}", section.name));
                            None
                        }
                    }
                }
            },
        };
        if let Some(error) = &error {
            tracing::error!(volume = %section.name, "{error}");
        }
        *self
            .frontend_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
        self.reconcile_export(handle);
    }

    /// A backend over the volume, for a frontend.
    fn backend(handle: &VolumeHandle) -> Arc<dyn BlockBackend> {
        Arc::new(VolumeBackend {
            handle: handle.clone(),
            size_bytes: handle.status().size_bytes,
        })
    }

    /// The ublk device follows the role (off the async workers; a change already under way
    /// makes this one wait for the next round).
    fn reconcile_ublk(&self, handle: &VolumeHandle) {
        let Some(ublk) = self.ublk.clone() else {
            return;
        };
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || {
            ublk.reconcile(&handle, &|| Self::backend(&handle));
        });
    }

    /// Serves the export while this node is primary with consistent data; otherwise tells NBD
    /// clients why not.
    pub fn reconcile_export(&self, handle: &VolumeHandle) {
        if self.ublk.is_some() {
            self.reconcile_ublk(handle);
            return;
        }
        let status = handle.status();
        let serving = status.role == Role::Primary && status.disk.is_consistent();
        let name = &self.section.name;
        let state = if serving {
            if matches!(self.exports.get(name), Some(ExportState::Serving(_))) {
                return;
            }
            let backend = VolumeBackend {
                handle: handle.clone(),
                size_bytes: status.size_bytes,
            };
            ExportState::Serving(Arc::new(backend))
        } else {
            let reason = if status.disk == DiskState::Failed {
                format!("volume {name}: the disk on {} failed", self.node_name)
            } else {
                format!(
                    "volume {name} is {} on {}; the primary serves it",
                    status.role, self.node_name
                )
            };
            ExportState::Unavailable(reason)
        };
        self.exports.set(name, state);
    }

    /// Runs an admin command (blocking work happens off the async workers). With ublk, a
    /// promotion returns once `/dev/ublkbN` exists, and a demotion removes it first (and is
    /// refused while it is in use).
    pub async fn admin(&self, command: AdminCommand) -> Result<(), String> {
        let handle = self.handle.as_ref().ok_or_else(|| self.down_reason())?;
        if let Some(ublk) = self.ublk.clone() {
            let handle = handle.clone();
            return tokio::task::spawn_blocking(move || ublk_admin(&ublk, &handle, command))
                .await
                .unwrap_or_else(|join| Err(format!("admin command panicked: {join}")));
        }
        let result = admin_blocking(handle, command)
            .await
            .map_err(|r| r.to_string());
        self.reconcile_export(handle);
        result
    }

    /// The engine's status, if the volume is open.
    pub fn engine_status(&self) -> Option<ReplicaStatus> {
        self.handle.as_ref().map(VolumeHandle::status)
    }

    /// Periodic housekeeping: the export follows the role; a split brain that a policy
    /// resolved against this node gets its blocks saved, then the resync.
    pub fn reconcile(&self) {
        if let Some(handle) = &self.handle {
            self.reconcile_export(handle);
            self.resolve_automatically(handle);
        }
    }

    fn resolve_automatically(&self, handle: &VolumeHandle) {
        use std::sync::atomic::Ordering;
        let status = handle.status();
        let Some(rule) = status
            .split_brain_detail
            .as_ref()
            .and_then(|detail| detail.discard_pending)
        else {
            return;
        };
        if self.auto_resolution.swap(true, Ordering::SeqCst) {
            return;
        }
        let job = super::split_brain::Discard {
            volume: self.section.name.clone(),
            node: self.node_name.clone(),
            backing: self
                .section
                .backing_for(&self.node_name)
                .expect("validated")
                .to_path_buf(),
            dir: Some(self.discard_dir.clone()),
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            tracing::warn!(
                volume = %job.volume,
                "split brain: the policy discards this node's changes by rule={rule}; saving them \
                 to {} first",
                job.dir.as_ref().expect("set").display()
            );
            match job.run(&handle).await {
                Ok(message) => tracing::info!(volume = %job.volume, "{message}"),
                Err(error) => tracing::error!(
                    volume = %job.volume,
                    "split brain left unresolved: {error}; resolve it with `tandem split-brain \
                     resolve`"
                ),
            }
        });
    }

    /// The engine's handle, while the volume is open.
    pub fn handle(&self) -> Result<&VolumeHandle, String> {
        self.handle.as_ref().ok_or_else(|| self.down_reason())
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    fn down_reason(&self) -> String {
        let error = self
            .open_error
            .clone()
            .unwrap_or_else(|| "not open".to_string());
        format!("volume {} is down: {error}", self.section.name)
    }

    /// The volume's status report.
    pub fn report(&self) -> VolumeReport {
        let protocol = format!("{:?}", self.section.protocol);
        let Some(status) = self.engine_status() else {
            return VolumeReport {
                name: self.section.name.clone(),
                role: "secondary".to_string(),
                disk: "diskless".to_string(),
                connection: "stand_alone".to_string(),
                replication: "off".to_string(),
                peer_disk: "unknown".to_string(),
                protocol,
                connection_reason: Some(self.down_reason()),
                ..VolumeReport::default()
            };
        };
        let (sent, received) = self.link_totals.wire_bytes();
        let serving = matches!(
            self.exports.get(&self.section.name),
            Some(ExportState::Serving(_))
        );
        VolumeReport {
            name: status.name.clone(),
            role: status.role.to_string(),
            disk: status.disk.to_string(),
            connection: status.connection.to_string(),
            replication: status.replication.to_string(),
            peer_disk: status.peer_disk.to_string(),
            peer_role: status.peer_role.map(|r| r.to_string()),
            out_of_sync_bytes: status.out_of_sync_bytes,
            sync: status.sync.map(|s| SyncReport {
                percent: s.percent,
                bytes_per_second: s.bytes_per_second,
                eta_seconds: s.eta_seconds,
                direction: s.direction.to_string(),
                kind: s.kind.to_string(),
                remaining_bytes: s.remaining_bytes,
            }),
            verify: status.verify.map(Into::into),
            unacked_bytes: status.unacked_bytes,
            journal: JournalReport {
                active: status.journal.active,
                records: status.journal.records,
                memory_bytes: status.journal.memory_bytes,
                ring_used_bytes: status.journal.ring_used_bytes,
                ring_bytes: status.journal.ring_bytes,
                overflows: status.journal.overflows,
            },
            split_brain: status.split_brain,
            split_brain_detail: status.split_brain_detail.clone(),
            device: match &self.ublk {
                Some(ublk) => ublk.device_path(),
                None if serving => self.nbd_device.clone(),
                None => None,
            },
            size_bytes: status.size_bytes,
            protocol,
            last_decision: status
                .last_decision
                .map(|(d, r)| format!("{d} by rule={r}")),
            connection_reason: status.connection_reason,
            wire_bytes_sent: sent,
            wire_bytes_received: received,
            frontend_error: self
                .frontend_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .or_else(|| self.ublk.as_ref().and_then(|ublk| ublk.error())),
        }
    }

    /// Stops the tasks and closes the volume cleanly (metadata marked clean). A ublk device in
    /// use stays with the kernel for the next daemon; the volume is then left as a crash leaves
    /// it, since the requests in flight are reissued to the next daemon.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(ublk) = self.ublk.take() {
            let left = tokio::task::spawn_blocking(move || ublk.shutdown())
                .await
                .unwrap_or(false);
            if left {
                // The process exits next; closing would complete the reissued requests' first
                // attempts with errors.
                std::mem::forget(self.local.take());
                return;
            }
        }
        if let Some(local) = self.local.take() {
            let name = self.section.name.clone();
            let closed = tokio::task::spawn_blocking(move || local.close()).await;
            match closed {
                Ok(Ok(())) => tracing::info!(volume = %name, "closed cleanly"),
                Ok(Err(refusal)) => tracing::warn!(volume = %name, "close: {refusal}"),
                Err(join) => tracing::warn!(volume = %name, "close panicked: {join}"),
            }
        }
    }
}

/// An admin command on a volume served through ublk (blocking).
fn ublk_admin(
    ublk: &UblkFrontend,
    handle: &VolumeHandle,
    command: AdminCommand,
) -> Result<(), String> {
    let backend = || VolumeService::backend(handle);
    match command {
        AdminCommand::Demote => ublk.demote(|| handle.admin(command).map_err(|r| r.to_string())),
        AdminCommand::Promote { .. } => {
            handle.admin(command).map_err(|r| r.to_string())?;
            ublk.start(&backend)
                .map_err(|error| format!("primary now, but the ublk device did not start: {error}"))
        }
        command => {
            let result = handle.admin(command).map_err(|r| r.to_string());
            ublk.reconcile(handle, &backend);
            result
        }
    }
}

async fn admin_blocking(
    handle: &VolumeHandle,
    command: AdminCommand,
) -> Result<(), engine::replica::Refusal> {
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || handle.admin(command))
        .await
        .unwrap_or_else(|join| {
            Err(engine::replica::Refusal::Attach(format!(
                "admin command panicked: {join}"
            )))
        })
}

fn replica_config(section: &VolumeSection, node_index: usize) -> ReplicaConfig {
    let mut config = ReplicaConfig::new(&section.name, NodeId(node_index as u8));
    config.protocol = match section.protocol {
        crate::config::Protocol::A => engine::replica::Protocol::A,
        crate::config::Protocol::B => engine::replica::Protocol::B,
        crate::config::Protocol::C => engine::replica::Protocol::C,
    };
    config.journal_memory_bytes_max = section.journal_memory.0;
    config.after_split_brain = match section.after_split_brain {
        AfterSplitBrain::Disconnect => SplitBrainPolicy::Disconnect,
        AfterSplitBrain::DiscardZeroChanges => SplitBrainPolicy::DiscardZeroChanges,
        AfterSplitBrain::DiscardLeastChanges => SplitBrainPolicy::DiscardLeastChanges,
        AfterSplitBrain::DiscardYoungerPrimary => SplitBrainPolicy::DiscardYoungerPrimary,
    };
    config.request_bytes_max = REQUEST_BYTES_MAX;
    config.resync_rate_bytes_per_second_max = section.resync_rate.map(|r| r.0);
    config
}
