//! `tandem-bench`: measurements against the machine's limits, in the same run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bench::data::DataKind;
use bench::local::{self, EngineTarget, RawTarget, Schedule, Workload};
use bench::replicated::{self, Options, PathKind};
use bench::report::Report;
use clap::{Parser, Subcommand};
use engine::format::InitialData;
use engine::layout::LayoutParams;
use engine::protocol::compress::Compression;
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
    /// 1 MiB sequential writes to a replicated volume (two nodes in this process, protocol C,
    /// encrypted link over 127.0.0.1) against two raw writers sharing the disk, plus the
    /// per-core rates of encryption and compression.
    Replicated(ReplicatedArgs),
}

#[derive(Debug, clap::Args)]
struct ReplicatedArgs {
    /// The primary's backing file (created and written once if missing).
    #[arg(long, default_value = "target/bench-replicated-primary.img")]
    primary_file: PathBuf,
    /// The secondary's backing file (created and written once if missing).
    #[arg(long, default_value = "target/bench-replicated-secondary.img")]
    secondary_file: PathBuf,
    /// Size of each backing file in MiB (data area plus metadata).
    #[arg(long, default_value_t = 2048)]
    size_mib: u64,
    /// Measured seconds per workload and path.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Queue depths to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    queue_depths: Vec<usize>,
    /// Paths measured besides the ceiling: engine (two volumes linked in this process), link
    /// (the link alone, no disks), nbd (fio --ioengine=nbd through tandem's NBD server).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "engine,link,nbd"
    )]
    paths: Vec<PathKind>,
    /// Link codecs of the engine and link-only measurements.
    #[arg(long, value_delimiter = ',', default_value = "none,lz4,zstd", value_parser = parse_compression)]
    compression: Vec<Compression>,
    /// Link codecs of the NBD measurements.
    #[arg(long, value_delimiter = ',', default_value = "lz4", value_parser = parse_compression)]
    nbd_compression: Vec<Compression>,
    /// What the client writes: random (incompressible, as most real data) or compressible.
    #[arg(long, value_enum, default_value_t = DataKind::Random)]
    data: DataKind,
    /// Seconds per per-core stage rate; 0 skips them.
    #[arg(long, default_value_t = 0.5)]
    stage_seconds: f64,
    /// Where the results are appended as JSON lines.
    #[arg(long, default_value = "target/bench-replicated.jsonl")]
    results: PathBuf,
}

fn parse_compression(name: &str) -> Result<Compression, String> {
    Compression::ALL
        .into_iter()
        .find(|codec| codec.name() == name)
        .ok_or_else(|| format!("unknown codec {name:?}: use none, lz4 or zstd"))
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what}: {value} seconds"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Local {
            file,
            size_mib,
            seconds,
        } => local_command(&file, size_mib, seconds),
        Command::Replicated(args) => replicated_command(&args),
    }
}

fn replicated_command(args: &ReplicatedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.size_mib >= 256, "--size-mib must be at least 256");
    anyhow::ensure!(
        args.queue_depths.iter().all(|&depth| depth > 0),
        "queue depths must be positive"
    );
    let options = Options {
        files: [args.primary_file.clone(), args.secondary_file.clone()],
        size_bytes: args.size_mib << 20,
        schedule: Schedule {
            warmup: seconds(args.warmup_seconds, "--warmup-seconds")?,
            measure: seconds(args.seconds, "--seconds")?,
        },
        queue_depths: args.queue_depths.clone(),
        compressions: args.compression.clone(),
        paths: args.paths.clone(),
        nbd_compressions: args.nbd_compression.clone(),
        data: args.data,
        stage_time: seconds(args.stage_seconds, "--stage-seconds")?,
    };
    let started = std::time::Instant::now();
    let report = replicated::run(&options)?;
    let elapsed = started.elapsed();
    print_report(args, &report, elapsed);
    let run = serde_json::json!({
        "id": engine::runtime::unix_millis(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "data": args.data.name(),
        "size_mib": args.size_mib,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "elapsed_seconds": elapsed.as_secs_f64(),
    });
    report.append_json_lines(&args.results, &run)?;
    println!("Results appended to {}.", args.results.display());
    Ok(())
}

fn print_report(args: &ReplicatedArgs, report: &Report, elapsed: Duration) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "## tandem-bench replicated: 1 MiB sequential writes, {} data, {} MiB backing files, \
         {} s measured after {} s warm-up, {cores} cores\n",
        args.data, args.size_mib, args.seconds, args.warmup_seconds
    );
    if let Some(busy) = report.busy_cores_before {
        println!("Machine busy in the second before the run: {busy:.2} cores (other work).\n");
    }
    println!("{}", report.throughput_table());
    println!(
        "- ceiling: both backing files written at once, raw O_DIRECT, same pattern and depth \
         each; MB/s per file (the best a client of the replicated volume could see).\n\
         - engine: protocol C, writes through the primary's submit_inline.\n\
         - link only: the same encrypted link and message path, acknowledged on receipt, no \
         disks.\n\
         - nbd: fio --ioengine=nbd through tandem's NBD server on the primary.\n\
         - core-s per GiB: busy CPU of the whole machine per GiB the client wrote.\n"
    );
    println!("### Where the CPU went (cores; u = user, s = system)\n");
    println!("{}", report.cpu_lines());
    if !report.stages.is_empty() {
        println!("### Per-core rates of the data path's stages\n");
        println!("{}", report.stage_table());
    }
    println!("Total time: {:.0} s.", elapsed.as_secs_f64());
}

fn local_command(file: &Path, size_mib: u64, seconds: u64) -> anyhow::Result<()> {
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
        let raw_stats = local::run(&raw, workload, span, duration)?;
        let volume = local::open_volume(file, "bench", workload.queue_depth.max(1))?;
        let engine_stats = local::run(&EngineTarget(volume.handle()), workload, span, duration)?;
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
