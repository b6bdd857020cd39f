//! The NBD path: the pair's primary served by tandem's NBD server on the primary's async
//! runtime (as the daemon serves it, through an adapter like the daemon's `VolumeBackend`),
//! written by fio's `nbd` engine (libnbd) from a separate process.

use std::io::Read as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engine::replica::ClientOp;
use engine::runtime::{Completion, VolumeHandle};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use ublk_target::nbd::{self, BlockBackend, ExportRegistry, ExportState, NbdLimits};

use crate::data::DataKind;
use crate::local::{Schedule, Workload};
use crate::pair::{Pair, VOLUME_NAME};

/// The largest request, as the daemon configures the server.
const REQUEST_BYTES_MAX: u32 = 32 << 20;

/// How long fio may run past its schedule before it is killed.
const FIO_GRACE: Duration = Duration::from_secs(60);

/// Whether fio with its `nbd` engine can be used; the reason when not.
pub fn fio_unavailable() -> Option<String> {
    let output = match Command::new("fio").arg("--enghelp=nbd").output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Some("fio is not installed (apt-get install fio)".to_string());
        }
        Err(error) => return Some(format!("cannot run fio: {error}")),
    };
    let help = String::from_utf8_lossy(&output.stdout);
    if !help.contains("uri") {
        return Some("this fio has no nbd engine (built without libnbd)".to_string());
    }
    None
}

/// Adapts a volume handle to the NBD server, as the daemon does: requests go to the I/O pool.
struct VolumeBackend {
    handle: VolumeHandle,
    size_bytes: u64,
}

impl BlockBackend for VolumeBackend {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn submit(&self, op: ClientOp, completion: Completion) {
        self.handle.submit(op, completion);
    }
}

/// A running NBD server for the pair's primary; stopped when dropped.
#[derive(Debug)]
pub struct NbdServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl NbdServer {
    /// Serves the pair's primary on an ephemeral loopback port.
    pub fn start(pair: &Pair) -> anyhow::Result<Self> {
        Self::serve(pair.primary(), pair.primary_runtime())
    }

    /// Serves `handle`'s volume on an ephemeral loopback port, on `runtime`.
    pub fn serve(handle: VolumeHandle, runtime: &Runtime) -> anyhow::Result<Self> {
        let size_bytes = handle.status().size_bytes;
        let exports = Arc::new(ExportRegistry::new());
        let backend = VolumeBackend { handle, size_bytes };
        exports.set(VOLUME_NAME, ExportState::Serving(Arc::new(backend)));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("listening for NBD")?;
        let address = listener.local_addr().context("the NBD address")?;
        let limits = NbdLimits {
            connections_max: 16,
            requests_in_flight_per_connection: 128,
            request_bytes_max: REQUEST_BYTES_MAX,
            ..NbdLimits::default()
        };
        let task = runtime.spawn(nbd::serve(listener, exports, limits));
        Ok(Self { address, task })
    }

    /// The export's URI.
    pub fn uri(&self) -> String {
        format!("nbd://{}/{VOLUME_NAME}", self.address)
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What fio measured.
#[derive(Clone, Copy, Debug)]
pub struct FioResult {
    /// Writes completed after the ramp.
    pub operations: u64,
    /// Bytes written after the ramp.
    pub bytes: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Median latency (submission to completion).
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency, if fio reported it.
    pub p999: Option<Duration>,
}

/// Runs fio against `uri`: one job, sequential `workload.block_bytes` writes over
/// `[0, span_bytes)` with `iodepth` = the workload's queue depth.
pub fn run_fio(
    uri: &str,
    workload: Workload,
    span_bytes: u64,
    schedule: Schedule,
    data: DataKind,
) -> anyhow::Result<FioResult> {
    run_fio_job(uri, workload, false, span_bytes, schedule, data)
}

/// Runs fio against `uri` as [`run_fio`] does, reading instead of writing if `read`.
pub fn run_fio_job(
    uri: &str,
    workload: Workload,
    read: bool,
    span_bytes: u64,
    schedule: Schedule,
    data: DataKind,
) -> anyhow::Result<FioResult> {
    let mut command = Command::new("fio");
    command.args([
        "--name=tandem-bench",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        match (workload.random, read) {
            (true, false) => "--rw=randwrite",
            (false, false) => "--rw=write",
            (true, true) => "--rw=randread",
            (false, true) => "--rw=read",
        },
        &format!("--bs={}", workload.block_bytes),
        &format!("--iodepth={}", workload.queue_depth),
        &format!("--size={span_bytes}"),
        "--time_based",
        &format!("--ramp_time={}ms", schedule.warmup.as_millis()),
        &format!("--runtime={}ms", schedule.measure.as_millis()),
        "--lat_percentiles=1",
        "--output-format=json",
    ]);
    match data {
        // fio fills its buffers with random bytes once; its default `scramble_buffers` then
        // stamps every 512-byte sector with zeros and offsets, which makes 10% of the bytes
        // compressible.
        DataKind::Random => command.arg("--scramble_buffers=0"),
        DataKind::Compressible => command.args([
            "--buffer_compress_percentage=50",
            "--buffer_compress_chunk=4096",
        ]),
    };
    let deadline = schedule.warmup + schedule.measure + FIO_GRACE;
    let stdout = run_with_deadline(&mut command, deadline)?;
    parse_fio(&stdout, if read { "read" } else { "write" })
}

/// Runs `command` and returns its standard output; kills it after `deadline`.
fn run_with_deadline(command: &mut Command, deadline: Duration) -> anyhow::Result<String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting fio")?;
    let mut stdout = child.stdout.take().context("fio's stdout")?;
    let mut stderr = child.stderr.take().context("fio's stderr")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow::Error::new(error).context("waiting for fio"));
            }
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("fio did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    let errors = errors.join().unwrap_or_default();
    anyhow::ensure!(status.success(), "fio failed ({status}): {}", errors.trim());
    Ok(text)
}

/// Reads the `direction` (`read` or `write`) of fio's JSON report (anything printed before
/// the opening brace is skipped).
fn parse_fio(stdout: &str, direction: &str) -> anyhow::Result<FioResult> {
    let json = stdout
        .find('{')
        .map(|start| &stdout[start..])
        .context("fio printed no JSON")?;
    let report: Value = serde_json::from_str(json).context("parsing fio's JSON")?;
    let side = &report["jobs"][0][direction];
    let number = |value: &Value, what: &str| {
        value
            .as_f64()
            .with_context(|| format!("fio's report has no {what}"))
    };
    let latency = if side["lat_ns"]["percentile"].is_object() {
        &side["lat_ns"]["percentile"]
    } else {
        &side["clat_ns"]["percentile"]
    };
    let nanos = |value: f64| Duration::from_nanos(value as u64);
    Ok(FioResult {
        operations: number(&side["total_ios"], "total_ios")? as u64,
        bytes: number(&side["io_bytes"], "io_bytes")? as u64,
        seconds: number(&side["runtime"], "runtime")? / 1e3,
        p50: nanos(number(&latency["50.000000"], "p50")?),
        p99: nanos(number(&latency["99.000000"], "p99")?),
        p999: latency["99.900000"].as_f64().map(nanos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fio_json() {
        let text = r#"note: both iodepth >= 1 and synchronous I/O engine
{"jobs": [{"write": {"io_bytes": 2097152, "total_ios": 2, "runtime": 1000,
  "lat_ns": {"percentile": {"50.000000": 1500000, "99.000000": 3000000,
  "99.900000": 5000000}}}}]}"#;
        let result = parse_fio(text, "write").expect("parsed");
        assert_eq!(result.operations, 2);
        assert_eq!(result.bytes, 2 << 20);
        assert_eq!(result.p50, Duration::from_micros(1500));
        assert_eq!(result.p99, Duration::from_millis(3));
        assert_eq!(result.p999, Some(Duration::from_millis(5)));
        assert!((result.seconds - 1.0).abs() < 1e-9);
    }
}
