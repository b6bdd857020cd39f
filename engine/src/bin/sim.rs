//! The simulator's command line.
//!
//! `sim --seeds N [--first S]` runs seeds S..S+N and prints, for each failing seed, the command
//! that replays it; it ends with `seeds: N, failures: F`. `sim --seed S` replays one seed and
//! prints its report. Each seed runs two scenarios: one replica over a faulty disk, and two
//! replicas over faulty disks and a faulty network (`--only single|cluster` runs one).
//! `--plant-bug NAME` plants a bug (`ack-flush-early`, `skip-bitmap-flush-on-eviction`,
//! `catch-up-unordered`) to show that the checkers catch it.

use std::process::ExitCode;
use std::time::Instant;

use engine::replica::PlantedBug;
use engine::sim::{SimOptions, run_cluster_seed, run_seed};

fn usage() -> ExitCode {
    eprintln!(
        "usage: sim (--seeds N [--first S] | --seed S) [--only single|cluster] [--plant-bug ack-flush-early|skip-bitmap-flush-on-eviction|catch-up-unordered]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = None;
    let mut first = 0u64;
    let mut single = None;
    let mut planted_bug = None;
    let mut only = None;
    let mut index = 0;
    while index < args.len() {
        let value = args.get(index + 1).map(String::as_str);
        match (args[index].as_str(), value) {
            ("--seeds", Some(v)) => seeds = v.parse::<u64>().ok(),
            ("--first", Some(v)) => first = v.parse().unwrap_or(0),
            ("--seed", Some(v)) => single = v.parse::<u64>().ok(),
            ("--only", Some(v @ ("single" | "cluster"))) => only = Some(v.to_string()),
            ("--plant-bug", Some(name)) => {
                let Some(bug) = PlantedBug::ALL.into_iter().find(|b| b.name() == name) else {
                    return usage();
                };
                planted_bug = Some(bug);
            }
            _ => return usage(),
        }
        index += 2;
    }
    // Panics are reported per seed; keep the default hook from printing each one.
    std::panic::set_hook(Box::new(|_| {}));
    let bug_flag = planted_bug.map_or(String::new(), |bug| format!(" --plant-bug {}", bug.name()));
    let run_single = only.as_deref() != Some("cluster");
    let run_cluster = only.as_deref() != Some("single");
    let run = |seed: u64| -> Result<[u64; 14], String> {
        let mut totals = [0; 14];
        if run_single {
            let report =
                run_seed(&SimOptions { seed, planted_bug }).map_err(|e| format!("single: {e}"))?;
            totals[0] += report.client_ops;
            totals[1] += u64::from(report.crashes);
            totals[2] += u64::from(report.journal_checks);
        }
        if run_cluster {
            let report = run_cluster_seed(&SimOptions { seed, planted_bug })
                .map_err(|e| format!("cluster: {e}"))?;
            totals[0] += report.client_ops;
            totals[1] += u64::from(report.crashes);
            totals[3] += u64::from(report.failovers);
            totals[4] += u64::from(report.resyncs);
            totals[5] += u64::from(report.identity_checks);
            totals[6] += u64::from(report.prefix_checks);
            totals[7] += u64::from(report.catch_ups.0);
            totals[8] += u64::from(report.catch_ups.1);
            totals[9] += u64::from(report.verifies.0);
            totals[10] += u64::from(report.verifies.1);
            totals[11] += u64::from(report.checksum_resyncs);
            totals[12] += u64::from(report.split_brains);
            totals[13] += report.pieced_writes;
        }
        Ok(totals)
    };
    if let Some(seed) = single {
        if run_single {
            match run_seed(&SimOptions { seed, planted_bug }) {
                Ok(report) => println!("seed {seed} single: ok {report:?}"),
                Err(message) => {
                    println!("seed {seed} single: FAILED: {message}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if run_cluster {
            match run_cluster_seed(&SimOptions { seed, planted_bug }) {
                Ok(report) => println!("seed {seed} cluster: ok {report:?}"),
                Err(message) => {
                    println!("seed {seed} cluster: FAILED: {message}");
                    return ExitCode::FAILURE;
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let Some(count) = seeds else { return usage() };
    let started = Instant::now();
    let mut failures = 0u64;
    let mut totals = [0u64; 14];
    for seed in first..first + count {
        match run(seed) {
            Ok(seed_totals) => {
                for (total, value) in totals.iter_mut().zip(seed_totals) {
                    *total += value;
                }
            }
            Err(message) => {
                failures += 1;
                let first_line = message.lines().next().unwrap_or_default();
                println!("seed {seed}: FAILED: {first_line}");
                let scenario = if message.starts_with("cluster") {
                    " --only cluster"
                } else {
                    ""
                };
                println!(
                    "  replay: cargo run -p engine --release --features sim --bin sim -- --seed {seed}{scenario}{bug_flag}"
                );
            }
        }
    }
    println!(
        "ran {count} seeds in {:.1} s: {} client ops, {} crashes, {} journal checks, {} failovers, \
         {} resyncs, {} identical-replica checks, {} prefix checks, {} journal catch-ups ({} \
         finished), {} verifies ({} planted corruptions found), {} checksum resyncs, {} split brains \
         resolved, {} client writes cut into pieces",
        started.elapsed().as_secs_f64(),
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        totals[5],
        totals[6],
        totals[7],
        totals[8],
        totals[9],
        totals[10],
        totals[11],
        totals[12],
        totals[13]
    );
    println!("seeds: {count}, failures: {failures}");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
