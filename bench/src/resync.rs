//! `tandem-bench resync`: how fast two nodes heal, against the ceiling of copying one store to
//! the other measured in the same run.
//!
//! On one pair ([`Pair`], both nodes in this process, an encrypted link on loopback):
//! 1. a full sync of the whole volume (`resync --full` from the primary);
//! 2. incremental resyncs: the link cut, 1% (then 10%) of the volume written on the primary
//!    as distinct 4 KiB blocks spread over it, the link back, until both are `up_to_date`
//!    (whether the engine replays its journal or resyncs from the bitmap is reported);
//! 3. a checksum resync of identical data (digests compared, only differing granules sent);
//! 4. a client writing 4 KiB blocks at depth 1 with protocol C, idle and during a full sync:
//!    its p99 latency in both.
//!
//! Ceiling: the volume's data area copied raw from one store to the other (1 MiB `O_DIRECT`
//! reads and writes, 8 at a time: the bytes a full sync moves, without the engine), before the
//! syncs and after them, and TCP between the node addresses; the lower of the mean copy rate and
//! TCP. After the syncs both data areas are compared byte for byte.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engine::layout::{Layout, LayoutParams};
use engine::protocol::compress::Compression;
use engine::replica::AdminCommand;
use engine::runtime::backing::Backing;
use serde::Serialize;

use crate::data::{DataKind, DataSet};
use crate::delay::Shaping;
use crate::local::{self, EngineTarget, Schedule, Target, Workload};
use crate::pair::{Pair, PairConfig, traffic_since};
use crate::plot::{Bar, BarChart};
use crate::progress;
use crate::results::{Results, TargetCheck};
use crate::stats::RunStats;
use crate::{limits, replicated};

/// How long any one sync may take before the run fails.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// Chunks the raw copy (the ceiling) moves at a time, as the resync window holds 16.
const COPY_WORKERS: u64 = 8;

/// Writers of the dirty blocks while the link is cut.
const DIRTY_WRITERS: u64 = 8;

/// What `resync` needs.
#[derive(Clone, Debug)]
pub struct ResyncOptions {
    /// The two backing files (prepared once).
    pub files: [PathBuf; 2],
    /// Their size.
    pub size_bytes: u64,
    /// The link's codec.
    pub compression: Compression,
    /// The link's shaping.
    pub shaping: Shaping,
    /// Warm-up and measured time of the ceiling's measurements.
    pub schedule: Schedule,
    /// How long the client writes while idle (and at most during the sync).
    pub latency_time: Duration,
}

/// One sync measured.
#[derive(Clone, Debug, Serialize)]
pub struct ResyncRow {
    /// `full sync`, `incremental after 1% dirty`, ...
    pub what: String,
    /// The volume's data bytes.
    pub volume_bytes: u64,
    /// Bytes written on the primary while the link was cut (0 for full and checksum).
    pub dirty_bytes: u64,
    /// How the engine synced (`full`, `bitmap`, `journal`, `checksum`), as its status said.
    pub kinds: Vec<&'static str>,
    /// From the command (or the link's return) to both `up_to_date`.
    pub seconds: f64,
    /// The bytes the sync had to cover (the volume, or the dirty bytes) per second, MB/s.
    pub megabytes_per_second: f64,
    /// Bytes on the wire, both directions.
    pub wire_bytes: u64,
    /// MB/s over the ceiling's MB/s (full and checksum syncs, which cover the volume).
    pub ratio_to_ceiling: Option<f64>,
}

/// The ceiling of a sync: the same bytes copied raw from one store to the other, and TCP.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SyncCeiling {
    /// The volume's data area copied from the primary's file to the secondary's (1 MiB
    /// `O_DIRECT` reads and writes, 8 at a time), before the syncs and after them, MB/s.
    pub copy_megabytes_per_second: [f64; 2],
    /// TCP between the node addresses, one stream, MB/s.
    pub tcp_megabytes_per_second: f64,
    /// The rate the link was shaped to (`--rate-mbit`), MB/s.
    pub link_rate_megabytes_per_second: Option<f64>,
}

impl SyncCeiling {
    /// The lowest of the mean copy rate, TCP and the shaped link's rate.
    pub fn megabytes_per_second(&self) -> f64 {
        let [before, after] = self.copy_megabytes_per_second;
        ((before + after) / 2.0)
            .min(self.tcp_megabytes_per_second)
            .min(self.link_rate_megabytes_per_second.unwrap_or(f64::INFINITY))
    }
}

/// A client's latency, idle and during a full sync.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClientLatency {
    /// Writes measured idle.
    pub idle_operations: u64,
    /// p50 idle, µs.
    pub idle_p50_us: f64,
    /// p99 idle, µs.
    pub idle_p99_us: f64,
    /// Writes measured during the sync.
    pub during_operations: u64,
    /// p50 during the sync, µs.
    pub during_p50_us: f64,
    /// p99 during the sync, µs.
    pub during_p99_us: f64,
    /// How long the full sync took with the client writing.
    pub sync_seconds: f64,
}

/// Everything `resync` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ResyncReport {
    /// The ceiling.
    pub ceiling: SyncCeiling,
    /// The syncs.
    pub rows: Vec<ResyncRow>,
    /// The client's latency.
    pub latency: ClientLatency,
}

/// Measurements [`measure`] makes (for the progress bar).
pub const STEPS: u64 = 7;

/// Runs every measurement.
pub fn measure(options: &ResyncOptions) -> anyhow::Result<ResyncReport> {
    for file in &options.files {
        replicated::prepare_file(file, options.size_bytes)?;
    }
    progress::step("resync: ceiling (the data area copied raw from one store to the other; TCP)");
    let data_bytes = data_bytes(options.size_bytes)?;
    let copy_before = raw_copy(&options.files, data_bytes)?;
    let tcp = limits::measure_tcp(options.schedule.measure)?;
    let config = PairConfig {
        link_shaping: options.shaping,
        ..PairConfig::new(options.files.clone(), options.compression)
    };
    let mut pair = Pair::start(&config)?;
    let volume_bytes = pair.primary().status().size_bytes;
    let mut rows = Vec::new();

    progress::step("resync: full sync");
    let row = timed_sync(&mut pair, "full sync", volume_bytes, 0, |pair| {
        pair.admin(0, full_resync())
    })?;
    rows.push(row);

    for percent in [1, 10] {
        progress::step(&format!("resync: incremental after {percent}% dirty"));
        pair.cut()?;
        let dirty_bytes = write_dirty(&pair, volume_bytes, percent)?;
        let what = format!("incremental after {percent}% dirty");
        let row = timed_sync(&mut pair, &what, volume_bytes, dirty_bytes, Pair::relink)?;
        rows.push(row);
    }

    progress::step("resync: checksum resync of identical data");
    let row = timed_sync(
        &mut pair,
        "checksum resync, identical data",
        volume_bytes,
        0,
        |pair| {
            pair.admin(
                0,
                AdminCommand::Resync {
                    full: false,
                    checksum: true,
                },
            )
        },
    )?;
    rows.push(row);

    progress::step("resync: client latency idle, then during a full sync");
    let latency = client_latency(&pair, volume_bytes, options.latency_time)?;
    pair.close()?;
    progress::step("resync: comparing both data areas; the raw copy again");
    compare_data(&options.files, data_bytes)?;
    let ceiling = SyncCeiling {
        copy_megabytes_per_second: [copy_before, raw_copy(&options.files, data_bytes)?],
        tcp_megabytes_per_second: tcp.megabytes_per_second,
        link_rate_megabytes_per_second: options
            .shaping
            .rate_bytes_per_second
            .map(|rate| rate as f64 / 1e6),
    };
    for row in &mut rows {
        // Full and checksum syncs cover the volume, as the copy does.
        if row.dirty_bytes == 0 {
            row.ratio_to_ceiling = Some(row.megabytes_per_second / ceiling.megabytes_per_second());
        }
    }
    Ok(ResyncReport {
        ceiling,
        rows,
        latency,
    })
}

fn full_resync() -> AdminCommand {
    AdminCommand::Resync {
        full: true,
        checksum: false,
    }
}

/// Runs `start`, then waits until the pair is in sync; measures the time and the wire bytes.
fn timed_sync(
    pair: &mut Pair,
    what: &str,
    volume_bytes: u64,
    dirty_bytes: u64,
    start: impl FnOnce(&mut Pair) -> anyhow::Result<()>,
) -> anyhow::Result<ResyncRow> {
    let traffic_before = pair.traffic();
    let started = Instant::now();
    start(pair).with_context(|| format!("starting the {what}"))?;
    let kinds = pair
        .wait_synced(SYNC_TIMEOUT)
        .with_context(|| format!("waiting for the {what}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let traffic = traffic_since(pair.traffic(), traffic_before);
    let covered = if dirty_bytes > 0 {
        dirty_bytes
    } else {
        volume_bytes
    };
    Ok(ResyncRow {
        what: what.to_string(),
        volume_bytes,
        dirty_bytes,
        kinds,
        seconds,
        megabytes_per_second: covered as f64 / seconds / 1e6,
        wire_bytes: traffic.wire_bytes_sent + traffic.wire_bytes_received,
        ratio_to_ceiling: None,
    })
}

/// Writes `percent`% of the volume on the primary as distinct 4 KiB blocks spread over it;
/// returns the bytes written.
fn write_dirty(pair: &Pair, volume_bytes: u64, percent: u64) -> anyhow::Result<u64> {
    let block_bytes = replicated::RANDOM_BLOCK_BYTES;
    let blocks = volume_bytes / block_bytes;
    let count = blocks * percent / 100;
    // A stride coprime with the block count visits distinct blocks spread over the volume.
    let stride = (1..)
        .map(|k| blocks / 2 + k)
        .find(|&stride| gcd(stride, blocks) == 1)
        .unwrap_or(1);
    let data = DataSet::new(DataKind::Random, block_bytes as usize, 1024);
    let target = EngineTarget(pair.primary());
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..DIRTY_WRITERS)
            .map(|writer| {
                let (target, data) = (&target, &data);
                scope.spawn(move || -> anyhow::Result<()> {
                    for index in (writer..count).step_by(DIRTY_WRITERS as usize) {
                        let block = index * stride % blocks;
                        target.io(block * block_bytes, data.block(index))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for writer in writers {
            writer
                .join()
                .map_err(|_| anyhow::anyhow!("a dirty-block writer panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(count * block_bytes)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A 4 KiB depth-1 writer on the primary for `time` idle, then during a full sync (until the
/// sync ends, at most `time`; the sync is then waited for).
fn client_latency(pair: &Pair, volume_bytes: u64, time: Duration) -> anyhow::Result<ClientLatency> {
    let workload = Workload {
        block_bytes: replicated::RANDOM_BLOCK_BYTES,
        random: true,
        queue_depth: 1,
    };
    let data = DataSet::new(DataKind::Random, workload.block_bytes as usize, 1024);
    let target = EngineTarget(pair.primary());
    let schedule = Schedule {
        warmup: Duration::from_millis(200),
        measure: time,
    };
    let idle = local::run_with(&target, workload, volume_bytes, schedule, &data, "client")?;
    let started = Instant::now();
    pair.admin(0, full_resync())?;
    let syncing = AtomicBool::new(true);
    let (during, synced) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_while(&target, &data, volume_bytes, &syncing, time));
        let synced = pair.wait_synced(SYNC_TIMEOUT);
        syncing.store(false, Ordering::Relaxed);
        let during = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the client writer panicked")));
        (during, synced)
    });
    synced.context("the full sync under client writes")?;
    let sync_seconds = started.elapsed().as_secs_f64();
    let during = during?;
    anyhow::ensure!(
        during.operations > 0,
        "no client write completed during the sync"
    );
    let micros = |stats: &RunStats, q| stats.percentile(q).as_secs_f64() * 1e6;
    Ok(ClientLatency {
        idle_operations: idle.operations,
        idle_p50_us: micros(&idle, 0.5),
        idle_p99_us: micros(&idle, 0.99),
        during_operations: during.operations,
        during_p50_us: micros(&during, 0.5),
        during_p99_us: micros(&during, 0.99),
        sync_seconds,
    })
}

/// 4 KiB writes at random offsets, one at a time, while `going` holds (at most `time`).
fn write_while(
    target: &dyn Target,
    data: &DataSet,
    volume_bytes: u64,
    going: &AtomicBool,
    time: Duration,
) -> anyhow::Result<RunStats> {
    let block_bytes = replicated::RANDOM_BLOCK_BYTES;
    let blocks = volume_bytes / block_bytes;
    let mut prng = engine::prng::Prng::from_seed(0xC11E);
    let started = Instant::now();
    let operations = AtomicU64::new(0);
    let mut latencies = Vec::new();
    while going.load(Ordering::Relaxed) && started.elapsed() < time {
        let block = prng.below(blocks);
        let begun = Instant::now();
        target.io(block * block_bytes, data.block(block))?;
        latencies.push(begun.elapsed());
        operations.fetch_add(1, Ordering::Relaxed);
    }
    Ok(RunStats::new(
        operations.into_inner(),
        latencies.len() as u64 * block_bytes,
        started.elapsed(),
        latencies,
    ))
}

/// Copies `[0, data_bytes)` of the first file to the second, as a sync moves it without the
/// engine: 1 MiB `O_DIRECT` reads and writes, [`COPY_WORKERS`] chunks at a time. Returns MB/s.
fn raw_copy(files: &[PathBuf; 2], data_bytes: u64) -> anyhow::Result<f64> {
    let [source, target] = files;
    let source = Backing::open(source).context("opening the source store")?;
    let target = Backing::open(target).context("opening the target store")?;
    let chunk = replicated::SEQUENTIAL_BLOCK_BYTES;
    let chunks = data_bytes.div_ceil(chunk);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..COPY_WORKERS)
            .map(|worker| {
                let (source, target) = (&source, &target);
                scope.spawn(move || -> anyhow::Result<()> {
                    for index in (worker..chunks).step_by(COPY_WORKERS as usize) {
                        let offset = index * chunk;
                        let length = chunk.min(data_bytes - offset);
                        let data = source.read(offset, length).map_err(|errno| {
                            anyhow::anyhow!("raw copy: reading at {offset}: errno {}", errno.0)
                        })?;
                        let op = engine::replica::StorageOp::Write {
                            offset,
                            data,
                            fua: false,
                        };
                        target.execute(&op).map_err(|errno| {
                            anyhow::anyhow!("raw copy: writing at {offset}: errno {}", errno.0)
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a copy worker panicked"))??;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(data_bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

fn data_bytes(size_bytes: u64) -> anyhow::Result<u64> {
    Ok(Layout::compute(size_bytes, LayoutParams::default())
        .context("the volume's layout")?
        .data_bytes)
}

/// Compares the data areas of both files, 4 MiB at a time.
fn compare_data(files: &[PathBuf; 2], data_bytes: u64) -> anyhow::Result<()> {
    let open =
        |file: &PathBuf| Backing::open(file).with_context(|| format!("opening {}", file.display()));
    let (first, second) = (open(&files[0])?, open(&files[1])?);
    let chunk = 4u64 << 20;
    for offset in (0..data_bytes).step_by(chunk as usize) {
        let length = chunk.min(data_bytes - offset);
        let read = |backing: &Backing| {
            backing
                .read(offset, length)
                .map_err(|errno| anyhow::anyhow!("reading at {offset}: errno {}", errno.0))
        };
        anyhow::ensure!(
            read(&first)?.as_slice() == read(&second)?.as_slice(),
            "after the resyncs the two data areas differ in [{offset}, {})",
            offset + length
        );
    }
    Ok(())
}

/// Writes the tables, the chart and the verdicts to `results`.
pub fn publish(results: &mut Results, report: &ResyncReport) -> anyhow::Result<()> {
    for row in &report.rows {
        results.record("resync", row)?;
    }
    results.record("resync-ceiling", &report.ceiling)?;
    results.record("resync-latency", &report.latency)?;
    let ceiling = report.ceiling;
    let shaped = ceiling
        .link_rate_megabytes_per_second
        .map_or_else(String::new, |rate| {
            format!("; the link shaped to {rate:.0} MB/s")
        });
    let mut text = format!(
        "Ceiling: {:.0} MB/s (the data area copied raw from one store to the other at {:.0} MB/s \
         before the syncs and {:.0} MB/s after them; TCP {:.0} MB/s{shaped}).\n\n\
         | sync | volume MiB | dirty MiB | how | seconds | MB/s | × ceiling | wire MiB |\n\
         |---|---:|---:|---|---:|---:|---:|---:|\n",
        ceiling.megabytes_per_second(),
        ceiling.copy_megabytes_per_second[0],
        ceiling.copy_megabytes_per_second[1],
        ceiling.tcp_megabytes_per_second
    );
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    for row in &report.rows {
        text.push_str(&format!(
            "| {} | {:.0} | {:.1} | {} | {:.2} | {:.0} | {} | {:.1} |\n",
            row.what,
            mib(row.volume_bytes),
            mib(row.dirty_bytes),
            row.kinds.join(", "),
            row.seconds,
            row.megabytes_per_second,
            row.ratio_to_ceiling
                .map_or_else(|| "–".to_string(), |ratio| format!("{ratio:.2}")),
            mib(row.wire_bytes)
        ));
    }
    let latency = report.latency;
    text.push_str(&format!(
        "\nA client writing 4 KiB blocks at depth 1 (protocol C): idle p50 {:.0} µs, p99 {:.0} \
         µs ({} writes); during a full sync p50 {:.0} µs, p99 {:.0} µs ({} writes; the sync \
         took {:.1} s with the client writing). MB/s of an incremental resync counts the dirty \
         bytes; the data areas of both nodes were compared byte for byte afterwards.\n",
        latency.idle_p50_us,
        latency.idle_p99_us,
        latency.idle_operations,
        latency.during_p50_us,
        latency.during_p99_us,
        latency.during_operations,
        latency.sync_seconds
    ));
    results.section("Resync", &text)?;
    let mut chart = BarChart::new("Resync: seconds to both up_to_date", "seconds");
    for row in &report.rows {
        chart.bars.push(Bar::new(row.what.clone(), row.seconds));
    }
    results.chart("resync-seconds", &chart)?;
    results.targets(checks(report))
}

/// The verdicts of the resync targets.
pub fn checks(report: &ResyncReport) -> Vec<TargetCheck> {
    let find = |what: &str| report.rows.iter().find(|row| row.what == what);
    let full = find("full sync");
    let incremental = find("incremental after 1% dirty");
    let mut checks = vec![TargetCheck::at_least(
        "full sync × its ceiling",
        full.and_then(|row| row.ratio_to_ceiling),
        0.85,
        "volume bytes per second over min(raw copy of the data area, TCP, shaped link rate), measured in the run",
    )];
    if let (Some(full), Some(incremental)) = (full, incremental) {
        let bound = 0.02 * full.seconds + 1.0;
        checks.push(TargetCheck::at_most(
            "incremental resync after 1% dirty, seconds",
            Some(incremental.seconds),
            bound,
            &format!("bound: 0.02 × the full sync ({:.2} s) + 1 s", full.seconds),
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dirty_stride_visits_distinct_blocks() {
        let blocks = 1000u64;
        let stride = (1..)
            .map(|k| blocks / 2 + k)
            .find(|&stride| gcd(stride, blocks) == 1)
            .expect("a stride");
        let visited: std::collections::BTreeSet<u64> =
            (0..blocks).map(|index| index * stride % blocks).collect();
        assert_eq!(visited.len() as u64, blocks);
    }
}
