//! Two replicas, two disks and a network: replication, resync, failover and crashes.
//!
//! A seed picks the parameters and a script of phases: client I/O on the primary while the
//! network drops, partitions and slows the link; crashes of the primary (with a failover to the
//! secondary when it was in sync), of the secondary, of both; restarts; switchovers; an operator
//! invalidating the secondary. Afterwards the network heals and both nodes must converge.
//!
//! Checkers, besides the single-node ones (reads, S3):
//! - S1: after a failover every completed write is on the new primary;
//! - S2: a secondary that follows the primary (connected or not, under any protocol, also while
//!   it catches up) holds a state the primary's history had at some moment, checked every few
//!   events; after a failover under protocol A the new primary does too;
//! - S3: after both nodes crash, every write durable before is still there;
//! - S4: whenever both nodes are connected, established and up to date with nothing in flight,
//!   their data areas are byte-identical and neither marks anything out of sync;
//! - liveness: after healing, the nodes reach that state within a bounded time;
//! - online verify: a verify that runs while clients write reports no mismatch; a byte
//!   corrupted behind the secondary's back is reported as exactly its granule, and the resync
//!   of the marked granule makes the replicas identical again;
//! - checksum resync (asked for, and after a crashed primary) ends with identical replicas;
//! - S5: when the script makes two primaries (a split-brain phase), both detect it when they
//!   meet and neither overwrites the other; after the operator's resolution the replicas are
//!   identical and hold the kept side's data; no split brain is detected anywhere else.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::disk::{DiskFaults, SimDisk};
use super::harness::SimOptions;
use super::model::{Model, ModelWrite, SectorContent, decode_sector, stamp_sector};
use super::network::{Delivery, NetworkTiming, SimNetwork};
use super::prefix::History;
use crate::buffer::{IoBuf, IoBufMut};
use crate::format::{FormatOptions, InitialData, format};
use crate::generation::Generation;
use crate::layout::{Layout, LayoutParams};
use crate::prng::Prng;
use crate::replica::{
    AdminCommand, ClientCompletion, ClientOp, ClientRequest, Event, Input, Output, Protocol,
    Refusal, Replica, ReplicaConfig,
};
use crate::state::{ConnState, DiskState, ReplState, Role};
use crate::types::{Instant, NodeId, Now, RequestTag, SECTOR_BYTES};

pub mod driven;

/// What a cluster run did.
#[derive(Clone, Debug, Default)]
pub struct ClusterReport {
    /// Phases run.
    pub phases: u32,
    /// Client operations submitted.
    pub client_ops: u64,
    /// Failovers to the secondary.
    pub failovers: u32,
    /// Node crashes.
    pub crashes: u32,
    /// Resyncs that finished.
    pub resyncs: u32,
    /// Times S4 (identical replicas) was checked.
    pub identity_checks: u32,
    /// Times S2 (a secondary holds a prefix of the history) was checked.
    pub prefix_checks: u32,
    /// Catch-ups from the journal started, and finished (the target up to date).
    pub catch_ups: (u32, u32),
    /// Online verifies that ran to the end, and planted corruptions they found.
    pub verifies: (u32, u32),
    /// Checksum resyncs started.
    pub checksum_resyncs: u32,
    /// Split brains detected by both sides and resolved.
    pub split_brains: u32,
    /// Messages delivered.
    pub messages: u64,
    /// Client writes the primaries cut into pieces (`ReplicaConfig::write_piece_bytes`).
    pub pieced_writes: u64,
}

/// Runs the two-node scenario of one seed.
pub fn run_cluster_seed(options: &SimOptions) -> Result<ClusterReport, String> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut cluster = Cluster::new(options.seed, false);
        #[cfg(feature = "sim")]
        for config in &mut cluster.configs {
            config.planted_bug = options.planted_bug;
        }
        #[cfg(not(feature = "sim"))]
        assert!(
            options.planted_bug.is_none(),
            "planting bugs needs the sim feature"
        );
        let result = cluster.run();
        result.map_err(|message| format!("{message}\n{}", cluster.trace_text()))
    }));
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(format!("panic: {message}"))
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Write {
        id: u64,
    },
    Read {
        offset: u64,
        length: u64,
        submitted: u64,
    },
    Flush,
    /// A write on the other side of a split brain (the model does not follow it).
    Diverging,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Workload,
    /// A workload during which the primary dies, then a failover if the peer was in sync.
    CrashPrimaryUnderLoad,
    CrashPrimary,
    CrashSecondary,
    CrashBoth,
    Switchover,
    Invalidate,
    Restart,
    /// An online verify while clients write.
    VerifyUnderLoad,
    /// A byte corrupted on the secondary, found by a verify and repaired.
    VerifyCorruption,
    /// `resync --checksum` while clients write.
    ChecksumResync,
    /// Both nodes primary while apart, then resolved keeping the primary's data.
    SplitBrain,
}

struct Node {
    replica: Option<Replica>,
    disk: SimDisk,
    admin: HashMap<u64, Result<(), Refusal>>,
}

struct Cluster {
    prng: Prng,
    now: u64,
    nodes: [Node; 2],
    network: SimNetwork,
    configs: [ReplicaConfig; 2],
    layout: Layout,
    model: Model,
    /// The write history since the replicas last matched (S2).
    history: History,
    /// Which nodes' images follow that history (not since a crash or a failover elsewhere).
    follows_history: [bool; 2],
    /// A split-brain phase runs: detecting one is expected.
    expect_split_brain: bool,
    protocol: Protocol,
    steps: u64,
    /// A state changed: check S2 after this event.
    check_prefix_now: bool,
    /// Events between two S2 checks of the secondaries, besides those after state changes.
    prefix_check_steps: u64,
    /// The node clients talk to.
    primary: Option<usize>,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    next_write_id: u64,
    next_admin: u64,
    request_bytes_max: u64,
    queue_depth: usize,
    fault_per_mille: u64,
    trace: std::collections::VecDeque<String>,
    report: ClusterReport,
    /// Both nodes started on fresh metadata (the first primary is forced).
    fresh_start: bool,
    /// A completion of a verification read, picked up by `run_until_completion`.
    verification: Option<ClientCompletion>,
}

impl Cluster {
    /// `in_sync`: both nodes start `up_to_date` in one generation, whatever the seed says.
    fn new(seed: u64, in_sync: bool) -> Self {
        let mut prng = Prng::from_seed(seed ^ 0xC1_05_7E_12);
        let granule_bytes = 4096u32 << prng.below(3);
        let al_extent_bytes = (granule_bytes << prng.below(3)).max(64 << 10);
        let request_bytes_max: u64 = 64 << 10;
        let params = LayoutParams {
            granule_bytes,
            al_extent_bytes,
            al_slots: request_bytes_max.div_ceil(u64::from(al_extent_bytes)) as u32
                + 2
                + prng.below(6) as u32,
            journal_bytes: if prng.chance(1, 4) {
                0
            } else {
                4096 * prng.range_inclusive(8, 128)
            },
        };
        let backing_bytes = (4 << 20) + 4096 * prng.below(512);
        let latency_max = 1_000 * prng.range_inclusive(5, 200);
        let faults = DiskFaults {
            latency_min_nanos: 1_000,
            latency_max_nanos: latency_max,
            error_ppm: 0,
        };
        let fresh = prng.chance(1, 3) && !in_sync;
        let initial = if fresh {
            InitialData::Fresh
        } else {
            InitialData::InSync {
                generation: Generation(0xAB),
            }
        };
        let mut nodes: Vec<Node> = Vec::new();
        let mut layout = None;
        for node in 0..2u8 {
            let mut disk = SimDisk::new(backing_bytes, faults, prng.fork());
            let options = FormatOptions {
                volume_name: "r0".to_string(),
                params,
                instance_id: [node + 1; 16],
                created_unix_millis: 1,
                initial,
            };
            let image = format(backing_bytes, &options).expect("layouts fit");
            for (offset, bytes) in &image.writes {
                disk.write_durable(*offset, bytes);
            }
            layout = Some(image.layout);
            nodes.push(Node {
                replica: None,
                disk,
                admin: HashMap::new(),
            });
        }
        let layout = layout.expect("two nodes");
        let protocol = [Protocol::A, Protocol::B, Protocol::C][prng.below(3) as usize];
        let make_config = |node: u8, prng: &mut Prng| {
            let mut config = ReplicaConfig::new("r0", NodeId(node));
            config.protocol = protocol;
            config.request_bytes_max = request_bytes_max;
            config.journal_memory_bytes_max = 4096 * prng.below(64);
            config.bitmap_flush_interval = Duration::from_micros(prng.range_inclusive(100, 5000));
            config.ping_interval = Duration::from_millis(5);
            config.ping_timeout = Duration::from_millis(40);
            config.replication_window_bytes = (64 << 10) * prng.range_inclusive(1, 16);
            config.resync_window_bytes = (64 << 10) * prng.range_inclusive(1, 16);
            config.resync_chunk_bytes = u64::from(granule_bytes) * prng.range_inclusive(1, 8);
            config.write_piece_bytes = 4096 << prng.below(6);
            if prng.chance(1, 4) {
                config.resync_rate_bytes_per_second_max =
                    Some((16 << 20) * prng.range_inclusive(1, 8));
            }
            config
        };
        let configs = [make_config(0, &mut prng), make_config(1, &mut prng)];
        let timing = NetworkTiming {
            delay_min_nanos: 10_000,
            delay_max_nanos: 10_000 + 1_000 * prng.below(500),
            connect_nanos: 100_000 + 1_000 * prng.below(2000),
        };
        let network = SimNetwork::new(timing, prng.fork());
        let nodes: [Node; 2] = nodes
            .try_into()
            .unwrap_or_else(|_| unreachable!("two nodes"));
        Self {
            model: Model::new(layout.data_bytes),
            history: History::new((layout.data_bytes / SECTOR_BYTES) as usize),
            follows_history: [true; 2],
            expect_split_brain: false,
            protocol,
            steps: 0,
            check_prefix_now: false,
            prefix_check_steps: PREFIX_CHECK_STEPS,
            layout,
            nodes,
            network,
            configs,
            primary: None,
            pending: HashMap::new(),
            next_tag: 1,
            next_write_id: 1,
            next_admin: 1,
            request_bytes_max,
            queue_depth: prng.range_inclusive(1, 24) as usize,
            fault_per_mille: prng.below(6),
            trace: std::collections::VecDeque::new(),
            report: ClusterReport::default(),
            fresh_start: fresh,
            verification: None,
            now: 0,
            prng,
        }
    }

    fn run(&mut self) -> Result<ClusterReport, String> {
        self.note(format!(
            "layout {:?}, protocol {:?}, queue depth {}, faults {}‰, fresh {}",
            self.layout.params,
            self.protocol,
            self.queue_depth,
            self.fault_per_mille,
            self.fresh_start
        ));
        for node in 0..2 {
            self.start_node(node)?;
        }
        self.run_for(Duration::from_millis(5))?;
        self.promote(0, self.fresh_start)?;
        self.primary = Some(0);
        self.verify_primary(Check::Read)?;
        let phases = self.prng.range_inclusive(3, 8);
        for _ in 0..phases {
            self.report.phases += 1;
            let phase = self.pick_phase();
            self.note(format!("phase {phase:?}"));
            self.run_phase(phase)?;
        }
        self.heal_and_converge()?;
        self.report.messages = self.network.delivered;
        for node in 0..2 {
            self.count_pieced_writes(node);
        }
        Ok(self.report.clone())
    }

    /// Adds the pieced writes of `node`'s replica, which is about to go (crash or end).
    fn count_pieced_writes(&mut self, node: usize) {
        if let Some(replica) = &self.nodes[node].replica {
            self.report.pieced_writes += replica.pieced_writes();
        }
    }

    fn pick_phase(&mut self) -> Phase {
        let any_down = self.nodes.iter().any(|n| n.replica.is_none());
        if any_down && self.prng.chance(1, 2) {
            return Phase::Restart;
        }
        match self.prng.below(25) {
            24 => Phase::SplitBrain,
            21 => Phase::VerifyUnderLoad,
            22 => Phase::VerifyCorruption,
            23 => Phase::ChecksumResync,
            0..=8 => Phase::Workload,
            9 => Phase::CrashPrimary,
            10 | 20 => Phase::CrashPrimaryUnderLoad,
            11..=12 => Phase::CrashSecondary,
            13 => Phase::CrashBoth,
            14..=16 => Phase::Switchover,
            17 => Phase::Invalidate,
            _ => Phase::Restart,
        }
    }

    fn run_phase(&mut self, phase: Phase) -> Result<(), String> {
        match phase {
            Phase::Workload => self.workload(None),
            Phase::CrashPrimaryUnderLoad => {
                let ops = self.prng.range_inclusive(5, 200);
                self.workload(Some(ops))
            }
            Phase::CrashPrimary => self.crash_primary(),
            Phase::CrashSecondary => {
                let Some(primary) = self.primary else {
                    return Ok(());
                };
                self.crash(1 - primary);
                Ok(())
            }
            Phase::CrashBoth => self.crash_both(),
            Phase::Switchover => self.switchover(),
            Phase::Invalidate => self.invalidate_secondary(),
            Phase::VerifyUnderLoad => self.verify_under_load(),
            Phase::VerifyCorruption => self.verify_corruption(),
            Phase::ChecksumResync => self.checksum_resync(),
            Phase::SplitBrain => self.split_brain(),
            Phase::Restart => {
                for node in 0..2 {
                    if self.nodes[node].replica.is_none() {
                        self.start_node(node)?;
                    }
                }
                if self.primary.is_none() {
                    self.elect_after_restart()?;
                }
                Ok(())
            }
        }
    }

    // ----- nodes -----

    fn start_node(&mut self, node: usize) -> Result<(), String> {
        let replica = Replica::new(self.configs[node].clone(), self.prng.fork());
        self.nodes[node].replica = Some(replica);
        let backing_bytes = self.nodes[node].disk.len();
        match self.admin(node, AdminCommand::Attach { backing_bytes })? {
            Ok(()) => {}
            Err(refusal) => return Err(format!("node {node}: attach failed: {refusal}")),
        }
        self.admin(node, AdminCommand::Connect)?
            .map_err(|r| format!("node {node}: connect: {r}"))?;
        Ok(())
    }

    fn crash(&mut self, node: usize) {
        if self.nodes[node].replica.is_none() {
            return;
        }
        self.report.crashes += 1;
        self.count_pieced_writes(node);
        let reset = self.prng.chance(1, 2);
        self.note(format!("crash node {node} (reset {reset})"));
        self.nodes[node].replica = None;
        self.nodes[node].disk.crash();
        self.follows_history[node] = false;
        self.network.crash(node, reset, self.now);
        if self.primary == Some(node) {
            self.primary = None;
            self.pending.clear();
        }
    }

    fn crash_primary(&mut self) -> Result<(), String> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        let secondary = 1 - primary;
        if self.prng.chance(2, 3) && self.nodes[secondary].replica.is_some() {
            // Usually the pair is in sync when the primary dies (the interesting failover); the
            // rest of the time it dies mid-resync or alone.
            self.run_until(Duration::from_secs(2), |c| c.converged())?;
        }
        self.crash_primary_now()
    }

    /// The primary dies now, with whatever it has in flight; the secondary takes over if it
    /// was in sync.
    fn crash_primary_now(&mut self) -> Result<(), String> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        let secondary = 1 - primary;
        // Fail over only when the secondary has everything: the primary was replicating to an
        // up-to-date secondary at the moment it died (a single failure, which S1 covers).
        let established = |s: &crate::replica::ReplicaStatus| {
            s.connection == ConnState::Connected
                && s.replication == ReplState::Established
                && s.disk == DiskState::UpToDate
                && s.peer_disk == DiskState::UpToDate
        };
        let in_sync = self.status(primary).is_some_and(|s| established(&s))
            && self.status(secondary).is_some_and(|s| established(&s));
        self.crash(primary);
        if !in_sync {
            return Ok(());
        }
        // The secondary notices (reset or ping timeout), then is promoted.
        let noticed = self.run_until(Duration::from_millis(200), |c| {
            c.status(secondary)
                .is_some_and(|s| s.connection != ConnState::Connected)
        })?;
        if !noticed {
            let state = self.describe();
            return Err(format!(
                "the secondary never noticed the primary's crash: {state}"
            ));
        }
        self.promote(secondary, false)?;
        self.primary = Some(secondary);
        self.report.failovers += 1;
        self.verify_primary(Check::Failover)
    }

    fn crash_both(&mut self) -> Result<(), String> {
        for node in 0..2 {
            self.crash(node);
        }
        for node in 0..2 {
            self.start_node(node)?;
        }
        self.elect_after_restart()
    }

    /// After restarts with no primary: wait until the two agree, then promote one. A node that
    /// crashed while primary comes back as the resync source for what it had in flight.
    fn elect_after_restart(&mut self) -> Result<(), String> {
        let both_up = self.nodes.iter().all(|n| n.replica.is_some());
        if both_up {
            self.converge(Duration::from_secs(20))?;
        }
        let candidates: Vec<usize> = (0..2)
            .filter(|&n| {
                self.status(n)
                    .is_some_and(|s| s.disk == DiskState::UpToDate)
            })
            .collect();
        let Some(&node) = candidates.first() else {
            return Ok(());
        };
        if !both_up
            && self
                .status(node)
                .is_some_and(|s| s.connection == ConnState::Connected)
        {
            return Ok(());
        }
        if !both_up {
            // Alone: only a node that was primary before its crash has everything.
            let crashed_primary = self.status(node).is_some_and(|s| s.crashed_primary);
            if !crashed_primary {
                return Ok(());
            }
        }
        self.promote(node, false)?;
        self.primary = Some(node);
        self.verify_primary(Check::AfterCrash)
    }

    /// The primary and the secondary, once clients drained and both converged (S4 checked);
    /// `None` when a node is down or they do not converge soon (partitioned or slow: the phase
    /// is skipped this time).
    fn quiesced_pair(&mut self) -> Result<Option<(usize, usize)>, String> {
        let Some(primary) = self.primary else {
            return Ok(None);
        };
        let secondary = 1 - primary;
        if self.nodes[secondary].replica.is_none() {
            return Ok(None);
        }
        self.drain_clients()?;
        if !self.run_until(Duration::from_secs(5), |c| c.converged())? {
            return Ok(None);
        }
        self.check_identical()?;
        Ok(Some((primary, secondary)))
    }

    fn switchover(&mut self) -> Result<(), String> {
        let Some((primary, secondary)) = self.quiesced_pair()? else {
            return Ok(());
        };
        self.admin(primary, AdminCommand::Demote)?
            .map_err(|r| format!("demote: {r}"))?;
        self.primary = None;
        let heard = self.run_until(Duration::from_millis(100), |c| {
            c.status(secondary)
                .is_some_and(|s| s.peer_role == Some(Role::Secondary))
        })?;
        if !heard {
            let state = self.describe();
            return Err(format!(
                "switchover: the demotion never reached the peer: {state}"
            ));
        }
        self.promote(secondary, false)?;
        self.primary = Some(secondary);
        self.verify_primary(Check::Read)
    }

    fn invalidate_secondary(&mut self) -> Result<(), String> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        let secondary = 1 - primary;
        if self.nodes[secondary].replica.is_none() {
            return Ok(());
        }
        match self.admin(secondary, AdminCommand::Invalidate)? {
            Ok(()) | Err(Refusal::ResyncRunning(_)) => Ok(()),
            Err(refusal) => Err(format!("invalidate refused: {refusal}")),
        }
    }

    /// Runs until the primary's verify ends; its report.
    fn finish_verify(&mut self, primary: usize) -> Result<crate::replica::VerifyReport, String> {
        let ended = |c: &Self| {
            c.status(primary)
                .and_then(|s| s.verify)
                .is_some_and(|v| v.state != "running")
        };
        if !self.run_until(Duration::from_secs(60), ended)? {
            return Err(format!("the verify never ended: {}", self.describe()));
        }
        let report = self.status(primary).and_then(|s| s.verify).expect("ended");
        self.note(format!(
            "verify {}: {} bytes differ in {:?}",
            report.state, report.mismatched_bytes, report.mismatched_ranges
        ));
        Ok(report)
    }

    fn verify_under_load(&mut self) -> Result<(), String> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        match self.admin(primary, AdminCommand::Verify { mark: false })? {
            Ok(()) => {}
            Err(Refusal::NotConnected(_) | Refusal::ResyncRunning(_)) => return Ok(()),
            Err(refusal) => return Err(format!("verify refused: {refusal}")),
        }
        self.workload(None)?;
        if self.primary != Some(primary) {
            return Ok(()); // It crashed meanwhile.
        }
        let report = self.finish_verify(primary)?;
        if report.state == "finished" {
            self.report.verifies.0 += 1;
            if report.mismatched_bytes != 0 {
                return Err(format!(
                    "verify: a mismatch reported while clients wrote, on replicas that never                      diverged: {:?}",
                    report.mismatched_ranges
                ));
            }
        }
        Ok(())
    }

    fn verify_corruption(&mut self) -> Result<(), String> {
        let Some((primary, secondary)) = self.quiesced_pair()? else {
            return Ok(());
        };
        let offset = self.prng.below(self.layout.data_bytes);
        let byte = self.nodes[secondary].disk.visible()[offset as usize];
        self.nodes[secondary]
            .disk
            .write_durable(offset, &[byte ^ 0x5a]);
        self.follows_history[secondary] = false;
        self.note(format!(
            "node {secondary}: byte {offset} corrupted behind its back"
        ));
        self.admin(primary, AdminCommand::Verify { mark: true })?
            .map_err(|r| format!("verify refused on converged nodes: {r}"))?;
        let report = self.finish_verify(primary)?;
        if report.state != "finished" {
            return Err(format!("verify {}: {:?}", report.state, report.reason));
        }
        let granule = u64::from(self.layout.params.granule_bytes);
        let start = offset / granule * granule;
        let expected = vec![[start, granule.min(self.layout.data_bytes - start)]];
        if report.mismatched_ranges != expected || !report.marked {
            return Err(format!(
                "verify: byte {offset} corrupted on node {secondary}, reported {:?} (marked {}),                  expected {expected:?}",
                report.mismatched_ranges, report.marked
            ));
        }
        self.report.verifies.0 += 1;
        self.report.verifies.1 += 1;
        self.admin(
            primary,
            AdminCommand::Resync {
                full: false,
                checksum: false,
            },
        )?
        .map_err(|r| format!("resync of the marked granule refused: {r}"))?;
        self.converge(Duration::from_secs(30))
    }

    fn split_brain(&mut self) -> Result<(), String> {
        let Some((primary, other)) = self.quiesced_pair()? else {
            return Ok(());
        };
        self.expect_split_brain = true;
        for node in [primary, other] {
            self.admin(node, AdminCommand::Disconnect)?
                .map_err(|r| format!("disconnect: {r}"))?;
        }
        self.workload(None)?;
        if self.primary != Some(primary) {
            self.expect_split_brain = false;
            return Ok(());
        }
        // The other side is promoted too, and writes.
        self.follows_history[other] = false;
        self.promote(other, true)?;
        let writes = self.prng.range_inclusive(1, 8);
        for _ in 0..writes {
            let (offset, length) = self.random_range();
            let data = IoBuf::copy_from(&vec![0xEE; length as usize]);
            let op = ClientOp::Write {
                offset,
                data,
                fua: false,
            };
            self.submit(other, op, Some(Pending::Diverging));
        }
        self.drain_clients()?;
        self.admin(other, AdminCommand::Demote)?
            .map_err(|r| format!("demote: {r}"))?;
        self.network.heal(self.now);
        let before = [self.image(0).to_vec(), self.image(1).to_vec()];
        for node in [primary, other] {
            self.admin(node, AdminCommand::Connect)?
                .map_err(|r| format!("connect: {r}"))?;
        }
        let detected = |c: &Self| {
            (0..2).all(|n| {
                c.status(n)
                    .is_some_and(|s| s.split_brain && s.connection == ConnState::StandAlone)
            })
        };
        if !self.run_until(Duration::from_secs(10), detected)? {
            return Err(format!(
                "S5: two primaries met and did not both detect a split brain: {}",
                self.describe()
            ));
        }
        for (node, before) in before.iter().enumerate() {
            if self.image(node) != before.as_slice() {
                return Err(format!(
                    "S5: node {node} changed data after the split brain"
                ));
            }
        }
        self.report.split_brains += 1;
        self.admin(primary, AdminCommand::SplitBrainResolve { keep_self: true })?
            .map_err(|r| format!("resolve (keep): {r}"))?;
        self.admin(other, AdminCommand::SplitBrainResolve { keep_self: false })?
            .map_err(|r| format!("resolve (discard): {r}"))?;
        self.expect_split_brain = false;
        self.converge(Duration::from_secs(30))?;
        self.verify_primary(Check::Read)
    }

    fn checksum_resync(&mut self) -> Result<(), String> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        self.drain_clients()?;
        if !self.run_until(Duration::from_secs(5), |c| c.converged())? {
            return Ok(());
        }
        self.admin(
            primary,
            AdminCommand::Resync {
                full: false,
                checksum: true,
            },
        )?
        .map_err(|r| format!("checksum resync refused on converged nodes: {r}"))?;
        self.report.checksum_resyncs += 1;
        self.workload(None)?;
        Ok(())
    }

    fn promote(&mut self, node: usize, force: bool) -> Result<(), String> {
        self.admin(node, AdminCommand::Promote { force })?
            .map_err(|refusal| format!("node {node}: promotion refused: {refusal}"))
    }

    fn status(&self, node: usize) -> Option<crate::replica::ReplicaStatus> {
        self.nodes[node].replica.as_ref().map(Replica::status)
    }

    // ----- convergence and checks -----

    /// Waits until both nodes are connected, established and up to date with nothing in flight,
    /// then checks S4. Errors if that does not happen within `limit` of simulated time.
    fn converge(&mut self, limit: Duration) -> Result<(), String> {
        if !self.run_until(limit, |c| c.converged())? {
            return Err(format!(
                "no convergence within {limit:?}: {}",
                self.describe()
            ));
        }
        self.check_identical()
    }

    fn converged(&self) -> bool {
        (0..2).all(|node| {
            self.status(node).is_some_and(|s| {
                s.connection == ConnState::Connected
                    && s.replication == ReplState::Established
                    && s.disk == DiskState::UpToDate
                    && s.peer_disk == DiskState::UpToDate
                    && s.requests_in_flight == 0
                    && s.unacked_bytes == 0
                    && s.peer_writes_pending == 0
            })
        }) && self.pending.is_empty()
    }

    /// S4: connected up-to-date replicas are byte-identical and mark nothing out of sync.
    fn check_identical(&mut self) -> Result<(), String> {
        self.report.identity_checks += 1;
        for node in 0..2 {
            let status = self.status(node).expect("up");
            if status.out_of_sync_bytes != 0 {
                return Err(format!(
                    "S4: node {node} is up to date and established with {} bytes out of sync",
                    status.out_of_sync_bytes
                ));
            }
        }
        let data = self.layout.data_bytes as usize;
        let (a, b) = (
            &self.nodes[0].disk.visible()[..data],
            &self.nodes[1].disk.visible()[..data],
        );
        if let Some(position) = a.iter().zip(b).position(|(x, y)| x != y) {
            let sector = position as u64 / SECTOR_BYTES;
            let start = (sector * SECTOR_BYTES) as usize;
            let end = start + SECTOR_BYTES as usize;
            return Err(format!(
                "S4: both nodes up to date but sector {sector} differs: node 0 {:?}, node 1 {:?}",
                decode_sector(&a[start..end], sector),
                decode_sector(&b[start..end], sector)
            ));
        }
        // Both hold the same state: the history starts again from it.
        self.history.rebase(&self.nodes[0].disk.visible()[..data]);
        self.follows_history = [true; 2];
        Ok(())
    }

    /// The node's data area as reads would see it.
    fn image(&self, node: usize) -> &[u8] {
        &self.nodes[node].disk.visible()[..self.layout.data_bytes as usize]
    }

    /// S2: every secondary that follows the primary holds a state of the history.
    fn check_secondaries(&mut self) -> Result<(), String> {
        for node in 0..2 {
            let Some(status) = self.status(node) else {
                continue;
            };
            let consistent = matches!(
                status.disk,
                DiskState::UpToDate | DiskState::Outdated | DiskState::Consistent
            );
            // A catch-up target is `outdated` and checked; a bitmap resync target is
            // `inconsistent` and is not.
            if !self.follows_history[node] || status.role != Role::Secondary || !consistent {
                continue;
            }
            self.report.prefix_checks += 1;
            let image = &self.nodes[node].disk.visible()[..self.layout.data_bytes as usize];
            let who = format!("node {node} ({} {})", status.disk, status.replication);
            self.history.check_prefix(image, &who)?;
        }
        Ok(())
    }

    fn heal_and_converge(&mut self) -> Result<(), String> {
        self.drain_clients()?;
        self.network.heal(self.now);
        for node in 0..2 {
            if self.nodes[node].replica.is_none() {
                self.start_node(node)?;
            }
        }
        if self.primary.is_none() {
            self.elect_after_restart()?;
        }
        self.converge(Duration::from_secs(30))?;
        if self.primary.is_some() {
            self.verify_primary(Check::Read)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let mut text = String::new();
        for node in 0..2 {
            match self.status(node) {
                Some(s) => {
                    let _ = write!(
                        text,
                        "node {node}: {} {} conn {} repl {} peer {} oos {} in flight {} unacked {} \
                         peer writes {} ({:?}); ",
                        s.role,
                        s.disk,
                        s.connection,
                        s.replication,
                        s.peer_disk,
                        s.out_of_sync_bytes,
                        s.requests_in_flight,
                        s.unacked_bytes,
                        s.peer_writes_pending,
                        s.connection_reason
                    );
                }
                None => {
                    let _ = write!(text, "node {node}: down; ");
                }
            }
        }
        text
    }

    fn verify_primary(&mut self, check: Check) -> Result<(), String> {
        let Some(primary) = self.primary else {
            return Ok(());
        };
        let data_bytes = self.layout.data_bytes;
        if check == Check::Failover {
            // Whatever the protocol, the new primary holds one moment of the history (S2). (A
            // node that crashed holds no such thing: unflushed writes vanish in any order.)
            let image = self.image(primary).to_vec();
            self.history
                .check_prefix(&image, &format!("the new primary (node {primary})"))?;
        }
        let mut offset = 0;
        while offset < data_bytes {
            let length = self.request_bytes_max.min(data_bytes - offset);
            let tag = self.submit(primary, ClientOp::Read { offset, length }, None);
            let completion = self.run_until_completion(tag)?;
            let data = match completion.result {
                Ok(Some(data)) => data,
                other => return Err(format!("verification read at {offset} failed: {other:?}")),
            };
            for (index, bytes) in data.as_slice().chunks(SECTOR_BYTES as usize).enumerate() {
                let sector = (offset / SECTOR_BYTES) as usize + index;
                let found = decode_sector(bytes, sector as u64);
                match check {
                    Check::Read => {
                        let now = self.model.now() + 1;
                        self.model.check_read(sector, now, found)?;
                        self.model.settle_volatile(sector, found);
                    }
                    Check::Failover => {
                        // Protocol A promises a prefix only (checked above): the newest
                        // completed writes may be missing.
                        if self.protocol != Protocol::A {
                            self.model.check_failover(sector, found)?;
                        }
                        // A promotion flushes: what the new primary holds is durable.
                        self.model.settle(sector, found);
                    }
                    Check::AfterCrash => {
                        self.model.check_after_crash(sector, found)?;
                        self.model.settle(sector, found);
                    }
                    Check::Adopt => self.model.settle(sector, found),
                }
            }
            offset += length;
        }
        if check != Check::Read {
            // The new primary's data is the history from here on; the other node's may not be a
            // state of it.
            let image = self.image(primary).to_vec();
            self.history.rebase(&image);
            self.follows_history[1 - primary] = false;
        }
        Ok(())
    }

    // ----- client I/O -----

    /// Client I/O on the primary; with `crash_after`, the primary dies once that many
    /// operations were submitted, with requests in flight.
    fn workload(&mut self, crash_after: Option<u64>) -> Result<(), String> {
        let Some(_) = self.primary else { return Ok(()) };
        let ops = self.prng.range_inclusive(20, 300);
        let mut submitted = 0;
        for _ in 0..200_000 {
            let Some(primary) = self.primary else { break };
            if crash_after.is_some_and(|after| submitted >= after) {
                self.note(format!(
                    "the primary dies with {} requests in flight",
                    self.pending.len()
                ));
                return self.crash_primary_now();
            }
            if submitted >= ops && self.pending.is_empty() {
                break;
            }
            if self.fault_per_mille > 0 && self.prng.below(1000) < self.fault_per_mille {
                self.network_fault();
            }
            let can_submit = submitted < ops && self.pending.len() < self.queue_depth;
            if can_submit && self.prng.chance(1, 2) {
                self.submit_random_op(primary);
                submitted += 1;
                continue;
            }
            if !self.step()? {
                if !can_submit {
                    return Err(format!(
                        "stalled with {} client requests: {}",
                        self.pending.len(),
                        self.describe()
                    ));
                }
                self.submit_random_op(primary);
                submitted += 1;
            }
        }
        Ok(())
    }

    fn network_fault(&mut self) {
        match self.prng.below(3) {
            0 => {
                self.note("network: connection broken".to_string());
                self.network.fault("connection broken", self.now);
            }
            1 => {
                let until = self.now + 1_000 * self.prng.range_inclusive(1_000, 100_000);
                self.note(format!("network: partition until {until}"));
                self.network.partition(until, self.now);
            }
            _ => {
                let until = self.now + 1_000 * self.prng.range_inclusive(1_000, 50_000);
                self.note("network: slow link".to_string());
                self.network
                    .slow_down(self.prng.range_inclusive(2, 20), until);
            }
        }
    }

    fn drain_clients(&mut self) -> Result<(), String> {
        if !self.run_until(Duration::from_secs(10), |c| c.pending.is_empty())? {
            return Err(format!(
                "client requests never completed: {}",
                self.describe()
            ));
        }
        Ok(())
    }

    fn submit_random_op(&mut self, primary: usize) {
        let (offset, length) = self.random_range();
        let op = match self.prng.below(10) {
            0..=2 => ClientOp::Read { offset, length },
            3..=6 => {
                let fua = self.prng.chance(1, 8);
                self.new_write(offset, length, fua)
            }
            7 => ClientOp::Flush,
            8 => self.new_zeroing(offset, length, true),
            _ => self.new_zeroing(offset, length, false),
        };
        let pending = match &op {
            ClientOp::Read { offset, length } => Pending::Read {
                offset: *offset,
                length: *length,
                submitted: self.model.now(),
            },
            ClientOp::Flush => Pending::Flush,
            _ => Pending::Write {
                id: self.next_write_id - 1,
            },
        };
        self.report.client_ops += 1;
        self.submit(primary, op, Some(pending));
    }

    fn submit(&mut self, node: usize, op: ClientOp, pending: Option<Pending>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Some(pending) = pending {
            if matches!(pending, Pending::Flush) {
                self.model.submit_flush(tag);
            }
            self.pending.insert(tag, pending);
        }
        let now = self.now();
        let replica = self.nodes[node]
            .replica
            .as_mut()
            .expect("submitting to a running node");
        replica.handle(
            now,
            Input::Client(ClientRequest {
                tag: RequestTag(tag),
                op,
            }),
        );
        tag
    }

    fn random_range(&mut self) -> (u64, u64) {
        let sectors_max = self.request_bytes_max / SECTOR_BYTES;
        let length = SECTOR_BYTES * self.prng.range_inclusive(1, sectors_max);
        let span = if self.prng.chance(1, 2) {
            (512 << 10).min(self.layout.data_bytes)
        } else {
            self.layout.data_bytes
        };
        let length = length.min(span);
        let offset = SECTOR_BYTES * self.prng.below((span - length) / SECTOR_BYTES + 1);
        (offset, length)
    }

    fn new_write(&mut self, offset: u64, length: u64, fua: bool) -> ClientOp {
        let id = self.next_write_id;
        self.next_write_id += 1;
        let mut buffer = IoBufMut::zeroed(length as usize);
        for (index, sector) in buffer
            .as_mut_slice()
            .chunks_mut(SECTOR_BYTES as usize)
            .enumerate()
        {
            stamp_sector(sector, id, offset / SECTOR_BYTES + index as u64);
        }
        self.model_submit(
            id,
            ModelWrite {
                offset,
                length,
                content: SectorContent::Write(id),
                fua,
            },
        );
        ClientOp::Write {
            offset,
            data: buffer.freeze(),
            fua,
        }
    }

    fn new_zeroing(&mut self, offset: u64, length: u64, trim: bool) -> ClientOp {
        let id = self.next_write_id;
        self.next_write_id += 1;
        let fua = self.prng.chance(1, 4);
        self.model_submit(
            id,
            ModelWrite {
                offset,
                length,
                content: SectorContent::Zero,
                fua,
            },
        );
        if trim {
            ClientOp::Trim {
                offset,
                length,
                fua,
            }
        } else {
            ClientOp::WriteZeroes {
                offset,
                length,
                fua,
            }
        }
    }

    fn model_submit(&mut self, id: u64, write: ModelWrite) {
        self.model.submit_write(id, write);
        let first = (write.offset / SECTOR_BYTES) as usize;
        let sectors = first..first + (write.length / SECTOR_BYTES) as usize;
        self.history
            .submit(id, sectors, write.content, self.model.now());
    }

    fn client_completion(&mut self, completion: ClientCompletion) -> Result<(), String> {
        let tag = completion.tag.0;
        let Some(pending) = self.pending.remove(&tag) else {
            return Err(format!("completion of unknown request {tag}"));
        };
        match (pending, completion.result) {
            (Pending::Write { id }, Ok(_)) => {
                self.model.complete_write(id, true);
                self.history.complete(id, self.model.now());
            }
            (
                Pending::Read {
                    offset,
                    length,
                    submitted,
                },
                Ok(Some(data)),
            ) => {
                if data.len() as u64 != length {
                    return Err(format!("read {tag} returned {} bytes", data.len()));
                }
                for (index, bytes) in data.as_slice().chunks(SECTOR_BYTES as usize).enumerate() {
                    let sector = (offset / SECTOR_BYTES) as usize + index;
                    self.model.check_read(
                        sector,
                        submitted,
                        decode_sector(bytes, sector as u64),
                    )?;
                }
            }
            (Pending::Flush, Ok(_)) => self.model.complete_flush(tag),
            (Pending::Diverging, Ok(_)) => {}
            (pending, result) => {
                return Err(format!("request {tag} ({pending:?}) ended with {result:?}"));
            }
        }
        Ok(())
    }

    // ----- the event loop -----

    fn now(&self) -> Now {
        Now {
            monotonic: Instant::from_nanos(self.now),
            unix_millis: 1_000 + self.now / 1_000_000,
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() >= 80 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{:>12} ns] {line}", self.now));
    }

    fn trace_text(&self) -> String {
        let mut text = String::from("last events:\n");
        for line in &self.trace {
            let _ = writeln!(text, "  {line}");
        }
        text
    }

    fn admin(&mut self, node: usize, command: AdminCommand) -> Result<Result<(), Refusal>, String> {
        let id = self.next_admin;
        self.next_admin += 1;
        self.note(format!("node {node}: admin {command:?}"));
        let now = self.now();
        self.nodes[node]
            .replica
            .as_mut()
            .expect("running")
            .handle(now, Input::Admin { id, command });
        self.pump(node)?;
        for _ in 0..1_000_000 {
            if let Some(result) = self.nodes[node].admin.remove(&id) {
                self.note(format!("node {node}: admin done {result:?}"));
                return Ok(result);
            }
            if self.nodes[node].replica.is_none() {
                return Err(format!("node {node} went down during an admin command"));
            }
            if !self.step()? {
                return Err(format!(
                    "node {node}: admin command stalled: {}",
                    self.describe()
                ));
            }
        }
        Err("admin command did not finish".to_string())
    }

    fn run_until_completion(&mut self, tag: u64) -> Result<ClientCompletion, String> {
        for _ in 0..1_000_000 {
            if let Some(completion) = self.verification.take_if(|c| c.tag.0 == tag) {
                return Ok(completion);
            }
            if !self.step()? {
                return Err(format!("request {tag} stalled: {}", self.describe()));
            }
        }
        Err(format!("request {tag} did not finish"))
    }

    fn run_for(&mut self, duration: Duration) -> Result<(), String> {
        let until = self.now + duration.as_nanos() as u64;
        self.run_until(duration, |c| c.now >= until).map(|_| ())
    }

    /// Runs events until `done` holds (true) or `limit` of simulated time passes or nothing is
    /// left to do (false). An `Err` is a checker's violation, never swallowed by callers.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> Result<bool, String> {
        let deadline = self.now + limit.as_nanos() as u64;
        for _ in 0..5_000_000 {
            if done(self) {
                return Ok(true);
            }
            if self.now > deadline || !self.step()? {
                return Ok(false);
            }
        }
        Err("livelock: 5 000 000 events without reaching the awaited state".to_string())
    }

    /// Delivers the earliest event. Returns false if nothing is scheduled.
    fn step(&mut self) -> Result<bool, String> {
        self.steps += 1;
        if self.steps.is_multiple_of(self.prefix_check_steps) || self.check_prefix_now {
            self.check_prefix_now = false;
            self.check_secondaries()?;
        }
        self.maybe_connect();
        let Some((at, source)) = self.next_due() else {
            return Ok(false);
        };
        self.now = self.now.max(at);
        let now = self.now();
        match source {
            Source::Network => {
                if let Some((node, delivery)) = self.network.deliver_next(self.now) {
                    self.deliver(node, delivery)?;
                }
            }
            Source::Disk(node) => {
                if let Some(completion) = self.nodes[node].disk.complete_next(self.now) {
                    let replica = self.nodes[node].replica.as_mut().expect("up");
                    replica.handle(now, Input::Storage(completion));
                    self.pump(node)?;
                }
            }
            Source::Timer(node) => {
                let replica = self.nodes[node].replica.as_mut().expect("up");
                replica.handle(now, Input::Timer);
                self.pump(node)?;
            }
        }
        Ok(true)
    }

    /// The earliest scheduled event.
    fn next_due(&self) -> Option<(u64, Source)> {
        let mut due: Option<(u64, Source)> = None;
        let mut consider = |at: Option<u64>, source: Source| {
            if let Some(at) = at
                && due.is_none_or(|(best, _)| at < best)
            {
                due = Some((at, source));
            }
        };
        consider(self.network.next_due(), Source::Network);
        for node in 0..2 {
            if self.nodes[node].replica.is_some() {
                consider(self.nodes[node].disk.next_due(), Source::Disk(node));
                let timer = self.nodes[node]
                    .replica
                    .as_ref()
                    .and_then(Replica::next_deadline);
                consider(timer.map(Instant::as_nanos), Source::Timer(node));
            }
        }
        due
    }

    /// Starts a connection when both nodes are up and want one.
    fn maybe_connect(&mut self) {
        let wants = |node: &Node| {
            node.replica
                .as_ref()
                .is_some_and(|r| r.status().connection == ConnState::Unconnected)
        };
        if wants(&self.nodes[0]) && wants(&self.nodes[1]) && !self.network.is_connected() {
            self.network.try_connect(self.now);
        }
    }

    fn deliver(&mut self, node: usize, delivery: Delivery) -> Result<(), String> {
        let now = self.now();
        let Some(replica) = self.nodes[node].replica.as_mut() else {
            return Ok(());
        };
        let input = match delivery {
            Delivery::Connected => Input::PeerConnected,
            Delivery::Message(message) => Input::PeerMessage(message),
            Delivery::Disconnected(reason) => Input::PeerDisconnected { reason },
        };
        replica.handle(now, input);
        self.pump(node)
    }

    fn pump(&mut self, node: usize) -> Result<(), String> {
        loop {
            let Some(replica) = self.nodes[node].replica.as_mut() else {
                return Ok(());
            };
            let Some(output) = replica.poll_output() else {
                return Ok(());
            };
            match output {
                Output::Storage(request) => self.nodes[node].disk.submit(request, self.now),
                Output::Client(completion) => {
                    if self.pending.contains_key(&completion.tag.0) {
                        self.client_completion(completion)?;
                    } else {
                        self.verification = Some(completion);
                    }
                }
                Output::AdminDone { id, result } => {
                    self.nodes[node].admin.insert(id, result);
                }
                Output::Event(event) => {
                    // Right after a change of state is when a replica is most likely to be
                    // caught between two states.
                    self.check_prefix_now |= matches!(
                        event,
                        Event::DiskState { .. } | Event::Replication { .. } | Event::Role { .. }
                    );
                    if let Event::Replication {
                        to: ReplState::SyncTarget,
                        ..
                    } = event
                    {
                        // A resync target takes on the source's data: it follows the history
                        // only if the source does (a primary that crashed does not).
                        self.follows_history[node] &= self.follows_history[1 - node];
                    }
                    let line = event.to_string();
                    if line.contains("split brain") && !self.expect_split_brain {
                        return Err(format!("node {node}: {line}"));
                    }
                    if line.starts_with("replication sync_target -> established") {
                        self.report.resyncs += 1;
                    }
                    if line.starts_with("replication off -> sync_source: catch-up") {
                        self.report.catch_ups.0 += 1;
                    }
                    if line.starts_with("disk outdated -> up_to_date: resync finished") {
                        self.report.catch_ups.1 += 1;
                    }
                    self.note(format!("node {node}: {line}"));
                }
                Output::PeerSend(message) => self.network.send(node, message, self.now),
                Output::PeerClose { reason } => {
                    self.note(format!("node {node}: closes the link: {reason}"));
                    self.network.close(node, &reason, self.now);
                }
            }
        }
    }
}

/// Events between two S2 checks of the secondaries.
const PREFIX_CHECK_STEPS: u64 = 61;

#[derive(Clone, Copy, Debug)]
enum Source {
    Network,
    Disk(usize),
    Timer(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Nothing crashed: the newest completed write.
    Read,
    /// The old primary died, this one did not: the newest completed write or one in flight.
    Failover,
    /// This node crashed: its durable content or later.
    AfterCrash,
    /// Nothing to check (a promotion the model cannot vouch for, such as a forced one): what
    /// the node holds is the history from here on.
    Adopt,
}
