//! Local-only throughput: writes through the engine against writes straight to the same backing
//! store, in the same run, with the same number of writers. The writer loop ([`run_with`]) and
//! the targets are shared with the replicated benchmark.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use crossbeam_channel::bounded;
use engine::buffer::IoBuf;
use engine::prng::Prng;
use engine::replica::{AdminCommand, ClientOp, ReplicaConfig, StorageOp};
use engine::runtime::backing::Backing;
use engine::runtime::{LocalVolume, RuntimeOptions, VolumeHandle};
use engine::types::NodeId;

use crate::data::DataSet;
use crate::stats::RunStats;

/// The longest a single write may take before the run is declared stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// The `step`-th block writer `writer` of this workload writes, of `blocks` in the span.
    fn block(&self, writer: u64, step: u64, blocks: u64, prng: &mut Prng) -> u64 {
        if self.random {
            return prng.below(blocks);
        }
        (self.stripe_start(writer, blocks) + step % self.stripe_blocks(blocks)) % blocks
    }

    /// Blocks in each sequential writer's stripe, of `blocks` in the span.
    fn stripe_blocks(&self, blocks: u64) -> u64 {
        (blocks / self.queue_depth.max(1) as u64).max(1)
    }

    /// The first block writer `writer` writes, of `blocks` in the span (for a sequential
    /// workload the start of its stripe).
    pub fn first_block(&self, writer: u64, blocks: u64) -> u64 {
        self.block(writer, 0, blocks, &mut writer_prng(writer))
    }

    /// The first block of sequential writer `writer`'s stripe (its first write), of `blocks` in
    /// the span.
    pub fn stripe_start(&self, writer: u64, blocks: u64) -> u64 {
        writer * self.stripe_blocks(blocks) % blocks.max(1)
    }
}

/// The offsets of random writer `writer`, the same in every run.
fn writer_prng(writer: u64) -> Prng {
    Prng::from_seed(writer + 1)
}

/// How long a run lasts: a warm-up that is not measured, then the measured part.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Writes begun before this much time are not counted.
    pub warmup: Duration,
    /// The measured time.
    pub measure: Duration,
}

/// Where a writer sends its operations.
pub trait Target: Sync {
    /// Performs one operation at `offset` and waits for its completion: a write of `data`, or
    /// for a reader ([`RawReader`]) a read of as many bytes.
    fn io(&self, offset: u64, data: &IoBuf) -> anyhow::Result<()>;
}

/// Writes straight to the backing store (the same path the engine's I/O threads take: `pwrite`
/// on the `O_DIRECT` descriptor for aligned writes).
#[derive(Debug)]
pub struct RawTarget(pub Backing);

impl Target for RawTarget {
    fn io(&self, offset: u64, data: &IoBuf) -> anyhow::Result<()> {
        let op = StorageOp::Write {
            offset,
            data: data.clone(),
            fua: false,
        };
        self.0
            .execute(&op)
            .map_err(|errno| anyhow::anyhow!("raw write at {offset}: errno {}", errno.0))?;
        Ok(())
    }
}

/// Reads from the backing store, as [`RawTarget`] writes to it (`pread` on the `O_DIRECT`
/// descriptor): the read half of the store's limits.
#[derive(Debug)]
pub struct RawReader(pub Backing);

impl Target for RawReader {
    fn io(&self, offset: u64, data: &IoBuf) -> anyhow::Result<()> {
        self.0
            .read(offset, data.len() as u64)
            .map_err(|errno| anyhow::anyhow!("raw read at {offset}: errno {}", errno.0))?;
        Ok(())
    }
}

/// Writes through a volume with [`VolumeHandle::submit_inline`]: the writer's thread executes
/// the local storage write itself, then waits for the completion (which, on a replicated
/// primary with protocol C, also waits for the peer's acknowledgement).
#[derive(Debug)]
pub struct EngineTarget(pub VolumeHandle);

impl Target for EngineTarget {
    fn io(&self, offset: u64, data: &IoBuf) -> anyhow::Result<()> {
        let (sender, receiver) = bounded(1);
        let op = ClientOp::Write {
            offset,
            data: data.clone(),
            fua: false,
        };
        self.0.submit_inline(
            op,
            Box::new(move |result| {
                // The writer gave up waiting (timeout): nobody needs the result any more.
                let _ = sender.send(result);
            }),
        );
        let result = receiver
            .recv_timeout(WRITE_TIMEOUT)
            .with_context(|| format!("write at {offset} did not complete"))?;
        result.map_err(|errno| anyhow::anyhow!("engine write at {offset}: errno {}", errno.0))?;
        Ok(())
    }
}

/// Runs `workload` against `target` over `[0, span_bytes)` for `duration` with a fixed block.
pub fn run(
    target: &dyn Target,
    workload: Workload,
    span_bytes: u64,
    duration: Duration,
) -> anyhow::Result<RunStats> {
    let data = DataSet::constant(0x5A, workload.block_bytes as usize);
    let schedule = Schedule {
        warmup: Duration::ZERO,
        measure: duration,
    };
    run_with(target, workload, span_bytes, schedule, &data, "writer")
}

/// Runs `workload` against `target` over `[0, span_bytes)`, writing the blocks of `data` in
/// turn. Writer threads are named `{name}-{index}`. The first failed write stops every writer
/// and is returned.
pub fn run_with(
    target: &dyn Target,
    workload: Workload,
    span_bytes: u64,
    schedule: Schedule,
    data: &DataSet,
    name: &str,
) -> anyhow::Result<RunStats> {
    anyhow::ensure!(
        data.block_bytes() as u64 == workload.block_bytes,
        "data blocks of {} bytes for a workload of {}-byte writes",
        data.block_bytes(),
        workload.block_bytes
    );
    let writers = Writers {
        target,
        workload,
        blocks: span_bytes / workload.block_bytes,
        data,
        started: Instant::now(),
        schedule,
        operations: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    };
    anyhow::ensure!(writers.blocks > 0, "the span holds no block");
    let results: Vec<anyhow::Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workload.queue_depth.max(1))
            .map(|index| {
                let writers = &writers;
                std::thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn_scoped(scope, move || writers.run(index as u64))
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| match thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer panicked"))),
                Err(error) => Err(anyhow::Error::new(error).context("starting a writer")),
            })
            .collect()
    });
    let elapsed = writers.started.elapsed().saturating_sub(schedule.warmup);
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    let operations = writers.operations.load(Ordering::Relaxed);
    Ok(RunStats::new(
        operations,
        operations * workload.block_bytes,
        elapsed,
        latencies,
    ))
}

/// What the writer threads of one run share.
struct Writers<'a> {
    target: &'a dyn Target,
    workload: Workload,
    blocks: u64,
    data: &'a DataSet,
    started: Instant,
    schedule: Schedule,
    operations: AtomicU64,
    failed: AtomicBool,
}

impl Writers<'_> {
    /// One writer: writes until the schedule ends or another writer fails; returns the
    /// latencies of the writes begun after the warm-up.
    fn run(&self, writer: u64) -> anyhow::Result<Vec<Duration>> {
        let mut prng = writer_prng(writer);
        let mut latencies = Vec::new();
        let end = self.schedule.warmup + self.schedule.measure;
        let mut step = 0u64;
        while self.started.elapsed() < end && !self.failed.load(Ordering::Relaxed) {
            let block = self.workload.block(writer, step, self.blocks, &mut prng);
            let data = self
                .data
                .block(writer.wrapping_mul(7919).wrapping_add(step));
            step += 1;
            let begun = Instant::now();
            let result = self.target.io(block * self.workload.block_bytes, data);
            if let Err(error) = result {
                self.failed.store(true, Ordering::Relaxed);
                return Err(error);
            }
            if begun.duration_since(self.started) >= self.schedule.warmup {
                latencies.push(begun.elapsed());
                self.operations.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(latencies)
    }
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
