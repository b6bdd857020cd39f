//! Local-only throughput: writes through the engine against writes straight to the same backing
//! store, in the same run, with the same number of writers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use engine::buffer::IoBuf;
use engine::prng::Prng;
use engine::replica::{AdminCommand, ClientOp, ReplicaConfig, StorageOp};
use engine::runtime::backing::Backing;
use engine::runtime::{LocalVolume, RuntimeOptions};
use engine::types::NodeId;

use crate::stats::RunStats;

/// One workload: block size, access pattern, writers in parallel.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Bytes per write.
    pub block_bytes: u64,
    /// Random offsets (else each writer goes sequentially through its own stripe).
    pub random: bool,
    /// Writers, each with one write in flight: the queue depth.
    pub queue_depth: usize,
}

impl Workload {
    /// A short name: `seq-1MiB-qd1`.
    pub fn name(&self) -> String {
        let pattern = if self.random { "rand" } else { "seq" };
        let size = if self.block_bytes >= 1 << 20 {
            format!("{}MiB", self.block_bytes >> 20)
        } else {
            format!("{}KiB", self.block_bytes >> 10)
        };
        format!("{pattern}-{size}-qd{}", self.queue_depth)
    }
}

/// Where a writer sends its writes.
pub trait Target: Sync {
    /// Writes `data` at `offset` and waits for the completion.
    fn write(&self, offset: u64, data: &IoBuf);
}

/// Writes straight to the backing store (the same path the engine's I/O threads take).
#[derive(Debug)]
pub struct RawTarget(pub Backing);

impl Target for RawTarget {
    fn write(&self, offset: u64, data: &IoBuf) {
        let op = StorageOp::Write {
            offset,
            data: data.clone(),
            fua: false,
        };
        self.0.execute(&op).expect("raw write");
    }
}

/// Writes through a local volume.
#[derive(Debug)]
pub struct EngineTarget(pub engine::runtime::VolumeHandle);

impl Target for EngineTarget {
    fn write(&self, offset: u64, data: &IoBuf) {
        let (sender, receiver) = bounded(1);
        let op = ClientOp::Write {
            offset,
            data: data.clone(),
            fua: false,
        };
        self.0.submit_inline(
            op,
            Box::new(move |result| sender.send(result).expect("waiting")),
        );
        receiver.recv().expect("completion").expect("engine write");
    }
}

/// Runs `workload` against `target` over `[0, span_bytes)` for `duration`.
pub fn run(
    target: &dyn Target,
    workload: Workload,
    span_bytes: u64,
    duration: Duration,
) -> RunStats {
    let blocks = span_bytes / workload.block_bytes;
    let stripe = blocks / workload.queue_depth as u64;
    let operations = AtomicU64::new(0);
    let started = Instant::now();
    let data = IoBuf::copy_from(&vec![0x5A; workload.block_bytes as usize]);
    let latencies: Vec<Vec<Duration>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..workload.queue_depth)
            .map(|writer| {
                let (operations, data) = (&operations, data.clone());
                scope.spawn(move || {
                    let mut prng = Prng::from_seed(writer as u64 + 1);
                    let mut latencies = Vec::new();
                    let mut next = writer as u64 * stripe;
                    while started.elapsed() < duration {
                        let block = if workload.random {
                            prng.below(blocks)
                        } else {
                            let block = next;
                            next = if next + 1 >= (writer as u64 + 1) * stripe {
                                writer as u64 * stripe
                            } else {
                                next + 1
                            };
                            block
                        };
                        let begun = Instant::now();
                        target.write(block * workload.block_bytes, &data);
                        latencies.push(begun.elapsed());
                        operations.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies
                })
            })
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect()
    });
    let elapsed = started.elapsed();
    let operations = operations.load(Ordering::Relaxed);
    let latencies = latencies.into_iter().flatten().collect();
    RunStats::new(
        operations,
        operations * workload.block_bytes,
        elapsed,
        latencies,
    )
}

/// Opens `path` as a local-only volume (metadata must exist) and makes it primary.
pub fn open_volume(path: &Path, name: &str, io_threads: usize) -> anyhow::Result<Arc<LocalVolume>> {
    let volume = LocalVolume::open(
        path,
        ReplicaConfig::new(name, NodeId(0)),
        RuntimeOptions { io_threads },
    )?;
    volume
        .handle()
        .admin(AdminCommand::Promote { force: true })
        .map_err(|e| anyhow::anyhow!("promote: {e}"))?;
    Ok(Arc::new(volume))
}
