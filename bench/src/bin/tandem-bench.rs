//! `tandem-bench`: measurements against the machine's limits, in the same run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use bench::data::DataKind;
use bench::delay::Shaping;
use bench::local::{self, EngineTarget, RawTarget, Schedule, Workload};
use bench::replicated::{self, Options, PathKind, RANDOM_BLOCK_BYTES, SEQUENTIAL_BLOCK_BYTES};
use bench::report::Report;
use bench::results::Results;
use bench::suite::{Part, Settings};
use clap::{Parser, Subcommand};
use engine::format::InitialData;
use engine::layout::LayoutParams;
use engine::protocol::compress::Compression;
use engine::replica::{Protocol, ReplicaConfig};
use engine::runtime::backing::Backing;
use engine::runtime::metadata;
use engine::types::NodeId;

#[derive(Debug, Parser)]
#[command(name = "tandem-bench", about = "tandem against the machine's limits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The machine's limits: one backing store written and read with O_DIRECT, both written at
    /// once, TCP between the node addresses, lz4/zstd/AES-256-GCM per core.
    Ceiling(SuiteArgs),
    /// 1 MiB sequential and 4 KiB random writes at depths 1 and 32 through the engine and NBD:
    /// local-only, protocols A, B, C, codecs none/lz4/zstd; against the ceiling.
    Write(SuiteArgs),
    /// Full sync, incremental resync after 1% and 10% dirty, checksum resync of identical data,
    /// client latency during a sync; against the ceiling of copying one store to the other.
    Resync(SuiteArgs),
    /// fio's nbd engine against tandem's NBD server and against qemu-nbd on the same file.
    NbdVsQemu(SuiteArgs),
    /// SIGKILL of the active daemon to the service answering on the standby (real daemons
    /// and a witness on loopback).
    Failover(SuiteArgs),
    /// tandem against DRBD 8.4 in the qemu guest of scripts/vm (protocol C, ratios only).
    Drbd(SuiteArgs),
    /// Every part above into one results folder (`--quick`: in under 10 minutes).
    All {
        #[command(flatten)]
        args: SuiteArgs,
        /// Leave these parts out.
        #[arg(long, value_delimiter = ',', value_enum)]
        skip: Vec<Part>,
    },
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
    /// 1 MiB sequential and 4 KiB random writes to a replicated volume (two nodes in this
    /// process, protocols A, B or C, encrypted link over 127.0.0.1) against two raw writers
    /// sharing the disk, plus the per-core rates of encryption and compression.
    Replicated(ReplicatedArgs),
}

/// The access patterns of `tandem-bench replicated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Pattern {
    /// 1 MiB sequential writes, each writer through its own stripe (--queue-depths).
    Seq,
    /// 4 KiB writes at random aligned offsets (--random-queue-depths).
    Rand,
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
    /// Access patterns: seq (1 MiB sequential writes) and rand (4 KiB random writes).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "seq,rand")]
    workloads: Vec<Pattern>,
    /// Queue depths of the 1 MiB sequential writes.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    queue_depths: Vec<usize>,
    /// Queue depths of the 4 KiB random writes.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    random_queue_depths: Vec<usize>,
    /// Paths measured besides the ceiling: engine (two volumes linked in this process), link
    /// (the link alone, no disks), nbd (fio --ioengine=nbd through tandem's NBD server), local
    /// (one engine volume without a peer), raw (one raw O_DIRECT writer alone).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "engine,link,nbd,local,raw"
    )]
    paths: Vec<PathKind>,
    /// Replication protocols of the engine and nbd paths: A (complete when local and in the
    /// journal), B (when the peer received it), C (when the peer wrote it).
    #[arg(long, value_delimiter = ',', default_value = "C", value_parser = parse_protocol)]
    protocols: Vec<Protocol>,
    /// Size of each node's on-disk journal ring in MiB (part of the metadata; at most 1024).
    #[arg(long, default_value_t = LayoutParams::default().journal_bytes >> 20)]
    journal_ring_mib: u64,
    /// Payload MiB each node's journal holds in memory before spilling to the ring.
    #[arg(long, default_value_t = ReplicaConfig::new("bench", NodeId(0)).journal_memory_bytes_max >> 20)]
    journal_memory_mib: u64,
    /// Milliseconds added to each direction of the engine path's link by a relay in this
    /// process (the stand-in for `tc netem delay`, which this kernel lacks); 0: none.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
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

/// What every part of the suite takes.
#[derive(Debug, clap::Args)]
struct SuiteArgs {
    /// Small and short: 512 MiB volumes, 2 s per measurement, fewer codec/protocol pairs.
    #[arg(long)]
    quick: bool,
    /// The results folder (JSON lines, markdown, SVG charts); default
    /// target/bench/results/<command>-<unix seconds>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the backing files go (needs O_DIRECT: not tmpfs).
    #[arg(long, default_value = "target/bench")]
    scratch: PathBuf,
    /// Size of each backing file in MiB (default 2048; with --quick 512).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Milliseconds added to each direction of the replication link by a relay in this process
    /// (the stand-in for `tc netem delay`, which this kernel lacks).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Bandwidth of each direction of the replication link in Mbit/s, by the same relay
    /// (the stand-in for `tc netem rate`); unlimited if unset.
    #[arg(long)]
    rate_mbit: Option<f64>,
    /// The tandem binary the failover part runs (default: beside tandem-bench).
    #[arg(long)]
    tandem: Option<PathBuf>,
}

impl SuiteArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let size_bytes = match self.size_mib {
            None => Settings::default_size_bytes(self.quick),
            Some(mib) => mib
                .checked_mul(1 << 20)
                .with_context(|| format!("--size-mib {mib} is too large"))?,
        };
        anyhow::ensure!(size_bytes >= 256 << 20, "--size-mib must be at least 256");
        let rate_bytes_per_second = match self.rate_mbit {
            // At least 1 kbit/s: anything slower rounds to nothing.
            Some(mbit) if mbit >= 0.001 && mbit.is_finite() => Some((mbit * 1e6 / 8.0) as u64),
            Some(mbit) => anyhow::bail!("--rate-mbit must be at least 0.001, not {mbit}"),
            None => None,
        };
        let tandem = match &self.tandem {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .context("where tandem-bench is")?
                .with_file_name("tandem"),
        };
        Ok(Settings {
            quick: self.quick,
            scratch: self.scratch.clone(),
            size_bytes,
            shaping: Shaping {
                delay: seconds(self.delay_ms / 1000.0, "--delay-ms")?,
                rate_bytes_per_second,
            },
            tandem,
            repo: std::env::current_dir().context("the current directory")?,
        })
    }

    fn out(&self, command: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            PathBuf::from(format!("target/bench/results/{command}-{now}"))
        })
    }
}

/// Runs `parts` of the suite into one results folder and prints where it is; fails if a part
/// failed (the others still ran).
fn suite_command(args: &SuiteArgs, command: &str, parts: &[Part]) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let out = args.out(command);
    let title = format!(
        "tandem-bench {command}{}",
        if args.quick { " --quick" } else { "" }
    );
    let mut results = Results::create(&out, &title)?;
    let started = std::time::Instant::now();
    let failed = settings.run_all(parts, &mut results)?;
    let checks = results.checks().to_vec();
    let out = results.finish()?;
    println!("{}", bench::results::target_table(&checks));
    println!(
        "tandem-bench {command}: {:.0} s; results in {} (results.md, results.jsonl, *.svg)",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if failed.is_empty() {
        return Ok(());
    }
    for (part, reason) in &failed {
        eprintln!("tandem-bench: {} failed: {reason}", part.name());
    }
    anyhow::bail!(
        "{} of {} parts failed: {}",
        failed.len(),
        parts.len(),
        failed
            .iter()
            .map(|(part, _)| part.name())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn parse_compression(name: &str) -> Result<Compression, String> {
    Compression::ALL
        .into_iter()
        .find(|codec| codec.name() == name)
        .ok_or_else(|| format!("unknown codec {name:?}: use none, lz4 or zstd"))
}

fn parse_protocol(name: &str) -> Result<Protocol, String> {
    match name.trim() {
        "A" | "a" => Ok(Protocol::A),
        "B" | "b" => Ok(Protocol::B),
        "C" | "c" => Ok(Protocol::C),
        _ => Err(format!("unknown protocol {name:?}: use A, B or C")),
    }
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
        Command::Ceiling(args) => suite_command(&args, "ceiling", &[Part::Ceiling]),
        Command::Write(args) => suite_command(&args, "write", &[Part::Write]),
        Command::Resync(args) => suite_command(&args, "resync", &[Part::Resync]),
        Command::NbdVsQemu(args) => suite_command(&args, "nbd-vs-qemu", &[Part::NbdVsQemu]),
        Command::Failover(args) => suite_command(&args, "failover", &[Part::Failover]),
        Command::Drbd(args) => suite_command(&args, "drbd", &[Part::Drbd]),
        Command::All { args, skip } => {
            let parts: Vec<Part> = Part::ALL
                .into_iter()
                .filter(|part| !skip.contains(part))
                .collect();
            suite_command(&args, "all", &parts)
        }
    }
}

fn replicated_command(args: &ReplicatedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.size_mib >= 256, "--size-mib must be at least 256");
    anyhow::ensure!(
        args.queue_depths
            .iter()
            .chain(&args.random_queue_depths)
            .all(|&depth| depth > 0),
        "queue depths must be positive"
    );
    anyhow::ensure!(
        args.journal_ring_mib <= 1024,
        "--journal-ring-mib must be at most 1024"
    );
    let layout = LayoutParams {
        journal_bytes: args.journal_ring_mib << 20,
        ..LayoutParams::default()
    };
    let options = Options {
        files: [args.primary_file.clone(), args.secondary_file.clone()],
        size_bytes: args.size_mib << 20,
        schedule: Schedule {
            warmup: seconds(args.warmup_seconds, "--warmup-seconds")?,
            measure: seconds(args.seconds, "--seconds")?,
        },
        workloads: workloads(args),
        engine_runs: bench::write::product(&args.compression, &args.protocols),
        nbd_runs: bench::write::product(&args.nbd_compression, &args.protocols),
        layout,
        journal_memory_bytes: args.journal_memory_mib << 20,
        link_shaping: Shaping {
            delay: seconds(args.delay_ms / 1000.0, "--delay-ms")?,
            rate_bytes_per_second: None,
        },
        link_compressions: args.compression.clone(),
        paths: args.paths.clone(),
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
        "protocols": args.protocols.iter().map(|&p| replicated::protocol_name(p)).collect::<Vec<_>>(),
        "journal_ring_mib": args.journal_ring_mib,
        "journal_memory_mib": args.journal_memory_mib,
        "delay_ms": args.delay_ms,
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

/// The workloads asked for, sequential first, each in the order of its depths.
fn workloads(args: &ReplicatedArgs) -> Vec<Workload> {
    let mut workloads = Vec::new();
    if args.workloads.contains(&Pattern::Seq) {
        workloads.extend(args.queue_depths.iter().map(|&queue_depth| Workload {
            block_bytes: SEQUENTIAL_BLOCK_BYTES,
            random: false,
            queue_depth,
        }));
    }
    if args.workloads.contains(&Pattern::Rand) {
        workloads.extend(
            args.random_queue_depths
                .iter()
                .map(|&queue_depth| Workload {
                    block_bytes: RANDOM_BLOCK_BYTES,
                    random: true,
                    queue_depth,
                }),
        );
    }
    workloads
}

fn print_report(args: &ReplicatedArgs, report: &Report, elapsed: Duration) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let protocols: Vec<&str> = args
        .protocols
        .iter()
        .map(|&protocol| replicated::protocol_name(protocol))
        .collect();
    println!(
        "## tandem-bench replicated: {} data, protocols {}, journal {} MiB memory + {} MiB ring, \
         link delay {} ms each way, {} MiB backing files, {} s measured after {} s warm-up, \
         {cores} cores\n",
        args.data,
        protocols.join(","),
        args.journal_memory_mib,
        args.journal_ring_mib,
        args.delay_ms,
        args.size_mib,
        args.seconds,
        args.warmup_seconds
    );
    if let Some(busy) = report.busy_cores_before {
        println!("Machine busy in the second before the run: {busy:.2} cores (other work).\n");
    }
    println!("{}", report.throughput_table());
    println!(
        "- seq-1MiB: 1 MiB sequential writes, each writer through its own stripe; rand-4KiB: \
         4 KiB writes at random aligned offsets. qdN: N writers (fio's iodepth on nbd).\n\
         - ceiling: both backing files written at once, raw O_DIRECT, same pattern and depth \
         each; MB/s per file (the best a client of the replicated volume could see).\n\
         - engine X: protocol X (A: complete when written locally and in the journal; B: and \
         received by the peer; C: and written by the peer), writes through the primary's \
         submit_inline. × C: MB/s over protocol C's with the same path and codec.\n\
         - link only: the same encrypted link and message path, acknowledged on receipt, no \
         disks.\n\
         - nbd X: fio --ioengine=nbd through tandem's NBD server on the primary, protocol X.\n\
         - local: one engine volume on the primary's file without a peer; raw: one raw \
         O_DIRECT writer group on that file alone (what local is up against).\n\
         - peer behind: bytes the peer had not written (max during the measured time / when the \
         writers stopped); catch-up: seconds it then took to write them; peer MB/s: what the \
         peer wrote in the measured time (client bytes less the growth of the backlog).\n\
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
