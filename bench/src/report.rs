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
    /// `ceiling`, `engine` or `nbd`.
    pub path: &'static str,
    /// The link's codec; none for the ceiling.
    pub compression: Option<&'static str>,
    /// `random` or `compressible`.
    pub data: &'static str,
    /// Client MB/s.
    pub megabytes_per_second: f64,
    /// MB/s over the ceiling's MB/s of the same workload in this run.
    pub ratio_to_ceiling: Option<f64>,
    /// Median latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency in milliseconds.
    pub p99_ms: f64,
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
            compression,
            data,
            megabytes_per_second: measurement.megabytes_per_second(),
            ratio_to_ceiling: None,
            p50_ms: measurement.p50.as_secs_f64() * 1e3,
            p99_ms: measurement.p99.as_secs_f64() * 1e3,
            operations: measurement.operations,
            seconds: measurement.seconds,
            wire_bytes_per_payload_byte: None,
            machine_core_seconds_per_gib,
            cpu,
            ceiling_before_after: None,
        }
    }

    fn label(&self) -> String {
        match (self.compression, self.ceiling_before_after) {
            (Some(codec), _) => format!("{}, {codec}", self.path),
            (None, Some([before, after])) => {
                format!("{} (before {before:.0}, after {after:.0})", self.path)
            }
            (None, None) => self.path.to_string(),
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
            "| workload | path | MB/s | × ceiling | p50 ms | p99 ms | wire/payload | CPU busy (cores) | of which outside the bench | core-s per GiB |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
                row.workload,
                row.label(),
                row.megabytes_per_second,
                format_option(row.ratio_to_ceiling, 2),
                row.p50_ms,
                row.p99_ms,
                format_option(row.wire_bytes_per_payload_byte, 3),
                format_option(row.cpu.as_ref().map(|c| c.machine_busy_cores), 2),
                format_option(row.cpu.as_ref().map(|c| c.outside_process_cores), 2),
                format_option(row.machine_core_seconds_per_gib, 2),
            ));
        }
        for skipped in &self.skipped {
            let label = match skipped.compression {
                Some(codec) => format!("{}, {codec}", skipped.path),
                None => skipped.path.to_string(),
            };
            out.push_str(&format!(
                "| {} | {label} | skipped: {} | | | | | | | |\n",
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
