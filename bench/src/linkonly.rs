//! The link alone, without volumes or disks: what the replication link costs and carries when
//! both ends share this machine's cores. The same link as [`crate::pair`] (a real
//! connect/accept pair, two async runtimes of two workers), the same message path as the
//! daemon's session (the primary encodes `Write` messages and sends them; the other end
//! receives, decodes them into a `PeerMessage` and recycles the buffer), but the other end
//! acknowledges each write at once instead of writing it to a disk first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use crossbeam_channel::{Sender, bounded};
use engine::buffer::IoBuf;
use engine::protocol::compress::Compression;
use engine::protocol::messages::{PeerMessage, WriteFlags};
use engine::runtime::link::{
    self, Hello, LinkConfig, LinkCounters, LinkReceiver, LinkSender, LinkTraffic,
};
use engine::types::Seq;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::data::DataSet;
use crate::local::{self, Schedule, Target, Workload};
use crate::pair::{VOLUME_NAME, random_key, runtime, traffic_since};
use crate::stats::RunStats;

/// The longest a write may wait for its acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Writers waiting for acknowledgements, by sequence number.
type Waiting = Arc<Mutex<HashMap<u64, Sender<bool>>>>;

/// Sends each write over the link and waits for the other end's acknowledgement.
struct LinkTarget {
    outputs: UnboundedSender<PeerMessage>,
    waiting: Waiting,
    next_seq: AtomicU64,
}

impl Target for LinkTarget {
    fn io(&self, offset: u64, data: &IoBuf) -> anyhow::Result<()> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (acked, ack) = bounded(1);
        lock(&self.waiting).insert(seq, acked);
        let message = write_message(seq, offset, data.clone());
        self.outputs
            .send(message)
            .map_err(|_| anyhow::anyhow!("the link's sending task is gone"))?;
        let ok = ack
            .recv_timeout(ACK_TIMEOUT)
            .with_context(|| format!("write {seq} was not acknowledged"))?;
        anyhow::ensure!(ok, "write {seq} was refused");
        Ok(())
    }
}

/// The replicated write a protocol C primary sends: write `seq`, after `seq - 1`, no FUA.
pub(crate) fn write_message(seq: u64, offset: u64, data: IoBuf) -> PeerMessage {
    PeerMessage::Write {
        seq: Seq(seq),
        after: Seq(seq.saturating_sub(1)),
        offset,
        flags: WriteFlags::default(),
        data,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A link between two async runtimes of this process, ready to carry writes.
pub struct LinkPair {
    target: LinkTarget,
    counters: Arc<LinkCounters>,
    tasks: Vec<tokio::task::JoinHandle<String>>,
    runtimes: [Runtime; 2],
}

impl std::fmt::Debug for LinkPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPair").finish_non_exhaustive()
    }
}

impl LinkPair {
    /// Connects a fresh link with `codec` over 127.0.0.1 and starts both ends.
    pub fn start(codec: Compression) -> anyhow::Result<Self> {
        let runtimes = [runtime("primary-async")?, runtime("secondary-async")?];
        let key = random_key();
        let config = |node: &str| {
            let mut config = LinkConfig::new(key, Hello::new("bench", node, VOLUME_NAME));
            config.compression = codec;
            config
        };
        let listener = runtimes[1]
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("listening for the link")?;
        let address = listener.local_addr().context("the link's address")?;
        let responder_config = config("beta");
        let responder = runtimes[1].spawn(async move {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => return format!("accept: {error}"),
            };
            match link::accept(stream, &responder_config).await {
                Ok((sender, receiver, _)) => acknowledge(sender, receiver).await,
                Err(error) => format!("accepting the link: {error}"),
            }
        });
        let (sender, receiver, _) = runtimes[0]
            .block_on(link::connect(address, &config("alpha")))
            .context("connecting the link")?;
        let counters = sender.counters();
        let waiting: Waiting = Arc::default();
        let (outputs, queue) = unbounded_channel();
        let initiator = start_initiator(&runtimes[0], sender, receiver, queue, &waiting);
        let target = LinkTarget {
            outputs,
            waiting,
            next_seq: AtomicU64::new(1),
        };
        Ok(Self {
            target,
            counters,
            tasks: vec![initiator, responder],
            runtimes,
        })
    }

    /// Runs `workload` over the link; returns the writers' stats and the link's traffic as the
    /// sending end counts it.
    pub fn run(
        &self,
        workload: Workload,
        span_bytes: u64,
        schedule: Schedule,
        data: &DataSet,
    ) -> anyhow::Result<(RunStats, LinkTraffic)> {
        let before = self.counters.snapshot();
        let stats = local::run_with(&self.target, workload, span_bytes, schedule, data, "writer")?;
        let ends = ["sending", "acknowledging"];
        if let Some((end, _)) = ends.iter().zip(&self.tasks).find(|(_, t)| t.is_finished()) {
            anyhow::bail!("the {end} end of the link stopped during the run");
        }
        Ok((stats, traffic_since(self.counters.snapshot(), before)))
    }

    /// Stops both ends.
    pub fn close(self) {
        for task in &self.tasks {
            task.abort();
        }
        drop(self.target);
        for runtime in self.runtimes {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// The sending end: one task sends queued messages in order, another wakes the writer of
/// each acknowledged write.
fn start_initiator(
    runtime: &Runtime,
    mut sender: LinkSender,
    mut receiver: LinkReceiver,
    mut queue: UnboundedReceiver<PeerMessage>,
    waiting: &Waiting,
) -> tokio::task::JoinHandle<String> {
    let waiting = Arc::clone(waiting);
    runtime.spawn(async move {
        let writing = async {
            while let Some(message) = queue.recv().await {
                if let Err(error) = sender.send(message.kind(), &message.encode()).await {
                    return error.to_string();
                }
            }
            "the writers are done".to_string()
        };
        let reading = async {
            loop {
                let (kind, payload) = match receiver.recv().await {
                    Ok(frame) => frame,
                    Err(error) => return error.to_string(),
                };
                let message = PeerMessage::decode(kind, &payload);
                receiver.recycle(payload);
                if let Ok(PeerMessage::WriteAck { seq, ok }) = message
                    && let Some(writer) = lock(&waiting).remove(&seq.0)
                {
                    // A writer that timed out no longer listens.
                    let _ = writer.send(ok);
                }
            }
        };
        tokio::select! {
            reason = writing => reason,
            reason = reading => reason,
        }
    })
}

/// The other end: decodes every message as the session does and acknowledges each write.
async fn acknowledge(mut sender: LinkSender, mut receiver: LinkReceiver) -> String {
    loop {
        let (kind, payload) = match receiver.recv().await {
            Ok(frame) => frame,
            Err(error) => return error.to_string(),
        };
        let message = match PeerMessage::decode(kind, &payload) {
            Ok(message) => message,
            Err(error) => return format!("protocol error: {error}"),
        };
        receiver.recycle(payload);
        if let PeerMessage::Write { seq, .. } = message {
            let ack = PeerMessage::WriteAck { seq, ok: true };
            if let Err(error) = sender.send(ack.kind(), &ack.encode()).await {
                return error.to_string();
            }
        }
    }
}
