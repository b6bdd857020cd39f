//! `tandem-bench nbd-vs-qemu`: fio's `nbd` engine (libnbd) against tandem's NBD server serving a
//! local-only volume, and against `qemu-nbd` serving the same file (raw, `--cache=none
//! --aio=native`: `O_DIRECT`, as tandem's storage path), over the same span (the volume's data
//! area). Each job runs twice per server in the order tandem, qemu, qemu, tandem so that drift
//! of the machine weighs on both alike; the ratio is of the means.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::data::DataKind;
use crate::local::{Schedule, Workload};
use crate::nbd::{self, FioResult, NbdServer};
use crate::pair::{self, PairConfig};
use crate::plot::{Bar, BarChart};
use crate::progress;
use crate::results::{Results, TargetCheck};
use crate::{replicated, write};

/// How long qemu-nbd may take to listen.
const QEMU_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The export name qemu-nbd serves.
const QEMU_EXPORT: &str = "bench";

/// One fio job of the comparison.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Job {
    /// `randwrite-4KiB-qd32`.
    pub name: &'static str,
    /// Reads instead of writes.
    pub read: bool,
    /// Block size, pattern, depth.
    #[serde(skip)]
    pub workload: Workload,
}

/// The jobs: 4 KiB random writes at depth 32, 1 MiB sequential writes at depth 8, 4 KiB
/// random reads at depth 32.
pub fn jobs() -> [Job; 3] {
    let random = |queue_depth| Workload {
        block_bytes: replicated::RANDOM_BLOCK_BYTES,
        random: true,
        queue_depth,
    };
    [
        Job {
            name: "randwrite-4KiB-qd32",
            read: false,
            workload: random(32),
        },
        Job {
            name: "write-1MiB-qd8",
            read: false,
            workload: Workload {
                block_bytes: replicated::SEQUENTIAL_BLOCK_BYTES,
                random: false,
                queue_depth: 8,
            },
        },
        Job {
            name: "randread-4KiB-qd32",
            read: true,
            workload: random(32),
        },
    ]
}

/// Measurements [`measure`] makes.
pub fn steps() -> u64 {
    jobs().len() as u64 * 4
}

/// One job's result for both servers.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// The job.
    pub job: &'static str,
    /// tandem: MB/s, IOPS, p50/p99 µs (means of the two runs).
    pub tandem: ServerResult,
    /// qemu-nbd.
    pub qemu: ServerResult,
    /// tandem IOPS over qemu-nbd IOPS.
    pub ratio: f64,
}

/// What fio measured against one server (the mean of its two runs).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerResult {
    /// MB/s.
    pub megabytes_per_second: f64,
    /// Operations per second.
    pub operations_per_second: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// The two runs' IOPS.
    pub runs: [f64; 2],
}

impl ServerResult {
    fn from_runs(runs: [FioResult; 2]) -> Self {
        let iops = |run: &FioResult| run.operations as f64 / run.seconds.max(1e-9);
        let mbps = |run: &FioResult| run.bytes as f64 / run.seconds.max(1e-9) / 1e6;
        let micros = |duration: Duration| duration.as_secs_f64() * 1e6;
        Self {
            megabytes_per_second: (mbps(&runs[0]) + mbps(&runs[1])) / 2.0,
            operations_per_second: (iops(&runs[0]) + iops(&runs[1])) / 2.0,
            p50_us: (micros(runs[0].p50) + micros(runs[1].p50)) / 2.0,
            p99_us: (micros(runs[0].p99) + micros(runs[1].p99)) / 2.0,
            runs: [iops(&runs[0]), iops(&runs[1])],
        }
    }
}

/// Why the comparison cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(reason) = nbd::fio_unavailable() {
        return Some(reason);
    }
    match Command::new("qemu-nbd").arg("--version").output() {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!("qemu-nbd --version failed ({})", output.status)),
        Err(_) => Some("qemu-nbd is not installed (apt-get install qemu-utils)".to_string()),
    }
}

/// Runs every job against both servers over `file` (prepared, `size_bytes` long).
pub fn measure(
    file: &Path,
    size_bytes: u64,
    schedule: Schedule,
) -> anyhow::Result<Vec<Comparison>> {
    replicated::prepare_file(file, size_bytes)?;
    let config = PairConfig::new(
        [file.to_path_buf(), file.to_path_buf()],
        write::DEFAULT_CODEC,
    );
    let volume = pair::open_local_only(file, &config)?;
    let handle = volume.handle();
    let span_bytes = handle.status().size_bytes;
    let runtime = pair::runtime("nbd-server")?;
    let mut comparisons = Vec::new();
    for job in jobs() {
        let mut tandem_runs = Vec::new();
        let mut qemu_runs = Vec::new();
        for (pass, server) in ["tandem", "qemu-nbd", "qemu-nbd", "tandem"]
            .into_iter()
            .enumerate()
        {
            progress::step(&format!(
                "nbd-vs-qemu: {} on {server} ({}/4)",
                job.name,
                pass + 1
            ));
            let run = |uri: &str| {
                nbd::run_fio_job(
                    uri,
                    job.workload,
                    job.read,
                    span_bytes,
                    schedule,
                    DataKind::Random,
                )
                .with_context(|| format!("{} against {server}", job.name))
            };
            if server == "tandem" {
                let nbd_server = NbdServer::serve(handle.clone(), &runtime)?;
                tandem_runs.push(run(&nbd_server.uri())?);
            } else {
                let qemu = QemuNbd::start(file)?;
                qemu_runs.push(run(&qemu.uri())?);
            }
        }
        let pair_of = |runs: Vec<FioResult>| -> anyhow::Result<[FioResult; 2]> {
            runs.try_into()
                .map_err(|_| anyhow::anyhow!("expected two runs per server"))
        };
        let tandem = ServerResult::from_runs(pair_of(tandem_runs)?);
        let qemu = ServerResult::from_runs(pair_of(qemu_runs)?);
        comparisons.push(Comparison {
            job: job.name,
            tandem,
            qemu,
            ratio: tandem.operations_per_second / qemu.operations_per_second.max(1e-9),
        });
    }
    drop(runtime);
    volume
        .close()
        .map_err(|refusal| anyhow::anyhow!("closing the volume: {refusal}"))?;
    Ok(comparisons)
}

/// A `qemu-nbd` process serving a file on an ephemeral loopback port; killed when dropped.
#[derive(Debug)]
struct QemuNbd {
    child: Child,
    address: SocketAddr,
}

impl QemuNbd {
    fn start(file: &Path) -> anyhow::Result<Self> {
        // A free port: bound, read, released, then given to qemu-nbd.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("finding a free port")?
            .port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new("qemu-nbd")
            .args([
                "--persistent",
                "--shared=16",
                "--format=raw",
                "--cache=none",
                "--aio=native",
                "--bind=127.0.0.1",
                &format!("--port={port}"),
                &format!("--export-name={QEMU_EXPORT}"),
            ])
            .arg(file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-nbd")?;
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(Self { child, address });
            }
            if let Some(status) = child.try_wait().context("waiting for qemu-nbd")? {
                let mut errors = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut errors);
                }
                anyhow::bail!("qemu-nbd exited ({status}): {}", errors.trim());
            }
            if started.elapsed() > QEMU_START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("qemu-nbd did not listen on {address} within {QEMU_START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn uri(&self) -> String {
        format!("nbd://{}/{QEMU_EXPORT}", self.address)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the table, the chart and the verdicts to `results`.
pub fn publish(results: &mut Results, comparisons: &[Comparison]) -> anyhow::Result<()> {
    let mut text = String::from(
        "| job | tandem MB/s | qemu-nbd MB/s | tandem IOPS | qemu-nbd IOPS | tandem / qemu-nbd | \
         p50 µs tandem / qemu | p99 µs tandem / qemu |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut chart = BarChart::new("tandem's NBD server / qemu-nbd, same file", "IOPS ratio")
        .with_target(1.0, "qemu-nbd");
    for comparison in comparisons {
        results.record("nbd-vs-qemu", comparison)?;
        let (t, q) = (&comparison.tandem, &comparison.qemu);
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            comparison.job,
            t.megabytes_per_second,
            q.megabytes_per_second,
            t.operations_per_second,
            q.operations_per_second,
            comparison.ratio,
            t.p50_us,
            q.p50_us,
            t.p99_us,
            q.p99_us
        ));
        chart.bars.push(Bar::new(comparison.job, comparison.ratio));
    }
    text.push_str(
        "\nfio --ioengine=nbd, one job; tandem: a local-only volume (no peer) on the file; \
         qemu-nbd: --format=raw --cache=none --aio=native on the same file. Two runs each, \
         ordered tandem, qemu-nbd, qemu-nbd, tandem; the means.\n",
    );
    results.section("NBD: tandem against qemu-nbd", &text)?;
    results.chart("nbd-vs-qemu", &chart)?;
    let ratio = |job: &str| {
        comparisons
            .iter()
            .find(|comparison| comparison.job == job)
            .map(|comparison| comparison.ratio)
    };
    results.targets(vec![
        TargetCheck::at_least(
            "NBD 4 KiB random writes, depth 32, × qemu-nbd IOPS",
            ratio("randwrite-4KiB-qd32"),
            1.0,
            "fio nbd engine, same file, same run",
        ),
        TargetCheck::at_least(
            "NBD 1 MiB sequential writes × qemu-nbd",
            ratio("write-1MiB-qd8"),
            0.95,
            "fio nbd engine, depth 8, same file, same run",
        ),
    ])
}

/// The file `nbd-vs-qemu` serves, in the scratch directory.
pub fn file_in(scratch: &Path) -> PathBuf {
    scratch.join("nbd-vs-qemu.img")
}
