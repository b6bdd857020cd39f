//! The two-node harness driven from outside: a cluster manager's simulator decides when a node
//! is promoted or demoted, crashes and restarts nodes and cuts the replication link, on its own
//! clock; this side runs the replicas, disks, network and client I/O up to that clock and keeps
//! the checkers of [`super`] running:
//! - S1: a node promoted after the primary died while the two were in sync holds every
//!   completed write (protocols B and C; a prefix of the history under A, S2);
//! - S2 on followers, reads against the model, S4 whenever the pair is converged;
//! - S6: never two primaries at once;
//! - S5: a split brain is detected by both sides; [`VolumePair`] then resolves it as an
//!   operator would (the primary's side, else node 0's, is kept) and counts it.
//!
//! A promotion the model cannot vouch for (forced, or of a node that was apart from the
//! primary when it was lost: a double failure) is adopted as the new history and counted.

use std::collections::HashMap;
use std::time::Duration;

use super::{Check, Cluster};
use crate::replica::{AdminCommand, Replica};
use crate::sim::model::decode_sector;
use crate::state::{ConnState, DiskState, ReplState, Role};
use crate::types::SECTOR_BYTES;

/// What an admin command was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Promote { force: bool },
    Demote,
    Attach,
    Connect,
}

/// A promotion or demotion that finished: node, admin id, result.
pub type Finished = (usize, u64, Result<(), String>);

/// What a node's data is, against the history of the last primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holds {
    /// Every completed write: it was in sync when the primary was lost or demoted.
    All,
    /// The crashed primary's durable data: it resynced from that node after its restart.
    CrashedPrimary,
    /// Nothing the model can vouch for.
    Unknown,
}

/// Counts of what happened, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct PairReport {
    /// Promotions checked against the model (S1 or reads).
    pub checked_promotions: u32,
    /// Forced promotions, adopted without a check.
    pub forced_promotions: u32,
    /// Promotions of a node that was apart from the last primary when that one was lost (a
    /// double failure: a cut link, then the primary's loss), adopted without a check.
    pub stale_promotions: u32,
    /// Split brains detected by both sides and resolved.
    pub split_brains: u32,
    /// Client operations submitted.
    pub client_ops: u64,
}

/// Two replicas driven by an outside clock (milliseconds).
pub struct VolumePair {
    cluster: Cluster,
    /// Admin commands in flight: node, id → what for.
    ops: HashMap<(usize, u64), Op>,
    /// Demotions waiting for the node's client requests to drain.
    demotes: [Option<u64>; 2],
    /// The node last promoted, and whether it crashed since.
    last_primary: Option<(usize, bool)>,
    /// Per node: what its data is, against the last primary's history.
    holds: [Holds; 2],
    /// S4 was checked since the last change (comparing the images once per quiet spell).
    identity_checked: bool,
    report: PairReport,
}

impl std::fmt::Debug for VolumePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cluster.describe())
    }
}

impl VolumePair {
    /// Both nodes attached and connected, `up_to_date` in one generation, no primary.
    pub fn new(seed: u64) -> Result<Self, String> {
        let mut cluster = Cluster::new(seed, true);
        cluster.expect_split_brain = true;
        // Runs here are long (a minute of simulated time): S2 after every change of state,
        // and otherwise less often.
        cluster.prefix_check_steps = 997;
        for node in 0..2 {
            cluster.start_node(node)?;
        }
        cluster.converge(Duration::from_secs(5))?;
        Ok(Self {
            cluster,
            ops: HashMap::new(),
            demotes: [None; 2],
            last_primary: None,
            holds: [Holds::All; 2],
            identity_checked: false,
            report: PairReport::default(),
        })
    }

    /// What happened so far.
    pub fn report(&self) -> PairReport {
        self.report
    }

    /// The last events, for a failure report.
    pub fn trace(&self) -> String {
        format!("{}\n{}", self.cluster.describe(), self.cluster.trace_text())
    }

    /// Whether `node` runs and its disk is `up_to_date`.
    pub fn up_to_date(&self, node: usize) -> bool {
        self.cluster
            .status(node)
            .is_some_and(|s| s.disk == DiskState::UpToDate)
    }

    /// Whether `node` is primary.
    pub fn primary(&self, node: usize) -> bool {
        self.cluster
            .status(node)
            .is_some_and(|s| s.role == Role::Primary)
    }

    /// Whether `node`'s peer misses writes, as the daemon tells the witness and the peer:
    /// `node` is primary and not connected, established and `up_to_date` on both sides, or it
    /// is `up_to_date` with blocks out of sync (not as a resync target).
    pub fn peer_behind(&self, node: usize) -> bool {
        self.cluster.status(node).is_some_and(|s| s.peer_behind())
    }

    /// The current generation of `node`'s data (0 while it is down).
    pub fn generation(&self, node: usize) -> u64 {
        self.cluster
            .status(node)
            .and_then(|s| s.generations)
            .map_or(0, |g| g.current.0)
    }

    /// Whether `node` sees itself connected, established and both sides `up_to_date`.
    pub fn in_sync_from(&self, node: usize) -> bool {
        self.cluster.status(node).is_some_and(|s| s.in_sync())
    }

    /// Both connected, established and `up_to_date` (clients may be writing).
    pub fn in_sync(&self) -> bool {
        (0..2).all(|node| self.in_sync_from(node))
    }

    /// Asks `node` to promote itself; the answer comes from [`VolumePair::advance_to`].
    pub fn promote(&mut self, node: usize, force: bool) -> u64 {
        self.begin(node, AdminCommand::Promote { force }, Op::Promote { force })
    }

    /// Asks `node` to demote itself once its clients' requests drained.
    pub fn demote(&mut self, node: usize) -> u64 {
        if self.cluster.primary == Some(node) {
            self.cluster.primary = None;
        }
        let id = self.cluster.next_admin;
        self.cluster.next_admin += 1;
        self.demotes[node] = Some(id);
        self.ops.insert((node, id), Op::Demote);
        id
    }

    /// `node` dies with whatever it has in flight.
    pub fn crash(&mut self, node: usize) {
        if self.cluster.nodes[node].replica.is_none() {
            return;
        }
        if self.primary(node) {
            self.snapshot_holds(node);
        }
        if let Some((primary, crashed)) = &mut self.last_primary
            && *primary == node
        {
            *crashed = true;
        }
        self.holds[node] = Holds::Unknown;
        self.cluster.crash(node);
        self.ops.retain(|(n, _), _| *n != node);
        self.demotes[node] = None;
    }

    /// `node` starts again (attach, then connect).
    pub fn restart(&mut self, node: usize) {
        if self.cluster.nodes[node].replica.is_some() {
            return;
        }
        let config = self.cluster.configs[node].clone();
        let replica = Replica::new(config, self.cluster.prng.fork());
        self.cluster.nodes[node].replica = Some(replica);
        let backing_bytes = self.cluster.nodes[node].disk.len();
        self.begin(node, AdminCommand::Attach { backing_bytes }, Op::Attach);
    }

    /// The replication link is cut (for good, until set up again) or restored.
    pub fn set_link(&mut self, up: bool) {
        let now = self.cluster.now;
        if up {
            self.cluster.network.heal(now);
        } else {
            self.cluster.note("link cut".to_string());
            self.cluster.network.partition(u64::MAX / 2, now);
        }
    }

    /// Runs everything up to `now_ms`. `clients[node]`: clients may use the volume on `node`
    /// when it is primary. Returns the results of promotions and demotions that finished.
    pub fn advance_to(&mut self, now_ms: u64, clients: [bool; 2]) -> Result<Vec<Finished>, String> {
        let target = now_ms * 1_000_000;
        let mut finished = Vec::new();
        for _ in 0..1_000_000 {
            self.cluster.maybe_connect();
            self.start_demotes();
            // Outputs of admin commands handed in since the last event.
            for node in 0..2 {
                self.cluster.pump(node)?;
            }
            finished.extend(self.collect()?);
            self.watch_resyncs();
            self.check_two_primaries()?;
            match self.cluster.next_due() {
                Some((at, _)) if at <= target => {
                    self.cluster.step()?;
                }
                _ => break,
            }
        }
        self.cluster.now = self.cluster.now.max(target);
        self.resolve_split_brain()?;
        if !finished.is_empty() {
            self.identity_checked = false;
        }
        // Clients write in bursts, so that the pair also gets quiet and S4 is checked.
        if (now_ms / 700).is_multiple_of(2) {
            self.client_io(clients);
        }
        if !self.identity_checked && self.cluster.converged() {
            self.identity_checked = true;
            self.cluster.check_identical()?;
        }
        Ok(finished)
    }

    fn begin(&mut self, node: usize, command: AdminCommand, op: Op) -> u64 {
        let id = self.cluster.next_admin;
        self.cluster.next_admin += 1;
        self.cluster
            .note(format!("node {node}: admin {command:?} (driven)"));
        let now = self.cluster.now();
        let Some(replica) = self.cluster.nodes[node].replica.as_mut() else {
            return id;
        };
        replica.handle(now, crate::replica::Input::Admin { id, command });
        self.ops.insert((node, id), op);
        id
    }

    fn start_demotes(&mut self) {
        for node in 0..2 {
            // Clients' last requests drain first (a real daemon demotes after the filesystem
            // is unmounted); no new ones start once a demotion is asked for.
            if !self.cluster.pending.is_empty() {
                return;
            }
            let Some(id) = self.demotes[node].take() else {
                continue;
            };
            if !self.primary(node) {
                // As the daemon does: a volume that is not primary (secondary, or still
                // attaching after a restart) is stopped already.
                self.cluster.nodes[node].admin.insert(id, Ok(()));
                continue;
            }
            self.snapshot_holds(node);
            let now = self.cluster.now();
            if let Some(replica) = self.cluster.nodes[node].replica.as_mut() {
                replica.handle(
                    now,
                    crate::replica::Input::Admin {
                        id,
                        command: AdminCommand::Demote,
                    },
                );
            }
        }
    }

    /// Whether the other node holds every write of `primary` at this moment.
    fn snapshot_holds(&mut self, primary: usize) {
        let other = 1 - primary;
        let all = self.in_sync_from(primary) && self.in_sync_from(other);
        self.holds[other] = if all { Holds::All } else { Holds::Unknown };
        self.holds[primary] = Holds::All;
    }

    /// A node that becomes a resync target takes on its peer's data.
    fn watch_resyncs(&mut self) {
        for node in 0..2 {
            let target = self
                .cluster
                .status(node)
                .is_some_and(|s| s.replication == ReplState::SyncTarget);
            if target {
                let holds = match self.last_primary {
                    Some((primary, true)) if primary == 1 - node => Holds::CrashedPrimary,
                    Some((primary, false)) if primary == 1 - node => self.holds[1 - node],
                    _ => Holds::Unknown,
                };
                if holds != self.holds[node] {
                    self.cluster
                        .note(format!("node {node}: resync target, now holds {holds:?}"));
                    self.holds[node] = holds;
                }
            }
        }
    }

    /// Admin commands that finished; promotions are checked here.
    fn collect(&mut self) -> Result<Vec<Finished>, String> {
        let mut done = Vec::new();
        for node in 0..2 {
            let ids: Vec<u64> = self.cluster.nodes[node].admin.keys().copied().collect();
            for id in ids {
                let Some(result) = self.cluster.nodes[node].admin.remove(&id) else {
                    continue;
                };
                let Some(op) = self.ops.remove(&(node, id)) else {
                    continue;
                };
                self.cluster.note(format!(
                    "node {node}: admin {op:?} done {result:?} (driven)"
                ));
                match (op, result) {
                    (Op::Attach, Ok(())) => {
                        self.begin(node, AdminCommand::Connect, Op::Connect);
                    }
                    (Op::Attach | Op::Connect, Err(refusal)) => {
                        return Err(format!("node {node}: restart failed: {refusal}"));
                    }
                    (Op::Connect, Ok(())) => {}
                    (Op::Promote { force }, Ok(())) => {
                        self.promoted(node, force)?;
                        done.push((node, id, Ok(())));
                    }
                    (Op::Demote, Ok(())) => done.push((node, id, Ok(()))),
                    (Op::Promote { .. } | Op::Demote, Err(refusal)) => {
                        done.push((node, id, Err(refusal.to_string())));
                    }
                }
            }
        }
        Ok(done)
    }

    /// S1 and reads: what the new primary holds, against the model.
    fn promoted(&mut self, node: usize, force: bool) -> Result<(), String> {
        let check = match (self.last_primary, self.holds[node]) {
            _ if force => Check::Adopt,
            (None, _) => Check::Read,
            (Some((last, false)), _) if last == node => Check::Read,
            (Some((last, true)), _) if last == node => Check::AfterCrash,
            (Some((_, true)), Holds::All) => Check::Failover,
            (Some((_, false)), Holds::All) => Check::Read,
            (Some(_), Holds::CrashedPrimary) => Check::AfterCrash,
            (Some(_), Holds::Unknown) => Check::Adopt,
        };
        if force {
            self.report.forced_promotions += 1;
        } else if check == Check::Adopt {
            self.report.stale_promotions += 1;
        } else {
            self.report.checked_promotions += 1;
        }
        self.cluster
            .note(format!("node {node}: promoted, checked as {check:?}"));
        self.cluster.primary = Some(node);
        self.last_primary = Some((node, false));
        self.holds[node] = Holds::All;
        self.holds[1 - node] = Holds::Unknown;
        self.cluster.verify_primary(check)
    }

    fn check_two_primaries(&self) -> Result<(), String> {
        if self.primary(0) && self.primary(1) {
            return Err(format!(
                "S6: both nodes primary: {}",
                self.cluster.describe()
            ));
        }
        Ok(())
    }

    /// Both sides detected a split brain: keep the primary's data (else node 0's).
    fn resolve_split_brain(&mut self) -> Result<(), String> {
        let detected = (0..2).all(|n| {
            self.cluster
                .status(n)
                .is_some_and(|s| s.split_brain && s.connection == ConnState::StandAlone)
        });
        if !detected {
            return Ok(());
        }
        let keep = (0..2).find(|&n| self.primary(n)).unwrap_or(0);
        self.report.split_brains += 1;
        self.cluster
            .note(format!("split brain: keeping node {keep}'s data"));
        for (node, keep_self) in [(keep, true), (1 - keep, false)] {
            self.cluster
                .admin(node, AdminCommand::SplitBrainResolve { keep_self })?
                .map_err(|r| format!("resolving the split brain on node {node}: {r}"))?;
        }
        // The kept side's data is the history from here on, durable (the other side takes
        // it on in a resync).
        let image = self.cluster.image(keep).to_vec();
        for (sector, bytes) in image.chunks(SECTOR_BYTES as usize).enumerate() {
            self.cluster
                .model
                .settle(sector, decode_sector(bytes, sector as u64));
        }
        self.cluster.history.rebase(&image);
        self.cluster.follows_history[1 - keep] = false;
        self.last_primary = Some((keep, false));
        self.holds[keep] = Holds::All;
        self.holds[1 - keep] = Holds::Unknown;
        Ok(())
    }

    fn client_io(&mut self, clients: [bool; 2]) {
        let Some(primary) = self.cluster.primary else {
            return;
        };
        if !clients[primary] || !self.primary(primary) || self.demotes[primary].is_some() {
            return;
        }
        if self.cluster.pending.len() < self.cluster.queue_depth {
            self.identity_checked = false;
            self.report.client_ops += 1;
            self.cluster.submit_random_op(primary);
        }
    }
}
