//! One simulated run. The seed picks the parameters (volume and metadata sizes, queue depth,
//! latency, error rate, crash and damage chances, operation mix: a different mix per seed) and
//! drives a replica through epochs of client I/O, each ending in a crash or a clean detach,
//! checking after every event.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

use super::disk::{DiskFaults, SimDisk};
use super::model::{Model, ModelWrite, SectorContent, decode_sector, stamp_sector};
use crate::buffer::IoBufMut;
use crate::format::{FormatOptions, InitialData, format};
use crate::generation::Generation;
use crate::journal::record::{RECORD_HEADER_BYTES, RecordKind};
use crate::layout::{Layout, LayoutParams};
use crate::prng::Prng;
use crate::replica::{
    AdminCommand, ClientCompletion, ClientOp, ClientRequest, Input, Output, PlantedBug, Refusal,
    Replica, ReplicaConfig,
};
use crate::state::DiskState;
use crate::types::{Errno, Instant, NodeId, Now, RequestTag, SECTOR_BYTES};

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct SimOptions {
    /// The seed: everything follows from it.
    pub seed: u64,
    /// A bug to plant in the replica.
    pub planted_bug: Option<PlantedBug>,
}

/// What a successful run did.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    /// Epochs run (attach, workload, crash or detach).
    pub epochs: u32,
    /// Client operations submitted.
    pub client_ops: u64,
    /// Crashes.
    pub crashes: u32,
    /// Storage operations.
    pub storage_ops: u64,
    /// I/O errors injected.
    pub errors_injected: u64,
    /// The run ended early because recovery reported damage the simulator injected on purpose.
    pub stopped_on_reported_damage: bool,
    /// Journal content checks performed.
    pub journal_checks: u32,
}

/// Runs one seed; a checker violation or a panic is an `Err` with a description.
pub fn run_seed(options: &SimOptions) -> Result<SeedReport, String> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut harness = Harness::new(options);
        let result = harness.run();
        result.map_err(|message| format!("{message}\n{}", harness.trace_text()))
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

/// Per-seed parameters.
#[derive(Clone, Debug)]
struct Swarm {
    backing_bytes: u64,
    params: LayoutParams,
    request_bytes_max: u64,
    journal_memory_bytes_max: u64,
    queue_depth: usize,
    faults: DiskFaults,
    crash_percent: u64,
    damage_percent: u64,
    /// Weights: read, write, FUA write, flush, trim, write zeroes.
    mix: [u64; 6],
    hot_region_bytes: u64,
    bitmap_flush_interval: Duration,
    epochs: u32,
}

impl Swarm {
    fn pick(prng: &mut Prng) -> Self {
        let granule_bytes = 4096u32 << prng.below(4);
        let al_extent_bytes = (granule_bytes << prng.below(4)).max(64 << 10);
        let request_bytes_max: u64 = 64 << 10;
        let slots_needed = request_bytes_max.div_ceil(u64::from(al_extent_bytes)) as u32 + 2;
        let journal_bytes = if prng.chance(1, 5) {
            0
        } else {
            4096 * prng.range_inclusive(4, 256)
        };
        let params = LayoutParams {
            granule_bytes,
            al_extent_bytes,
            al_slots: slots_needed + prng.below(6) as u32,
            journal_bytes,
        };
        let error_ppm = if prng.chance(1, 4) {
            prng.range_inclusive(200, 3000)
        } else {
            0
        };
        let latency_max_nanos = 1_000 * prng.range_inclusive(1, 300);
        Self {
            backing_bytes: (4 << 20) + 4096 * prng.below(5 * 256),
            params,
            request_bytes_max,
            journal_memory_bytes_max: 4096 * prng.below(64),
            queue_depth: prng.range_inclusive(1, 32) as usize,
            faults: DiskFaults {
                latency_min_nanos: 500,
                latency_max_nanos,
                error_ppm,
            },
            crash_percent: prng.below(90),
            damage_percent: if prng.chance(1, 3) {
                prng.range_inclusive(10, 60)
            } else {
                0
            },
            mix: [
                prng.range_inclusive(1, 30),
                prng.range_inclusive(10, 50),
                prng.below(10),
                prng.range_inclusive(1, 15),
                prng.below(8),
                prng.below(8),
            ],
            hot_region_bytes: (64 << 10) * prng.range_inclusive(1, 8),
            bitmap_flush_interval: Duration::from_micros(prng.range_inclusive(50, 5000)),
            epochs: prng.range_inclusive(2, 6) as u32,
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
}

struct Harness {
    prng: Prng,
    swarm: Swarm,
    config: ReplicaConfig,
    now_nanos: u64,
    disk: SimDisk,
    layout: Layout,
    replica: Option<Replica>,
    model: Model,
    pending: HashMap<u64, Pending>,
    next_tag: u64,
    next_write_id: u64,
    next_admin_id: u64,
    admin_results: HashMap<u64, Result<(), Refusal>>,
    trace: VecDeque<String>,
    report: SeedReport,
    /// Write chunks completed successfully since the format, for the journal check; `None` once
    /// the journal can no longer be complete (a crash or an error).
    journal_expectation: Option<Vec<(RecordKind, u64, u64)>>,
    /// Zeroing writes that were trims (the others were write-zeroes).
    trims: std::collections::HashSet<u64>,
    superblocks_damaged: bool,
}

impl Harness {
    fn new(options: &SimOptions) -> Self {
        let mut prng = Prng::from_seed(options.seed);
        let swarm = Swarm::pick(&mut prng);
        let mut config = ReplicaConfig::new("sim", NodeId(0));
        config.journal_memory_bytes_max = swarm.journal_memory_bytes_max;
        config.request_bytes_max = swarm.request_bytes_max;
        config.bitmap_flush_interval = swarm.bitmap_flush_interval;
        #[cfg(feature = "sim")]
        {
            config.planted_bug = options.planted_bug;
        }
        #[cfg(not(feature = "sim"))]
        assert!(
            options.planted_bug.is_none(),
            "planting bugs needs the sim feature"
        );
        let mut disk = SimDisk::new(swarm.backing_bytes, swarm.faults, prng.fork());
        let format_options = FormatOptions {
            volume_name: "sim".to_string(),
            params: swarm.params,
            instance_id: prng
                .next_u64()
                .to_le_bytes()
                .repeat(2)
                .try_into()
                .expect("16 bytes"),
            created_unix_millis: 1,
            initial: InitialData::InSync {
                generation: Generation(0x5EED),
            },
        };
        let image = format(swarm.backing_bytes, &format_options).expect("swarm layouts fit");
        for (offset, bytes) in &image.writes {
            disk.write_durable(*offset, bytes);
        }
        let layout = image.layout;
        Self {
            prng,
            config,
            now_nanos: 0,
            disk,
            replica: None,
            model: Model::new(layout.data_bytes),
            layout,
            pending: HashMap::new(),
            next_tag: 1,
            next_write_id: 1,
            next_admin_id: 1,
            admin_results: HashMap::new(),
            trace: VecDeque::new(),
            report: SeedReport::default(),
            journal_expectation: Some(Vec::new()),
            trims: std::collections::HashSet::new(),
            superblocks_damaged: false,
            swarm,
        }
    }

    fn run(&mut self) -> Result<SeedReport, String> {
        self.note(format!("swarm: {:?}", self.swarm));
        let mut after_crash = false;
        for epoch in 0..self.swarm.epochs {
            self.report.epochs += 1;
            if !self.start_replica(after_crash)? {
                return Ok(self.finish());
            }
            let crashed = self.workload(epoch)?;
            if crashed {
                self.crash();
                after_crash = true;
            } else {
                self.detach()?;
                after_crash = false;
            }
        }
        if self.start_replica(after_crash)? {
            self.detach()?;
        }
        Ok(self.finish())
    }

    fn finish(&mut self) -> SeedReport {
        self.report.storage_ops = self.disk.operations;
        self.report.errors_injected = self.disk.errors_injected;
        self.report.clone()
    }

    fn now(&self) -> Now {
        Now {
            monotonic: Instant::from_nanos(self.now_nanos),
            unix_millis: self.now_nanos / 1_000_000,
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() >= 60 {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{:>12} ns] {line}", self.now_nanos));
    }

    fn trace_text(&self) -> String {
        let mut text = String::from("last events:\n");
        for line in &self.trace {
            let _ = writeln!(text, "  {line}");
        }
        text
    }

    fn replica(&mut self) -> &mut Replica {
        self.replica.as_mut().expect("replica running")
    }

    /// Attaches a new replica, checks what recovery left, promotes it and verifies every sector.
    /// Returns false if the run must stop because recovery reported injected damage.
    fn start_replica(&mut self, after_crash: bool) -> Result<bool, String> {
        // I/O errors are injected during workloads only; attach and verification run clean.
        self.disk.set_faults(DiskFaults {
            error_ppm: 0,
            ..self.swarm.faults
        });
        self.replica = Some(Replica::new(self.config.clone(), self.prng.fork()));
        let backing_bytes = self.disk.len();
        match self.admin(AdminCommand::Attach { backing_bytes })? {
            Ok(()) => {}
            Err(Refusal::Attach(message)) if self.superblocks_damaged => {
                if !message.contains("superblock") {
                    return Err(format!("damaged superblocks reported unclearly: {message}"));
                }
                self.note(format!("attach refused as expected: {message}"));
                self.report.stopped_on_reported_damage = true;
                return Ok(false);
            }
            Err(refusal) => return Err(format!("attach failed: {refusal}")),
        }
        if self.superblocks_damaged {
            return Err("both superblocks were damaged but attach succeeded".to_string());
        }
        self.check_bitmap()?;
        self.check_journal()?;
        let disk = self.replica().disk_state();
        if disk != DiskState::UpToDate {
            return Err(format!(
                "after attach the disk is {disk}, expected up_to_date"
            ));
        }
        if let Err(refusal) = self.admin(AdminCommand::Promote { force: false })? {
            return Err(format!("promotion refused: {refusal}"));
        }
        self.verify_all(after_crash)?;
        Ok(true)
    }

    /// The peer was in sync at the format, when every granule was zero: every granule that is
    /// not zero now differs from the peer and must be marked out of sync.
    fn check_bitmap(&mut self) -> Result<(), String> {
        let bitmap = self
            .replica
            .as_ref()
            .and_then(|r| r.bitmap())
            .expect("attached");
        let granule_bytes = u64::from(self.layout.params.granule_bytes);
        let data = &self.disk.visible()[..self.layout.data_bytes as usize];
        for (granule, bytes) in data.chunks(granule_bytes as usize).enumerate() {
            if !bitmap.is_set(granule as u64) && bytes.iter().any(|&b| b != 0) {
                return Err(format!(
                    "granule {granule} differs from the peer's copy but is clear in the bitmap \
                     after attach"
                ));
            }
        }
        Ok(())
    }

    /// If the journal is still complete, it must hold exactly the writes since the format, each
    /// record with its write's data, overlapping writes in submission order.
    fn check_journal(&mut self) -> Result<(), String> {
        let replica = self.replica.as_ref().expect("attached");
        let journal = replica.journal().expect("attached");
        let Some(expected) = self.journal_expectation.clone() else {
            return Ok(());
        };
        if !journal.is_active() {
            // An overflow dropped it; from now on it cannot be complete.
            self.journal_expectation = None;
            return Ok(());
        }
        self.report.journal_checks += 1;
        let mut found: Vec<(RecordKind, u64, u64)> = journal
            .records()
            .map(|(h, _)| (h.kind, h.offset, u64::from(h.length)))
            .collect();
        let mut expected_sorted = expected;
        found.sort_by_key(|r| (r.1, r.2, r.0 as u8));
        expected_sorted.sort_by_key(|r| (r.1, r.2, r.0 as u8));
        if found != expected_sorted {
            return Err(format!(
                "the journal is complete but holds {} records for {} writes",
                found.len(),
                expected_sorted.len()
            ));
        }
        let mut last_writer: HashMap<u64, usize> = HashMap::new();
        let order: HashMap<u64, usize> = self
            .model
            .submission_order()
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        let records: Vec<_> = journal.records().map(|(h, o)| (*h, o)).collect();
        for (header, ring_offset) in records {
            if header.kind != RecordKind::Write {
                continue;
            }
            let Some(ring_offset) = ring_offset else {
                return Err(format!(
                    "record {} not on disk after a clean detach",
                    header.seq
                ));
            };
            let start = (self.layout.journal_offset + ring_offset + RECORD_HEADER_BYTES) as usize;
            let payload = &self.disk.visible()[start..start + header.length as usize];
            let first_sector = header.offset / SECTOR_BYTES;
            let SectorContent::Write(id) = decode_sector(&payload[..512], first_sector) else {
                return Err(format!("record {} holds no write's data", header.seq));
            };
            for (index, chunk) in payload.chunks(SECTOR_BYTES as usize).enumerate() {
                let sector = first_sector + index as u64;
                if decode_sector(chunk, sector) != SectorContent::Write(id) {
                    return Err(format!("record {} sector {sector} damaged", header.seq));
                }
                if let Some(previous) = last_writer.insert(sector, order[&id])
                    && previous > order[&id]
                {
                    return Err(format!(
                        "record {} (write {id}) overtakes a later write on sector {sector}",
                        header.seq
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads the whole volume through the replica and checks every sector: after a crash
    /// against what may survive, otherwise against the newest completed write.
    fn verify_all(&mut self, after_crash: bool) -> Result<(), String> {
        let data_bytes = self.layout.data_bytes;
        let chunk = self.swarm.request_bytes_max;
        let mut offset = 0;
        while offset < data_bytes {
            let length = chunk.min(data_bytes - offset);
            let tag = self.next_tag;
            self.next_tag += 1;
            let request = ClientRequest {
                tag: RequestTag(tag),
                op: ClientOp::Read { offset, length },
            };
            let now = self.now();
            self.replica().handle(now, Input::Client(request));
            let completion = self.run_until_client(tag)?;
            let data = match completion.result {
                Ok(Some(data)) => data,
                other => return Err(format!("verification read at {offset} failed: {other:?}")),
            };
            for (index, sector_bytes) in data.as_slice().chunks(SECTOR_BYTES as usize).enumerate() {
                let sector = (offset / SECTOR_BYTES) as usize + index;
                let found = decode_sector(sector_bytes, sector as u64);
                if after_crash {
                    self.model.check_after_crash(sector, found)?;
                } else {
                    let now = self.model.now() + 1;
                    self.model.check_read(sector, now, found)?;
                }
                self.model.settle(sector, found);
            }
            offset += length;
        }
        Ok(())
    }

    /// Runs client I/O for one epoch. Returns true if the epoch ends in a crash.
    fn workload(&mut self, epoch: u32) -> Result<bool, String> {
        let ops_target = self.prng.range_inclusive(40, 400);
        let crash_at = self
            .prng
            .chance(self.swarm.crash_percent, 100)
            .then(|| self.prng.below(ops_target));
        self.disk.set_faults(self.swarm.faults);
        self.note(format!(
            "epoch {epoch}: {ops_target} ops, crash at {crash_at:?}"
        ));
        let mut submitted = 0;
        for _ in 0..1_000_000 {
            self.pump()?;
            if self.replica().disk_state() == DiskState::Failed {
                return Ok(true); // After an I/O error the node is restarted.
            }
            if crash_at == Some(submitted) {
                // Let a few more completions land, then crash with the rest in flight.
                for _ in 0..self.prng.below(8) {
                    if !self.step_time()? {
                        break;
                    }
                    self.pump()?;
                }
                return Ok(true);
            }
            if submitted >= ops_target && self.pending.is_empty() {
                return Ok(false);
            }
            let can_submit = submitted < ops_target && self.pending.len() < self.swarm.queue_depth;
            let scheduled = self.next_event_time().is_some();
            if can_submit && (!scheduled || self.prng.chance(1, 2)) {
                self.submit_random_op()?;
                submitted += 1;
                continue;
            }
            if self.step_time()? {
                continue;
            }
            if !can_submit {
                return Err(format!(
                    "no progress: {} client requests in flight and nothing scheduled",
                    self.pending.len()
                ));
            }
        }
        Err(format!(
            "workload did not finish: {submitted} of {ops_target} submitted, {} pending, {} storage \
             ops in flight; replica: {:?}",
            self.pending.len(),
            self.disk.in_flight(),
            self.replica().debug_transaction()
        ))
    }

    fn next_event_time(&mut self) -> Option<u64> {
        let disk = self.disk.next_due();
        let timer = self.replica().next_deadline().map(Instant::as_nanos);
        match (disk, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances time to the next event and delivers it. Returns false if nothing is scheduled,
    /// or only the replica's timer while no storage operation is in flight and the timer
    /// changes nothing: a stall.
    fn step_time(&mut self) -> Result<bool, String> {
        let Some(at) = self.next_event_time() else {
            return Ok(false);
        };
        self.now_nanos = self.now_nanos.max(at);
        let now = self.now();
        if let Some(completion) = self.disk.complete_next(self.now_nanos) {
            self.replica().handle(now, Input::Storage(completion));
            return Ok(true);
        }
        self.replica().handle(now, Input::Timer);
        // A timer that started no storage operation cannot unblock anything by itself.
        Ok(self.disk.in_flight() > 0 || self.replica.as_ref().is_some_and(|r| r.has_output()))
    }

    /// Carries out every output of the replica.
    fn pump(&mut self) -> Result<(), String> {
        while let Some(output) = self.replica().poll_output() {
            match output {
                Output::Storage(request) => self.disk.submit(request, self.now_nanos),
                Output::Client(completion) => self.client_completion(completion)?,
                Output::AdminDone { id, result } => {
                    self.note(format!("admin {id} done: {result:?}"));
                    self.admin_results.insert(id, result);
                }
                Output::Event(event) => self.note(event.to_string()),
                Output::PeerSend(_) | Output::PeerClose { .. } => {
                    return Err("a stand-alone replica talked to a peer".to_string());
                }
            }
        }
        Ok(())
    }

    fn admin(&mut self, command: AdminCommand) -> Result<Result<(), Refusal>, String> {
        let id = self.next_admin_id;
        self.next_admin_id += 1;
        self.note(format!("admin {id}: {command:?}"));
        let now = self.now();
        self.replica().handle(now, Input::Admin { id, command });
        for _ in 0..1_000_000 {
            self.pump()?;
            if let Some(result) = self.admin_results.remove(&id) {
                return Ok(result);
            }
            if !self.step_time()? {
                return Err(format!("admin command {id} stalled with nothing scheduled"));
            }
        }
        Err(format!("admin command {id} did not finish"))
    }

    fn run_until_client(&mut self, tag: u64) -> Result<ClientCompletion, String> {
        for _ in 0..1_000_000 {
            while let Some(output) = self.replica().poll_output() {
                match output {
                    Output::Client(completion) if completion.tag == RequestTag(tag) => {
                        return Ok(completion);
                    }
                    Output::Storage(request) => self.disk.submit(request, self.now_nanos),
                    Output::Event(event) => self.note(event.to_string()),
                    other => return Err(format!("unexpected output while verifying: {other:?}")),
                }
            }
            if !self.step_time()? {
                return Err(format!("request {tag} stalled with nothing scheduled"));
            }
        }
        Err(format!("request {tag} did not finish"))
    }

    fn errors_possible(&self) -> bool {
        self.disk.errors_injected > 0
    }

    fn client_completion(&mut self, completion: ClientCompletion) -> Result<(), String> {
        let tag = completion.tag.0;
        let pending = self
            .pending
            .remove(&tag)
            .ok_or(format!("completion of unknown tag {tag}"))?;
        let unexpected_error =
            |errno: Errno| format!("request {tag} ({pending:?}) failed: {errno}");
        match (pending, completion.result) {
            (Pending::Write { id }, Ok(_)) => {
                self.model.complete_write(id, true);
                self.journal_write_completed(id);
            }
            (Pending::Write { id }, Err(Errno::EIO)) if self.errors_possible() => {
                self.model.complete_write(id, false);
                self.journal_expectation = None;
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
                    return Err(format!(
                        "read {tag} returned {} bytes for {length}",
                        data.len()
                    ));
                }
                for (index, bytes) in data.as_slice().chunks(SECTOR_BYTES as usize).enumerate() {
                    let sector = (offset / SECTOR_BYTES) as usize + index;
                    let found = decode_sector(bytes, sector as u64);
                    self.model.check_read(sector, submitted, found)?;
                }
            }
            (Pending::Read { .. }, Err(Errno::EIO)) if self.errors_possible() => {}
            (Pending::Flush, Ok(_)) => self.model.complete_flush(tag),
            (Pending::Flush, Err(Errno::EIO)) if self.errors_possible() => {
                self.model.fail_flush(tag)
            }
            (_, Err(errno)) => return Err(unexpected_error(errno)),
            (pending, Ok(data)) => {
                return Err(format!("request {tag} ({pending:?}) returned {data:?}"));
            }
        }
        Ok(())
    }

    fn journal_write_completed(&mut self, id: u64) {
        let write = *self.model.write(id).expect("known write");
        let extent_bytes = u64::from(self.layout.params.al_extent_bytes);
        let Some(expectation) = self.journal_expectation.as_mut() else {
            return;
        };
        match write.content {
            SectorContent::Write(_) => {
                expectation.push((RecordKind::Write, write.offset, write.length));
            }
            _ => {
                let kind = if self.trims.remove(&id) {
                    RecordKind::Trim
                } else {
                    RecordKind::WriteZeroes
                };
                let mut offset = write.offset;
                let end = write.offset + write.length;
                while offset < end {
                    let chunk_end = ((offset / extent_bytes + 1) * extent_bytes).min(end);
                    expectation.push((kind, offset, chunk_end - offset));
                    offset = chunk_end;
                }
            }
        }
    }

    fn submit_random_op(&mut self) -> Result<(), String> {
        let choice = {
            let total: u64 = self.swarm.mix.iter().sum();
            let mut pick = self.prng.below(total.max(1));
            let mut index = 0;
            while index < 5 && pick >= self.swarm.mix[index] {
                pick -= self.swarm.mix[index];
                index += 1;
            }
            index
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let (offset, length) = self.random_range();
        let (op, pending) = match choice {
            0 => {
                let submitted = self.model.now();
                (
                    ClientOp::Read { offset, length },
                    Pending::Read {
                        offset,
                        length,
                        submitted,
                    },
                )
            }
            1 | 2 => self.new_write(offset, length, choice == 2),
            3 => {
                self.model.submit_flush(tag);
                (ClientOp::Flush, Pending::Flush)
            }
            _ => self.new_zeroing(offset, length, choice == 4),
        };
        self.pending.insert(tag, pending);
        self.report.client_ops += 1;
        let now = self.now();
        self.replica().handle(
            now,
            Input::Client(ClientRequest {
                tag: RequestTag(tag),
                op,
            }),
        );
        Ok(())
    }

    fn random_range(&mut self) -> (u64, u64) {
        let sectors_max = self.swarm.request_bytes_max / SECTOR_BYTES;
        let length = SECTOR_BYTES * self.prng.range_inclusive(1, sectors_max);
        let span = if self.prng.chance(1, 2) {
            self.swarm.hot_region_bytes.min(self.layout.data_bytes)
        } else {
            self.layout.data_bytes
        };
        let length = length.min(span);
        let offset = SECTOR_BYTES * self.prng.below((span - length) / SECTOR_BYTES + 1);
        (offset, length)
    }

    fn new_write(&mut self, offset: u64, length: u64, fua: bool) -> (ClientOp, Pending) {
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
        let write = ModelWrite {
            offset,
            length,
            content: SectorContent::Write(id),
            fua,
        };
        self.model.submit_write(id, write);
        (
            ClientOp::Write {
                offset,
                data: buffer.freeze(),
                fua,
            },
            Pending::Write { id },
        )
    }

    fn new_zeroing(&mut self, offset: u64, length: u64, trim: bool) -> (ClientOp, Pending) {
        let id = self.next_write_id;
        self.next_write_id += 1;
        let fua = self.prng.chance(1, 4);
        let write = ModelWrite {
            offset,
            length,
            content: SectorContent::Zero,
            fua,
        };
        self.model.submit_write(id, write);
        if trim {
            self.trims.insert(id);
            (
                ClientOp::Trim {
                    offset,
                    length,
                    fua,
                },
                Pending::Write { id },
            )
        } else {
            (
                ClientOp::WriteZeroes {
                    offset,
                    length,
                    fua,
                },
                Pending::Write { id },
            )
        }
    }

    fn crash(&mut self) {
        self.report.crashes += 1;
        self.note(format!(
            "crash with {} storage ops in flight",
            self.disk.in_flight()
        ));
        self.replica = None;
        self.pending.clear();
        self.disk.crash();
        self.journal_expectation = None;
        if self.prng.chance(self.swarm.damage_percent, 100) {
            self.damage_metadata();
        }
    }

    /// Damages metadata in one of the ways recovery claims to handle.
    fn damage_metadata(&mut self) {
        let layout = self.layout;
        let block = crate::types::BLOCK_BYTES;
        match self.prng.below(10) {
            0 => {
                self.note("damage: both superblock copies".to_string());
                self.disk.damage(layout.superblock_offsets[0], block, 3);
                self.disk.damage(layout.superblock_offsets[1], block, 3);
                self.superblocks_damaged = true;
            }
            1..=4 => {
                let page = self.prng.below(u64::from(layout.bitmap_pages)) as u32;
                self.note(format!("damage: bitmap page {page}"));
                self.disk.damage(layout.bitmap_page_offset(page), block, 2);
            }
            5..=6 => {
                let al_block = self.prng.below(u64::from(layout.al_blocks())) as u32;
                self.note(format!(
                    "damage: both copies of activity-log block {al_block}"
                ));
                self.disk
                    .damage(layout.al_block_offset(al_block, 0), block, 2);
                self.disk
                    .damage(layout.al_block_offset(al_block, 1), block, 2);
            }
            _ if layout.params.journal_bytes > 0 => {
                self.note("damage: journal ring".to_string());
                self.disk
                    .damage(layout.journal_offset, layout.params.journal_bytes, 4);
            }
            _ => {}
        }
    }

    fn detach(&mut self) -> Result<(), String> {
        match self.admin(AdminCommand::Detach)? {
            Ok(()) => {}
            Err(refusal) => return Err(format!("detach refused: {refusal}")),
        }
        if self.replica().disk_state() != DiskState::Diskless {
            return Err("detach finished but the disk is still attached".to_string());
        }
        if self.model.writes_in_flight() {
            return Err("detach finished with client writes in flight".to_string());
        }
        self.replica = None;
        Ok(())
    }
}
