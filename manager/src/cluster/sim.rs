//! A seeded simulator of two nodes' cluster managers: the real heartbeat and cluster cores, the
//! real witness lease table, and modelled links and resources. The volume is either modelled
//! (`up_to_date` again one second after a crashed node reconnects) or, with
//! [`Options::engine`], the engine's two replicas with their disks, replication link (heartbeat
//! link 0) and client I/O on the primary ([`engine::sim::VolumePair`]): the volume resource
//! promotes and demotes them, and their `up_to_date` is the readiness the manager sees.
//! Faults: links cut in one or both directions, lost beats, the witness unreachable from a
//! node, node crashes and restarts, a resource that dies, operator commands. Checkers, at every
//! step:
//! - S6: with an arbiter, the group's volume and address are never up on both nodes at once
//!   (up from the moment a start is issued until its stop completes; a crashed node holds
//!   nothing); with the engine, never two primaries;
//! - S7: a volume starts only where it is `up_to_date`, or where the operator forced it;
//! - with the engine, its own: S1 on a failover from a primary that died in sync, reads, S2,
//!   S4, S5.
//!
//! After the fault phase everything heals and the group must run on exactly one node (with the
//! engine: and the replicas converge).

use std::collections::VecDeque;

use engine::prng::Prng;
use engine::sim::{PairReport, VolumePair};

use super::Cluster;
use super::advert::Advert;
use super::core::{
    Action, ClusterSpec, Command, GroupSpec, Health, MonitorAction, MonitorSpec, Replication,
    ResourceSpec, Timing, Verdict,
};
use super::heartbeat::{Beat, HeartbeatTiming, Heartbeats};
use super::witness::{LeaseTable, Limits, Verdict as WitnessVerdict};

const STEP_MS: u64 = 5;
const LINKS: usize = 2;
/// Resources of the simulated group: volume, ip, process.
const RESOURCES: usize = 3;
const PROCESS: usize = 2;

/// Bugs the simulator must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// A node that lost arbitration does not stop its groups.
    NoFencing,
    /// A lone node starts volumes that are not `up_to_date`.
    IgnoreReady,
}

/// A simulation's options.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A witness is configured.
    pub arbiter: bool,
    /// Milliseconds of faults.
    pub fault_ms: u64,
    /// Milliseconds healed, after which the group must run on one node.
    pub heal_ms: u64,
    /// A bug to plant.
    pub plant: Option<Plant>,
    /// Percent of resource starts that fail during the fault phase (not the engine's).
    pub start_failures: u64,
    /// The volume is the engine's pair of replicas, not a model.
    pub engine: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            arbiter: true,
            fault_ms: 40_000,
            heal_ms: 30_000,
            plant: None,
            start_failures: 0,
            engine: false,
        }
    }
}

enum Pending {
    Beat {
        to: usize,
        link: usize,
        beat: Beat,
        advert: Advert,
    },
    Done {
        node: usize,
        boot: u32,
        resource: usize,
        stop: bool,
        result: Result<(), String>,
    },
    Monitored {
        node: usize,
        boot: u32,
        resource: usize,
    },
    Lease {
        node: usize,
        boot: u32,
        sent: u64,
        verdict: Verdict,
    },
}

struct Node {
    heartbeats: Heartbeats,
    cluster: Cluster,
    /// What the log last said about this node's view (logged again when it changes).
    view: String,
}

/// The simulated cluster.
pub struct Sim {
    /// Simulated milliseconds.
    pub now: u64,
    prng: Prng,
    options: Options,
    nodes: [Option<Node>; 2],
    boots: [u32; 2],
    /// Per node and resource: up there.
    up: [[bool; RESOURCES]; 2],
    /// The process died on that node (its monitor fails until it is started again).
    died: [bool; 2],
    /// The volume is `up_to_date` there, as its engine would say.
    ready: [bool; 2],
    /// Milliseconds both were connected with the node not ready (a resync).
    resync_ms: [u64; 2],
    /// Per node: its volume holds writes the other's lacks (it was up while replication was
    /// cut), until one second connected (a resync).
    behind: [bool; 2],
    connected_ms: u64,
    /// Per node: the generation of its modelled data (a new one when it writes apart; the
    /// writer's after a resync).
    generation: [u64; 2],
    /// Per link and direction (from node): passes beats.
    links: [[bool; 2]; LINKS],
    /// Per node: reaches the witness.
    witness_reach: [bool; 2],
    witness: LeaseTable,
    loss_percent: u64,
    queue: Vec<(u64, Pending)>,
    s7_violation: bool,
    /// With [`Options::engine`]: the replicas, and their promotions and demotions in flight
    /// (node, boot, admin id, whether a stop).
    volumes: Option<VolumePair>,
    volume_ops: Vec<(usize, u32, u64, bool)>,
    /// What happened, for a failing seed's report.
    pub log: VecDeque<String>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn spec(me: usize, arbiter: bool) -> ClusterSpec {
    let resource = |name: &str, monitor| ResourceSpec {
        name: name.to_string(),
        monitor,
    };
    ClusterSpec {
        me,
        names: ["alpha".to_string(), "beta".to_string()],
        groups: vec![GroupSpec {
            name: "web".to_string(),
            nodes: vec![0, 1],
            failback: false,
            auto_start: true,
            resources: vec![
                resource("r0", None),
                resource("vip", None),
                resource(
                    "http",
                    Some(MonitorSpec {
                        interval_ms: 500,
                        failures: 1,
                        action: MonitorAction::Restart {
                            restarts: 3,
                            window_ms: 60_000,
                        },
                    }),
                ),
            ],
        }],
        timing: Timing {
            interval_ms: 1000,
            dead_ms: 3000,
            lease_ms: 3000,
            fence_ms: 1000,
            startup_wait_ms: 15_000,
        },
        arbiter,
        takeover_without_arbiter: false,
        fingerprint: 7,
    }
}

impl Sim {
    /// Both nodes started at time 0, connected, volumes `up_to_date`.
    pub fn new(seed: u64, options: Options) -> Self {
        let volumes = options
            .engine
            .then(|| VolumePair::new(seed).expect("two fresh replicas attach and connect"));
        let mut sim = Self {
            now: 0,
            prng: Prng::from_seed(seed),
            options,
            nodes: [None, None],
            boots: [0; 2],
            up: [[false; RESOURCES]; 2],
            died: [false; 2],
            ready: [true; 2],
            resync_ms: [0; 2],
            behind: [false; 2],
            connected_ms: 0,
            generation: [1; 2],
            links: [[true; 2]; LINKS],
            witness_reach: [true; 2],
            // A witness that has been up for long: no restart grace.
            witness: LeaseTable::new(
                Limits {
                    restart_grace_ms: 0,
                    ..Limits::default()
                },
                0,
            ),
            loss_percent: 0,
            queue: Vec::new(),
            s7_violation: false,
            volumes,
            volume_ops: Vec::new(),
            log: VecDeque::new(),
        };
        sim.boot(0);
        sim.boot(1);
        sim
    }

    fn note(&mut self, text: String) {
        if self.log.len() == 1000 {
            self.log.pop_front();
        }
        self.log.push_back(format!("{:>7} {text}", self.now));
    }

    fn boot(&mut self, node: usize) {
        self.boots[node] += 1;
        let seed = self.prng.next_u64();
        self.nodes[node] = Some(Node {
            heartbeats: Heartbeats::new(HeartbeatTiming::default(), LINKS, seed, self.now),
            cluster: Cluster::new(spec(node, self.options.arbiter), self.now),
            view: String::new(),
        });
        self.note(format!("node {node} boots"));
    }

    /// Node `node` dies: everything it ran is gone with it.
    pub fn crash(&mut self, node: usize) {
        self.nodes[node] = None;
        self.up[node] = [false; RESOURCES];
        self.died[node] = false;
        // Its engine comes back knowing only that it was up to date once: it must resync
        // before it is again.
        self.ready[node] = false;
        if let Some(volumes) = &mut self.volumes {
            volumes.crash(node);
        }
        self.volume_ops.retain(|op| op.0 != node);
        self.note(format!("node {node} crashes"));
    }

    /// Node `node` starts again.
    pub fn restart(&mut self, node: usize) {
        if self.nodes[node].is_none() {
            self.boot(node);
            if let Some(volumes) = &mut self.volumes {
                volumes.restart(node);
            }
        }
    }

    /// Sets link `link` in direction `from` → other.
    pub fn set_link(&mut self, link: usize, from: usize, up: bool) {
        self.links[link][from] = up;
        // Replication runs over link 0.
        if let Some(volumes) = &mut self.volumes
            && link == 0
        {
            volumes.set_link(self.links[0][0] && self.links[0][1]);
        }
        self.note(format!(
            "link {link} from {from} {}",
            if up { "up" } else { "down" }
        ));
    }

    /// Sets whether `node` reaches the witness.
    pub fn set_witness(&mut self, node: usize, up: bool) {
        self.witness_reach[node] = up;
        self.note(format!(
            "witness from {node} {}",
            if up { "up" } else { "down" }
        ));
    }

    /// The process of the group dies on `node`, if it runs there.
    pub fn kill_process(&mut self, node: usize) {
        if self.up[node][PROCESS] {
            self.died[node] = true;
            self.note(format!("process dies on {node}"));
        }
    }

    /// An operator command on `node`.
    pub fn command(&mut self, node: usize, command: Command) -> Result<String, String> {
        let now = self.now;
        let answer = match &mut self.nodes[node] {
            Some(n) => n.cluster.command(now, command.clone()),
            None => Err("node down".to_string()),
        };
        self.note(format!("command on {node}: {command:?} -> {answer:?}"));
        self.drain(node);
        answer
    }

    /// Nodes where the whole group is up.
    pub fn running_on(&self) -> Vec<usize> {
        (0..2).filter(|&n| self.up[n].iter().all(|&u| u)).collect()
    }

    /// Whether node `node` reports itself fenced.
    pub fn fenced(&self, node: usize) -> bool {
        self.nodes[node]
            .as_ref()
            .is_some_and(|n| n.cluster.arbitration(self.now).fenced)
    }

    /// The group's state as `node` reports it.
    pub fn group_state(&self, node: usize) -> Option<(Option<String>, String, String)> {
        let view = self.nodes[node].as_ref()?.cluster.groups().remove(0);
        Some((view.active_node, view.state, view.reason))
    }

    /// Runs `ms` milliseconds, checking S6 and S7 at every step.
    pub fn run_for(&mut self, ms: u64) -> Result<(), String> {
        let end = self.now + ms;
        while self.now < end {
            self.now += STEP_MS;
            self.step()?;
        }
        Ok(())
    }

    /// Runs until `done` holds or `ms` pass; returns whether it held.
    pub fn run_until(
        &mut self,
        ms: u64,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<bool, String> {
        let end = self.now + ms;
        while self.now < end {
            if done(self) {
                return Ok(true);
            }
            self.now += STEP_MS;
            self.step()?;
        }
        Ok(done(self))
    }

    fn step(&mut self) -> Result<(), String> {
        let now = self.now;
        // The volumes first: whatever is delivered now is handled with readiness as of now,
        // as the daemon reads it before it handles an event.
        self.step_volumes()?;
        self.refresh_volumes();
        // Deliver what is due.
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.queue.len() {
            if self.queue[index].0 <= now {
                due.push(self.queue.swap_remove(index).1);
            } else {
                index += 1;
            }
        }
        for pending in due {
            self.deliver(pending)?;
        }
        // Again, for a node that booted or a link that changed just now.
        self.refresh_volumes();
        for node in 0..2 {
            let mut changed = None;
            if let Some(n) = &mut self.nodes[node] {
                for event in n.heartbeats.tick(now) {
                    let _ = event;
                }
                let alive = n.heartbeats.peer_alive();
                n.cluster.peer(now, alive, None);
                n.cluster.tick(now);
                if n.cluster.take_advert_changed() {
                    n.heartbeats.send_soon(now);
                }
                let group = n.cluster.groups().remove(0);
                let arbitration = n.cluster.arbitration(now);
                let view = format!(
                    "sees peer {alive}, {} on {:?}: {}{}{}",
                    group.state,
                    group.active_node,
                    group.reason,
                    if arbitration.fenced { ", fenced" } else { "" },
                    if arbitration.maintenance {
                        ", maintenance"
                    } else {
                        ""
                    },
                );
                if view != n.view {
                    n.view = view.clone();
                    changed = Some(format!("{node} view: {view}"));
                }
                if let Some(beat) = n.heartbeats.poll_send(now) {
                    let advert = n.cluster.advert();
                    for link in 0..LINKS {
                        self.send_beat(node, link, beat, advert.clone());
                    }
                }
            }
            if let Some(text) = changed {
                self.note(text);
            }
            self.drain(node);
        }
        self.check()
    }

    /// Tells each node's cluster core its volumes' readiness and replication, as the daemon
    /// does before it handles anything that woke it.
    fn refresh_volumes(&mut self) {
        let now = self.now;
        let replication = self.replication();
        for (node, replication) in replication.into_iter().enumerate() {
            let ready = self.ready[node] || self.options.plant == Some(Plant::IgnoreReady);
            if let Some(n) = &mut self.nodes[node] {
                n.cluster.set_ready(now, 0, ready);
                n.cluster.set_replication(now, replication);
            }
        }
    }

    fn send_beat(&mut self, from: usize, link: usize, beat: Beat, advert: Advert) {
        if !self.links[link][from] || self.prng.next_u64() % 100 < self.loss_percent {
            return;
        }
        let delay = 1 + self.prng.next_u64() % 20;
        self.queue.push((
            self.now + delay,
            Pending::Beat {
                to: 1 - from,
                link,
                beat,
                advert,
            },
        ));
    }

    fn deliver(&mut self, pending: Pending) -> Result<(), String> {
        let now = self.now;
        match pending {
            Pending::Beat {
                to,
                link,
                beat,
                advert,
            } => {
                if let Some(n) = &mut self.nodes[to]
                    && n.heartbeats.received(link, beat, now).is_ok()
                {
                    let alive = n.heartbeats.peer_alive();
                    let echo = n.heartbeats.echo_sent_ms();
                    n.cluster.peer(now, alive, Some((advert, echo)));
                }
            }
            Pending::Done {
                node,
                boot,
                resource,
                stop,
                result,
            } => {
                if self.boots[node] != boot || self.nodes[node].is_none() {
                    return Ok(());
                }
                if stop && result.is_ok() {
                    self.up[node][resource] = false;
                    if resource == PROCESS {
                        self.died[node] = false;
                    }
                }
                if !stop && result.is_ok() && resource == PROCESS {
                    self.died[node] = false;
                }
                if let Some(n) = &mut self.nodes[node] {
                    n.cluster.op_done(now, 0, resource, result);
                }
            }
            Pending::Monitored {
                node,
                boot,
                resource,
            } => {
                if self.boots[node] != boot {
                    return Ok(());
                }
                let health = if self.up[node][resource] && !self.died[node] {
                    Health::Running
                } else {
                    Health::Stopped
                };
                if let Some(n) = &mut self.nodes[node] {
                    n.cluster.monitored(now, 0, resource, health);
                }
            }
            Pending::Lease {
                node,
                boot,
                sent,
                verdict,
            } => {
                if self.boots[node] != boot {
                    return Ok(());
                }
                if let Some(n) = &mut self.nodes[node] {
                    n.cluster.lease_result(now, sent, verdict);
                }
            }
        }
        self.drain_all();
        Ok(())
    }

    fn drain_all(&mut self) {
        self.drain(0);
        self.drain(1);
    }

    fn drain(&mut self, node: usize) {
        let Some(n) = &mut self.nodes[node] else {
            return;
        };
        let actions = n.cluster.take_actions();
        let boot = self.boots[node];
        for action in actions {
            let delay = 5 + self.prng.next_u64() % 150;
            let at = self.now + delay;
            match action {
                Action::Start {
                    resource, force, ..
                } => {
                    // Conservatively up from the moment the start is issued.
                    self.up[node][resource] = true;
                    if resource == 0 && !self.ready[node] && !force {
                        self.note(format!("S7: volume started on {node} while not up_to_date"));
                        self.s7_violation = true;
                    }
                    if resource == 0
                        && let Some(volumes) = &mut self.volumes
                    {
                        let id = volumes.promote(node, force);
                        self.volume_ops.push((node, boot, id, false));
                        self.note(format!("{node} promote (force {force})"));
                        continue;
                    }
                    let result = if self.prng.next_u64() % 100 < self.options.start_failures {
                        Err("simulated start failure".to_string())
                    } else {
                        Ok(())
                    };
                    self.note(format!("{node} start {resource} -> {result:?}"));
                    self.queue.push((
                        at,
                        Pending::Done {
                            node,
                            boot,
                            resource,
                            stop: false,
                            result,
                        },
                    ));
                }
                Action::Stop { resource, .. } => {
                    if resource == 0
                        && let Some(volumes) = &mut self.volumes
                    {
                        let id = volumes.demote(node);
                        self.volume_ops.push((node, boot, id, true));
                        self.note(format!("{node} demote"));
                        continue;
                    }
                    let fenced = self.fenced(node);
                    let result = if fenced && self.options.plant == Some(Plant::NoFencing) {
                        Err("planted: a fenced node does not stop".to_string())
                    } else {
                        Ok(())
                    };
                    self.note(format!("{node} stop {resource} -> {result:?}"));
                    self.queue.push((
                        at,
                        Pending::Done {
                            node,
                            boot,
                            resource,
                            stop: true,
                            result,
                        },
                    ));
                }
                Action::Monitor { resource, .. } => {
                    self.queue.push((
                        at,
                        Pending::Monitored {
                            node,
                            boot,
                            resource,
                        },
                    ));
                }
                Action::Acquire { replication, force } => {
                    let sent = self.now;
                    let verdict = if self.witness_reach[node] {
                        let name = ["alpha", "beta"][node];
                        let claims = replication.claims(force);
                        match self
                            .witness
                            .acquire("sim", name, 3000, claims, self.now + delay / 2)
                        {
                            WitnessVerdict::Granted { .. } => Verdict::Granted,
                            WitnessVerdict::Refused { holder, .. } => Verdict::Refused { holder },
                            WitnessVerdict::Outdated { current, .. } => {
                                Verdict::Outdated { current }
                            }
                            other => Verdict::Unreachable(format!("{other:?}")),
                        }
                    } else {
                        Verdict::Unreachable("witness unreachable".to_string())
                    };
                    let at = if self.witness_reach[node] {
                        at
                    } else {
                        self.now + 500
                    };
                    self.queue.push((
                        at,
                        Pending::Lease {
                            node,
                            boot,
                            sent,
                            verdict,
                        },
                    ));
                }
                Action::Release => {
                    if self.witness_reach[node] {
                        let _ = self
                            .witness
                            .release("sim", ["alpha", "beta"][node], self.now);
                    }
                }
                Action::Alert(alert) => {
                    self.note(format!("{node} alert {} {}", alert.event, alert.detail));
                }
            }
        }
    }

    /// The engine's replicas run up to now (clients write where the process runs); finished
    /// promotions and demotions are reported to the nodes. Without the engine, the model.
    fn step_volumes(&mut self) -> Result<(), String> {
        let Some(volumes) = &mut self.volumes else {
            self.model_volumes();
            return Ok(());
        };
        let clients = [self.up[0][PROCESS], self.up[1][PROCESS]];
        let finished = volumes.advance_to(self.now, clients)?;
        for node in 0..2 {
            self.ready[node] = volumes.up_to_date(node);
        }
        for (node, id, result) in finished {
            let Some(index) = self
                .volume_ops
                .iter()
                .position(|op| op.0 == node && op.2 == id)
            else {
                continue;
            };
            let (_, boot, _, stop) = self.volume_ops.swap_remove(index);
            self.note(format!(
                "{node} {} -> {result:?}",
                if stop { "demoted" } else { "promoted" }
            ));
            self.queue.push((
                self.now,
                Pending::Done {
                    node,
                    boot,
                    resource: 0,
                    stop,
                    result,
                },
            ));
        }
        Ok(())
    }

    /// Per node: its volume against the peer's (from the engine; the model says the peer is
    /// behind whenever replication is cut under an up volume).
    fn replication(&self) -> [Replication; 2] {
        let connected =
            self.nodes.iter().all(Option::is_some) && self.links[0][0] && self.links[0][1];
        [0, 1].map(|node| match &self.volumes {
            Some(volumes) => Replication {
                peer_behind: volumes.peer_behind(node),
                in_sync: volumes.in_sync_from(node),
                generation: volumes.generation(node),
            },
            None => Replication {
                peer_behind: self.behind[node],
                in_sync: connected && self.ready[0] && self.ready[1] && self.behind == [false; 2],
                generation: self.generation[node],
            },
        })
    }

    /// The volume model: a node that is not `up_to_date` becomes so after one second
    /// connected (link 0 both ways) to a peer that is.
    fn model_volumes(&mut self) {
        let connected =
            self.nodes.iter().all(Option::is_some) && self.links[0][0] && self.links[0][1];
        self.connected_ms = if connected {
            self.connected_ms + STEP_MS
        } else {
            0
        };
        for node in 0..2 {
            if self.up[node][0] && !connected && !self.behind[node] {
                self.behind[node] = true;
                self.generation[node] = self.generation[0].max(self.generation[1]) + 1;
            }
            if self.connected_ms >= 1000 && self.behind[node] {
                self.behind[node] = false;
                self.generation[1 - node] = self.generation[node];
            }
            if connected && !self.ready[node] && self.ready[1 - node] {
                self.resync_ms[node] += STEP_MS;
                if self.resync_ms[node] >= 1000 {
                    self.ready[node] = true;
                    self.resync_ms[node] = 0;
                    self.note(format!("volume on {node} up_to_date"));
                }
            } else {
                self.resync_ms[node] = 0;
            }
        }
    }

    fn check(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.s7_violation) {
            return Err(format!("S7 violated at {} ms", self.now));
        }
        if self.options.arbiter {
            for resource in [0, 1] {
                if self.up[0][resource] && self.up[1][resource] {
                    return Err(format!(
                        "S6 violated at {} ms: resource {resource} up on both nodes",
                        self.now
                    ));
                }
            }
        }
        Ok(())
    }

    /// One seeded run: faults, then healing; the group must end up on exactly one node. With
    /// the engine, what its replicas did.
    pub fn run_seed(seed: u64, options: Options) -> Result<Option<PairReport>, String> {
        let mut sim = Self::new(seed, options);
        let result = sim.run_faults().and_then(|()| sim.heal());
        result
            .map(|()| sim.volumes.as_ref().map(VolumePair::report))
            .map_err(|error| {
                let log: Vec<String> = sim.log.iter().rev().take(60).rev().cloned().collect();
                let engine = sim
                    .volumes
                    .as_ref()
                    .map(VolumePair::trace)
                    .unwrap_or_default();
                format!("seed {seed}: {error}\n{}\n{engine}", log.join("\n"))
            })
    }

    fn run_faults(&mut self) -> Result<(), String> {
        let end = self.now + self.options.fault_ms;
        while self.now < end {
            let wait = 200 + self.prng.next_u64() % 3000;
            self.run_for(wait)?;
            self.fault();
        }
        Ok(())
    }

    fn fault(&mut self) {
        let pick = self.prng.next_u64() % 12;
        let node = (self.prng.next_u64() % 2) as usize;
        match pick {
            0 => {
                let link = (self.prng.next_u64() % LINKS as u64) as usize;
                let up = !self.links[link][node];
                self.set_link(link, node, up);
            }
            1 => {
                for link in 0..LINKS {
                    for from in 0..2 {
                        self.set_link(link, from, false);
                    }
                }
            }
            2 => {
                for link in 0..LINKS {
                    for from in 0..2 {
                        self.set_link(link, from, true);
                    }
                }
            }
            3 => {
                let up = !self.witness_reach[node];
                self.set_witness(node, up);
            }
            4 if self.nodes.iter().all(Option::is_some) => self.crash(node),
            4 | 5 => self.restart(node),
            6 => self.kill_process(node),
            7 => self.loss_percent = [0, 5, 30][(self.prng.next_u64() % 3) as usize],
            8 => {
                let to = ["alpha", "beta"][(self.prng.next_u64() % 2) as usize].to_string();
                let force = self.prng.next_u64().is_multiple_of(4);
                let _ = self.command(
                    node,
                    Command::Switch {
                        group: "web".to_string(),
                        to,
                        force,
                    },
                );
            }
            9 => {
                let on = self.prng.next_u64().is_multiple_of(2);
                let _ = self.command(node, Command::Maintenance(on));
            }
            10 => {
                let start = !self.prng.next_u64().is_multiple_of(3);
                let group = "web".to_string();
                let command = if start {
                    Command::Start(group)
                } else {
                    Command::Stop(group)
                };
                let _ = self.command(node, command);
            }
            _ => {}
        }
    }

    fn heal(&mut self) -> Result<(), String> {
        for link in 0..LINKS {
            for from in 0..2 {
                self.set_link(link, from, true);
            }
        }
        self.set_witness(0, true);
        self.set_witness(1, true);
        self.loss_percent = 0;
        self.options.start_failures = 0;
        self.restart(0);
        self.restart(1);
        // Let both find each other before the commands, so they reach both.
        self.run_for(5000)?;
        for node in 0..2 {
            let _ = self.command(node, Command::Maintenance(false));
        }
        let _ = self.command(0, Command::Start("web".to_string()));
        if !self.ready[0] && !self.ready[1] {
            // Both crashed since they were last in sync: only the operator can say whose
            // data to take (S7).
            let _ = self.command(
                0,
                Command::Switch {
                    group: "web".to_string(),
                    to: "alpha".to_string(),
                    force: true,
                },
            );
        }
        let converged = self.run_until(self.options.heal_ms, |sim| {
            sim.running_on().len() == 1 && sim.volumes.as_ref().is_none_or(VolumePair::in_sync)
        })?;
        if !converged {
            return Err(format!(
                "not converged after healing: running on {:?}; alpha says {:?}; beta says {:?}; \
                 volumes {:?}",
                self.running_on(),
                self.group_state(0),
                self.group_state(1),
                self.volumes
            ));
        }
        // And it stays.
        self.run_for(3000)?;
        if self.running_on().len() != 1 {
            return Err(format!(
                "unstable after healing: running on {:?}",
                self.running_on()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
