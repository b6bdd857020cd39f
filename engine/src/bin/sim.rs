//! The simulator's command line.
//!
//! `sim --seeds N [--first S]` runs seeds S..S+N and prints, for each failing seed, the command
//! that replays it; it ends with `seeds: N, failures: F`. `sim --seed S` replays one seed and
//! prints its report. `--plant-bug NAME` plants a bug (`ack-flush-early`,
//! `skip-bitmap-flush-on-eviction`) to show that the checkers catch it.

use std::process::ExitCode;
use std::time::Instant;

use engine::replica::PlantedBug;
use engine::sim::{SimOptions, run_seed};

fn usage() -> ExitCode {
    eprintln!(
        "usage: sim (--seeds N [--first S] | --seed S) [--plant-bug ack-flush-early|skip-bitmap-flush-on-eviction]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = None;
    let mut first = 0u64;
    let mut single = None;
    let mut planted_bug = None;
    let mut index = 0;
    while index < args.len() {
        let value = args.get(index + 1).map(String::as_str);
        match (args[index].as_str(), value) {
            ("--seeds", Some(v)) => seeds = v.parse::<u64>().ok(),
            ("--first", Some(v)) => first = v.parse().unwrap_or(0),
            ("--seed", Some(v)) => single = v.parse::<u64>().ok(),
            ("--plant-bug", Some("ack-flush-early")) => {
                planted_bug = Some(PlantedBug::AcknowledgeFlushEarly)
            }
            ("--plant-bug", Some("skip-bitmap-flush-on-eviction")) => {
                planted_bug = Some(PlantedBug::SkipBitmapFlushOnEviction);
            }
            _ => return usage(),
        }
        index += 2;
    }
    // Panics are reported per seed; keep the default hook from printing each one.
    std::panic::set_hook(Box::new(|_| {}));
    let bug_flag = match planted_bug {
        Some(PlantedBug::AcknowledgeFlushEarly) => " --plant-bug ack-flush-early",
        Some(PlantedBug::SkipBitmapFlushOnEviction) => " --plant-bug skip-bitmap-flush-on-eviction",
        None => "",
    };
    if let Some(seed) = single {
        return match run_seed(&SimOptions { seed, planted_bug }) {
            Ok(report) => {
                println!("seed {seed}: ok {report:?}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                println!("seed {seed}: FAILED: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(count) = seeds else { return usage() };
    let started = Instant::now();
    let mut failures = 0u64;
    let mut totals = (0u64, 0u64, 0u64);
    for seed in first..first + count {
        match run_seed(&SimOptions { seed, planted_bug }) {
            Ok(report) => {
                totals.0 += report.client_ops;
                totals.1 += u64::from(report.crashes);
                totals.2 += u64::from(report.journal_checks);
            }
            Err(message) => {
                failures += 1;
                let first_line = message.lines().next().unwrap_or_default();
                println!("seed {seed}: FAILED: {first_line}");
                println!(
                    "  replay: cargo run -p engine --release --features sim --bin sim -- --seed {seed}{bug_flag}"
                );
            }
        }
    }
    println!(
        "ran {count} seeds in {:.1} s: {} client ops, {} crashes, {} journal checks",
        started.elapsed().as_secs_f64(),
        totals.0,
        totals.1,
        totals.2
    );
    println!("seeds: {count}, failures: {failures}");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
