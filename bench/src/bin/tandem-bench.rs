//! `tandem-bench`: measurements against the machine's limits, in the same run.

use std::path::PathBuf;
use std::time::Duration;

use bench::local::{self, EngineTarget, RawTarget, Workload};
use clap::{Parser, Subcommand};
use engine::format::InitialData;
use engine::layout::LayoutParams;
use engine::runtime::backing::Backing;
use engine::runtime::metadata;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", about = "tandem against the machine's limits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Local-only writes through the engine against the raw backing store.
    Local {
        /// A scratch file (created, overwritten).
        #[arg(long, default_value = "target/bench-local.img")]
        file: PathBuf,
        /// Size of the scratch file in MiB.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
        /// Seconds per workload and target.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Local {
            file,
            size_mib,
            seconds,
        } => local_command(&file, size_mib, seconds),
    }
}

fn local_command(file: &std::path::Path, size_mib: u64, seconds: u64) -> anyhow::Result<()> {
    // Write every block once, so no measurement pays for allocating blocks of a sparse file.
    {
        use std::io::Write as _;
        let mut writer = std::io::BufWriter::new(std::fs::File::create(file)?);
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..size_mib {
            writer.write_all(&zeros)?;
        }
        writer.into_inner()?.sync_all()?;
    }
    metadata::create(
        file,
        "bench",
        LayoutParams::default(),
        InitialData::Fresh,
        true,
    )?;
    let span = {
        let volume = local::open_volume(file, "bench", 32)?;
        volume.handle().status().size_bytes
    };
    let duration = Duration::from_secs(seconds);
    let workloads = [
        Workload {
            block_bytes: 1 << 20,
            random: false,
            queue_depth: 1,
        },
        Workload {
            block_bytes: 1 << 20,
            random: false,
            queue_depth: 32,
        },
        Workload {
            block_bytes: 4096,
            random: true,
            queue_depth: 1,
        },
        Workload {
            block_bytes: 4096,
            random: true,
            queue_depth: 32,
        },
    ];
    println!(
        "| workload | raw MB/s | engine MB/s | ratio | raw p50 µs | engine p50 µs | raw p99 µs | engine p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for workload in workloads {
        // Fill the span once so neither side pays for allocating blocks of the sparse file.
        let raw = RawTarget(Backing::open(file)?);
        let raw_stats = local::run(&raw, workload, span, duration);
        let volume = local::open_volume(file, "bench", workload.queue_depth.max(1))?;
        let engine_stats = local::run(&EngineTarget(volume.handle()), workload, span, duration);
        drop(volume);
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            workload.name(),
            raw_stats.megabytes_per_second(),
            engine_stats.megabytes_per_second(),
            engine_stats.megabytes_per_second() / raw_stats.megabytes_per_second(),
            micros(raw_stats.percentile(0.5)),
            micros(engine_stats.percentile(0.5)),
            micros(raw_stats.percentile(0.99)),
            micros(engine_stats.percentile(0.99)),
        );
    }
    Ok(())
}
