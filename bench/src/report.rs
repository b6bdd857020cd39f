//! The results of `tandem-bench replicated`: a markdown table on standard output and the same
//! numbers as JSON lines appended to a results file.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use crate::load::CpuUsage;
use crate::stages::StageRate;
use crate::stats::RunStats;

/// Bytes in a GiB.
const GIB: f64 = (1u64 << 30) as f64;

/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// What one measurement found, whatever measured it.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    /// Client writes completed in the measured time.
    pub operations: u64,
    /// Client bytes written in the measured time.
    pub bytes: u64,
    /// The measured time.
    pub seconds: f64,
    /// Median write latency.
    pub p50: Duration,
    /// 99th-percentile write latency.
    pub p99: Duration,
    /// 99.9th-percentile write latency (`None` if the tool did not report it).
    pub p999: Option<Duration>,
}

impl Measurement {
    /// Client MB (10^6) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9) / 1e6
    }
}

impl From<&RunStats> for Measurement {
    fn from(stats: &RunStats) -> Self {
        Self {
            operations: stats.operations,
            bytes: stats.bytes,
            seconds: stats.elapsed.as_secs_f64(),
            p50: stats.percentile(0.5),
            p99: stats.percentile(0.99),
            p999: Some(stats.percentile(0.999)),
        }
    }
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `seq-1MiB-qd8`.
    pub workload: String,
    /// Writers (or fio's iodepth).
    pub queue_depth: usize,
    /// `ceiling`, `engine`, `link only`, `nbd`, `local` or `raw`.
    pub path: &'static str,
    /// The replication protocol (`A`, `B`, `C`) of the engine and nbd rows.
    pub protocol: Option<&'static str>,
    /// The link's codec; none for the ceiling.
    pub compression: Option<&'static str>,
    /// `random` or `compressible`.
    pub data: &'static str,
    /// Client MB/s.
    pub megabytes_per_second: f64,
    /// Client writes per second.
    pub operations_per_second: f64,
    /// MB/s over the ceiling's MB/s of the same workload in this run.
    pub ratio_to_ceiling: Option<f64>,
    /// MB/s over the MB/s of the same path and codec with protocol C in this run.
    pub ratio_to_protocol_c: Option<f64>,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency in milliseconds.
    pub p99_ms: f64,
    /// 99.9th-percentile latency in milliseconds.
    pub p999_ms: Option<f64>,
    /// Writes measured.
    pub operations: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Link bytes on the wire per payload byte (framing, tag, compression).
    pub wire_bytes_per_payload_byte: Option<f64>,
    /// Busy CPU of the whole machine per GiB written by the client, in core-seconds.
    pub machine_core_seconds_per_gib: Option<f64>,
    /// Where the CPU went during the measured time.
    pub cpu: Option<CpuUsage>,
    /// For the ceiling: MB/s measured before and after the other paths of its depth.
    pub ceiling_before_after: Option<[f64; 2]>,
    /// For a replicated volume: how far the peer was behind (see [`PeerLag`]).
    pub peer_lag: Option<PeerLag>,
    /// Why a replicated pair failed after its run (the link dropped, the peer did not catch
    /// up): the client's numbers were measured, but the peer may not have kept up with them.
    pub failure: Option<String>,
}

/// How far the peer of a replicated volume fell behind the client during a run: under
/// protocols A and B client writes complete before the peer has written them, so the client's
/// rate alone overstates what was replicated in the measured time.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PeerLag {
    /// Bytes the peer had not written, when the measured time began.
    pub behind_at_start_bytes: u64,
    /// The most bytes the peer had not written, sampled during the measured time.
    pub behind_max_bytes: u64,
    /// Bytes the peer had not written when the writers stopped.
    pub behind_at_end_bytes: u64,
    /// The most bytes the primary's journal held in memory, sampled.
    pub journal_memory_max_bytes: u64,
    /// The most bytes of the primary's journal ring in use, sampled.
    pub journal_ring_max_bytes: u64,
    /// Journal overflows on the primary during the run.
    pub journal_overflows: u64,
    /// Seconds the peer took to write the rest once the writers stopped (`None`: it did not;
    /// see [`Row::failure`]).
    pub catch_up_seconds: Option<f64>,
    /// MB/s the peer wrote in the measured time: the client's bytes less the growth of the
    /// backlog (`None` if the pair failed: a dropped link forgets its backlog).
    pub peer_megabytes_per_second: Option<f64>,
}

impl Row {
    /// A row for `measurement`; the ratio, wire and CPU figures are filled in by the caller.
    pub fn new(
        workload: String,
        queue_depth: usize,
        path: &'static str,
        compression: Option<&'static str>,
        data: &'static str,
        measurement: &Measurement,
        cpu: Option<CpuUsage>,
    ) -> Self {
        let gib = measurement.bytes as f64 / GIB;
        let machine_core_seconds_per_gib = cpu
            .as_ref()
            .filter(|_| gib > 0.0)
            .map(|cpu| cpu.machine_busy_cores * measurement.seconds / gib);
        Self {
            workload,
            queue_depth,
            path,
            protocol: None,
            compression,
            data,
            megabytes_per_second: measurement.megabytes_per_second(),
            operations_per_second: measurement.operations as f64 / measurement.seconds.max(1e-9),
            ratio_to_ceiling: None,
            ratio_to_protocol_c: None,
            p50_ms: measurement.p50.as_secs_f64() * 1e3,
            p99_ms: measurement.p99.as_secs_f64() * 1e3,
            p999_ms: measurement.p999.map(|p999| p999.as_secs_f64() * 1e3),
            operations: measurement.operations,
            seconds: measurement.seconds,
            wire_bytes_per_payload_byte: None,
            machine_core_seconds_per_gib,
            cpu,
            ceiling_before_after: None,
            peer_lag: None,
            failure: None,
        }
    }

    /// `engine C, lz4`, `ceiling (before 510, after 498)`, `local`, `engine A, lz4 (FAILED:
    /// waiting for the secondary to catch up: …)`.
    pub fn label(&self) -> String {
        let label = self.plain_label();
        match &self.failure {
            Some(failure) => format!("{label} (FAILED: {failure})"),
            None => label,
        }
    }

    fn plain_label(&self) -> String {
        let path = match self.protocol {
            Some(protocol) => format!("{} {protocol}", self.path),
            None => self.path.to_string(),
        };
        match (self.compression, self.ceiling_before_after) {
            (Some(codec), _) => format!("{path}, {codec}"),
            (None, Some([before, after])) => {
                format!("{path} (before {before:.0}, after {after:.0})")
            }
            (None, None) => path,
        }
    }
}

/// A row whose measurement failed or was skipped, with the reason.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// `seq-1MiB-qd8`.
    pub workload: String,
    /// `engine`, `nbd`.
    pub path: &'static str,
    /// The protocol, if any.
    pub protocol: Option<&'static str>,
    /// The codec, if any.
    pub compression: Option<&'static str>,
    /// Why there is no number.
    pub reason: String,
}

/// Everything one invocation measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Busy cores of the machine in the second before the benchmark started (other work).
    pub busy_cores_before: Option<f64>,
    /// The throughput rows, in the order measured.
    pub rows: Vec<Row>,
    /// Measurements that did not happen.
    pub skipped: Vec<Skipped>,
    /// Per-core stage rates.
    pub stages: Vec<StageRate>,
}

fn format_option(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

impl Report {
    /// The throughput table, in markdown.
    pub fn throughput_table(&self) -> String {
        let mut out = String::from(
            "| workload | path | MB/s | IOPS | × ceiling | × C | p50 µs | p99 µs | p99.9 µs | peer behind max / end MiB | catch-up s | peer MB/s | wire/payload | CPU busy (cores) | of which outside the bench | core-s per GiB |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let lag = row.peer_lag.as_ref();
            // No write completed in the measured time: there is no latency to show.
            let micros = |ms: f64| {
                if row.operations == 0 {
                    "–".to_string()
                } else {
                    format!("{:.0}", ms * 1e3)
                }
            };
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.workload,
                row.label(),
                row.megabytes_per_second,
                row.operations_per_second,
                format_option(row.ratio_to_ceiling, 2),
                format_option(row.ratio_to_protocol_c, 2),
                micros(row.p50_ms),
                micros(row.p99_ms),
                row.p999_ms.map_or_else(|| "–".to_string(), micros),
                lag.map_or_else(
                    || "–".to_string(),
                    |lag| match lag.catch_up_seconds {
                        Some(_) => format!(
                            "{:.1} / {:.1}",
                            lag.behind_max_bytes as f64 / MIB,
                            lag.behind_at_end_bytes as f64 / MIB
                        ),
                        // A dropped link forgets its backlog: the end is unknown.
                        None => format!("{:.1} / –", lag.behind_max_bytes as f64 / MIB),
                    }
                ),
                format_option(lag.and_then(|lag| lag.catch_up_seconds), 2),
                format_option(lag.and_then(|lag| lag.peer_megabytes_per_second), 0),
                format_option(row.wire_bytes_per_payload_byte, 3),
                format_option(row.cpu.as_ref().map(|c| c.machine_busy_cores), 2),
                format_option(row.cpu.as_ref().map(|c| c.outside_process_cores), 2),
                format_option(row.machine_core_seconds_per_gib, 2),
            ));
        }
        for skipped in &self.skipped {
            let path = match skipped.protocol {
                Some(protocol) => format!("{} {protocol}", skipped.path),
                None => skipped.path.to_string(),
            };
            let label = match skipped.compression {
                Some(codec) => format!("{path}, {codec}"),
                None => path,
            };
            out.push_str(&format!(
                "| {} | {label} | skipped: {} | | | | | | | | | | | | | |\n",
                skipped.workload, skipped.reason
            ));
        }
        out
    }

    /// One line per row: where the CPU went.
    pub fn cpu_lines(&self) -> String {
        self.rows
            .iter()
            .filter_map(|row| {
                let cpu = row.cpu.as_ref()?;
                Some(format!(
                    "- {} {}: {}\n",
                    row.workload,
                    row.label(),
                    cpu.summary()
                ))
            })
            .collect()
    }

    /// The per-core stage table, in markdown.
    pub fn stage_table(&self) -> String {
        let mut out = String::from(
            "| stage (1 MiB blocks, one core) | data | MB/s | core-s per GiB | out/in |\n\
             |---|---|---:|---:|---:|\n",
        );
        for stage in &self.stages {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.3} | {} |\n",
                stage.stage,
                stage.data,
                stage.megabytes_per_second,
                stage.core_seconds_per_gib(),
                format_option(stage.output_ratio, 3),
            ));
        }
        out
    }

    /// Appends every number as one JSON object per line to `path`, each tagged with `run`
    /// (what this invocation was: its id and parameters).
    pub fn append_json_lines(&self, path: &Path, run: &serde_json::Value) -> anyhow::Result<()> {
        let mut lines = Vec::new();
        let mut run_line = run.clone();
        run_line["busy_cores_before"] = json!(self.busy_cores_before);
        lines.push(json!({ "kind": "run", "run": run_line }));
        for row in &self.rows {
            lines.push(json!({ "kind": "throughput", "run": run["id"], "result": row }));
        }
        for skipped in &self.skipped {
            lines.push(json!({ "kind": "skipped", "run": run["id"], "result": skipped }));
        }
        for stage in &self.stages {
            let mut value = serde_json::to_value(stage)?;
            value["core_seconds_per_gib"] = json!(stage.core_seconds_per_gib());
            lines.push(json!({ "kind": "stage", "run": run["id"], "result": value }));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = String::new();
        for line in lines {
            text.push_str(&serde_json::to_string(&line)?);
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }
}
