//! `tandem-bench replicated`: writes to a replicated volume whose two nodes run on this machine,
//! against the ceiling of two raw writers sharing the disk, in the same run.
//!
//! For each workload (1 MiB sequential or 4 KiB random writes at one queue depth), in this order
//! so that a drift of the machine affects neighbours alike: the ceiling ([`crate::ceiling`]);
//! the engine for every codec and protocol (a fresh [`Pair`] each, writers calling
//! `submit_inline` on the primary); the link alone for every codec ([`crate::linkonly`]: no
//! disks, to tell the link's cost from the disk's); the NBD path for the codecs and protocols
//! asked for (fio through tandem's NBD server), or a line saying why it was skipped; one engine
//! volume without a peer (`local`); one raw writer alone (`raw`); the ceiling again. Before
//! them, how busy the machine was before the benchmark started and the per-core rates of the
//! data path's stages ([`crate::stages`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engine::layout::{Layout, LayoutParams};
use engine::protocol::compress::Compression;
use engine::replica::Protocol;
use engine::runtime::VolumeHandle;
use engine::runtime::backing::Backing;
use engine::runtime::link::LinkTraffic;

use crate::ceiling;
use crate::data::{DataKind, DataSet};
use crate::delay::Shaping;
use crate::linkonly::LinkPair;
use crate::load::{self, CpuSnapshot, CpuUsage};
use crate::local::{self, EngineTarget, Schedule, Target, Workload};
use crate::nbd::{self, NbdServer};
use crate::pair::{self, Backlog, Pair, PairConfig, traffic_since};
use crate::report::{Measurement, PeerLag, Report, Row, Skipped};
use crate::stats::RunStats;

/// Bytes per write of the sequential workloads, and of the blocks the stage rates use.
pub const SEQUENTIAL_BLOCK_BYTES: u64 = 1 << 20;

/// Bytes per write of the random workloads.
pub const RANDOM_BLOCK_BYTES: u64 = 4 << 10;

/// Bytes of distinct data the writers cycle through (see [`DataSet`]).
const DATA_POOL_BYTES: u64 = 64 << 20;

/// How long the peer may take to write what it was sent once the writers stop (under
/// protocols A and B it may be behind by the replication window).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the peer's backlog is sampled during a replicated run.
const BACKLOG_SAMPLE: Duration = Duration::from_millis(20);

/// Writers that prime an engine volume's activity log (see [`Bench::prime`]).
const PRIME_WRITERS: u64 = 8;

/// How long the machine is watched before the benchmark, to tell whether it is idle.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What is measured besides the ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PathKind {
    /// Two volumes linked in this process, writes through the primary's `submit_inline`.
    Engine,
    /// The link alone, no volumes or disks: the other end acknowledges at once.
    Link,
    /// fio `--ioengine=nbd` through tandem's NBD server on the primary.
    Nbd,
    /// One engine volume on the primary's file, without a peer.
    Local,
    /// One raw `O_DIRECT` writer on the primary's file, alone.
    Raw,
}

/// The name of a protocol in tables and results.
pub const fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::A => "A",
        Protocol::B => "B",
        Protocol::C => "C",
    }
}

/// What to measure and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// The backing files of the primary and the secondary (created, pre-written once).
    pub files: [PathBuf; 2],
    /// Size of each backing file (data area plus metadata).
    pub size_bytes: u64,
    /// Warm-up and measured time of every measurement.
    pub schedule: Schedule,
    /// What the writers do, in order (queue depth = writers, or fio's iodepth).
    pub workloads: Vec<Workload>,
    /// The paths measured besides the ceiling.
    pub paths: Vec<PathKind>,
    /// The engine measurements: codec and protocol of each, in order.
    pub engine_runs: Vec<(Compression, Protocol)>,
    /// The NBD measurements: codec and protocol of each, in order.
    pub nbd_runs: Vec<(Compression, Protocol)>,
    /// The metadata layout of both nodes (the journal ring is `journal_bytes` of it).
    pub layout: LayoutParams,
    /// Payload bytes of each node's journal memory tier.
    pub journal_memory_bytes: u64,
    /// How the link is shaped: delay and bandwidth of each direction (none: as it is).
    pub link_shaping: Shaping,
    /// Codecs of the link-only measurements.
    pub link_compressions: Vec<Compression>,
    /// What the client writes.
    pub data: DataKind,
    /// Time per stage rate (zero: skip them).
    pub stage_time: Duration,
}

/// Runs every measurement and returns the report; progress goes to standard error.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    for file in &options.files {
        prepare_file(file, options.size_bytes)?;
        check_direct_io(file)?;
    }
    let span_bytes = Layout::compute(options.size_bytes, options.layout)
        .context("the volume's layout")?
        .data_bytes;
    let mut report = Report {
        busy_cores_before: idle_check(),
        ..Report::default()
    };
    if !options.stage_time.is_zero() {
        progress("per-core stage rates");
        report.stages = crate::limits::measure_stage_rates(options.stage_time)?;
    }
    let nbd_skip = if options.paths.contains(&PathKind::Nbd) {
        nbd::fio_unavailable()
    } else {
        None
    };
    if let Some(reason) = &nbd_skip {
        crate::progress::note(&format!("tandem-bench: skipping the NBD path: {reason}"));
    }
    for &workload in &options.workloads {
        let blocks = (DATA_POOL_BYTES / workload.block_bytes).max(1) as usize;
        let data = DataSet::new(options.data, workload.block_bytes as usize, blocks);
        let bench = Bench {
            options,
            workload,
            span_bytes,
            data: &data,
        };
        bench.measure_depth(&mut report, nbd_skip.as_deref())?;
    }
    Ok(report)
}

/// One workload's measurements.
struct Bench<'a> {
    options: &'a Options,
    workload: Workload,
    span_bytes: u64,
    data: &'a DataSet,
}

impl Bench<'_> {
    /// Measures the ceiling, every path, and the ceiling again: the ratios use the mean of
    /// the two ceilings, so a drift of the disk during the depth's measurements shows (in
    /// [`Row::ceiling_before_after`]) instead of skewing them.
    fn measure_depth(&self, report: &mut Report, nbd_skip: Option<&str>) -> anyhow::Result<()> {
        let name = self.workload.name();
        progress(&format!("{name}: ceiling"));
        let before = self.ceiling()?;
        let rows = self.measure_paths(report, nbd_skip)?;
        progress(&format!("{name}: ceiling again"));
        let after = self.ceiling()?;
        let ceiling = combine_ceilings(before, after);
        let ceiling_rate = ceiling.megabytes_per_second;
        report.rows.push(ceiling);
        let protocol_c_rate = |row: &Row| {
            rows.iter()
                .find(|c| {
                    c.path == row.path
                        && c.compression == row.compression
                        && c.protocol == Some(protocol_name(Protocol::C))
                })
                .map(|c| c.megabytes_per_second)
        };
        let ratios: Vec<Option<f64>> = rows
            .iter()
            .map(|row| {
                row.protocol?;
                Some(row.megabytes_per_second / protocol_c_rate(row)?)
            })
            .collect();
        for (mut row, ratio) in rows.into_iter().zip(ratios) {
            row.ratio_to_ceiling = Some(row.megabytes_per_second / ceiling_rate);
            row.ratio_to_protocol_c = ratio;
            report.rows.push(row);
        }
        Ok(())
    }

    /// Every path but the ceiling; skipped paths go to `report` at once.
    fn measure_paths(
        &self,
        report: &mut Report,
        nbd_skip: Option<&str>,
    ) -> anyhow::Result<Vec<Row>> {
        let name = self.workload.name();
        let mut rows = Vec::new();
        if self.wants(PathKind::Engine) {
            for &(codec, protocol) in &self.options.engine_runs {
                let protocol_name = protocol_name(protocol);
                progress(&format!("{name}: engine {protocol_name}, {codec}"));
                match self.engine(codec, protocol) {
                    Ok(row) => rows.push(row),
                    Err(error) => self.failed(report, "engine", protocol, codec, &error),
                }
            }
        }
        if self.wants(PathKind::Link) {
            for &codec in &self.options.link_compressions {
                progress(&format!("{name}: link only, {codec}"));
                rows.push(self.link_only(codec)?);
            }
        }
        if self.wants(PathKind::Nbd) {
            for &(codec, protocol) in &self.options.nbd_runs {
                let protocol_name = protocol_name(protocol);
                match nbd_skip {
                    None => {
                        progress(&format!("{name}: nbd {protocol_name}, {codec}"));
                        match self.nbd(codec, protocol) {
                            Ok(row) => rows.push(row),
                            Err(error) => self.failed(report, "nbd", protocol, codec, &error),
                        }
                    }
                    Some(reason) => {
                        progress(&format!("{name}: nbd {protocol_name}, {codec}: skipped"));
                        report.skipped.push(Skipped {
                            workload: name.clone(),
                            path: "nbd",
                            protocol: Some(protocol_name),
                            compression: Some(codec.name()),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
        }
        if self.wants(PathKind::Local) {
            progress(&format!("{name}: local (no peer)"));
            rows.push(self.local_only()?);
        }
        if self.wants(PathKind::Raw) {
            progress(&format!("{name}: raw, one file"));
            rows.push(self.raw_alone()?);
        }
        Ok(rows)
    }

    /// Records a replicated measurement that could not be taken (the pair did not start, a
    /// write failed, the copies differ; a pair that fails after its run keeps its row, see
    /// [`Row::failure`]): a finding about the engine, so the other measurements go on.
    fn failed(
        &self,
        report: &mut Report,
        path: &'static str,
        protocol: Protocol,
        codec: Compression,
        error: &anyhow::Error,
    ) {
        let reason = format!("failed: {error:#}");
        crate::progress::note(&format!(
            "tandem-bench: {} {path} {}, {codec}: {reason}",
            self.workload.name(),
            protocol_name(protocol)
        ));
        report.skipped.push(Skipped {
            workload: self.workload.name(),
            path,
            protocol: Some(protocol_name(protocol)),
            compression: Some(codec.name()),
            reason,
        });
    }

    fn wants(&self, path: PathKind) -> bool {
        self.options.paths.contains(&path)
    }

    fn row(
        &self,
        path: &'static str,
        codec: Option<Compression>,
        measurement: &Measurement,
        cpu: Option<CpuUsage>,
    ) -> Row {
        Row::new(
            self.workload.name(),
            self.workload.queue_depth,
            path,
            codec.map(Compression::name),
            self.options.data.name(),
            measurement,
            cpu,
        )
    }

    fn pair_config(&self, codec: Compression, protocol: Protocol) -> PairConfig {
        PairConfig {
            files: self.options.files.clone(),
            compression: codec,
            protocol,
            layout: self.options.layout,
            journal_memory_bytes: self.options.journal_memory_bytes,
            link_shaping: self.options.link_shaping,
        }
    }

    fn ceiling(&self) -> anyhow::Result<(RunStats, Option<CpuUsage>, Row)> {
        let [primary, secondary] = &self.options.files;
        let (stats, cpu) = load::during(self.options.schedule.warmup, || {
            ceiling::run(
                [primary, secondary],
                self.workload,
                self.span_bytes,
                self.options.schedule,
                self.data,
            )
        });
        let stats = stats?;
        let row = self.row("ceiling", None, &Measurement::from(&stats), cpu.clone());
        Ok((stats, cpu, row))
    }

    fn pair(&self, codec: Compression, protocol: Protocol) -> anyhow::Result<Pair> {
        Pair::start(&self.pair_config(codec, protocol))
    }

    fn engine(&self, codec: Compression, protocol: Protocol) -> anyhow::Result<Row> {
        let what = format!("engine {}, {codec}", protocol_name(protocol));
        let pair = self.pair(codec, protocol)?;
        let target = EngineTarget(pair.primary());
        self.prime(&target).with_context(|| what.clone())?;
        pair.wait_caught_up(CATCH_UP_TIMEOUT)
            .with_context(|| format!("{what}: after priming"))?;
        let traffic_before = pair.traffic();
        let ((stats, backlog), cpu) = load::during(self.options.schedule.warmup, || {
            watch_backlog(&pair.primary(), self.options.schedule.warmup, || {
                local::run_with(
                    &target,
                    self.workload,
                    self.span_bytes,
                    self.options.schedule,
                    self.data,
                    "writer",
                )
            })
        });
        let stats = stats.with_context(|| format!("{what}: during the run"))?;
        let settled = settle(&pair);
        let traffic = traffic_since(pair.traffic(), traffic_before);
        let measurement = Measurement::from(&stats);
        let mut row = self.row("engine", Some(codec), &measurement, cpu);
        row.protocol = Some(protocol_name(protocol));
        row.wire_bytes_per_payload_byte = wire_ratio(traffic);
        match settled {
            Ok(catch_up) => {
                pair.close()?;
                self.verify_copies(&first_blocks(self.workload, self.span_bytes))?;
                row.peer_lag = Some(backlog.lag(&measurement, Some(catch_up)));
            }
            Err(error) => {
                // The link's stop and the volumes' detach are bounded; their errors add nothing.
                let _ = pair.close();
                row.peer_lag = Some(backlog.lag(&measurement, None));
                row.failure = Some(self.failure(&what, &error));
            }
        }
        Ok(row)
    }

    /// One engine volume on the primary's file, without a peer.
    fn local_only(&self) -> anyhow::Result<Row> {
        let [primary, _] = &self.options.files;
        let config = self.pair_config(Compression::None, Protocol::C);
        let volume = pair::open_local_only(primary, &config)?;
        let target = EngineTarget(volume.handle());
        self.prime(&target).context("local")?;
        let (stats, cpu) = load::during(self.options.schedule.warmup, || {
            local::run_with(
                &target,
                self.workload,
                self.span_bytes,
                self.options.schedule,
                self.data,
                "writer",
            )
        });
        let journal = Backlog::of(&volume.handle());
        volume
            .close()
            .map_err(|refusal| anyhow::anyhow!("closing the local volume: {refusal}"))?;
        let stats = stats.context("local")?;
        if journal != Backlog::default() {
            crate::progress::note(&format!(
                "tandem-bench: the local volume's journal at the end: {journal:?}"
            ));
        }
        Ok(self.row("local", None, &Measurement::from(&stats), cpu))
    }

    /// One raw writer group on the primary's file, alone: what the local volume is up against.
    fn raw_alone(&self) -> anyhow::Result<Row> {
        let [primary, _] = &self.options.files;
        let (stats, cpu) = load::during(self.options.schedule.warmup, || {
            ceiling::run_files(
                &[(primary, "raw")],
                self.workload,
                self.span_bytes,
                self.options.schedule,
                self.data,
            )
        });
        let stats = stats.context("raw")?;
        Ok(self.row("raw", None, &Measurement::from(&stats), cpu))
    }

    /// Before a measurement on a freshly formatted engine volume: writes one block at the start
    /// of every activity-log extent of the span, so that the measurement sees the log hot (the
    /// steady state of a working set the log covers) instead of one metadata transaction per
    /// first write to an extent, which on this disk take milliseconds each and would fill a
    /// short warm-up. Skipped if the span has more extents than the log has slots: then
    /// transactions are the steady state. Not measured.
    fn prime(&self, target: &dyn Target) -> anyhow::Result<()> {
        let layout = self.options.layout;
        let extent_bytes = u64::from(layout.al_extent_bytes);
        let extents = self.span_bytes.div_ceil(extent_bytes);
        if extents > u64::from(layout.al_slots) {
            return Ok(());
        }
        let block = self.data.block(0);
        let block_bytes = block.len() as u64;
        let span_bytes = self.span_bytes;
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..PRIME_WRITERS)
                .map(|writer| {
                    scope.spawn(move || -> anyhow::Result<()> {
                        for extent in (writer..extents).step_by(PRIME_WRITERS as usize) {
                            let offset = extent * extent_bytes;
                            if offset + block_bytes <= span_bytes {
                                target.io(offset, block)?;
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for writer in writers {
                writer
                    .join()
                    .map_err(|_| anyhow::anyhow!("a priming writer panicked"))??;
            }
            Ok(())
        })
    }

    /// Checks that both backing files hold the same block at each of `offsets` (blocks the
    /// run certainly wrote): a cheap proof that the writes were replicated.
    fn verify_copies(&self, offsets: &[u64]) -> anyhow::Result<()> {
        let [primary, secondary] = &self.options.files;
        let open = |file: &PathBuf| {
            Backing::open(file).with_context(|| format!("opening {}", file.display()))
        };
        let (primary, secondary) = (open(primary)?, open(secondary)?);
        for &offset in offsets {
            let read = |backing: &Backing| {
                backing
                    .read(offset, self.workload.block_bytes)
                    .map_err(|errno| anyhow::anyhow!("reading at {offset}: errno {}", errno.0))
            };
            anyhow::ensure!(
                read(&primary)?.as_slice() == read(&secondary)?.as_slice(),
                "the primary and the secondary differ at offset {offset}: not replicated"
            );
        }
        Ok(())
    }

    fn link_only(&self, codec: Compression) -> anyhow::Result<Row> {
        let link = LinkPair::start(codec)?;
        let (result, cpu) = load::during(self.options.schedule.warmup, || {
            link.run(
                self.workload,
                self.span_bytes,
                self.options.schedule,
                self.data,
            )
        });
        link.close();
        let (stats, traffic) = result.with_context(|| format!("link only, {codec}"))?;
        let mut row = self.row("link only", Some(codec), &Measurement::from(&stats), cpu);
        row.wire_bytes_per_payload_byte = wire_ratio(traffic);
        Ok(row)
    }

    fn nbd(&self, codec: Compression, protocol: Protocol) -> anyhow::Result<Row> {
        let what = format!("nbd {}, {codec}", protocol_name(protocol));
        let pair = self.pair(codec, protocol)?;
        self.prime(&EngineTarget(pair.primary()))
            .with_context(|| what.clone())?;
        pair.wait_caught_up(CATCH_UP_TIMEOUT)
            .with_context(|| format!("{what}: after priming"))?;
        let server = NbdServer::start(&pair)?;
        let traffic_before = pair.traffic();
        let ((result, backlog), cpu) = load::during(self.options.schedule.warmup, || {
            watch_backlog(&pair.primary(), self.options.schedule.warmup, || {
                nbd::run_fio(
                    &server.uri(),
                    self.workload,
                    self.span_bytes,
                    self.options.schedule,
                    self.options.data,
                )
            })
        });
        let result = result.with_context(|| format!("{what}: during the run"))?;
        let settled = settle(&pair);
        let traffic = traffic_since(pair.traffic(), traffic_before);
        drop(server);
        let measurement = Measurement {
            operations: result.operations,
            bytes: result.bytes,
            seconds: result.seconds,
            p50: result.p50,
            p99: result.p99,
            p999: result.p999,
        };
        let mut row = self.row("nbd", Some(codec), &measurement, cpu);
        row.protocol = Some(protocol_name(protocol));
        row.wire_bytes_per_payload_byte = wire_ratio(traffic);
        match settled {
            Ok(catch_up) => {
                pair.close()?;
                // fio's single job starts at offset 0 (sequential); a random job's offsets are
                // fio's, so any block serves: both copies must agree everywhere.
                self.verify_copies(&[0])?;
                row.peer_lag = Some(backlog.lag(&measurement, Some(catch_up)));
            }
            Err(error) => {
                let _ = pair.close();
                row.peer_lag = Some(backlog.lag(&measurement, None));
                row.failure = Some(self.failure(&what, &error));
            }
        }
        Ok(row)
    }

    /// Says that the pair measured for `what` failed after its run, and returns why.
    fn failure(&self, what: &str, error: &anyhow::Error) -> String {
        let reason = format!("{error:#}");
        crate::progress::note(&format!(
            "tandem-bench: {} {what}: failed after the run: {reason}",
            self.workload.name()
        ));
        reason
    }
}

/// One ceiling row from the measurements before and after a depth's paths: their writes and
/// latencies together, the CPU of the first, both rates kept.
fn combine_ceilings(
    before: (RunStats, Option<CpuUsage>, Row),
    after: (RunStats, Option<CpuUsage>, Row),
) -> Row {
    let (before_stats, cpu, mut row) = before;
    let (after_stats, _, after_row) = after;
    let both = RunStats::concat(&[before_stats, after_stats]);
    let combined = Row::new(
        row.workload.clone(),
        row.queue_depth,
        row.path,
        None,
        row.data,
        &Measurement::from(&both),
        cpu,
    );
    let rates = [row.megabytes_per_second, after_row.megabytes_per_second];
    row = combined;
    row.ratio_to_ceiling = Some(1.0);
    row.ceiling_before_after = Some(rates);
    row
}

/// After a replicated run: the link must still be up (else the run measured a primary that had
/// lost its peer), then the secondary must write what it was sent. Returns how long that took.
fn settle(pair: &Pair) -> anyhow::Result<Duration> {
    pair.check_replicating().context("right after the run")?;
    pair.wait_caught_up(CATCH_UP_TIMEOUT)
        .context("waiting for the secondary to catch up")
}

/// The offset of every writer's first write (for sequential writers the start of the stripe).
fn first_blocks(workload: Workload, span_bytes: u64) -> Vec<u64> {
    let blocks = span_bytes / workload.block_bytes;
    (0..workload.queue_depth as u64)
        .map(|writer| workload.first_block(writer, blocks) * workload.block_bytes)
        .collect()
}

/// What [`watch_backlog`] saw.
#[derive(Clone, Copy, Debug, Default)]
struct BacklogWatch {
    /// When the warm-up ended.
    at_start: Backlog,
    /// The largest of every field, sampled after the warm-up.
    max: Backlog,
    /// When the work returned.
    at_end: Backlog,
    /// Before anything ran (journal overflows are counted from here).
    before: Backlog,
}

impl BacklogWatch {
    fn lag(&self, measurement: &Measurement, catch_up: Option<Duration>) -> PeerLag {
        let growth = self
            .at_end
            .unacked_bytes
            .saturating_sub(self.at_start.unacked_bytes);
        let shrink = self
            .at_start
            .unacked_bytes
            .saturating_sub(self.at_end.unacked_bytes);
        let peer_bytes = (measurement.bytes + shrink).saturating_sub(growth);
        PeerLag {
            behind_at_start_bytes: self.at_start.unacked_bytes,
            behind_max_bytes: self.max.unacked_bytes,
            behind_at_end_bytes: self.at_end.unacked_bytes,
            journal_memory_max_bytes: self.max.journal_memory_bytes,
            journal_ring_max_bytes: self.max.journal_ring_bytes,
            journal_overflows: self
                .at_end
                .journal_overflows
                .saturating_sub(self.before.journal_overflows),
            catch_up_seconds: catch_up.map(|catch_up| catch_up.as_secs_f64()),
            // The backlog of a link that dropped was forgotten, not written.
            peer_megabytes_per_second: catch_up
                .map(|_| peer_bytes as f64 / measurement.seconds.max(1e-9) / 1e6),
        }
    }
}

/// Runs `work` while a thread samples `primary`'s backlog every [`BACKLOG_SAMPLE`]: at the end
/// of `warmup`, its maximum after that, and at the end.
fn watch_backlog<T>(
    primary: &VolumeHandle,
    warmup: Duration,
    work: impl FnOnce() -> T,
) -> (T, BacklogWatch) {
    let done = AtomicBool::new(false);
    let before = Backlog::of(primary);
    std::thread::scope(|scope| {
        let sampler = std::thread::Builder::new()
            .name("backlog-sampler".to_string())
            .spawn_scoped(scope, || {
                let started = Instant::now();
                let mut watch = BacklogWatch {
                    before,
                    ..BacklogWatch::default()
                };
                let mut measuring = false;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(BACKLOG_SAMPLE);
                    let now = Backlog::of(primary);
                    if !measuring && started.elapsed() >= warmup {
                        measuring = true;
                        watch.at_start = now;
                    }
                    if measuring {
                        watch.max = watch.max.max(now);
                    }
                }
                watch
            });
        let result = work();
        let at_end = Backlog::of(primary);
        done.store(true, Ordering::Relaxed);
        let mut watch = sampler
            .ok()
            .and_then(|sampler| sampler.join().ok())
            .unwrap_or(BacklogWatch {
                before,
                ..BacklogWatch::default()
            });
        watch.at_end = at_end;
        watch.max = watch.max.max(at_end);
        (result, watch)
    })
}

/// Watches the machine for [`IDLE_CHECK`] and warns when other work keeps it busy; returns
/// the busy cores.
fn idle_check() -> Option<f64> {
    let busy = machine_busy_cores(IDLE_CHECK);
    if let Some(busy) = busy.filter(|&busy| busy > 0.2) {
        crate::progress::note(&format!(
            "tandem-bench: warning: the machine was not idle before the run ({busy:.2} cores \
             busy): other work competes for the cores, expect noise"
        ));
    }
    busy
}

/// Busy cores of the whole machine over `time`, before anything runs; `None` without `/proc`.
fn machine_busy_cores(time: Duration) -> Option<f64> {
    let before = CpuSnapshot::take().ok()?;
    std::thread::sleep(time);
    let after = CpuSnapshot::take().ok()?;
    Some(after.since(&before).machine_busy_cores)
}

fn wire_ratio(traffic: LinkTraffic) -> Option<f64> {
    (traffic.payload_bytes_sent > 0)
        .then(|| traffic.wire_bytes_sent as f64 / traffic.payload_bytes_sent as f64)
}

fn progress(what: &str) {
    crate::progress::step(what);
}

/// Measurements [`run`] makes with `options` (for the progress bar).
pub fn steps(options: &Options) -> u64 {
    let wants = |path| u64::from(options.paths.contains(&path));
    let per_workload = 2
        + wants(PathKind::Engine) * options.engine_runs.len() as u64
        + wants(PathKind::Link) * options.link_compressions.len() as u64
        + wants(PathKind::Nbd) * options.nbd_runs.len() as u64
        + wants(PathKind::Local)
        + wants(PathKind::Raw);
    per_workload * options.workloads.len() as u64 + u64::from(!options.stage_time.is_zero())
}

/// Creates `path` of `size_bytes` with every block written once (so no measurement pays for
/// allocating blocks of a sparse file); a file already that size and fully allocated is kept.
pub fn prepare_file(path: &Path, size_bytes: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.len() == size_bytes
        && metadata.blocks() * 512 >= size_bytes
    {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let started = Instant::now();
    crate::progress::note(&format!(
        "tandem-bench: writing {} ({} MiB) once",
        path.display(),
        size_bytes >> 20
    ));
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < size_bytes {
        let length = (size_bytes - written).min(chunk.len() as u64) as usize;
        writer.write_all(&chunk[..length])?;
        written += length as u64;
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    crate::progress::note(&format!(
        "tandem-bench: written in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Refuses a backing file without `O_DIRECT`: its writes would measure the page cache.
fn check_direct_io(path: &Path) -> anyhow::Result<()> {
    let backing = Backing::open(path).with_context(|| format!("opening {}", path.display()))?;
    anyhow::ensure!(
        backing.direct_align_bytes().is_some(),
        "{}: the file system does not support O_DIRECT; put the files elsewhere (--primary-file, --secondary-file)",
        path.display()
    );
    Ok(())
}
