//! `tandem-bench ceiling`: the physical limits everything else is measured against, in the
//! same run: one backing store written and read with `O_DIRECT` (the path the engine's I/O
//! threads take), both stores written at once (both nodes share this machine's disk), TCP
//! between the two node addresses (throughput of one stream, round-trip time), and the
//! per-core rates of compression and AES-256-GCM ([`crate::stages`]).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use engine::runtime::backing::Backing;
use serde::Serialize;

use crate::data::{DataKind, DataSet};
use crate::local::{self, RawReader, Schedule, Workload};
use crate::plot::{Bar, BarChart};
use crate::progress;
use crate::report::Measurement;
use crate::stages::{self, StageRate};
use crate::stats::RunStats;
use crate::{ceiling, replicated};

/// The second node's address: loopback, but not the first's, as two daemons on one machine
/// are configured (127.0.0.1 and 127.0.0.2).
pub const PEER_ADDRESS: [u8; 4] = [127, 0, 0, 2];

/// Bytes per write of the TCP throughput measurement.
const TCP_CHUNK_BYTES: usize = 1 << 20;

/// Round trips timed for the RTT.
const RTT_SAMPLES: usize = 2000;

/// One storage limit.
#[derive(Clone, Debug, Serialize)]
pub struct StoreLimit {
    /// `one store, write`, `one store, read`, `both stores at once, write (per store)`.
    pub what: &'static str,
    /// `seq-1MiB-qd32`.
    pub workload: String,
    /// MB/s (per store for two stores at once).
    pub megabytes_per_second: f64,
    /// Operations per second.
    pub operations_per_second: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

impl StoreLimit {
    fn new(what: &'static str, workload: Workload, stats: &RunStats) -> Self {
        let measurement = Measurement::from(stats);
        Self {
            what,
            workload: workload.name(),
            megabytes_per_second: measurement.megabytes_per_second(),
            operations_per_second: stats.operations_per_second(),
            p50_us: measurement.p50.as_secs_f64() * 1e6,
            p99_us: measurement.p99.as_secs_f64() * 1e6,
        }
    }
}

/// TCP between the two node addresses.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TcpLimit {
    /// One stream, 1 MiB writes, MB/s.
    pub megabytes_per_second: f64,
    /// Median round trip of a 64-byte ping-pong, µs.
    pub rtt_p50_us: f64,
    /// 99th percentile round trip, µs.
    pub rtt_p99_us: f64,
}

/// Everything `ceiling` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    /// Storage limits, in the order measured.
    pub stores: Vec<StoreLimit>,
    /// TCP between the nodes.
    pub tcp: TcpLimit,
    /// Per-core rates of the data path's stages.
    pub stages: Vec<StageRate>,
}

impl Limits {
    /// The markdown tables.
    pub fn tables(&self) -> String {
        let mut out = String::from(
            "| limit | workload | MB/s | IOPS | p50 µs | p99 µs |\n|---|---|---:|---:|---:|---:|\n",
        );
        for store in &self.stores {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
                store.what,
                store.workload,
                store.megabytes_per_second,
                store.operations_per_second,
                store.p50_us,
                store.p99_us
            ));
        }
        out.push_str(&format!(
            "| TCP 127.0.0.1 → 127.0.0.2, one stream | 1 MiB writes | {:.0} | | | |\n\
             | TCP round trip, 64 bytes | ping-pong | | | {:.0} | {:.0} |\n\n",
            self.tcp.megabytes_per_second, self.tcp.rtt_p50_us, self.tcp.rtt_p99_us
        ));
        out.push_str(
            "| stage (1 MiB blocks, one core) | data | MB/s | out/in |\n|---|---|---:|---:|\n",
        );
        for stage in &self.stages {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {} |\n",
                stage.stage,
                stage.data,
                stage.megabytes_per_second,
                stage
                    .output_ratio
                    .map_or_else(|| "–".to_string(), |ratio| format!("{ratio:.3}"))
            ));
        }
        out
    }

    /// The charts: storage and network; per-core stages.
    pub fn charts(&self) -> [(&'static str, BarChart); 2] {
        let mut io = BarChart::new("Limits of this machine: storage and network", "MB/s");
        for store in &self.stores {
            io.bars.push(Bar::new(
                format!("{}, {}", store.what, store.workload),
                store.megabytes_per_second,
            ));
        }
        io.bars
            .push(Bar::new("TCP, one stream", self.tcp.megabytes_per_second));
        let mut cpu = BarChart::new("Per-core rates of the data path's stages", "MB/s, one core");
        for stage in &self.stages {
            cpu.bars.push(Bar::new(
                format!("{} ({})", stage.stage, stage.data),
                stage.megabytes_per_second,
            ));
        }
        [("ceiling-io", io), ("ceiling-cpu", cpu)]
    }
}

/// What `ceiling` needs.
#[derive(Clone, Debug)]
pub struct LimitOptions {
    /// The two backing files (prepared once).
    pub files: [PathBuf; 2],
    /// Their size.
    pub size_bytes: u64,
    /// Warm-up and measured time of each storage and TCP measurement.
    pub schedule: Schedule,
    /// Time per stage rate.
    pub stage_time: Duration,
}

/// The workloads of the storage limits: those of `write` (1 MiB sequential and 4 KiB random
/// at depths 1 and 32).
pub fn workloads() -> Vec<Workload> {
    let mut workloads = Vec::new();
    for (block_bytes, random) in [
        (replicated::SEQUENTIAL_BLOCK_BYTES, false),
        (replicated::RANDOM_BLOCK_BYTES, true),
    ] {
        for queue_depth in [1, 32] {
            workloads.push(Workload {
                block_bytes,
                random,
                queue_depth,
            });
        }
    }
    workloads
}

/// Measurements `measure` makes (for the progress bar).
pub fn steps() -> u64 {
    // Per workload: one store written, both written; two reads at depth 32; TCP; stages.
    workloads().len() as u64 * 2 + 2 + 1 + 1
}

/// Measures every limit.
pub fn measure(options: &LimitOptions) -> anyhow::Result<Limits> {
    for file in &options.files {
        replicated::prepare_file(file, options.size_bytes)?;
    }
    let span_bytes = options.size_bytes;
    let mut stores = Vec::new();
    let [first, second] = &options.files;
    for workload in workloads() {
        let data = data_for(workload);
        progress::step(&format!("ceiling: one store written, {}", workload.name()));
        let one = ceiling::run_files(
            &[(first, "store")],
            workload,
            span_bytes,
            options.schedule,
            &data,
        )?;
        stores.push(StoreLimit::new("one store, write", workload, &one));
        progress::step(&format!(
            "ceiling: both stores written, {}",
            workload.name()
        ));
        let both = ceiling::run(
            [first, second],
            workload,
            span_bytes,
            options.schedule,
            &data,
        )?;
        stores.push(StoreLimit::new(
            "both stores at once, write (per store)",
            workload,
            &both,
        ));
    }
    for workload in workloads().into_iter().filter(|w| w.queue_depth > 1) {
        progress::step(&format!("ceiling: one store read, {}", workload.name()));
        let reader = RawReader(Backing::open(first).context("opening the store")?);
        let data = data_for(workload);
        let read = local::run_with(
            &reader,
            workload,
            span_bytes,
            options.schedule,
            &data,
            "reader",
        )?;
        stores.push(StoreLimit::new("one store, read", workload, &read));
    }
    progress::step("ceiling: TCP between the node addresses");
    let tcp = measure_tcp(options.schedule.measure)?;
    progress::step("ceiling: per-core stage rates");
    let stages = measure_stage_rates(options.stage_time)?;
    Ok(Limits {
        stores,
        tcp,
        stages,
    })
}

/// The per-core rates on random and compressible 1 MiB blocks.
pub fn measure_stage_rates(time: Duration) -> anyhow::Result<Vec<StageRate>> {
    let block = replicated::SEQUENTIAL_BLOCK_BYTES as usize;
    let random = DataSet::new(DataKind::Random, block, DataSet::BLOCKS_DEFAULT);
    let compressible = DataSet::new(DataKind::Compressible, block, DataSet::BLOCKS_DEFAULT);
    stages::measure(&[&random, &compressible], time)
}

fn data_for(workload: Workload) -> DataSet {
    let blocks = ((64 << 20) / workload.block_bytes).max(1) as usize;
    DataSet::new(DataKind::Random, workload.block_bytes as usize, blocks)
}

/// TCP from 127.0.0.1 to 127.0.0.2: one stream for `time`, then the round trip.
pub fn measure_tcp(time: Duration) -> anyhow::Result<TcpLimit> {
    let listener = TcpListener::bind(SocketAddr::from((PEER_ADDRESS, 0)))
        .context("listening on 127.0.0.2 (loopback: every 127/8 address is local)")?;
    // Connected before the receiver starts (the kernel completes the handshake): a failed
    // connect leaves no thread waiting in accept.
    let mut stream = connect_from_first(listener.local_addr()?)?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; TCP_CHUNK_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buffer)? {
                0 => return Ok(total),
                count => total += count as u64,
            }
        }
    });
    let chunk = vec![0x5Au8; TCP_CHUNK_BYTES];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < time {
        stream.write_all(&chunk).context("TCP send")?;
        sent += chunk.len() as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("TCP shutdown")?;
    let received = sink
        .join()
        .map_err(|_| anyhow::anyhow!("the TCP sink panicked"))?
        .context("TCP receive")?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        received == sent,
        "TCP: sent {sent} bytes, {received} arrived"
    );
    let (rtt_p50_us, rtt_p99_us) = measure_rtt()?;
    Ok(TcpLimit {
        megabytes_per_second: sent as f64 / elapsed.as_secs_f64() / 1e6,
        rtt_p50_us,
        rtt_p99_us,
    })
}

/// Median and 99th percentile of a 64-byte ping-pong between the node addresses, µs.
pub fn measure_rtt() -> anyhow::Result<(f64, f64)> {
    let listener =
        TcpListener::bind(SocketAddr::from((PEER_ADDRESS, 0))).context("listening on 127.0.0.2")?;
    let mut stream = connect_from_first(listener.local_addr()?)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0u8; 64];
        for _ in 0..RTT_SAMPLES {
            stream.read_exact(&mut buffer)?;
            stream.write_all(&buffer)?;
        }
        Ok(())
    });
    stream.set_nodelay(true)?;
    let mut buffer = [7u8; 64];
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        let begun = Instant::now();
        stream.write_all(&buffer).context("ping")?;
        stream.read_exact(&mut buffer).context("pong")?;
        samples.push(begun.elapsed());
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))?
        .context("echo")?;
    let stats = RunStats::new(samples.len() as u64, 0, Duration::ZERO, samples);
    Ok((
        stats.percentile(0.5).as_secs_f64() * 1e6,
        stats.percentile(0.99).as_secs_f64() * 1e6,
    ))
}

/// Connects to `address` from 127.0.0.1, as the first node would.
fn connect_from_first(address: SocketAddr) -> anyhow::Result<TcpStream> {
    TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to {address}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_between_the_node_addresses_moves_bytes_and_times_round_trips() {
        let tcp = measure_tcp(Duration::from_millis(200)).expect("tcp");
        assert!(tcp.megabytes_per_second > 0.0, "{tcp:?}");
        assert!(
            tcp.rtt_p50_us > 0.0 && tcp.rtt_p99_us >= tcp.rtt_p50_us,
            "{tcp:?}"
        );
    }
}
