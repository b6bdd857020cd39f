//! `tandem-bench drbd`: DRBD 8.4 (the guest kernel's module, drbd-utils from Debian) against
//! tandem, protocol C, on the same guests and disks, in the qemu guest of `scripts/vm/`
//! (`scripts/vm/run.sh drbd-perf`, which writes its numbers to
//! `<vm dir>/logs/drbd-perf.json`). The guest runs under TCG: only the ratios mean something.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::plot::{Bar, BarChart};
use crate::progress;
use crate::results::{Results, TargetCheck};

/// What one device did in one job.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct DeviceResult {
    /// MB/s.
    pub mbps: f64,
    /// Operations per second.
    pub iops: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

/// One fio job on both devices.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DrbdJob {
    /// `write-1M-qd8`.
    pub name: String,
    /// tandem's device.
    pub tandem: DeviceResult,
    /// /dev/drbd0.
    pub drbd: DeviceResult,
    /// tandem MB/s over DRBD MB/s.
    pub ratio_mbps: f64,
}

/// What `scripts/vm/run.sh drbd-perf` reports (the fields the tables use; `raw` keeps all).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DrbdReport {
    /// `two-guests` or `one-guest`.
    pub topology: String,
    /// `C`.
    pub protocol: String,
    /// The jobs.
    pub jobs: Vec<DrbdJob>,
    /// What the scenario says about how it ran.
    #[serde(default)]
    pub notes: String,
    /// The whole report, as the scenario wrote it (CPU per write, each pass...).
    #[serde(skip)]
    pub raw: serde_json::Value,
}

/// Why the comparison cannot run from `repo`, if it cannot.
pub fn unavailable(repo: &Path) -> Option<String> {
    let script = run_script(repo);
    if !script.exists() {
        return Some(format!(
            "{} not found (run from the repository)",
            script.display()
        ));
    }
    // Everything else (qemu, the kernel, drbd-utils) scripts/vm/build-guest.sh installs.
    None
}

fn run_script(repo: &Path) -> PathBuf {
    repo.join("scripts/vm/run.sh")
}

/// Runs the guest measurement with `runtime_seconds` per fio job; its console output goes to
/// `log` (a file in the results folder).
pub fn measure(repo: &Path, runtime_seconds: u64, log: &Path) -> anyhow::Result<DrbdReport> {
    progress::step("drbd: DRBD 8.4 and tandem in the qemu guest (scripts/vm/run.sh drbd-perf)");
    let log_file =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let status = Command::new("bash")
        .arg(run_script(repo))
        .arg("drbd-perf")
        .current_dir(repo)
        .env("PERF_RUNTIME", runtime_seconds.to_string())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running scripts/vm/run.sh drbd-perf")?;
    anyhow::ensure!(
        status.success(),
        "scripts/vm/run.sh drbd-perf failed ({status}); its output is in {}",
        log.display()
    );
    let vm_dir =
        std::env::var_os("TANDEM_VM_DIR").map_or_else(|| repo.join("target/vm"), PathBuf::from);
    let path = vm_dir.join("logs/drbd-perf.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut report: DrbdReport = serde_json::from_value(raw.clone())
        .with_context(|| format!("reading the jobs of {}", path.display()))?;
    report.raw = raw;
    anyhow::ensure!(!report.jobs.is_empty(), "{} lists no job", path.display());
    Ok(report)
}

/// Writes the table, the chart and the verdict to `results`.
pub fn publish(results: &mut Results, report: &DrbdReport) -> anyhow::Result<()> {
    results.record("drbd", &report.raw)?;
    let mut text = format!(
        "Topology: {}; protocol {}. fio (libaio, O_DIRECT) on tandem's device and on \
         /dev/drbd0, same disks; the guest runs under TCG, so only the ratios mean something.\n\n\
         | job | tandem MB/s | DRBD MB/s | tandem IOPS | DRBD IOPS | tandem / DRBD |\n\
         |---|---:|---:|---:|---:|---:|\n",
        report.topology, report.protocol
    );
    let mut chart = BarChart::new("tandem / DRBD 8.4 in the guest (protocol C)", "MB/s ratio")
        .with_target(1.0, "DRBD");
    for job in &report.jobs {
        text.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} |\n",
            job.name,
            job.tandem.mbps,
            job.drbd.mbps,
            job.tandem.iops,
            job.drbd.iops,
            job.ratio_mbps
        ));
        chart.bars.push(Bar::new(job.name.clone(), job.ratio_mbps));
    }
    if !report.notes.is_empty() {
        text.push_str(&format!("\n{}\n", report.notes));
    }
    results.section("tandem against DRBD (qemu guest)", &text)?;
    results.chart("drbd", &chart)?;
    let worst = report
        .jobs
        .iter()
        .map(|job| job.ratio_mbps)
        .fold(None, |worst: Option<f64>, ratio| {
            Some(worst.map_or(ratio, |w| w.min(ratio)))
        });
    results.targets(vec![TargetCheck::at_least(
        "tandem × DRBD in the guest, worst job",
        worst,
        1.0,
        "MB/s ratio, protocol C, same guests and disks",
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_scenario_report() {
        let text = r#"{"topology":"two-guests","protocol":"C","jobs":[{"name":"write-1M-qd8",
            "tandem":{"mbps":50.5,"iops":50.5,"p50_us":1000,"p99_us":3000},
            "drbd":{"mbps":60,"iops":60,"p50_us":900,"p99_us":2000},"ratio_mbps":0.84}],
            "notes":"n"}"#;
        let report: DrbdReport = serde_json::from_str(text).expect("parsed");
        assert_eq!(report.jobs[0].name, "write-1M-qd8");
        assert!((report.jobs[0].ratio_mbps - 0.84).abs() < 1e-9);
    }
}
