//! The cluster task: the heartbeat core and the cluster core ([`crate::Cluster`]) driven by
//! one loop. It sends beats carrying this node's advert, feeds fresh beats, volume readiness,
//! operation results, monitor findings, arbitration verdicts and operator commands to the
//! core, and carries out what the core asks: resource starts, stops and monitors (each under
//! its timeout, in a task of its own), lease requests, alerts.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use engine::replica::{AdminCommand, ReplicaStatus};
use engine::state::{ConnState, DiskState, Role};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Daemon;
use super::agents::{Agent, AgentContext, FsDevice, Health as AgentHealth};
use super::heartbeat::{Links, SharedView, log_event};
use super::witness::WitnessClient;
use crate::Cluster;
use crate::cluster::core::{
    Action, Alert, ClusterSpec, Command, GroupSpec, Health, MonitorAction, MonitorSpec,
    Replication, ResourceSpec, Timing, Verdict,
};
use crate::cluster::group::ResourceSection;
use crate::cluster::heartbeat::{HeartbeatTiming, Heartbeats};
use crate::cluster::quorum::Verdict as QuorumVerdict;
use crate::config::{Config, Frontend};
use crate::status::{ArbitrationReport, GroupReport, ResourceReport};

/// Default start and stop timeout of a resource.
const OP_TIMEOUT_MS: u64 = 60_000;
/// How often a promotion refused because the peer is still primary is tried again.
const PROMOTE_RETRY: Duration = Duration::from_millis(100);
/// Alert commands running at once; more are dropped with a log line.
const ALERTS_MAX: usize = 4;
/// An alert command's time limit.
const ALERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends operator commands to the cluster task.
#[derive(Clone, Debug)]
pub struct ClusterHandle {
    commands: mpsc::Sender<(Command, oneshot::Sender<Result<String, String>>)>,
}

impl ClusterHandle {
    /// Carries out `command`; the answer is one line.
    pub async fn command(&self, command: Command) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send((command, reply))
            .await
            .map_err(|_| "the cluster task is not running".to_string())?;
        answer
            .await
            .map_err(|_| "the cluster task stopped".to_string())?
    }
}

/// The cluster task, bound but not yet running.
#[derive(Debug)]
pub struct Prepared {
    links: Links,
    view: SharedView,
    commands: mpsc::Receiver<(Command, oneshot::Sender<Result<String, String>>)>,
    index: usize,
}

/// Binds the heartbeat links of node `index`.
pub async fn prepare(
    config: &Config,
    index: usize,
    key: &[u8; 32],
) -> (Prepared, ClusterHandle, SharedView) {
    let (links, view) = super::heartbeat::bind(config, index, key).await;
    let (sender, commands) = mpsc::channel(16);
    let prepared = Prepared {
        links,
        view: Arc::clone(&view),
        commands,
        index,
    };
    (prepared, ClusterHandle { commands: sender }, view)
}

/// The core's view of the configuration for node `me`.
pub fn spec(config: &Config, me: usize) -> ClusterSpec {
    let beat = &config.heartbeat;
    let (lease_ms, fence_ms, startup_wait_ms) = config.arbitration_timing();
    let names = [config.nodes[0].name.clone(), config.nodes[1].name.clone()];
    let groups = config
        .groups
        .iter()
        .map(|group| GroupSpec {
            name: group.name.clone(),
            nodes: group
                .nodes
                .iter()
                .filter_map(|n| names.iter().position(|x| x == n))
                .collect(),
            failback: group.failback,
            auto_start: group.auto_start,
            resources: group
                .start_order()
                .expect("validated")
                .into_iter()
                .map(|i| resource_spec(&group.resources[i]))
                .collect(),
        })
        .collect();
    ClusterSpec {
        me,
        fingerprint: fingerprint(&format!("{:?}", config.groups)),
        names,
        groups,
        timing: Timing {
            interval_ms: beat.interval_ms,
            dead_ms: beat.interval_ms * u64::from(beat.dead_after),
            lease_ms,
            fence_ms,
            startup_wait_ms,
        },
        // Reference IPs alone are an arbiter too: the runtime grants the "lease" only while one
        // of them answers, so a node cut off from them neither takes over nor keeps running.
        arbiter: config.witness().is_some()
            || config.arbitration.quorum_disk.is_some()
            || !config.arbitration.reference_ips.is_empty(),
        takeover_without_arbiter: config.arbitration.takeover_without_arbiter,
    }
}

fn resource_spec(section: &ResourceSection) -> ResourceSpec {
    ResourceSpec {
        name: section.name.clone(),
        monitor: section.monitor.as_ref().map(|m| MonitorSpec {
            interval_ms: m.interval_ms,
            failures: m.failures,
            action: match m.action.as_str() {
                "failover" => MonitorAction::Failover,
                "alert" => MonitorAction::Alert,
                _ => MonitorAction::Restart {
                    restarts: m.restarts.unwrap_or(3),
                    window_ms: m.window_s.unwrap_or(60) * 1000,
                },
            },
        }),
    }
}

/// FNV-1a, 32 bits: both nodes must run the same group configuration.
fn fingerprint(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// What woke the cluster task, besides its timer and heartbeats.
enum Woken {
    Event(Event),
    Command(Command, oneshot::Sender<Result<String, String>>),
}

enum Event {
    Done {
        group: usize,
        resource: usize,
        result: Result<(), String>,
    },
    Monitored {
        group: usize,
        resource: usize,
        health: Health,
    },
    Lease {
        sent_ms: u64,
        verdict: Verdict,
    },
}

/// Everything a resource operation needs, shared by the task's spawned operations.
struct Context {
    daemon: Arc<Daemon>,
    config: Config,
    /// Per group, the resource sections in start order.
    resources: Vec<Vec<ResourceSection>>,
    alerts: Arc<Semaphore>,
    witness: Option<tokio::sync::Mutex<WitnessClient>>,
    quorum: Option<super::quorum::QuorumClient>,
}

impl Prepared {
    /// Runs the cluster task for `daemon` until the runtime stops.
    pub fn spawn(self, daemon: Arc<Daemon>) {
        tokio::spawn(run(self, daemon));
    }
}

async fn run(prepared: Prepared, daemon: Arc<Daemon>) {
    let Prepared {
        mut links,
        view,
        mut commands,
        index,
    } = prepared;
    let config = daemon.config.clone();
    let beat = config.heartbeat;
    let timing = HeartbeatTiming {
        interval_ms: beat.interval_ms,
        warn_after: beat.warn_after,
        dead_after: beat.dead_after,
    };
    let names = [
        config.nodes[index].name.clone(),
        config.nodes[1 - index].name.clone(),
    ];
    let started = Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut heartbeats = Heartbeats::new(
        timing,
        links.count(),
        engine::runtime::os_random_u64(),
        now_ms(),
    );
    let spec = spec(&config, index);
    let lease_ms = spec.timing.lease_ms;
    let interval_ms = spec.timing.interval_ms;
    let mut core = Cluster::new(spec, now_ms());
    let witness = match config.witness() {
        Some(address) => {
            // Not bound to the node's address: the witness usually sits on another network
            // than replication, and answers to the source address, which routing picks.
            match WitnessClient::new(address, None, &daemon.key, &config.cluster.name, &names[0])
                .await
            {
                Ok(client) => Some(tokio::sync::Mutex::new(client)),
                Err(error) => {
                    tracing::error!("witness {address}: {error}");
                    None
                }
            }
        }
        None => None,
    };
    let quorum = config.arbitration.quorum_disk.as_ref().and_then(|path| {
        super::quorum::QuorumClient::open(path, &config.cluster.name, index, lease_ms)
            .map_err(|error| tracing::error!("{error}"))
            .ok()
    });
    let context = Arc::new(Context {
        resources: config
            .groups
            .iter()
            .map(|g| {
                g.start_order()
                    .expect("validated")
                    .into_iter()
                    .map(|i| g.resources[i].clone())
                    .collect()
            })
            .collect(),
        config,
        daemon,
        alerts: Arc::new(Semaphore::new(ALERTS_MAX)),
        witness,
        quorum,
    });
    let (events, mut event_rx) = mpsc::channel::<Event>(256);
    loop {
        let now = now_ms();
        let deadline = heartbeats.next_deadline().min(core.next_deadline(now));
        let mut fresh = None;
        let woken = tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(deadline.saturating_sub(now))) => None,
            Some((link, packet)) = links.arrived.recv() => {
                if let Some((beat, advert)) = links.decode(link, &packet)
                    && heartbeats.received(link, beat, now_ms()).is_ok()
                {
                    fresh = Some((advert, heartbeats.echo_sent_ms()));
                }
                None
            }
            Some(event) = event_rx.recv() => Some(Woken::Event(event)),
            Some((command, reply)) = commands.recv() => Some(Woken::Command(command, reply)),
        };
        // The volumes' readiness as of now, before anything that may start a group on it
        // (a lease granted, a command, a stop that finished) is handled.
        let now = now_ms();
        for group in 0..context.resources.len() {
            let ready = context.group_ready(group).await;
            core.set_ready(now, group, ready);
        }
        core.set_replication(now, context.replication().await);
        match woken {
            None => {}
            Some(Woken::Event(Event::Done {
                group,
                resource,
                result,
            })) => core.op_done(now, group, resource, result),
            Some(Woken::Event(Event::Monitored {
                group,
                resource,
                health,
            })) => core.monitored(now, group, resource, health),
            Some(Woken::Event(Event::Lease { sent_ms, verdict })) => {
                core.lease_result(now, sent_ms, verdict);
            }
            Some(Woken::Command(command, reply)) => {
                tracing::info!("cluster command: {command:?}");
                let answer = core.command(now, command);
                let _ = reply.send(answer);
            }
        }
        for event in heartbeats.tick(now) {
            log_event(&names, &view, event);
        }
        core.peer(now, heartbeats.peer_alive(), fresh);
        core.tick(now);
        if core.take_advert_changed() {
            heartbeats.send_soon(now);
        }
        if let Some(beat) = heartbeats.poll_send(now) {
            links.send(beat, &core.advert()).await;
        }
        for action in core.take_actions() {
            carry_out(&context, &events, action, now, lease_ms, interval_ms);
        }
        let mut shown = view.lock().unwrap_or_else(PoisonError::into_inner);
        shown.alive = heartbeats.peer_alive();
        for (state, health) in shown.links.iter_mut().zip(heartbeats.health()) {
            state.health = health;
        }
        shown.groups = core
            .groups()
            .into_iter()
            .map(|g| GroupReport {
                name: g.name,
                active_node: g.active_node,
                state: g.state,
                reason: g.reason,
                resources: g
                    .resources
                    .into_iter()
                    .map(|(name, state)| ResourceReport { name, state })
                    .collect(),
            })
            .collect();
        let arbitration = core.arbitration(now);
        shown.arbitration = (!context.config.groups.is_empty()).then(|| ArbitrationReport {
            arbiters: context.arbiters(),
            lease_held: arbitration.lease_held,
            holder: arbitration.holder,
            error: arbitration.error,
            fenced: arbitration.fenced,
            maintenance: arbitration.maintenance,
        });
    }
}

fn carry_out(
    context: &Arc<Context>,
    events: &mpsc::Sender<Event>,
    action: Action,
    now_ms: u64,
    lease_ms: u64,
    interval_ms: u64,
) {
    let context = Arc::clone(context);
    let events = events.clone();
    match action {
        Action::Start {
            group,
            resource,
            force,
        }
        | Action::Stop {
            group,
            resource,
            force,
        } => {
            let start = matches!(action, Action::Start { .. });
            tokio::spawn(async move {
                let result = if start {
                    context.start(group, resource, force).await
                } else {
                    context.stop(group, resource, force).await
                };
                let _ = events
                    .send(Event::Done {
                        group,
                        resource,
                        result,
                    })
                    .await;
            });
        }
        Action::Monitor { group, resource } => {
            tokio::spawn(async move {
                let health = context.monitor(group, resource).await;
                let _ = events
                    .send(Event::Monitored {
                        group,
                        resource,
                        health,
                    })
                    .await;
            });
        }
        Action::Acquire { replication, force } => {
            tokio::spawn(async move {
                let timeout = Duration::from_millis((interval_ms / 2).max(50));
                let verdict = context
                    .arbitrate(lease_ms, replication.claims(force), timeout)
                    .await;
                let _ = events
                    .send(Event::Lease {
                        sent_ms: now_ms,
                        verdict,
                    })
                    .await;
            });
        }
        Action::Release => {
            tokio::spawn(async move {
                let timeout = Duration::from_millis((interval_ms / 2).max(50));
                if let Some(witness) = &context.witness
                    && let Err(error) = witness.lock().await.release(timeout).await
                {
                    tracing::debug!("witness release: {error}");
                }
                if let Some(quorum) = &context.quorum {
                    let claims = context.replication().await.claims(false);
                    if let Err(error) = quorum.release(claims, timeout).await {
                        tracing::debug!("quorum disk release: {error}");
                    }
                }
            });
        }
        Action::Alert(alert) => context.alert(alert),
    }
}

impl Context {
    fn section(&self, group: usize, resource: usize) -> &ResourceSection {
        &self.resources[group][resource]
    }

    fn arbiters(&self) -> Vec<String> {
        let mut arbiters = Vec::new();
        for ip in &self.config.arbitration.reference_ips {
            arbiters.push(format!("reference ip {ip}"));
        }
        if let Some(witness) = &self.config.arbitration.witness {
            arbiters.push(format!("witness {witness}"));
        }
        if let Some(disk) = &self.config.arbitration.quorum_disk {
            arbiters.push(format!("quorum disk {}", disk.display()));
        }
        arbiters
    }

    /// Whether every volume of the group is `up_to_date` here.
    async fn group_ready(&self, group: usize) -> bool {
        let volumes = self.daemon.volumes.read().await;
        self.resources[group]
            .iter()
            .filter(|r| r.kind == "volume")
            .filter_map(|r| r.volume.as_deref())
            .all(|name| {
                volumes
                    .iter()
                    .find(|v| v.section.name == name)
                    .and_then(|v| v.engine_status())
                    .is_some_and(|s| s.disk == DiskState::UpToDate)
            })
    }

    /// The groups' volumes against the peer's, for the witness and the peer: the peer is
    /// behind when a volume is primary here and not connected, established and `up_to_date` on
    /// both sides, or `up_to_date` here with blocks the peer lacks (written while apart, until
    /// a resync sends them; not as a resync target); in sync when every volume is connected,
    /// established and `up_to_date` on both sides.
    async fn replication(&self) -> Replication {
        let volumes = self.daemon.volumes.read().await;
        let statuses: Vec<_> = self
            .resources
            .iter()
            .flatten()
            .filter(|r| r.kind == "volume")
            .filter_map(|r| r.volume.as_deref())
            .map(|name| {
                volumes
                    .iter()
                    .find(|v| v.section.name == name)
                    .and_then(|v| v.engine_status())
            })
            .collect();
        // Volumes in configuration order, each current generation folded in.
        let generation = statuses.iter().fold(0u64, |hash, status| {
            let current = status
                .as_ref()
                .and_then(|s| s.generations)
                .map_or(0, |g| g.current.0);
            hash.rotate_left(17) ^ current.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        Replication {
            generation,
            peer_behind: statuses.iter().flatten().any(ReplicaStatus::peer_behind),
            in_sync: statuses
                .iter()
                .all(|s| s.as_ref().is_some_and(ReplicaStatus::in_sync)),
        }
    }

    fn timeout(section: &ResourceSection, start: bool) -> Duration {
        let ms = if start {
            section.start_timeout_ms
        } else {
            section.stop_timeout_ms
        };
        Duration::from_millis(ms.unwrap_or(OP_TIMEOUT_MS))
    }

    async fn start(&self, group: usize, resource: usize, force: bool) -> Result<(), String> {
        let section = self.section(group, resource);
        let limit = Self::timeout(section, true);
        let work = async {
            if section.kind == "volume" {
                return self.promote(section, force).await;
            }
            self.agent(group, resource).await?.start().await
        };
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(format!("start timed out after {} ms", limit.as_millis())))
    }

    async fn stop(&self, group: usize, resource: usize, force: bool) -> Result<(), String> {
        let section = self.section(group, resource);
        let limit = Self::timeout(section, false);
        let work = async {
            if section.kind == "volume" {
                let primary = self.volume_role(section).await == Some(Role::Primary);
                if !primary {
                    return Ok(());
                }
                return self.volume_admin(section, AdminCommand::Demote).await;
            }
            self.agent(group, resource).await?.stop(force).await
        };
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(format!("stop timed out after {} ms", limit.as_millis())))
    }

    async fn monitor(&self, group: usize, resource: usize) -> Health {
        let section = self.section(group, resource);
        let limit =
            Duration::from_millis(section.monitor.as_ref().map_or(10_000, |m| m.timeout_ms));
        let work = async {
            if section.kind == "volume" {
                return match self.volume_role(section).await {
                    Some(Role::Primary) => Health::Running,
                    Some(_) => Health::Stopped,
                    None => Health::Failed("the volume is down".to_string()),
                };
            }
            match self.agent(group, resource).await {
                Ok(agent) => match agent.monitor().await {
                    AgentHealth::Running => Health::Running,
                    AgentHealth::Stopped => Health::Stopped,
                    AgentHealth::Failed(reason) => Health::Failed(reason),
                },
                Err(error) => Health::Failed(error),
            }
        };
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Health::Failed(format!("monitor timed out after {} ms", limit.as_millis()))
        })
    }

    /// Promotes the volume of `section`.
    ///
    /// While the engine still sees the peer primary over a live link, it waits (bounded by the
    /// caller's start timeout) instead of failing: after a partition the heartbeats and the
    /// arbiter find the peer gone before the replication link does, and a peer that fences
    /// itself may still be demoting (a protocol C write it had in flight completes only when
    /// its own link gives up, and only then can its filesystem be unmounted). Failing at once
    /// would leave the group failed here and running nowhere. When the wait ends because the
    /// link ended rather than because the peer's demotion arrived, the peer gets `fence_ms`
    /// more to finish its stop: its link ended at about the same moment as this one.
    async fn promote(&self, section: &ResourceSection, force: bool) -> Result<(), String> {
        let name = section.volume.as_deref().unwrap_or_default();
        let mut waited = false;
        loop {
            let peer_role = self.volume_peer_role(section).await;
            if peer_role != Some(Role::Primary) {
                if waited && peer_role.is_none() {
                    let (_, fence_ms, _) = self.config.arbitration_timing();
                    tracing::info!(
                        "{name}: the link to the peer ended while it was primary: giving it \
                         {fence_ms} ms to finish its stop before promoting"
                    );
                    tokio::time::sleep(Duration::from_millis(fence_ms)).await;
                }
                break;
            }
            if !waited {
                tracing::info!(
                    "{name}: the peer is still primary: waiting for its demotion or the end of \
                     the link before promoting"
                );
                waited = true;
            }
            tokio::time::sleep(PROMOTE_RETRY).await;
        }
        let peer_is_primary = engine::replica::Refusal::PeerIsPrimary.to_string();
        loop {
            match self
                .volume_admin(section, AdminCommand::Promote { force })
                .await
            {
                // The peer became primary again in between (its state arrived just now).
                Err(error) if error.ends_with(&peer_is_primary) => {
                    tokio::time::sleep(PROMOTE_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// The peer's role as the engine of the volume of `section` sees it (`None`: no link).
    async fn volume_peer_role(&self, section: &ResourceSection) -> Option<Role> {
        let name = section.volume.as_deref()?;
        let volumes = self.daemon.volumes.read().await;
        let volume = volumes.iter().find(|v| v.section.name == name)?;
        let status = volume.engine_status()?;
        let linked = matches!(
            status.connection,
            ConnState::Connected | ConnState::Connecting
        );
        status.peer_role.filter(|_| linked)
    }

    async fn volume_role(&self, section: &ResourceSection) -> Option<Role> {
        let name = section.volume.as_deref()?;
        let volumes = self.daemon.volumes.read().await;
        let volume = volumes.iter().find(|v| v.section.name == name)?;
        volume.engine_status().map(|s| s.role)
    }

    async fn volume_admin(
        &self,
        section: &ResourceSection,
        command: AdminCommand,
    ) -> Result<(), String> {
        let name = section.volume.as_deref().unwrap_or_default();
        let volumes = self.daemon.volumes.read().await;
        let volume = volumes
            .iter()
            .find(|v| v.section.name == name)
            .ok_or_else(|| format!("no volume {name:?}"))?;
        volume
            .admin(command)
            .await
            .map_err(|e| format!("{name}: {e}"))
    }

    /// The agent of a resource (built for each operation: agents keep their state in files,
    /// and a filesystem's device is known only once its volume is primary).
    async fn agent(&self, group: usize, resource: usize) -> Result<Agent, String> {
        let section = self.section(group, resource);
        let node = self.daemon.node.clone();
        let node_section = self.config.node(&node)?;
        let device = match (section.kind.as_str(), section.volume.as_deref()) {
            ("filesystem", Some(volume)) => {
                Some(self.device(volume, node_section.listen_ip()).await?)
            }
            _ => None,
        };
        let context = AgentContext {
            state_dir: node_section.state_dir.clone(),
            node,
            group: self.config.groups[group].name.clone(),
            resource: section.name.clone(),
        };
        Agent::new(section, context, device)
    }

    async fn device(&self, volume: &str, address: IpAddr) -> Result<FsDevice, String> {
        let section = self.config.volume(volume)?;
        match section.frontend {
            Frontend::Nbd => Ok(FsDevice::Nbd {
                host: address,
                port: section.nbd_port.unwrap_or(10809),
                export: volume.to_string(),
            }),
            Frontend::Ublk => {
                let volumes = self.daemon.volumes.read().await;
                let device = volumes
                    .iter()
                    .find(|v| v.section.name == volume)
                    .and_then(|v| v.report().device)
                    .ok_or_else(|| format!("{volume} has no block device here"))?;
                Ok(FsDevice::Block(device.into()))
            }
        }
    }

    /// Asks the arbiters: a node that reaches none of the reference IPs may not run; then the
    /// witness or the quorum disk decides. Without either, reaching a reference IP is enough.
    /// A configured witness or quorum disk that could not be set up at start grants nothing.
    async fn arbitrate(
        &self,
        lease_ms: u64,
        claims: crate::cluster::witness::Claims,
        timeout: Duration,
    ) -> Verdict {
        let references = self.config.reference_ips();
        if !references.is_empty() {
            let mut reached = false;
            for ip in &references {
                if super::ping::reachable(*ip, timeout).await.unwrap_or(false) {
                    reached = true;
                    break;
                }
            }
            if !reached {
                return Verdict::Unreachable("no reference IP answers".to_string());
            }
        }
        let peer = self
            .config
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .find(|name| *name != self.daemon.node)
            .unwrap_or_default();
        if let Some(path) = &self.config.arbitration.quorum_disk {
            let Some(quorum) = &self.quorum else {
                return Verdict::Unreachable(format!(
                    "quorum disk {} could not be opened at start (see the log)",
                    path.display()
                ));
            };
            return match quorum.acquire(claims, timeout).await {
                Ok(QuorumVerdict::Granted) => Verdict::Granted,
                Ok(QuorumVerdict::Refused) => Verdict::Refused { holder: peer },
                Ok(QuorumVerdict::Outdated) => Verdict::Outdated { current: peer },
                Ok(QuorumVerdict::Watching { remaining_ms }) => Verdict::Unreachable(format!(
                    "quorum disk: watching {peer}'s slot for {remaining_ms} ms more after the start"
                )),
                Err(error) => Verdict::Unreachable(error),
            };
        }
        if self.config.witness().is_none() {
            return Verdict::Granted;
        }
        let Some(witness) = &self.witness else {
            return Verdict::Unreachable(
                "the witness client could not start (see the log)".to_string(),
            );
        };
        match witness
            .lock()
            .await
            .acquire(lease_ms, claims, timeout)
            .await
        {
            Ok(crate::cluster::witness::Verdict::Granted { .. }) => Verdict::Granted,
            Ok(crate::cluster::witness::Verdict::Refused { holder, .. }) => {
                Verdict::Refused { holder }
            }
            Ok(crate::cluster::witness::Verdict::Outdated { current, .. }) => {
                Verdict::Outdated { current }
            }
            Ok(other) => Verdict::Unreachable(format!("witness: {other:?}")),
            Err(error) => Verdict::Unreachable(format!("witness: {error}")),
        }
    }

    fn alert(&self, alert: Alert) {
        tracing::info!(
            event = alert.event,
            group = alert.group.as_deref().unwrap_or("-"),
            resource = alert.resource.as_deref().unwrap_or("-"),
            "cluster event: {}",
            alert.detail
        );
        let Some(command) = self.config.cluster.alert.clone() else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.alerts).try_acquire_owned() else {
            tracing::warn!(
                "alert for {} dropped: {ALERTS_MAX} alert commands still running",
                alert.event
            );
            return;
        };
        let node = self.daemon.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut child = tokio::process::Command::new("sh");
            child
                .args(["-c", &command])
                .env("TANDEM_EVENT", alert.event)
                .env("TANDEM_NODE", node)
                .env("TANDEM_GROUP", alert.group.unwrap_or_default())
                .env("TANDEM_RESOURCE", alert.resource.unwrap_or_default())
                .env("TANDEM_STATE", &alert.detail)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            match tokio::time::timeout(ALERT_TIMEOUT, child.status()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => {
                    tracing::warn!("alert command for {} exited with {status}", alert.event)
                }
                Ok(Err(error)) => tracing::warn!("alert command for {}: {error}", alert.event),
                Err(_) => tracing::warn!(
                    "alert command for {} killed after {ALERT_TIMEOUT:?}",
                    alert.event
                ),
            }
        });
    }
}
