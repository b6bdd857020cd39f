//! `fuzz-run`: runs fuzz targets on stable Rust, without libFuzzer.
//!
//! ```text
//! fuzz-run TARGET|all COUNT [SEED]   COUNT inputs (or, as `90s`, for that long) per target:
//!                                    the corpus, then mutations of it and random bytes
//! fuzz-run replay TARGET FILE...     runs the target on the given files
//! fuzz-run seed-corpus               writes every target's seeds to fuzz/corpus/TARGET/
//! fuzz-run list                      prints the target names
//! ```
//!
//! An input that makes a target panic is saved as `fuzz/corpus/TARGET/crash-<hash>` and the
//! run exits with status 1.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fuzz::driver::{Generator, corpus_dir, input_hash, load_corpus};
use fuzz::{TARGETS, Target, target};

const USAGE: &str = "usage: fuzz-run TARGET|all COUNT|SECONDSs [SEED]\n       \
                     fuzz-run replay TARGET FILE...\n       fuzz-run seed-corpus\n       \
                     fuzz-run list";

/// How much to run.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Inputs(u64),
    Time(Duration),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["list"] => {
            for target in TARGETS {
                println!("{}", target.name);
            }
            ExitCode::SUCCESS
        }
        ["seed-corpus"] => seed_corpus(),
        ["replay", name, files @ ..] if !files.is_empty() => match target(name) {
            Some(target) => replay(target, files),
            None => unknown(name),
        },
        [name, budget, rest @ ..] if rest.len() <= 1 => {
            let Some(budget) = parse_budget(budget) else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            let seed = match rest.first().map(|seed| parse_u64(seed)) {
                None => 1,
                Some(Some(seed)) => seed,
                Some(None) => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            };
            let targets: Vec<&Target> = if *name == "all" {
                TARGETS.iter().collect()
            } else {
                match target(name) {
                    Some(target) => vec![target],
                    None => return unknown(name),
                }
            };
            for target in targets {
                if let Err(code) = fuzz(target, budget, seed) {
                    return code;
                }
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse_budget(text: &str) -> Option<Budget> {
    match text.strip_suffix('s') {
        Some(seconds) => seconds
            .parse()
            .ok()
            .map(|s| Budget::Time(Duration::from_secs(s))),
        None => text.replace('_', "").parse().ok().map(Budget::Inputs),
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn unknown(name: &str) -> ExitCode {
    let names: Vec<&str> = TARGETS.iter().map(|target| target.name).collect();
    eprintln!("unknown target {name:?}; targets: {}", names.join(", "));
    ExitCode::from(2)
}

/// Runs `target` on one input; on a panic, saves the input and says where.
fn run_one(target: &Target, input: &[u8]) -> Result<(), ExitCode> {
    if catch_unwind(AssertUnwindSafe(|| (target.run)(input))).is_ok() {
        return Ok(());
    }
    let path = corpus_dir(target.name).join(format!("crash-{}", input_hash(input)));
    match std::fs::create_dir_all(corpus_dir(target.name))
        .and_then(|()| std::fs::write(&path, input))
    {
        Ok(()) => eprintln!(
            "{}: crash, input ({} bytes) saved to {}\nreplay: cargo run -p fuzz --bin fuzz-run -- replay {} {}",
            target.name,
            input.len(),
            path.display(),
            target.name,
            path.display()
        ),
        Err(error) => eprintln!(
            "{}: crash; cannot save the input to {}: {error}; input: {input:02x?}",
            target.name,
            path.display()
        ),
    }
    Err(ExitCode::FAILURE)
}

fn fuzz(target: &Target, budget: Budget, seed: u64) -> Result<(), ExitCode> {
    let corpus = load_corpus(target.name);
    let started = Instant::now();
    let mut count = 0u64;
    for (_, bytes) in &corpus {
        run_one(target, bytes)?;
        count += 1;
    }
    let pool: Vec<Vec<u8>> = corpus.into_iter().map(|(_, bytes)| bytes).collect();
    let mut generator = Generator::new(seed, pool, target.max_len);
    let mut last_report = Instant::now();
    loop {
        let done = match budget {
            Budget::Inputs(total) => count >= total,
            Budget::Time(duration) => started.elapsed() >= duration,
        };
        if done {
            break;
        }
        let input = generator.next_input();
        run_one(target, &input)?;
        count += 1;
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            report(target, count, started.elapsed(), seed, false);
        }
    }
    report(target, count, started.elapsed(), seed, true);
    Ok(())
}

fn report(target: &Target, count: u64, elapsed: Duration, seed: u64, done: bool) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "{}: {count} inputs in {seconds:.1} s, {:.0} inputs/s (seed {seed}){}",
        target.name,
        count as f64 / seconds,
        if done { "" } else { " ..." }
    );
}

fn replay(target: &Target, files: &[&str]) -> ExitCode {
    for file in files {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(error) => {
                eprintln!("{file}: {error}");
                return ExitCode::from(2);
            }
        };
        if catch_unwind(AssertUnwindSafe(|| (target.run)(&bytes))).is_err() {
            eprintln!("{}: {file} fails", target.name);
            return ExitCode::FAILURE;
        }
        println!("{}: {file} passes", target.name);
    }
    ExitCode::SUCCESS
}

fn seed_corpus() -> ExitCode {
    for target in TARGETS {
        let directory = corpus_dir(target.name);
        if let Err(error) = std::fs::create_dir_all(&directory) {
            eprintln!("{}: {error}", directory.display());
            return ExitCode::FAILURE;
        }
        for seed in (target.seeds)() {
            let path = directory.join(format!("seed-{}", input_hash(&seed)));
            if let Err(error) = std::fs::write(&path, &seed) {
                eprintln!("{}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        }
        println!(
            "{}: {} seeds in {}",
            target.name,
            (target.seeds)().len(),
            directory.display()
        );
    }
    ExitCode::SUCCESS
}
