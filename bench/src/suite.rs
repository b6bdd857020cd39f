//! The subcommands of `tandem-bench` that write a results folder ([`crate::results`]), and
//! `all`, which runs them in one folder: `ceiling`, `write`, `resync`, `nbd-vs-qemu`,
//! `failover` and `drbd`. `--quick` makes every one small and short (the whole of `all` in
//! under 10 minutes on a 2-core machine); without it they run at the sizes the targets name
//! (a 2 GiB volume, several seconds per measurement).

use std::path::PathBuf;
use std::time::Duration;

use engine::layout::LayoutParams;

use crate::delay::Shaping;
use crate::limits::{self, LimitOptions};
use crate::local::Schedule;
use crate::replicated::{self, Options};
use crate::results::Results;
use crate::resync::{self, ResyncOptions};
use crate::{drbd, failover, pair, progress, qemu, write};

/// A part of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The machine's limits.
    Ceiling,
    /// Writes through the engine and NBD against the ceiling.
    Write,
    /// Full, incremental and checksum resync against their ceiling.
    Resync,
    /// tandem's NBD server against qemu-nbd.
    NbdVsQemu,
    /// SIGKILL of the active daemon to the service answering on the standby.
    Failover,
    /// tandem against DRBD 8.4 in the qemu guest.
    Drbd,
}

impl Part {
    /// Every part, in the order `all` runs them.
    pub const ALL: [Self; 6] = [
        Self::Ceiling,
        Self::Write,
        Self::Resync,
        Self::NbdVsQemu,
        Self::Failover,
        Self::Drbd,
    ];

    /// The subcommand's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ceiling => "ceiling",
            Self::Write => "write",
            Self::Resync => "resync",
            Self::NbdVsQemu => "nbd-vs-qemu",
            Self::Failover => "failover",
            Self::Drbd => "drbd",
        }
    }
}

/// What every part is run with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Small and short.
    pub quick: bool,
    /// Where backing files go (a file system with `O_DIRECT`).
    pub scratch: PathBuf,
    /// Size of each backing file.
    pub size_bytes: u64,
    /// How the replication link is shaped (delay, bandwidth).
    pub shaping: Shaping,
    /// The `tandem` binary (failover).
    pub tandem: PathBuf,
    /// The repository (drbd runs `scripts/vm/run.sh` there).
    pub repo: PathBuf,
}

impl Settings {
    /// The default size of each backing file: 2 GiB (the resync target's volume), 512 MiB in a
    /// quick run.
    pub const fn default_size_bytes(quick: bool) -> u64 {
        if quick { 512 << 20 } else { 2 << 30 }
    }

    fn files(&self) -> [PathBuf; 2] {
        [
            self.scratch.join("primary.img"),
            self.scratch.join("secondary.img"),
        ]
    }

    fn schedule(&self) -> Schedule {
        if self.quick {
            Schedule {
                warmup: Duration::from_millis(500),
                measure: Duration::from_millis(1500),
            }
        } else {
            Schedule {
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(4),
            }
        }
    }

    fn stage_time(&self) -> Duration {
        Duration::from_millis(if self.quick { 200 } else { 500 })
    }

    fn write_options(&self) -> Options {
        let mut options = Options {
            files: self.files(),
            size_bytes: self.size_bytes,
            schedule: self.schedule(),
            workloads: Vec::new(),
            paths: Vec::new(),
            engine_runs: Vec::new(),
            nbd_runs: Vec::new(),
            layout: LayoutParams::default(),
            journal_memory_bytes: pair::PairConfig::new(self.files(), write::DEFAULT_CODEC)
                .journal_memory_bytes,
            link_shaping: self.shaping,
            link_compressions: Vec::new(),
            data: crate::data::DataKind::Random,
            stage_time: self.stage_time(),
        };
        write::configure(&mut options, self.quick);
        options
    }

    fn failover_runs(&self) -> usize {
        if self.quick { 1 } else { 3 }
    }

    fn guest_runtime_seconds(&self) -> u64 {
        if self.quick { 5 } else { 20 }
    }

    /// The round trip the shaping adds, µs.
    fn extra_rtt_us(&self) -> f64 {
        self.shaping.delay.as_secs_f64() * 2e6
    }

    /// Measurements `part` makes (for the progress bar).
    pub fn steps(&self, part: Part) -> u64 {
        match part {
            Part::Ceiling => limits::steps(),
            Part::Write => replicated::steps(&self.write_options()) + 1,
            Part::Resync => resync::STEPS,
            Part::NbdVsQemu => qemu::steps(),
            Part::Failover => 1 + self.failover_runs() as u64,
            Part::Drbd => 1,
        }
    }

    /// Runs `part` and writes its results.
    pub fn run(&self, part: Part, results: &mut Results) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.scratch)?;
        match part {
            Part::Ceiling => {
                let limits = limits::measure(&LimitOptions {
                    files: self.files(),
                    size_bytes: self.size_bytes,
                    schedule: self.schedule(),
                    stage_time: self.stage_time(),
                })?;
                results.record("ceiling", &limits)?;
                results.section("Ceiling: the machine's limits", &limits.tables())?;
                for (name, chart) in limits.charts() {
                    results.chart(name, &chart)?;
                }
            }
            Part::Write => {
                write::run(results, &self.write_options(), self.extra_rtt_us())?;
            }
            Part::Resync => {
                let report = resync::measure(&ResyncOptions {
                    files: self.files(),
                    size_bytes: self.size_bytes,
                    compression: write::DEFAULT_CODEC,
                    shaping: self.shaping,
                    schedule: self.schedule(),
                    latency_time: self.schedule().measure * 2,
                })?;
                resync::publish(results, &report)?;
            }
            Part::NbdVsQemu => {
                if let Some(reason) = qemu::unavailable() {
                    anyhow::bail!("nbd-vs-qemu cannot run here: {reason}");
                }
                let comparisons = qemu::measure(
                    &qemu::file_in(&self.scratch),
                    self.size_bytes,
                    self.schedule(),
                )?;
                qemu::publish(results, &comparisons)?;
            }
            Part::Failover => {
                let runs = failover::measure(
                    &self.tandem,
                    &self.scratch.join("failover"),
                    self.failover_runs(),
                )?;
                failover::publish(results, &runs)?;
            }
            Part::Drbd => {
                if let Some(reason) = drbd::unavailable(&self.repo) {
                    anyhow::bail!("drbd cannot run here: {reason}");
                }
                let log = results.dir().join("drbd-guest.log");
                let report = drbd::measure(&self.repo, self.guest_runtime_seconds(), &log)?;
                drbd::publish(results, &report)?;
            }
        }
        Ok(())
    }

    /// Runs `parts` into one results folder; a part that fails is reported there (and on
    /// standard error) and the others still run. Returns the folder and the parts that failed.
    pub fn run_all(
        &self,
        parts: &[Part],
        results: &mut Results,
    ) -> anyhow::Result<Vec<(Part, String)>> {
        progress::add(parts.iter().map(|&part| self.steps(part)).sum());
        let mut failed = Vec::new();
        for &part in parts {
            let end = progress::position() + self.steps(part);
            if let Err(error) = self.run(part, results) {
                progress::skip_to(end);
                let reason = format!("{error:#}");
                progress::note(&format!("tandem-bench: {} failed: {reason}", part.name()));
                results.record(
                    "failed",
                    &serde_json::json!({"part": part.name(), "reason": reason}),
                )?;
                results.section(
                    &format!("{}: FAILED", part.name()),
                    &format!("```\n{reason}\n```"),
                )?;
                failed.push((part, reason));
            }
        }
        progress::finish();
        Ok(failed)
    }
}
