//! The results folder of one `tandem-bench` invocation:
//!
//! - `results.jsonl`: one JSON object per line, `{"kind", "run", "result"}`; the first line is
//!   the run itself (command, machine, start time);
//! - `results.md`: the tables, the targets with their verdicts, and the charts, rewritten after
//!   every section so that an interrupted run keeps what it measured;
//! - `*.svg`: the charts ([`crate::plot`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::json;

use crate::plot::{BarChart, format_value};

/// One target of the issue the bench reports against, and what this run measured.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    /// What is compared (`protocol C sequential write × two-store ceiling`).
    pub what: String,
    /// The target, as text (`≥ 0.85`).
    pub target: String,
    /// What was measured (`None`: not measured here).
    pub measured: Option<f64>,
    /// Whether the target was met (`None`: not measured).
    pub met: Option<bool>,
    /// How it was measured, or why not.
    pub note: String,
}

impl TargetCheck {
    /// A target `measured ≥ at_least`.
    pub fn at_least(what: &str, measured: Option<f64>, at_least: f64, note: &str) -> Self {
        Self {
            what: what.to_string(),
            target: format!("≥ {}", format_value(at_least)),
            measured,
            met: measured.map(|value| value >= at_least),
            note: note.to_string(),
        }
    }

    /// A target `measured ≤ at_most`.
    pub fn at_most(what: &str, measured: Option<f64>, at_most: f64, note: &str) -> Self {
        Self {
            what: what.to_string(),
            target: format!("≤ {}", format_value(at_most)),
            measured,
            met: measured.map(|value| value <= at_most),
            note: note.to_string(),
        }
    }

    /// `met`, `MISSED` or `not measured`.
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }
}

/// A measured value beside its target: one more digit than a chart shows, so that a value
/// just under a target does not print as the target.
fn format_measured(value: f64) -> String {
    if value.abs() < 10.0 {
        format!("{value:.3}")
    } else {
        format_value(value)
    }
}

/// The markdown table of `checks`.
pub fn target_table(checks: &[TargetCheck]) -> String {
    let mut out =
        String::from("| target | wanted | measured | verdict | how |\n|---|---|---:|---|---|\n");
    for check in checks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            check.what,
            check.target,
            check
                .measured
                .map_or_else(|| "–".to_string(), format_measured),
            check.verdict(),
            check.note
        );
    }
    out
}

/// An open results folder.
#[derive(Debug)]
pub struct Results {
    dir: PathBuf,
    run_id: u64,
    markdown: String,
    checks: Vec<TargetCheck>,
}

impl Results {
    /// Creates `dir` (and its parents), writes the run line and the markdown header.
    pub fn create(dir: &Path, title: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let run_id = engine::runtime::unix_millis();
        let machine = Machine::read(dir);
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let mut results = Self {
            dir: dir.to_path_buf(),
            run_id,
            markdown: String::new(),
            checks: Vec::new(),
        };
        // A folder is one run: a second run into it starts the files anew, charts included
        // (only in a folder that holds an earlier run's results).
        if dir.join("results.jsonl").exists() {
            for entry in std::fs::read_dir(dir)?.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|extension| extension == "svg") {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        for file in ["results.jsonl", "results.md"] {
            let _ = std::fs::remove_file(dir.join(file));
        }
        results.record(
            "run",
            &json!({ "id": run_id, "command": command, "machine": machine }),
        )?;
        let _ = writeln!(results.markdown, "# {title}\n");
        let _ = writeln!(results.markdown, "`{command}`\n\n{}\n", machine.describe());
        results.write_markdown()?;
        Ok(results)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `{"kind": kind, "run": id, "result": value}` to `results.jsonl`.
    pub fn record(&mut self, kind: &str, value: &impl Serialize) -> anyhow::Result<()> {
        let line = json!({ "kind": kind, "run": self.run_id, "result": value });
        let path = self.dir.join("results.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Adds a markdown section (a heading and its text) and rewrites `results.md`.
    pub fn section(&mut self, heading: &str, text: &str) -> anyhow::Result<()> {
        let _ = writeln!(self.markdown, "## {heading}\n\n{}\n", text.trim_end());
        self.write_markdown()
    }

    /// Draws `chart` to `NAME.svg` and shows it in `results.md`.
    pub fn chart(&mut self, name: &str, chart: &BarChart) -> anyhow::Result<()> {
        if chart.bars.is_empty() {
            return Ok(());
        }
        let file = format!("{name}.svg");
        chart.draw(&self.dir.join(&file))?;
        let _ = writeln!(self.markdown, "![{}]({file})\n", chart.title);
        self.write_markdown()
    }

    /// Records target verdicts (as JSON lines now; as one table by [`Self::finish`]).
    pub fn targets(&mut self, checks: Vec<TargetCheck>) -> anyhow::Result<()> {
        for check in &checks {
            self.record("target", check)?;
        }
        self.checks.extend(checks);
        Ok(())
    }

    /// Writes the target table at the end of `results.md`; returns the folder.
    pub fn finish(mut self) -> anyhow::Result<PathBuf> {
        if !self.checks.is_empty() {
            let table = target_table(&self.checks);
            self.section("Targets", &table)?;
        }
        Ok(self.dir)
    }

    /// The targets recorded so far.
    pub fn checks(&self) -> &[TargetCheck] {
        &self.checks
    }

    fn write_markdown(&self) -> anyhow::Result<()> {
        let path = self.dir.join("results.md");
        std::fs::write(&path, &self.markdown).with_context(|| format!("writing {}", path.display()))
    }
}

/// What the numbers came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// The CPU model.
    pub cpu: String,
    /// Cores the process may use.
    pub cores: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// `uname -r`.
    pub kernel: String,
    /// The file system of the results folder (where scratch files go by default).
    pub filesystem: String,
}

impl Machine {
    /// Reads it from `/proc` (unknown fields stay empty).
    pub fn read(dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, model)| model.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_gib: memory_kib / (1u64 << 20) as f64,
            kernel,
            filesystem: filesystem_of(dir),
        }
    }

    /// One line for the markdown header.
    pub fn describe(&self) -> String {
        format!(
            "Machine: {} ({} cores), {:.0} GiB, Linux {}, results on {}.",
            if self.cpu.is_empty() {
                "unknown CPU"
            } else {
                &self.cpu
            },
            self.cores,
            self.memory_gib,
            self.kernel,
            if self.filesystem.is_empty() {
                "an unknown file system"
            } else {
                &self.filesystem
            }
        )
    }
}

/// `ext4 on /dev/vda` for the mount holding `dir`, from `/proc/self/mounts`.
fn filesystem_of(dir: &Path) -> String {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return String::new();
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), format!("{kind} on {device}")))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, described)| described)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_direction_of_the_target() {
        assert_eq!(
            TargetCheck::at_least("x", Some(0.9), 0.85, "").verdict(),
            "met"
        );
        assert_eq!(
            TargetCheck::at_least("x", Some(0.8), 0.85, "").verdict(),
            "MISSED"
        );
        assert_eq!(
            TargetCheck::at_most("x", Some(3.5), 4.0, "").verdict(),
            "met"
        );
        assert_eq!(
            TargetCheck::at_most("x", Some(4.5), 4.0, "").verdict(),
            "MISSED"
        );
        assert_eq!(
            TargetCheck::at_most("x", None, 4.0, "").verdict(),
            "not measured"
        );
    }

    #[test]
    fn a_results_folder_holds_lines_markdown_and_charts() {
        let dir = std::env::temp_dir().join(format!("tandem-results-{}", std::process::id()));
        let mut results = Results::create(&dir, "test run").expect("create");
        results
            .record("row", &json!({"mbps": 1.5}))
            .expect("record");
        results
            .section("Write", "| a | b |\n|---|---|\n")
            .expect("section");
        let mut chart = BarChart::new("chart", "MB/s");
        chart.bars.push(crate::plot::Bar::new("one", 1.0));
        results.chart("write", &chart).expect("chart");
        results
            .targets(vec![TargetCheck::at_least(
                "ratio",
                Some(0.5),
                0.85,
                "note",
            )])
            .expect("targets");
        let dir = results.finish().expect("finish");
        let lines = std::fs::read_to_string(dir.join("results.jsonl")).expect("jsonl");
        let kinds: Vec<String> = lines
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).expect("json line");
                value["kind"].as_str().expect("kind").to_string()
            })
            .collect();
        assert_eq!(kinds, ["run", "row", "target"]);
        let markdown = std::fs::read_to_string(dir.join("results.md")).expect("md");
        assert!(markdown.starts_with("# test run"), "{markdown}");
        assert!(markdown.contains("## Write"), "{markdown}");
        assert!(markdown.contains("![chart](write.svg)"), "{markdown}");
        assert!(
            markdown.contains("| ratio | ≥ 0.85 | 0.500 | MISSED | note |"),
            "{markdown}"
        );
        assert!(dir.join("write.svg").exists());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
