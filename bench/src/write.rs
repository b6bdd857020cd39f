//! `tandem-bench write`: 1 MiB sequential and 4 KiB random writes at depths 1 and 32, through
//! the engine and through NBD, local-only and replicated with protocols A, B and C and the
//! codecs none, lz4 and zstd, each against the ceiling of the same workload measured in the
//! same run ([`crate::replicated`] does the measuring). This module chooses the matrix, then
//! turns the report into tables, charts and the targets' verdicts.

use engine::protocol::compress::Compression;
use engine::replica::Protocol;

use crate::data::DataKind;
use crate::limits;
use crate::plot::{Bar, BarChart};
use crate::replicated::{self, Options, PathKind};
use crate::report::{Report, Row};
use crate::results::{Results, TargetCheck};

/// One replicated measurement: the link's codec and the protocol.
pub type Run = (Compression, Protocol);

/// The daemon's default codec.
pub const DEFAULT_CODEC: Compression = Compression::Lz4;

/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// The engine and NBD measurements: the whole matrix, or in a quick run every protocol with
/// lz4 (the daemon's default codec) and the other codecs with protocol C only.
pub fn matrix(quick: bool) -> (Vec<Run>, Vec<Run>) {
    let all = |codecs: &[Compression]| product(codecs, &[Protocol::A, Protocol::B, Protocol::C]);
    if quick {
        let mut engine = all(&[Compression::Lz4]);
        engine.push((Compression::None, Protocol::C));
        engine.push((Compression::Zstd, Protocol::C));
        (engine, all(&[Compression::Lz4]))
    } else {
        let codecs = [Compression::None, Compression::Lz4, Compression::Zstd];
        (all(&codecs), all(&codecs))
    }
}

/// Every codec with every protocol, codec by codec.
pub fn product(codecs: &[Compression], protocols: &[Protocol]) -> Vec<Run> {
    codecs
        .iter()
        .flat_map(|&codec| protocols.iter().map(move |&protocol| (codec, protocol)))
        .collect()
}

/// Fills `options` with this subcommand's workloads, paths and matrix.
pub fn configure(options: &mut Options, quick: bool) {
    let (engine_runs, nbd_runs) = matrix(quick);
    options.workloads = limits::workloads();
    options.engine_runs = engine_runs;
    options.nbd_runs = nbd_runs;
    options.paths = vec![PathKind::Engine, PathKind::Nbd, PathKind::Local];
    if !quick {
        options.paths.push(PathKind::Link);
        options.link_compressions = vec![Compression::None, Compression::Lz4, Compression::Zstd];
    }
}

/// Runs the measurements and writes their table, charts and verdicts to `results`.
/// `extra_rtt_us` is the round trip the link's shaping adds.
pub fn run(results: &mut Results, options: &Options, extra_rtt_us: f64) -> anyhow::Result<Report> {
    let report = replicated::run(options)?;
    crate::progress::step("write: round trip between the node addresses");
    let (rtt_p50_us, _) = limits::measure_rtt()?;
    let rtt_us = rtt_p50_us + extra_rtt_us;
    for row in &report.rows {
        results.record("write", row)?;
    }
    for skipped in &report.skipped {
        results.record("write-skipped", skipped)?;
    }
    for stage in &report.stages {
        results.record("stage", stage)?;
    }
    results.section(
        "Write: throughput and latency against the ceiling",
        &format!(
            "{}\n{LEGEND}\nRound trip between the node addresses: {rtt_us:.0} µs.\n",
            report.throughput_table()
        ),
    )?;
    for workload in &options.workloads {
        let name = workload.name();
        let mut chart = BarChart::new(format!("{name}: MB/s × the two-store ceiling"), "× ceiling");
        if !workload.random {
            chart = chart.with_target(0.85, "target for protocol C (0.85)");
        }
        for row in report.rows.iter().filter(|row| row.workload == name) {
            if let Some(ratio) = row.ratio_to_ceiling {
                chart.bars.push(Bar::new(row.label(), ratio));
            }
        }
        results.chart(&format!("write-{name}"), &chart)?;
    }
    if let Some(chart) = latency_chart(&report, rtt_us) {
        results.chart("write-latency-rand-4KiB-qd1", &chart)?;
    }
    results.targets(checks(&report, rtt_us))?;
    Ok(report)
}

const LEGEND: &str = "ceiling: both backing files written at once, raw O_DIRECT (per file: \
the most a replicated client can see); engine X: two nodes in this process over an encrypted \
link on loopback, protocol X; nbd X: fio's nbd engine through tandem's NBD server on the \
primary; local: one engine volume without a peer. Incompressible data.";

/// p50 at 4 KiB depth 1 for every path, with the target line for protocol C.
fn latency_chart(report: &Report, rtt_us: f64) -> Option<BarChart> {
    let rows: Vec<&Row> = report
        .rows
        .iter()
        .filter(|row| row.workload == "rand-4KiB-qd1" && row.operations > 0)
        .collect();
    let local = rows.iter().find(|row| row.path == "local")?;
    let target = local.p50_ms * 1e3 + rtt_us + 100.0;
    let mut chart = BarChart::new("4 KiB random writes, depth 1: median latency", "p50 µs")
        .with_target(target, "local p50 + RTT + 100 µs");
    for row in rows {
        chart.bars.push(Bar::new(row.label(), row.p50_ms * 1e3));
    }
    Some(chart)
}

/// The engine row of `workload` with `protocol` and `codec`.
fn engine_row<'a>(
    report: &'a Report,
    workload: &str,
    protocol: &str,
    codec: &str,
) -> Option<&'a Row> {
    report.rows.iter().find(|row| {
        row.workload == workload
            && row.path == "engine"
            && row.protocol == Some(protocol)
            && row.compression == Some(codec)
            && row.failure.is_none()
    })
}

/// The verdicts of the write targets.
pub fn checks(report: &Report, rtt_us: f64) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    for depth in [1, 32] {
        let workload = format!("seq-1MiB-qd{depth}");
        let row = engine_row(report, &workload, "C", "lz4");
        checks.push(TargetCheck::at_least(
            &format!("protocol C 1 MiB sequential write, depth {depth}, × two-store ceiling"),
            row.and_then(|row| row.ratio_to_ceiling),
            0.85,
            "engine C, lz4, against both stores written at once in the same run",
        ));
    }
    let local = report
        .rows
        .iter()
        .find(|row| row.workload == "rand-4KiB-qd1" && row.path == "local");
    let c = engine_row(report, "rand-4KiB-qd1", "C", "lz4");
    let excess = local
        .zip(c)
        .map(|(local, c)| (c.p50_ms - local.p50_ms) * 1e3 - rtt_us);
    checks.push(TargetCheck::at_most(
        "4 KiB depth-1 protocol C p50 − (local p50 + RTT), µs",
        excess,
        100.0,
        &format!("engine C, lz4; RTT {rtt_us:.0} µs measured between the node addresses"),
    ));
    checks.push(encryption_check(report));
    checks
}

/// AES-256-GCM's share of the CPU a replicated 1 MiB write costs: sealing on the primary and
/// opening on the secondary (per-core rates measured in the same run) over the machine's busy
/// core-seconds per GiB of the protocol C run. When the run is CPU-bound this is the share of
/// throughput encryption costs; when the disk limits it, an upper bound.
fn encryption_check(report: &Report) -> TargetCheck {
    let stage = |name: &str| {
        report
            .stages
            .iter()
            .find(|rate| rate.stage == name && rate.data == DataKind::Random)
            .map(|rate| GIB / (rate.megabytes_per_second * 1e6))
    };
    let crypto_core_seconds_per_gib = stage("aes-256-gcm seal")
        .zip(stage("aes-256-gcm open"))
        .map(|(seal, open)| seal + open);
    let row = engine_row(report, "seq-1MiB-qd32", "C", "none")
        .or_else(|| engine_row(report, "seq-1MiB-qd32", "C", "lz4"));
    let share = crypto_core_seconds_per_gib
        .zip(row.and_then(|row| row.machine_core_seconds_per_gib))
        .map(|(crypto, total)| crypto / total * 100.0);
    TargetCheck::at_most(
        "encryption's share of a replicated write's CPU, %",
        share,
        10.0,
        "AES-256-GCM seal + open core-s per GiB (per-core rates) over the machine's busy \
         core-s per GiB of engine C, 1 MiB, depth 32; there is no plaintext mode to compare",
    )
}
