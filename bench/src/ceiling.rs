//! The ceiling of replication when both nodes share one disk: both backing files written at the
//! same time, without replication, with the same pattern and queue depth each, through the
//! same `O_DIRECT` path the engine uses. Replication writes every client byte once on each
//! node, so the client can at best see the rate of one of these two writers.

use std::path::Path;

use anyhow::Context as _;
use engine::runtime::backing::Backing;

use crate::data::DataSet;
use crate::local::{self, RawTarget, Schedule, Workload};
use crate::stats::RunStats;

/// Writes both files at once; returns the client-visible equivalent: the bytes and operations
/// of the two writers averaged (one client write is one write on each file), over the longer
/// of the two runs, with the latencies of every write on either file.
pub fn run(
    files: [&Path; 2],
    workload: Workload,
    span_bytes: u64,
    schedule: Schedule,
    data: &DataSet,
) -> anyhow::Result<RunStats> {
    run_files(
        &[(files[0], "ceiling-a"), (files[1], "ceiling-b")],
        workload,
        span_bytes,
        schedule,
        data,
    )
}

/// Writes every file of `files` at once, each by its own group of writer threads named after
/// it; returns the per-file average as [`run`] does. With one file this is a raw writer alone.
pub fn run_files(
    files: &[(&Path, &str)],
    workload: Workload,
    span_bytes: u64,
    schedule: Schedule,
    data: &DataSet,
) -> anyhow::Result<RunStats> {
    let mut targets = Vec::with_capacity(files.len());
    for &(file, name) in files {
        let backing = Backing::open(file).with_context(|| format!("opening {}", file.display()))?;
        targets.push((RawTarget(backing), name));
    }
    let results: Vec<anyhow::Result<RunStats>> = std::thread::scope(|scope| {
        let runs: Vec<_> = targets
            .iter()
            .map(|(target, name)| {
                scope.spawn(move || {
                    local::run_with(target, workload, span_bytes, schedule, data, name)
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a ceiling writer panicked")))
            })
            .collect()
    });
    let mut runs = Vec::with_capacity(files.len());
    for result in results {
        runs.push(result?);
    }
    Ok(combine(&runs))
}

/// The per-file average of several simultaneous runs.
fn combine(runs: &[RunStats]) -> RunStats {
    let count = runs.len().max(1) as u64;
    let operations = runs.iter().map(|r| r.operations).sum::<u64>() / count;
    let bytes = runs.iter().map(|r| r.bytes).sum::<u64>() / count;
    let elapsed = runs.iter().map(|r| r.elapsed).max().unwrap_or_default();
    let latencies = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    RunStats::new(operations, bytes, elapsed, latencies)
}
