//! `manager::Cluster`: where each resource group runs, decided on each node from what it knows,
//! sans-IO. The runtime feeds it time, the peer's adverts from fresh heartbeats, the readiness
//! of this node's volumes, the results of resource operations, monitors and arbitration, and
//! operator commands; it carries out the [`Action`]s the core returns.
//!
//! # Who runs a group
//! The operator's intent (enabled, optional target node, forced) is a register with a sequence
//! number on both nodes; the higher sequence wins. While the peer is alive, a group that runs
//! somewhere stays there (unless `failback` or a switch moves it); a group that runs nowhere
//! goes to the switch target if it can run it, else to the first eligible node in the group's
//! order. Eligible: not failed there, its volumes `up_to_date` (S7, unless forced), not fenced.
//! Before starting, a node advertises its claim and waits until the peer has echoed a beat sent
//! after the claim, with the group still stopped on the peer; two claims at once are settled by
//! the group's node order.
//!
//! # Peer lost, and arbitration (S6)
//! With a lease arbiter (witness, quorum disk), the active node renews a lease every interval.
//! A standby takes over only when the peer is lost and the arbiter grants it the lease, which
//! it does only after the active node's lease expired. The active node keeps running while its
//! lease is fresh (`sent + lease_ms - fence_ms`) or the peer vote holds (`echo_sent + dead_ms -
//! fence_ms`: the peer took one of this node's beats sent then as a sign of life, so it cannot
//! find this node dead before `echo_sent + dead_ms`); when both run out it fences itself: every
//! group is stopped with force, volumes demoted, within `fence_ms`. A refusal naming the peer
//! while the peer is lost fences at once. Without an arbiter, a lost peer makes nobody take
//! over unless `takeover_without_arbiter` is set, and the report says why.
//!
//! At start a node stops every resource (a node that died holding them comes back clean) and
//! waits `startup_wait_ms` for the peer before it would take over alone.

use std::collections::VecDeque;

use super::advert::{Advert, GroupAdvert, Intent, Phase};

/// Timing, in milliseconds of the runtime's monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat interval; leases are renewed this often.
    pub interval_ms: u64,
    /// Silence after which the peer is lost.
    pub dead_ms: u64,
    /// Lease the arbiter grants.
    pub lease_ms: u64,
    /// Time a node leaves itself to stop everything before its lease runs out.
    pub fence_ms: u64,
    /// Wait for the peer at start before taking over alone.
    pub startup_wait_ms: u64,
}

/// What a monitor does after `failures` failed checks in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorAction {
    /// Restart the resource, at most `restarts` times within `window_ms`; one more failure
    /// fails the group over.
    Restart {
        /// Restarts allowed in the window.
        restarts: u32,
        /// The window.
        window_ms: u64,
    },
    /// Fail the group over.
    Failover,
    /// Only raise an alert.
    Alert,
}

/// A resource's monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonitorSpec {
    /// Between checks.
    pub interval_ms: u64,
    /// Failed checks in a row before acting.
    pub failures: u32,
    /// What then.
    pub action: MonitorAction,
}

/// A resource, as the core sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceSpec {
    /// Its name.
    pub name: String,
    /// Its monitor.
    pub monitor: Option<MonitorSpec>,
}

/// A group, as the core sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSpec {
    /// Its name.
    pub name: String,
    /// Node indexes in priority order.
    pub nodes: Vec<usize>,
    /// Move back to the first node when it can run the group again.
    pub failback: bool,
    /// Enabled at cluster start.
    pub auto_start: bool,
    /// Resources in start order.
    pub resources: Vec<ResourceSpec>,
}

/// The whole configuration the core needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// This node's index (0 or 1).
    pub me: usize,
    /// Both nodes' names, in configuration order.
    pub names: [String; 2],
    /// The groups, in configuration order.
    pub groups: Vec<GroupSpec>,
    /// Timing.
    pub timing: Timing,
    /// A lease arbiter is configured.
    pub arbiter: bool,
    /// Without an arbiter, take over when the peer is lost anyway.
    pub takeover_without_arbiter: bool,
    /// Fingerprint of the group configuration (both nodes must agree).
    pub fingerprint: u32,
}

/// What the runtime is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a resource; report with [`Cluster::op_done`].
    Start {
        /// Group index.
        group: usize,
        /// Resource index.
        resource: usize,
        /// Promote although not `up_to_date` (the operator forced it).
        force: bool,
    },
    /// Stop a resource; report with [`Cluster::op_done`].
    Stop {
        /// Group index.
        group: usize,
        /// Resource index.
        resource: usize,
        /// Kill holders, do not wait.
        force: bool,
    },
    /// Check a resource; report with [`Cluster::monitored`].
    Monitor {
        /// Group index.
        group: usize,
        /// Resource index.
        resource: usize,
    },
    /// Ask the arbiters for the lease; report with [`Cluster::lease_result`].
    Acquire {
        /// This node's replication (see [`Cluster::set_replication`]): with the peer behind,
        /// the witness refuses the peer until this node says otherwise.
        replication: Replication,
        /// The operator forced this node's data (a forced switch to it).
        force: bool,
    },
    /// Give the lease back.
    Release,
    /// Run the alert command.
    Alert(Alert),
}

/// This node's volumes against the peer's, as the witness is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// This node has writes the peer's volumes lack (a volume primary and not connected,
    /// established and `up_to_date`, or blocks out of sync not yet resynced).
    pub peer_behind: bool,
    /// Every volume is connected to the peer's, both `up_to_date`.
    pub in_sync: bool,
    /// The generation of this node's data: a hash of its volumes' current generations (the
    /// same on both nodes once a resync caught up; 0: no volumes).
    pub generation: u64,
}

impl Replication {
    /// What a lease request claims with this replication state.
    pub fn claims(self, force: bool) -> super::witness::Claims {
        super::witness::Claims {
            peer_behind: self.peer_behind,
            in_sync: self.in_sync,
            generation: self.generation,
            force,
        }
    }
}

/// An event for the alert command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// What happened, snake_case.
    pub event: &'static str,
    /// The group, if any.
    pub group: Option<String>,
    /// The resource, if any.
    pub resource: Option<String>,
    /// The state or reason, one line.
    pub detail: String,
}

/// What an arbiter said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The lease is ours for `lease_ms` from when the request was sent.
    Granted,
    /// Another node holds it.
    Refused {
        /// That node's name.
        holder: String,
    },
    /// This node's data is outdated: `current` ran without it.
    Outdated {
        /// The node with the current data.
        current: String,
    },
    /// No arbiter answered.
    Unreachable(String),
}

/// A monitor's finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// It runs.
    Running,
    /// It does not run.
    Stopped,
    /// It is in error.
    Failed(String),
}

/// An operator command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `group start GROUP`.
    Start(String),
    /// `group stop GROUP`.
    Stop(String),
    /// `group switch GROUP --to NODE [--force]`.
    Switch {
        /// The group.
        group: String,
        /// The node to run it on.
        to: String,
        /// Even if that node's volumes are not `up_to_date`.
        force: bool,
    },
    /// `maintenance on|off`.
    Maintenance(bool),
}

/// What an operation in flight is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Start(usize),
    Stop(usize),
}

/// The group's state on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Local {
    Stopped,
    /// Claimed at this time; waiting for the peer's acknowledgement or the lease.
    Claiming(u64),
    /// Starting resource `next`.
    Starting(usize),
    Running,
    /// Restarting resource `r` after monitor failures; `stopped` once its stop is done.
    Restarting {
        resource: usize,
        stopped: bool,
    },
    /// Stopping the resources before `next` in reverse order.
    Stopping {
        next: usize,
        force: bool,
    },
    StopFailed(String),
}

#[derive(Clone, Debug, Default)]
struct Watch {
    next_ms: u64,
    in_flight: bool,
    failed_in_row: u32,
    restarts: VecDeque<u64>,
}

#[derive(Clone, Debug)]
struct Group {
    local: Local,
    pending: Option<Pending>,
    /// Resources up (started and not stopped since).
    up: Vec<bool>,
    intent: Intent,
    ready: bool,
    /// Failed here; cleared by the next command.
    blocked: Option<String>,
    watches: Vec<Watch>,
    /// Why it does not run here, for status.
    why: String,
}

/// The peer as known from its latest fresh advert.
#[derive(Clone, Debug, Default)]
struct Peer {
    alive: bool,
    advert: Option<Advert>,
    /// Until when the peer vote holds.
    vote_until: Option<u64>,
    seen_since_start: bool,
    /// The newest `echo_sent_ms`.
    echo_sent: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Lease {
    /// Fresh until (already less `fence_ms`).
    fresh_until: Option<u64>,
    /// The arbiter said this node's data is outdated: that node ran without it.
    outdated_by: Option<String>,
    in_flight: Option<u64>,
    /// The replication state the request in flight carried.
    sent: Replication,
    next_ms: u64,
    holder: Option<String>,
    error: Option<String>,
    held: bool,
}

/// The cluster manager's core on one node. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    started_ms: u64,
    groups: Vec<Group>,
    peer: Peer,
    lease: Lease,
    maintenance: (u32, bool),
    fenced: bool,
    /// This node's volumes against the peer's.
    replication: Replication,
    /// A generation the peer marked as current that this node has had: the mark is old news
    /// (this node's own writes since are newer).
    mark_had: Option<u64>,
    actions: Vec<Action>,
    advert_changed: bool,
}

/// A group in the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    /// Its name.
    pub name: String,
    /// The node running it, as far as this node knows.
    pub active_node: Option<String>,
    /// `running`, `starting`, `stopping`, `stopped`, `failed` or `stop_failed`.
    pub state: String,
    /// Why it is not running here, or what it waits for.
    pub reason: String,
    /// Resources and their state here (`running` or `stopped`).
    pub resources: Vec<(String, String)>,
}

/// Arbitration in the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArbitrationView {
    /// A lease arbiter is configured.
    pub configured: bool,
    /// This node holds a fresh lease.
    pub lease_held: bool,
    /// The holder the arbiter named last, if another node.
    pub holder: Option<String>,
    /// The last error.
    pub error: Option<String>,
    /// This node lost arbitration and stopped its groups.
    pub fenced: bool,
    /// Maintenance mode.
    pub maintenance: bool,
}

impl Cluster {
    /// A node starting at `now_ms`: every resource is stopped first.
    pub fn new(spec: ClusterSpec, now_ms: u64) -> Self {
        let groups = spec
            .groups
            .iter()
            .map(|group| Group {
                // Forced: whatever a previous run left is taken down without waiting.
                local: Local::Stopping {
                    next: group.resources.len(),
                    force: true,
                },
                pending: None,
                up: vec![true; group.resources.len()],
                intent: Intent {
                    seq: 0,
                    enabled: group.auto_start,
                    target: None,
                    force: false,
                },
                ready: false,
                blocked: None,
                watches: vec![Watch::default(); group.resources.len()],
                why: "cleaning up after start".to_string(),
            })
            .collect();
        let mut cluster = Self {
            spec,
            started_ms: now_ms,
            groups,
            peer: Peer::default(),
            lease: Lease::default(),
            maintenance: (0, false),
            fenced: false,
            replication: Replication::default(),
            mark_had: None,
            actions: Vec::new(),
            advert_changed: true,
        };
        cluster.step(now_ms);
        cluster
    }

    /// The actions to carry out now.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Whether the advert changed since the last call (send a beat at once).
    pub fn take_advert_changed(&mut self) -> bool {
        std::mem::take(&mut self.advert_changed)
    }

    /// This node's advert.
    pub fn advert(&self) -> Advert {
        Advert {
            config: self.spec.fingerprint,
            sees_peer: self.peer.alive,
            maintenance: self.maintenance,
            fenced: self.fenced,
            peer_behind: self.replication.peer_behind,
            generation: self.replication.generation,
            groups: self
                .groups
                .iter()
                .map(|group| GroupAdvert {
                    intent: group.intent,
                    phase: group.phase(),
                    ready: group.ready,
                    blocked: group.blocked.is_some(),
                })
                .collect(),
        }
    }

    /// Time passes.
    pub fn tick(&mut self, now_ms: u64) {
        self.step(now_ms);
    }

    /// When [`Cluster::tick`] next has something to do.
    pub fn next_deadline(&self, now_ms: u64) -> u64 {
        // Coarse but bounded: monitors, leases and the startup wait are all multiples of
        // this; the runtime also calls tick on every input.
        now_ms + (self.spec.timing.interval_ms / 4).clamp(10, 250)
    }

    /// The heartbeats' view of the peer: `alive`, and with a fresh beat its advert and when
    /// this node sent the newest beat the peer echoed.
    pub fn peer(&mut self, now_ms: u64, alive: bool, fresh: Option<(Advert, Option<u64>)>) {
        if alive != self.peer.alive {
            self.advert_changed = true;
            // A fenced node rejoins when the peer is back: from then on they coordinate, and
            // what the arbiter said while they were apart is history.
            if alive {
                self.fenced = false;
                self.lease.holder = None;
                self.lease.outdated_by = None;
                self.lease.error = None;
            }
            let event = if alive { "peer_found" } else { "peer_lost" };
            self.alert(event, None, None, self.spec.names[1 - self.spec.me].clone());
        }
        self.peer.alive = alive;
        if alive {
            self.peer.seen_since_start = true;
        }
        if let Some((advert, echo_sent)) = fresh {
            if advert.config != self.spec.fingerprint {
                self.peer.advert = None;
            } else {
                self.adopt_intents(&advert);
                self.peer.echo_sent = self.peer.echo_sent.max(echo_sent);
                if advert.sees_peer
                    && let Some(sent) = echo_sent
                {
                    let timing = self.spec.timing;
                    let until = sent + timing.dead_ms.saturating_sub(timing.fence_ms);
                    self.peer.vote_until = self.peer.vote_until.max(Some(until));
                }
                // Answer a change at once (a claim waits for the answer).
                if self.peer.advert.as_ref() != Some(&advert) {
                    self.advert_changed = true;
                }
                self.peer.advert = Some(advert);
            }
        }
        self.step(now_ms);
    }

    /// Whether this node's volumes of group `group` are `up_to_date` (or it has none).
    pub fn set_ready(&mut self, now_ms: u64, group: usize, ready: bool) {
        if self.groups[group].ready != ready {
            self.groups[group].ready = ready;
            self.advert_changed = true;
            self.step(now_ms);
        }
    }

    /// This node's volumes against the peer's. When the peer falls behind, the active node
    /// tells the arbiter at once, so that the peer cannot take over with outdated data.
    pub fn set_replication(&mut self, now_ms: u64, replication: Replication) {
        if let Some(advert) = &self.peer.advert
            && advert.peer_behind
            && advert.generation == replication.generation
        {
            self.mark_had = Some(advert.generation);
        }
        if self.replication != replication {
            self.replication = replication;
            self.lease.next_ms = now_ms;
            self.step(now_ms);
        }
    }

    /// A start or stop finished.
    pub fn op_done(
        &mut self,
        now_ms: u64,
        group: usize,
        resource: usize,
        result: Result<(), String>,
    ) {
        let spec = &self.spec.groups[group];
        let name = spec.name.clone();
        let resource_name = spec.resources[resource].name.clone();
        let state = &mut self.groups[group];
        let Some(pending) = state.pending.take() else {
            return;
        };
        match (pending, result) {
            (Pending::Start(r), Ok(())) if r == resource => {
                state.up[r] = true;
                let interval = spec.resources[r].monitor.map_or(0, |m| m.interval_ms);
                let watch = &mut state.watches[r];
                watch.next_ms = now_ms + interval;
                watch.in_flight = false;
                watch.failed_in_row = 0;
                match state.local {
                    Local::Starting(next) if next == r => state.local = Local::Starting(r + 1),
                    Local::Restarting { resource, .. } if resource == r => {
                        state.local = Local::Running;
                    }
                    _ => {}
                }
            }
            (Pending::Start(r), Err(error)) if r == resource => {
                // Whatever part started comes down again, and the group may not run here
                // until the next command.
                state.up[r] = true;
                let reason = format!("{resource_name} failed to start: {error}");
                state.blocked = Some(reason.clone());
                state.local = Local::Stopping {
                    next: state.up.len(),
                    force: false,
                };
                self.advert_changed = true;
                self.alert("start_failed", Some(&name), Some(&resource_name), reason);
                self.after_start_failure(group);
            }
            (Pending::Stop(r), Ok(())) if r == resource => {
                state.up[r] = false;
                match state.local {
                    Local::Stopping { next, force } if next == r + 1 => {
                        state.local = Local::Stopping { next: r, force };
                    }
                    Local::Restarting { resource, .. } if resource == r => {
                        state.local = Local::Restarting {
                            resource,
                            stopped: true,
                        };
                    }
                    _ => {}
                }
            }
            (Pending::Stop(r), Err(error)) if r == resource => match state.local {
                Local::Stopping { next, force: false } if next == r + 1 => {
                    state.local = Local::Stopping { next, force: true };
                }
                Local::Restarting { .. } => {
                    let reason = format!("{resource_name} failed to stop for a restart: {error}");
                    state.blocked = Some(reason.clone());
                    state.local = Local::Stopping {
                        next: state.up.len(),
                        force: true,
                    };
                    self.advert_changed = true;
                    self.alert("failover", Some(&name), Some(&resource_name), reason);
                }
                _ => {
                    let reason = format!("{resource_name} failed to stop: {error}");
                    state.local = Local::StopFailed(reason.clone());
                    self.advert_changed = true;
                    self.alert("stop_failed", Some(&name), Some(&resource_name), reason);
                }
            },
            (other, _) => state.pending = Some(other),
        }
        self.step(now_ms);
    }

    /// A monitor check finished.
    pub fn monitored(&mut self, now_ms: u64, group: usize, resource: usize, health: Health) {
        let spec = &self.spec.groups[group];
        let Some(monitor) = spec.resources[resource].monitor else {
            return;
        };
        let name = spec.name.clone();
        let resource_name = spec.resources[resource].name.clone();
        let state = &mut self.groups[group];
        let watch = &mut state.watches[resource];
        if !watch.in_flight {
            return;
        }
        watch.in_flight = false;
        watch.next_ms = now_ms + monitor.interval_ms;
        // A result that arrives after the group left Running says nothing any more.
        if state.local != Local::Running || self.maintenance.1 {
            return;
        }
        let problem = match health {
            Health::Running => {
                watch.failed_in_row = 0;
                return;
            }
            Health::Stopped => "not running".to_string(),
            Health::Failed(reason) => reason,
        };
        watch.failed_in_row += 1;
        if watch.failed_in_row < monitor.failures {
            return;
        }
        watch.failed_in_row = 0;
        self.alert(
            "monitor_failed",
            Some(&name),
            Some(&resource_name),
            problem.clone(),
        );
        match monitor.action {
            MonitorAction::Alert => {}
            MonitorAction::Failover => self.fail_over(group, format!("{resource_name}: {problem}")),
            MonitorAction::Restart {
                restarts,
                window_ms,
            } => {
                let state = &mut self.groups[group];
                let watch = &mut state.watches[resource];
                while watch
                    .restarts
                    .front()
                    .is_some_and(|&at| at + window_ms <= now_ms)
                {
                    watch.restarts.pop_front();
                }
                if watch.restarts.len() < restarts as usize {
                    watch.restarts.push_back(now_ms);
                    let count = watch.restarts.len();
                    state.local = Local::Restarting {
                        resource,
                        stopped: false,
                    };
                    self.alert(
                        "restart",
                        Some(&name),
                        Some(&resource_name),
                        format!(
                            "restart {count} of {restarts} within {} s",
                            window_ms / 1000
                        ),
                    );
                } else {
                    self.fail_over(
                        group,
                        format!(
                            "{resource_name} failed {} times within {} s",
                            restarts + 1,
                            window_ms / 1000
                        ),
                    );
                }
            }
        }
        self.step(now_ms);
    }

    /// An arbitration request sent at `sent_ms` was answered.
    pub fn lease_result(&mut self, now_ms: u64, sent_ms: u64, verdict: Verdict) {
        self.lease.in_flight = None;
        let timing = self.spec.timing;
        match verdict {
            Verdict::Granted => {
                let until = sent_ms + timing.lease_ms.saturating_sub(timing.fence_ms);
                self.lease.fresh_until = self.lease.fresh_until.max(Some(until));
                self.lease.holder = None;
                self.lease.outdated_by = None;
                self.lease.error = None;
                self.lease.held = true;
                if self.fenced && !self.peer.alive {
                    self.fenced = false;
                    self.advert_changed = true;
                }
            }
            Verdict::Refused { holder } => {
                self.lease.fresh_until = None;
                self.lease.held = false;
                self.lease.error = None;
                self.lease.outdated_by = None;
                let peer = &self.spec.names[1 - self.spec.me];
                if holder == *peer && !self.peer.alive && self.active() {
                    self.fence(format!("the arbiter gave the lease to {holder}"));
                }
                self.lease.holder = Some(holder);
                self.lease.next_ms = now_ms + timing.interval_ms / 2;
            }
            Verdict::Outdated { current } => {
                self.lease.fresh_until = None;
                self.lease.held = false;
                self.lease.error = None;
                // Running alone here while another node wrote without this one: stop. (With
                // the peer alive they coordinate, and the peer's next renewal clears this.)
                if self.active() && !self.peer.alive {
                    self.fence(format!(
                        "the arbiter says {current} ran without this node: its data is outdated"
                    ));
                }
                self.lease.holder = None;
                self.lease.outdated_by = Some(current);
                self.lease.next_ms = now_ms + timing.interval_ms / 2;
            }
            Verdict::Unreachable(error) => {
                self.lease.error = Some(error);
                self.lease.next_ms = now_ms + timing.interval_ms / 2;
            }
        }
        if self.lease.sent != self.replication {
            // It changed while the request was out (the peer fell behind): tell the arbiter
            // at once, not at the next renewal.
            self.lease.next_ms = now_ms;
        }
        self.step(now_ms);
    }

    /// An operator command; the answer is one line.
    pub fn command(&mut self, now_ms: u64, command: Command) -> Result<String, String> {
        let answer = match command {
            Command::Maintenance(on) => {
                // Like the intents: newer than anything this node has seen from either side.
                let peer_seq = self.peer.advert.as_ref().map_or(0, |a| a.maintenance.0);
                self.maintenance = (self.maintenance.0.max(peer_seq) + 1, on);
                self.advert_changed = true;
                if on {
                    "maintenance on: monitors and failover suspended, resources left as they are"
                        .to_string()
                } else {
                    "maintenance off".to_string()
                }
            }
            Command::Start(name) => {
                let group = self.group_index(&name)?;
                self.set_intent(group, true, None, false);
                format!("{name}: enabled")
            }
            Command::Stop(name) => {
                let group = self.group_index(&name)?;
                self.set_intent(group, false, None, false);
                format!("{name}: stopping")
            }
            Command::Switch {
                group: name,
                to,
                force,
            } => {
                let group = self.group_index(&name)?;
                let node = self
                    .spec
                    .names
                    .iter()
                    .position(|n| *n == to)
                    .ok_or_else(|| format!("unknown node {to:?}"))?;
                if !self.spec.groups[group].nodes.contains(&node) {
                    return Err(format!("{name} cannot run on {to}: not in its nodes"));
                }
                let me = &self.spec.names[self.spec.me];
                let peer = &self.spec.names[1 - self.spec.me];
                let (ready, behind) = if node == self.spec.me {
                    (self.groups[group].ready, self.behind_peer())
                } else {
                    if !self.peer.alive {
                        return Err(format!("{to} is not reachable"));
                    }
                    let ready = self.peer_group(group).is_some_and(|g| g.ready);
                    (ready, self.replication.peer_behind)
                };
                if !ready && !force {
                    return Err(format!(
                        "{to}'s volumes of {name} are not up_to_date; --force starts it there anyway"
                    ));
                }
                if behind && !force {
                    let (lacks, has) = if node == self.spec.me {
                        (me, peer)
                    } else {
                        (peer, me)
                    };
                    return Err(format!(
                        "{lacks}'s volumes miss writes made on {has} (a resync has not caught up); \
                         --force starts {name} on {lacks} anyway and discards them"
                    ));
                }
                let ready = ready && !behind;
                self.set_intent(group, true, Some(node), force && !ready);
                format!("{name}: switching to {to}")
            }
        };
        self.step(now_ms);
        Ok(answer)
    }

    /// Each group's state as status shows it.
    pub fn groups(&self) -> Vec<GroupView> {
        let me = &self.spec.names[self.spec.me];
        let peer_name = &self.spec.names[1 - self.spec.me];
        self.spec
            .groups
            .iter()
            .zip(&self.groups)
            .enumerate()
            .map(|(index, (spec, group))| {
                let peer_phase = self.peer_group(index).map(|g| g.phase);
                let (active_node, state) = match (&group.local, peer_phase) {
                    (Local::StopFailed(_), _) => (Some(me.clone()), "stop_failed"),
                    (Local::Running | Local::Restarting { .. }, _) => (Some(me.clone()), "running"),
                    (Local::Claiming(_) | Local::Starting(_), _) => (Some(me.clone()), "starting"),
                    (Local::Stopping { .. }, _) => (Some(me.clone()), "stopping"),
                    (Local::Stopped, Some(Phase::Running)) => (Some(peer_name.clone()), "running"),
                    (Local::Stopped, Some(Phase::Starting)) => {
                        (Some(peer_name.clone()), "starting")
                    }
                    (Local::Stopped, Some(Phase::Stopping)) => {
                        (Some(peer_name.clone()), "stopping")
                    }
                    (Local::Stopped, Some(Phase::StopFailed)) => {
                        (Some(peer_name.clone()), "stop_failed")
                    }
                    (Local::Stopped, _) if group.blocked.is_some() => (None, "failed"),
                    (Local::Stopped, _) => (None, "stopped"),
                };
                let reason = match &group.local {
                    Local::StopFailed(reason) => reason.clone(),
                    _ => group.why.clone(),
                };
                GroupView {
                    name: spec.name.clone(),
                    active_node,
                    state: state.to_string(),
                    reason,
                    resources: spec
                        .resources
                        .iter()
                        .zip(&group.up)
                        .map(|(r, &up)| {
                            (
                                r.name.clone(),
                                if up { "running" } else { "stopped" }.to_string(),
                            )
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Arbitration as status shows it.
    pub fn arbitration(&self, now_ms: u64) -> ArbitrationView {
        ArbitrationView {
            configured: self.spec.arbiter,
            lease_held: self.lease_fresh(now_ms),
            holder: self.lease.holder.clone(),
            error: self.lease.error.clone(),
            fenced: self.fenced,
            maintenance: self.maintenance.1,
        }
    }

    /// Whether some resource may be up here.
    fn holding(&self) -> bool {
        self.groups
            .iter()
            .any(|g| !matches!(g.local, Local::Stopped | Local::Claiming(_)))
    }

    /// Whether some group runs here or is on its way up or down (a forced stop, as at start
    /// or when fencing, is not: it needs no lease and fencing could do no more).
    fn active(&self) -> bool {
        self.groups.iter().any(|g| {
            matches!(
                g.local,
                Local::Starting(_)
                    | Local::Running
                    | Local::Restarting { .. }
                    | Local::Stopping { force: false, .. }
            )
        })
    }

    fn group_index(&self, name: &str) -> Result<usize, String> {
        self.spec
            .groups
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.spec.groups.iter().map(|g| g.name.as_str()).collect();
                format!("no group {name:?} (groups: {})", names.join(", "))
            })
    }

    fn set_intent(&mut self, group: usize, enabled: bool, target: Option<usize>, force: bool) {
        let peer_seq = self.peer_group(group).map_or(0, |g| g.intent.seq);
        let state = &mut self.groups[group];
        state.intent = Intent {
            seq: state.intent.seq.max(peer_seq) + 1,
            enabled,
            target: target.and_then(|t| u8::try_from(t).ok()),
            force,
        };
        state.blocked = None;
        self.advert_changed = true;
    }

    fn adopt_intents(&mut self, advert: &Advert) {
        if advert.maintenance.0 > self.maintenance.0 {
            self.maintenance = advert.maintenance;
            self.advert_changed = true;
        }
        for (state, theirs) in self.groups.iter_mut().zip(&advert.groups) {
            if theirs.intent.seq > state.intent.seq {
                state.intent = theirs.intent;
                state.blocked = None;
                self.advert_changed = true;
            }
        }
    }

    /// The peer said that this node's volumes miss writes made there (its last word, also
    /// once it is lost), and no resync has given this node its data since (the generations
    /// differ).
    fn behind_peer(&self) -> bool {
        self.peer.advert.as_ref().is_some_and(|a| {
            a.peer_behind
                && a.generation != self.replication.generation
                && Some(a.generation) != self.mark_had
        })
    }

    fn peer_group(&self, group: usize) -> Option<&GroupAdvert> {
        if !self.peer.alive {
            return None;
        }
        self.peer.advert.as_ref()?.groups.get(group)
    }

    fn lease_fresh(&self, now_ms: u64) -> bool {
        self.lease.fresh_until.is_some_and(|until| now_ms < until)
    }

    fn vote_holds(&self, now_ms: u64) -> bool {
        self.peer.vote_until.is_some_and(|until| now_ms < until)
    }

    fn alert(
        &mut self,
        event: &'static str,
        group: Option<&str>,
        resource: Option<&str>,
        detail: String,
    ) {
        self.actions.push(Action::Alert(Alert {
            event,
            group: group.map(str::to_string),
            resource: resource.map(str::to_string),
            detail,
        }));
    }

    /// A switch that failed on its target goes back to where it came from.
    fn after_start_failure(&mut self, group: usize) {
        let me = self.spec.me;
        let intent = self.groups[group].intent;
        if intent.target == u8::try_from(me).ok() {
            let blocked = self.groups[group].blocked.clone();
            self.set_intent(group, true, Some(1 - me), false);
            self.groups[group].blocked = blocked;
        }
    }

    fn fail_over(&mut self, group: usize, reason: String) {
        let name = self.spec.groups[group].name.clone();
        self.alert("failover", Some(&name), None, reason.clone());
        let state = &mut self.groups[group];
        state.why = format!("failing over: {reason}");
        state.blocked = Some(reason);
        if matches!(state.local, Local::Running | Local::Restarting { .. }) {
            state.local = Local::Stopping {
                next: state.up.len(),
                force: false,
            };
        }
        self.advert_changed = true;
    }

    fn fence(&mut self, reason: String) {
        if !self.fenced {
            self.alert("fenced", None, None, reason);
        }
        self.fenced = true;
        self.advert_changed = true;
        for state in &mut self.groups {
            match state.local {
                Local::Stopped | Local::StopFailed(_) => {}
                Local::Stopping { next, .. } => {
                    state.local = Local::Stopping { next, force: true };
                }
                Local::Claiming(_) => state.local = Local::Stopped,
                _ => {
                    state.local = Local::Stopping {
                        next: state.up.len(),
                        force: true,
                    };
                }
            }
        }
    }

    /// Whether `node` may run group `group` as far as this node knows.
    fn eligible(&self, group: usize, node: usize) -> bool {
        if !self.spec.groups[group].nodes.contains(&node) {
            return false;
        }
        if node == self.spec.me {
            let state = &self.groups[group];
            let forced = state.intent.force && state.intent.target == u8::try_from(node).ok();
            let current = state.ready && !self.behind_peer();
            return !self.fenced && state.blocked.is_none() && (current || forced);
        }
        let Some(advert) = self.peer.advert.as_ref().filter(|_| self.peer.alive) else {
            return false;
        };
        let Some(theirs) = advert.groups.get(group) else {
            return false;
        };
        let forced = theirs.intent.force && theirs.intent.target == u8::try_from(node).ok();
        let current = theirs.ready && !self.replication.peer_behind;
        !advert.fenced && !theirs.blocked && (current || forced)
    }

    /// The node that should run `group` when nobody runs it.
    fn owner(&self, group: usize) -> Option<usize> {
        let intent = self.groups[group].intent;
        if let Some(target) = intent.target.map(usize::from)
            && self.eligible(group, target)
        {
            return Some(target);
        }
        self.spec.groups[group]
            .nodes
            .iter()
            .copied()
            .find(|&node| self.eligible(group, node))
    }

    /// Why this node should not hold `group` now, if so (for a running group: a reason to
    /// stop).
    fn stop_reason(&self, group: usize, now_ms: u64) -> Option<String> {
        let state = &self.groups[group];
        let me = self.spec.me;
        let peer = 1 - me;
        if !state.intent.enabled {
            return Some("stopped by the operator".into());
        }
        if let Some(reason) = &state.blocked {
            return Some(format!("failed here: {reason}"));
        }
        if self.fenced {
            return Some("fenced: this node lost arbitration".into());
        }
        if self.peer.alive {
            if let Some(theirs) = self.peer_group(group)
                && theirs.phase.holds()
                && matches!(
                    state.local,
                    Local::Running | Local::Starting(_) | Local::Claiming(_)
                )
            {
                // Both hold it: the one later in the group's order gives way.
                let order = &self.spec.groups[group].nodes;
                let rank = |n: usize| order.iter().position(|&x| x == n).unwrap_or(usize::MAX);
                if rank(me) > rank(peer) {
                    return Some("the peer holds it too and comes first".into());
                }
            }
            if let Some(target) = state.intent.target.map(usize::from)
                && target == peer
                && self.eligible(group, peer)
            {
                return Some(format!("switching to {}", self.spec.names[peer]));
            }
            let first = self.spec.groups[group].nodes.first().copied();
            if self.spec.groups[group].failback
                && state.intent.target.is_none()
                && first == Some(peer)
                && self.eligible(group, peer)
            {
                return Some(format!("failback to {}", self.spec.names[peer]));
            }
            return None;
        }
        let holding = !matches!(state.local, Local::Stopped | Local::Claiming(_));
        if holding && self.spec.arbiter && !self.lease_fresh(now_ms) && !self.vote_holds(now_ms) {
            return Some("peer lost and no lease from the arbiter".into());
        }
        None
    }

    /// Why this node should not start `group` now, if so; `claiming`: it has claimed it.
    fn start_blocker(&self, group: usize, now_ms: u64, claiming: bool) -> Option<String> {
        if let Some(reason) = self.stop_reason(group, now_ms) {
            return Some(reason);
        }
        let state = &self.groups[group];
        let me = self.spec.me;
        if !self.spec.groups[group].nodes.contains(&me) {
            return Some("this node is not in the group's nodes".into());
        }
        if !state.ready && !self.eligible(group, me) {
            return Some("this node's volumes are not up_to_date".into());
        }
        if self.behind_peer() && !self.eligible(group, me) {
            return Some(format!(
                "this node's volumes miss writes made on {} (it said so); waiting for a resync \
                 (`group switch --force` starts it here anyway)",
                self.spec.names[1 - me]
            ));
        }
        if self.peer.alive {
            if self.peer.advert.is_none() {
                return Some(
                    "waiting for the peer's state (is its configuration the same?)".into(),
                );
            }
            if let Some(theirs) = self.peer_group(group) {
                // Two claims at once: the one first in the group's order goes on (the other
                // gives way in `stop_reason`).
                let first_claim = claiming && theirs.phase == Phase::Starting;
                if theirs.phase.holds() && !first_claim {
                    return Some(format!("held by {}", self.spec.names[1 - me]));
                }
            }
            if self.owner(group) != Some(me) {
                return Some(format!("{} comes first", self.spec.names[1 - me]));
            }
            return None;
        }
        // A peer last seen in maintenance does not fence itself: it may still run the group.
        if self.peer.advert.as_ref().is_some_and(|a| a.maintenance.1) {
            return Some(
                "peer lost while in maintenance (it does not fence itself): not taking over".into(),
            );
        }
        let waited = now_ms.saturating_sub(self.started_ms);
        if !self.peer.seen_since_start && waited < self.spec.timing.startup_wait_ms {
            return Some(format!(
                "waiting {} s for the peer before starting alone",
                (self.spec.timing.startup_wait_ms - waited).div_ceil(1000)
            ));
        }
        if !self.spec.arbiter {
            if !self.spec.takeover_without_arbiter {
                return Some(
                    "peer lost and no arbiter configured: not taking over (set takeover_without_arbiter)"
                        .into(),
                );
            }
            return None;
        }
        if !self.lease_fresh(now_ms) {
            return Some(match (&self.lease.outdated_by, &self.lease.holder) {
                (Some(current), _) => format!(
                    "peer lost; the arbiter says {current} ran without this node, whose data is \
                     outdated (`group switch --force` starts it here anyway)"
                ),
                (None, Some(holder)) => {
                    format!("peer lost; the arbiter's lease is held by {holder}")
                }
                (None, None) => "peer lost; waiting for the arbiter's lease".into(),
            });
        }
        None
    }

    fn step(&mut self, now_ms: u64) {
        // Losing arbitration: neither a fresh lease nor the peer vote. (A forced stop is
        // already what fencing would do.)
        // Back in touch with the peer (its vote holds again): they coordinate from here.
        if self.fenced && self.peer.alive && self.vote_holds(now_ms) {
            self.fenced = false;
            self.advert_changed = true;
        }
        // Maintenance does not suspend this: the peer cannot know that this node entered
        // maintenance while they were apart, and it takes over once the lease runs out.
        if self.spec.arbiter
            && !self.fenced
            && self.active()
            && !self.lease_fresh(now_ms)
            && !self.vote_holds(now_ms)
        {
            self.fence("neither the peer nor the arbiter vouches for this node".into());
        }
        for group in 0..self.groups.len() {
            self.step_group(group, now_ms);
        }
        self.step_lease(now_ms);
    }

    fn step_lease(&mut self, now_ms: u64) {
        if !self.spec.arbiter || self.lease.in_flight.is_some() {
            return;
        }
        // A fenced node asks too: a grant means the peer's lease ran out.
        let me = self.spec.me;
        let wants_takeover = !self.peer.alive
            && (0..self.groups.len()).any(|g| {
                let state = &self.groups[g];
                let forced = state.intent.force && state.intent.target == u8::try_from(me).ok();
                matches!(state.local, Local::Stopped | Local::Claiming(_))
                    && state.intent.enabled
                    && state.blocked.is_none()
                    && (state.ready && !self.behind_peer() || forced)
                    && self.spec.groups[g].nodes.contains(&me)
            });
        let need = self.active() || wants_takeover;
        if need && now_ms >= self.lease.next_ms {
            self.lease.in_flight = Some(now_ms);
            self.lease.sent = self.replication;
            self.lease.next_ms = now_ms + self.spec.timing.interval_ms;
            let force = self.groups.iter().any(|state| {
                state.intent.enabled
                    && state.intent.force
                    && state.intent.target == u8::try_from(me).ok()
            });
            self.actions.push(Action::Acquire {
                replication: self.replication,
                force,
            });
        } else if !need && self.lease.held && !self.holding() {
            // Given back only once nothing is up here any more: the peer may start at once.
            self.lease.held = false;
            self.lease.fresh_until = None;
            self.actions.push(Action::Release);
        }
    }

    fn step_group(&mut self, group: usize, now_ms: u64) {
        // A fenced node stops its groups even in maintenance.
        let maintenance = self.maintenance.1 && !self.fenced;
        if self.groups[group].pending.is_some() {
            return;
        }
        let count = self.spec.groups[group].resources.len();
        let force = self.groups[group].intent.force
            && self.groups[group].intent.target == u8::try_from(self.spec.me).ok();
        match self.groups[group].local.clone() {
            Local::Stopped => {
                if maintenance {
                    self.groups[group].why = "maintenance".into();
                    return;
                }
                match self.start_blocker(group, now_ms, false) {
                    Some(reason) => self.groups[group].why = reason,
                    None => {
                        let state = &mut self.groups[group];
                        state.local = Local::Claiming(now_ms);
                        state.why = "claiming".into();
                        self.advert_changed = true;
                    }
                }
            }
            Local::Claiming(since) => {
                if maintenance {
                    return;
                }
                if let Some(reason) = self.start_blocker(group, now_ms, true) {
                    let state = &mut self.groups[group];
                    state.local = Local::Stopped;
                    state.why = reason;
                    self.advert_changed = true;
                    return;
                }
                // With the peer alive, it must have answered the claim with the group stopped.
                let acknowledged = !self.peer.alive
                    || (self.peer.echo_sent.is_some_and(|at| at >= since)
                        && self
                            .peer_group(group)
                            .is_some_and(|g| g.phase == Phase::Stopped));
                if acknowledged {
                    let name = self.spec.groups[group].name.clone();
                    self.alert("start", Some(&name), None, "starting".into());
                    self.groups[group].local = Local::Starting(0);
                    self.groups[group].why = "starting".into();
                    self.step_group(group, now_ms);
                }
            }
            Local::Starting(_) | Local::Restarting { .. } | Local::Stopping { .. }
                if maintenance => {}
            Local::Starting(next) => {
                if let Some(reason) = self.stop_reason(group, now_ms) {
                    self.begin_stop(group, reason);
                    self.step_group(group, now_ms);
                } else if next == count {
                    let name = self.spec.groups[group].name.clone();
                    self.groups[group].local = Local::Running;
                    self.groups[group].why = "running here".into();
                    self.advert_changed = true;
                    self.alert("started", Some(&name), None, "running".into());
                } else {
                    self.groups[group].pending = Some(Pending::Start(next));
                    self.actions.push(Action::Start {
                        group,
                        resource: next,
                        force,
                    });
                }
            }
            Local::Running => {
                if maintenance {
                    return;
                }
                if let Some(reason) = self.stop_reason(group, now_ms) {
                    self.begin_stop(group, reason);
                    self.step_group(group, now_ms);
                    return;
                }
                self.schedule_monitors(group, now_ms);
            }
            Local::Restarting { resource, stopped } => {
                if let Some(reason) = self.stop_reason(group, now_ms) {
                    self.begin_stop(group, reason);
                    self.step_group(group, now_ms);
                    return;
                }
                let state = &mut self.groups[group];
                if stopped {
                    state.pending = Some(Pending::Start(resource));
                    self.actions.push(Action::Start {
                        group,
                        resource,
                        force,
                    });
                } else {
                    state.pending = Some(Pending::Stop(resource));
                    self.actions.push(Action::Stop {
                        group,
                        resource,
                        force: false,
                    });
                }
            }
            Local::Stopping { next, force } => {
                let state = &mut self.groups[group];
                if next == 0 {
                    state.local = Local::Stopped;
                    self.advert_changed = true;
                    let name = self.spec.groups[group].name.clone();
                    let reason = self.groups[group].why.clone();
                    self.alert("stopped", Some(&name), None, reason);
                    self.step_group(group, now_ms);
                    return;
                }
                let resource = next - 1;
                if !state.up[resource] {
                    state.local = Local::Stopping {
                        next: resource,
                        force,
                    };
                    self.step_group(group, now_ms);
                    return;
                }
                state.pending = Some(Pending::Stop(resource));
                self.actions.push(Action::Stop {
                    group,
                    resource,
                    force,
                });
            }
            Local::StopFailed(_) => {}
        }
    }

    fn begin_stop(&mut self, group: usize, reason: String) {
        let name = self.spec.groups[group].name.clone();
        let state = &mut self.groups[group];
        state.local = Local::Stopping {
            next: state.up.len(),
            force: self.fenced,
        };
        state.why = reason.clone();
        self.advert_changed = true;
        self.alert("stop", Some(&name), None, reason);
    }

    fn schedule_monitors(&mut self, group: usize, now_ms: u64) {
        for (resource, spec) in self.spec.groups[group].resources.iter().enumerate() {
            if spec.monitor.is_none() {
                continue;
            }
            let watch = &mut self.groups[group].watches[resource];
            if !watch.in_flight && now_ms >= watch.next_ms {
                watch.in_flight = true;
                self.actions.push(Action::Monitor { group, resource });
            }
        }
    }
}

impl Group {
    fn phase(&self) -> Phase {
        match self.local {
            Local::Stopped => Phase::Stopped,
            Local::Claiming(_) | Local::Starting(_) => Phase::Starting,
            Local::Running | Local::Restarting { .. } => Phase::Running,
            Local::Stopping { .. } => Phase::Stopping,
            Local::StopFailed(_) => Phase::StopFailed,
        }
    }
}

// Its tests are scenarios in the simulator: `super::sim` (sim/tests.rs).
