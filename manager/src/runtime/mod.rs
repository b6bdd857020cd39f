//! The daemon (`tandem daemon`): every volume of this node with its link and frontend, and the
//! admin socket. It runs until SIGTERM or SIGINT, then closes every volume cleanly.
//!
//! A volume that cannot be opened (no metadata, a missing backing store) is reported down in
//! status with the reason; the others run on (S8).

pub mod admin;
pub mod agents;
pub mod cluster;
pub mod heartbeat;
pub mod link;
pub mod ping;
pub mod quorum;
pub mod split_brain;
pub mod ublk;
pub mod volume;
pub mod witness;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

use crate::admin::{Request, Response};
use crate::config::Config;
use crate::status::{LinkView, NodeReport, NodeView};
use volume::VolumeService;

/// The running daemon's state, shared with the admin socket.
#[derive(Debug)]
pub struct Daemon {
    node: String,
    config: Config,
    volumes: RwLock<Vec<VolumeService>>,
    heartbeat: heartbeat::SharedView,
    cluster: cluster::ClusterHandle,
    key: [u8; 32],
}

impl Daemon {
    /// Carries out an admin request.
    pub async fn execute(&self, request: Request) -> Response {
        if let Some(command) = admin::cluster_command(&request) {
            if self.config.groups.is_empty() && !matches!(request, Request::Maintenance { .. }) {
                return Response::refused("no [[group]] is configured");
            }
            return match self.cluster.command(command).await {
                Ok(message) => Response {
                    message: Some(message),
                    ..Response::done()
                },
                Err(error) => Response::refused(error),
            };
        }
        if let Request::SplitBrainResolve {
            volume,
            keep,
            save_discarded,
        } = request
        {
            return match self
                .resolve_split_brain(&volume, &keep, save_discarded)
                .await
            {
                Ok(message) => {
                    tracing::info!(volume = %volume, "split-brain resolve: {message}");
                    Response {
                        message: Some(message),
                        ..Response::done()
                    }
                }
                Err(error) => Response::refused(error),
            };
        }
        let Some((name, command)) = admin::engine_command(&request) else {
            return Response {
                status: Some(self.report().await),
                ..Response::done()
            };
        };
        let volumes = self.volumes.read().await;
        let Some(volume) = volumes.iter().find(|v| v.section.name == name) else {
            let known: Vec<&str> = volumes.iter().map(|v| v.section.name.as_str()).collect();
            return Response::refused(format!(
                "no volume {name:?} (volumes: {})",
                known.join(", ")
            ));
        };
        tracing::info!(volume = %name, "admin: {command:?}");
        match volume.admin(command).await {
            Ok(()) => Response::done(),
            Err(error) => Response::refused(format!("{name}: {error}")),
        }
    }

    /// `split-brain resolve`: refuses with one line and changes nothing unless the volume is
    /// in split brain, `keep` names a node, and the discarded side's blocks were saved.
    async fn resolve_split_brain(
        &self,
        name: &str,
        keep: &str,
        save_discarded: Option<std::path::PathBuf>,
    ) -> Result<String, String> {
        let volumes = self.volumes.read().await;
        let volume = volumes
            .iter()
            .find(|v| v.section.name == name)
            .ok_or_else(|| format!("no volume {name:?}"))?;
        let handle = volume.handle()?;
        if self.config.node(keep).is_err() {
            let nodes: Vec<&str> = self.config.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "{name}: unknown node {keep:?} (nodes: {})",
                nodes.join(", ")
            ));
        }
        if !handle.status().split_brain {
            return Err(format!("{name}: not in split brain"));
        }
        if keep == self.node {
            let command = engine::replica::AdminCommand::SplitBrainResolve { keep_self: true };
            volume
                .admin(command)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            return Ok(format!(
                "{name}: this node keeps its data; the peer resyncs from it once the same                  command has run there"
            ));
        }
        let discard = split_brain::Discard {
            volume: name.to_string(),
            node: self.node.clone(),
            backing: volume
                .section
                .backing_for(&self.node)
                .map_err(|e| e.to_string())?
                .to_path_buf(),
            dir: save_discarded,
        };
        discard.run(handle).await
    }

    async fn report(&self) -> NodeReport {
        let volumes = self.volumes.read().await;
        let reports: Vec<_> = volumes.iter().map(VolumeService::report).collect();
        let peer = self
            .heartbeat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let nodes = self
            .config
            .nodes
            .iter()
            .map(|node| {
                let this = node.name == self.node;
                let links = peer
                    .links
                    .iter()
                    .map(|link| LinkView {
                        address: if this { link.local } else { link.peer }.to_string(),
                        health: link.health.name().to_string(),
                        error: link.error.clone(),
                    })
                    .collect();
                NodeView {
                    name: node.name.clone(),
                    reachable: this || peer.alive,
                    links,
                }
            })
            .collect();
        NodeReport {
            node: self.node.clone(),
            nodes,
            volumes: reports,
            groups: peer.groups,
            arbitration: peer.arbitration,
        }
    }
}

/// Runs the daemon for node `node` until a signal asks it to stop.
pub fn run(config: Config, node: &str) -> Result<(), String> {
    let node_section = config.node(node)?.clone();
    let key = crate::key::read(&config.cluster.key_file)?;
    if crate::key::readable_by_others(&config.cluster.key_file) {
        tracing::warn!(
            "the cluster key {} is readable by others; chmod 600 it",
            config.cluster.key_file.display()
        );
    }
    std::fs::create_dir_all(&node_section.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", node_section.state_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tandem-async")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let socket = admin::socket_path(&node_section);
        let listener = admin::bind(&socket)?;
        let index = config
            .nodes
            .iter()
            .position(|n| n.name == node)
            .expect("validated");
        let (prepared, cluster, heartbeat) = cluster::prepare(&config, index, &key).await;
        let mut volumes = Vec::new();
        for section in &config.volumes {
            volumes.push(VolumeService::start(&config, node, section, key).await);
        }
        let daemon = Arc::new(Daemon {
            node: node.to_string(),
            config: config.clone(),
            volumes: RwLock::new(volumes),
            heartbeat,
            cluster,
            key,
        });
        prepared.spawn(Arc::clone(&daemon));
        let admin_task = tokio::spawn(admin::serve(listener, Arc::clone(&daemon)));
        let housekeeping = tokio::spawn(housekeeping(Arc::clone(&daemon)));
        tracing::info!(node, socket = %socket.display(), "tandem daemon running");
        wait_for_signal().await;
        tracing::info!(node, "stopping");
        admin_task.abort();
        housekeeping.abort();
        let volumes = std::mem::take(&mut *daemon.volumes.write().await);
        for volume in volumes {
            volume.stop().await;
        }
        let _ = std::fs::remove_file(&socket);
        Ok(())
    })
}

async fn housekeeping(daemon: Arc<Daemon>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for volume in daemon.volumes.read().await.iter() {
            volume.reconcile();
        }
    }
}

/// Returns at SIGTERM or SIGINT (never, if the handlers cannot be installed).
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
