//! `tandem-bench replicated`: sequential writes to a replicated volume whose two nodes run on
//! this machine, against the ceiling of two raw writers sharing the disk, in the same run.
//!
//! For each queue depth, in this order so that a drift of the machine affects neighbours
//! alike: the ceiling ([`crate::ceiling`]); the engine with protocol C for every codec (a fresh
//! [`Pair`] each, writers calling `submit_inline` on the primary); the link alone for every
//! codec ([`crate::linkonly`]: no disks, to tell the link's cost from the disk's); the NBD path
//! for the codecs asked for (fio through tandem's NBD server), or a line saying why it was
//! skipped. Before them, how busy the machine was before the benchmark started and the per-core
//! rates of the data path's stages ([`crate::stages`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engine::layout::{Layout, LayoutParams};
use engine::protocol::compress::Compression;
use engine::runtime::backing::Backing;
use engine::runtime::link::LinkTraffic;

use crate::data::{DataKind, DataSet};
use crate::linkonly::LinkPair;
use crate::load::{self, CpuSnapshot, CpuUsage};
use crate::local::{self, EngineTarget, Schedule, Workload};
use crate::nbd::{self, NbdServer};
use crate::pair::{Pair, PairConfig, traffic_since};
use crate::report::{Measurement, Report, Row, Skipped};
use crate::stats::RunStats;
use crate::{ceiling, stages};

/// Bytes per write.
const BLOCK_BYTES: u64 = 1 << 20;

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
    /// Queue depths (writers, or fio's iodepth).
    pub queue_depths: Vec<usize>,
    /// The paths measured besides the ceiling.
    pub paths: Vec<PathKind>,
    /// Codecs of the engine and link-only measurements.
    pub compressions: Vec<Compression>,
    /// Codecs of the NBD measurements.
    pub nbd_compressions: Vec<Compression>,
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
    let span_bytes = Layout::compute(options.size_bytes, LayoutParams::default())
        .context("the volume's layout")?
        .data_bytes;
    let data = DataSet::new(options.data, BLOCK_BYTES as usize, DataSet::BLOCKS_DEFAULT);
    let mut report = Report {
        busy_cores_before: idle_check(),
        ..Report::default()
    };
    if !options.stage_time.is_zero() {
        progress("per-core stage rates");
        report.stages = measure_stages(options.stage_time)?;
    }
    let nbd_skip = if options.paths.contains(&PathKind::Nbd) {
        nbd::fio_unavailable()
    } else {
        None
    };
    for &queue_depth in &options.queue_depths {
        let workload = Workload {
            block_bytes: BLOCK_BYTES,
            random: false,
            queue_depth,
        };
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

/// One queue depth's measurements.
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
        for mut row in rows {
            row.ratio_to_ceiling = Some(row.megabytes_per_second / ceiling_rate);
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
            for &codec in &self.options.compressions {
                progress(&format!("{name}: engine, {codec}"));
                rows.push(self.engine(codec)?);
            }
        }
        if self.wants(PathKind::Link) {
            for &codec in &self.options.compressions {
                progress(&format!("{name}: link only, {codec}"));
                rows.push(self.link_only(codec)?);
            }
        }
        if !self.wants(PathKind::Nbd) {
            return Ok(rows);
        }
        for &codec in &self.options.nbd_compressions {
            match nbd_skip {
                None => {
                    progress(&format!("{name}: nbd, {codec}"));
                    rows.push(self.nbd(codec)?);
                }
                Some(reason) => {
                    eprintln!("tandem-bench: skipping the NBD path: {reason}");
                    report.skipped.push(Skipped {
                        workload: name.clone(),
                        path: "nbd",
                        compression: Some(codec.name()),
                        reason: reason.to_string(),
                    });
                }
            }
        }
        Ok(rows)
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

    fn pair(&self, codec: Compression) -> anyhow::Result<Pair> {
        Pair::start(&PairConfig {
            files: self.options.files.clone(),
            compression: codec,
        })
    }

    fn engine(&self, codec: Compression) -> anyhow::Result<Row> {
        let pair = self.pair(codec)?;
        let target = EngineTarget(pair.primary());
        let traffic_before = pair.traffic();
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
        let stats = stats.with_context(|| format!("engine, {codec}"))?;
        let traffic = traffic_since(pair.traffic(), traffic_before);
        pair.check_replicating()?;
        pair.close()?;
        self.verify_copies(&stripe_starts(self.workload, self.span_bytes))?;
        let mut row = self.row("engine", Some(codec), &Measurement::from(&stats), cpu);
        row.wire_bytes_per_payload_byte = wire_ratio(traffic);
        Ok(row)
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

    fn nbd(&self, codec: Compression) -> anyhow::Result<Row> {
        let pair = self.pair(codec)?;
        let server = NbdServer::start(&pair)?;
        let traffic_before = pair.traffic();
        let (result, cpu) = load::during(self.options.schedule.warmup, || {
            nbd::run_fio(
                &server.uri(),
                self.workload,
                self.span_bytes,
                self.options.schedule,
                self.options.data,
            )
        });
        let result = result.with_context(|| format!("nbd, {codec}"))?;
        let traffic = traffic_since(pair.traffic(), traffic_before);
        pair.check_replicating()?;
        drop(server);
        pair.close()?;
        // fio's single job starts at offset 0.
        self.verify_copies(&[0])?;
        let measurement = Measurement {
            operations: result.operations,
            bytes: result.bytes,
            seconds: result.seconds,
            p50: result.p50,
            p99: result.p99,
        };
        let mut row = self.row("nbd", Some(codec), &measurement, cpu);
        row.wire_bytes_per_payload_byte = wire_ratio(traffic);
        Ok(row)
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

/// The first block of every writer's stripe: the first write of each writer.
fn stripe_starts(workload: Workload, span_bytes: u64) -> Vec<u64> {
    let blocks = span_bytes / workload.block_bytes;
    (0..workload.queue_depth as u64)
        .map(|writer| workload.stripe_start(writer, blocks) * workload.block_bytes)
        .collect()
}

/// Watches the machine for [`IDLE_CHECK`] and warns when other work keeps it busy; returns
/// the busy cores.
fn idle_check() -> Option<f64> {
    let busy = machine_busy_cores(IDLE_CHECK);
    if let Some(busy) = busy.filter(|&busy| busy > 0.2) {
        eprintln!(
            "tandem-bench: warning: the machine was not idle before the run ({busy:.2} cores \
             busy): other work competes for the cores, expect noise"
        );
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

fn measure_stages(time: Duration) -> anyhow::Result<Vec<stages::StageRate>> {
    let random = DataSet::new(
        DataKind::Random,
        BLOCK_BYTES as usize,
        DataSet::BLOCKS_DEFAULT,
    );
    let compressible = DataSet::new(
        DataKind::Compressible,
        BLOCK_BYTES as usize,
        DataSet::BLOCKS_DEFAULT,
    );
    stages::measure(&[&random, &compressible], time)
}

fn progress(what: &str) {
    eprintln!("tandem-bench: measuring {what}");
}

/// Creates `path` of `size_bytes` with every block written once (so no measurement pays for
/// allocating blocks of a sparse file); a file already that size and fully allocated is kept.
fn prepare_file(path: &Path, size_bytes: u64) -> anyhow::Result<()> {
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
    eprintln!(
        "tandem-bench: writing {} ({} MiB) once",
        path.display(),
        size_bytes >> 20
    );
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
    eprintln!(
        "tandem-bench: written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
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
