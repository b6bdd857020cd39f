//! Running a replica over a real backing store.
//!
//! There is no driver thread: the replica sits behind a mutex and runs on whichever thread
//! brings an input (run to completion), so a request costs no thread hand-off of its own.
//! Storage operations go either to a pool of I/O threads ([`VolumeHandle::submit`], for callers
//! that must not block, such as async frontends) or are executed by the calling thread itself
//! ([`VolumeHandle::submit_inline`], for callers that may block: a request then costs no thread
//! hand-off at all, like a plain `pwrite`). A small timer thread delivers the replica's deadlines.
//! Client completions and admin replies are called after the mutex is released.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};

use super::backing::Backing;
use super::{os_random_u64, unix_millis};
use crate::buffer::IoBuf;
use crate::error::{Error, Result};
use crate::prng::Prng;
use crate::replica::{
    AdminCommand, ClientOp, ClientRequest, Event, Input, Output, RecoveryReport, Refusal, Replica,
    ReplicaConfig, ReplicaStatus, StorageCompletion, StorageRequest,
};
use crate::types::{Errno, Instant, Now, RequestTag};

/// What a client gets back: data for reads, nothing for the rest, or an errno.
pub type Completion = Box<dyn FnOnce(std::result::Result<Option<IoBuf>, Errno>) + Send>;

/// What the replica asks of the link to its peer, in order.
#[derive(Debug)]
pub enum PeerOutput {
    /// Send this message.
    Send(crate::protocol::messages::PeerMessage),
    /// Close the link, for this reason.
    Close(String),
}

type AdminReply = Sender<std::result::Result<(), Refusal>>;

/// Runtime settings.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeOptions {
    /// I/O threads for [`VolumeHandle::submit`]: the most pooled storage operations in flight.
    pub io_threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { io_threads: 32 }
    }
}

/// The replica and the callbacks waiting on it.
struct State {
    replica: Replica,
    completions: HashMap<u64, Completion>,
    admin_replies: HashMap<u64, AdminReply>,
    next_tag: u64,
    next_admin: u64,
    stopped: bool,
}

/// Everything the threads share.
struct Shared {
    volume_name: String,
    state: Mutex<State>,
    backing: Arc<Backing>,
    io: Mutex<Option<Sender<StorageRequest>>>,
    events: Sender<Event>,
    /// Where messages to the peer go. They are queued under the replica's lock, so they leave in
    /// the order the replica produced them.
    peer: Mutex<Option<tokio::sync::mpsc::UnboundedSender<PeerOutput>>>,
    clock_origin: std::time::Instant,
    /// Wakes the timer thread when the deadline may have moved earlier.
    deadline_changed: Condvar,
    stopping: AtomicBool,
}

/// Where the storage operations of a step go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dispatch {
    Pool,
    Inline,
}

/// Outputs taken from the replica under the lock, acted on after it is released.
#[derive(Default)]
struct Deferred {
    storage: Vec<StorageRequest>,
    completions: Vec<(Completion, std::result::Result<Option<IoBuf>, Errno>)>,
    admin: Vec<(AdminReply, std::result::Result<(), Refusal>)>,
}

impl Shared {
    fn now(&self) -> Now {
        let nanos = u64::try_from(self.clock_origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Now {
            monotonic: Instant::from_nanos(nanos),
            unix_millis: unix_millis(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock aborts the daemon (its panic hook); in tests the
        // poisoned state is still the best information there is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Feeds `input`, then everything it leads to: with `Dispatch::Inline`, storage operations
    /// are executed on this thread and their completions fed back until none remain.
    fn step(&self, input: Input, dispatch: Dispatch) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let deferred = self.step_locked(input);
            for (completion, result) in deferred.completions {
                completion(result);
            }
            for (reply, result) in deferred.admin {
                let _ = reply.send(result);
            }
            for request in deferred.storage {
                match dispatch {
                    Dispatch::Inline => {
                        let result = self.backing.execute(&request.op);
                        inputs.push_back(Input::Storage(StorageCompletion {
                            id: request.id,
                            result,
                        }));
                    }
                    Dispatch::Pool => self.to_pool(request),
                }
            }
        }
    }

    fn step_locked(&self, input: Input) -> Deferred {
        let mut state = self.lock();
        // Read the clock under the lock, so inputs reach the replica in time order.
        let now = self.now();
        let deadline_before = state.replica.next_deadline();
        state.replica.handle(now, input);
        let mut deferred = Deferred::default();
        while let Some(output) = state.replica.poll_output() {
            match output {
                Output::Storage(request) => deferred.storage.push(request),
                Output::Client(completion) => {
                    if let Some(callback) = state.completions.remove(&completion.tag.0) {
                        deferred.completions.push((callback, completion.result));
                    }
                }
                Output::AdminDone { id, result } => {
                    if let Some(reply) = state.admin_replies.remove(&id) {
                        deferred.admin.push((reply, result));
                    }
                }
                Output::Event(event) => {
                    tracing::info!(volume = %self.volume_name, "{event}");
                    if let Err(TrySendError::Full(_)) = self.events.try_send(event) {
                        // Nobody is reading events; the log line above has it.
                    }
                }
                Output::PeerSend(message) => self.to_peer(PeerOutput::Send(message)),
                Output::PeerClose { reason } => self.to_peer(PeerOutput::Close(reason)),
            }
        }
        let deadline_after = state.replica.next_deadline();
        drop(state);
        if deadline_after.is_some()
            && deadline_after < deadline_before.or(Some(Instant::from_nanos(u64::MAX)))
        {
            self.deadline_changed.notify_one();
        }
        deferred
    }

    fn to_peer(&self, output: PeerOutput) {
        let peer = self
            .peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = peer.as_ref() {
            // A closed receiver means the link task is gone; the replica hears of it separately.
            let _ = sender.send(output);
        }
    }

    fn to_pool(&self, request: StorageRequest) {
        let io = self
            .io
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sent = io
            .as_ref()
            .is_some_and(|sender| sender.send(request.clone()).is_ok());
        drop(io);
        if !sent {
            // Stopping: the operation fails like a disk that went away.
            let completion = StorageCompletion {
                id: request.id,
                result: Err(Errno::EIO),
            };
            self.step(Input::Storage(completion), Dispatch::Pool);
        }
    }

    fn submit(&self, op: ClientOp, completion: Completion, dispatch: Dispatch) {
        let mut state = self.lock();
        if state.stopped {
            drop(state);
            return completion(Err(Errno::EIO));
        }
        let tag = state.next_tag;
        state.next_tag += 1;
        state.completions.insert(tag, completion);
        drop(state);
        self.step(
            Input::Client(ClientRequest {
                tag: RequestTag(tag),
                op,
            }),
            dispatch,
        );
    }
}

/// A cloneable handle for submitting requests to an open volume.
#[derive(Clone)]
pub struct VolumeHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VolumeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeHandle({})", self.shared.volume_name)
    }
}

impl VolumeHandle {
    /// Submits a client request without blocking; storage operations go to the I/O pool and
    /// `completion` runs on an I/O thread (or here, if the request fails at once).
    pub fn submit(&self, op: ClientOp, completion: Completion) {
        self.shared.submit(op, completion, Dispatch::Pool);
    }

    /// Submits a client request and executes the storage operations it leads to on this thread;
    /// returns when they are done. `completion` has run by then unless the request waits on
    /// something else (another request's write, an I/O-pool operation), in which case it runs
    /// where that finishes.
    pub fn submit_inline(&self, op: ClientOp, completion: Completion) {
        self.shared.submit(op, completion, Dispatch::Inline);
    }

    /// Runs an admin command and waits for its result.
    pub fn admin(&self, command: AdminCommand) -> std::result::Result<(), Refusal> {
        let (reply, result) = bounded(1);
        let mut state = self.shared.lock();
        if state.stopped {
            return Err(Refusal::Attach("the volume is stopped".to_string()));
        }
        let id = state.next_admin;
        state.next_admin += 1;
        state.admin_replies.insert(id, reply);
        drop(state);
        self.shared
            .step(Input::Admin { id, command }, Dispatch::Pool);
        result
            .recv()
            .map_err(|_| Refusal::Attach("the volume stopped".to_string()))?
    }

    /// A status snapshot.
    pub fn status(&self) -> ReplicaStatus {
        self.shared.lock().replica.status()
    }

    /// The ranges this node changed since the peer last had its data (after a split brain:
    /// what discarding this node's data would lose).
    pub fn changed_ranges(&self) -> Vec<(u64, u64)> {
        self.shared.lock().replica.changed_ranges()
    }

    /// Routes messages to the peer into a new channel and returns its receiving end; messages
    /// produced while no channel is installed are dropped (there is no link then).
    pub fn peer_channel(&self) -> tokio::sync::mpsc::UnboundedReceiver<PeerOutput> {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        *self
            .shared
            .peer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(sender);
        receiver
    }

    /// Tells the replica about the link: up, a message, down.
    pub fn peer_input(&self, input: Input) {
        debug_assert!(matches!(
            input,
            Input::PeerConnected | Input::PeerMessage(_) | Input::PeerDisconnected { .. }
        ));
        self.shared.step(input, Dispatch::Pool);
    }
}

/// A volume open on this node over a local backing store.
pub struct LocalVolume {
    handle: VolumeHandle,
    io_threads: Vec<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    recovery: Option<RecoveryReport>,
    events: Receiver<Event>,
}

impl std::fmt::Debug for LocalVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalVolume({})", self.handle.shared.volume_name)
    }
}

impl LocalVolume {
    /// Opens the backing store at `path`, starts the I/O and timer threads, and attaches the
    /// metadata.
    pub fn open(path: &Path, config: ReplicaConfig, options: RuntimeOptions) -> Result<Self> {
        let backing = Arc::new(Backing::open(path)?);
        let backing_bytes = backing.size_bytes();
        let (io_sender, io_queue) = unbounded::<StorageRequest>();
        let (event_sender, events) = bounded::<Event>(1024);
        let volume_name = config.volume_name.clone();
        let replica = Replica::new(config, Prng::from_seed(os_random_u64()));
        let shared = Arc::new(Shared {
            volume_name: volume_name.clone(),
            state: Mutex::new(State {
                replica,
                completions: HashMap::new(),
                admin_replies: HashMap::new(),
                next_tag: 1,
                next_admin: 1,
                stopped: false,
            }),
            backing,
            io: Mutex::new(Some(io_sender)),
            events: event_sender,
            peer: Mutex::new(None),
            clock_origin: std::time::Instant::now(),
            deadline_changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let mut io_threads = Vec::with_capacity(options.io_threads);
        for index in 0..options.io_threads.max(1) {
            let (shared, queue) = (Arc::clone(&shared), io_queue.clone());
            let thread = std::thread::Builder::new()
                .name(format!("tandem-io-{index}"))
                .spawn(move || io_thread(&shared, &queue))
                .map_err(|e| Error::io("starting an I/O thread", e))?;
            io_threads.push(thread);
        }
        let timer_shared = Arc::clone(&shared);
        let timer = std::thread::Builder::new()
            .name(format!("tandem-timer-{volume_name}"))
            .spawn(move || timer_thread(&timer_shared))
            .map_err(|e| Error::io("starting the timer thread", e))?;
        let mut volume = Self {
            handle: VolumeHandle { shared },
            io_threads,
            timer: Some(timer),
            recovery: None,
            events,
        };
        if let Err(refusal) = volume.handle.admin(AdminCommand::Attach { backing_bytes }) {
            volume.stop();
            return Err(Error::MetadataCorrupt(format!(
                "{}: {refusal}",
                path.display()
            )));
        }
        volume.recovery = volume.events.try_iter().find_map(|event| match event {
            Event::Recovered(report) => Some(*report),
            _ => None,
        });
        Ok(volume)
    }

    /// A handle for submitting requests.
    pub fn handle(&self) -> VolumeHandle {
        self.handle.clone()
    }

    /// What recovery did when the volume was opened.
    pub fn recovery_report(&self) -> Option<&RecoveryReport> {
        self.recovery.as_ref()
    }

    /// Events since the last call (state changes, decisions), oldest first; at most 1024 are
    /// kept between calls.
    pub fn drain_events(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Detaches cleanly (everything written out, metadata marked clean) and stops.
    pub fn close(mut self) -> std::result::Result<(), Refusal> {
        let result = self.handle.admin(AdminCommand::Detach);
        self.stop();
        result
    }

    fn stop(&mut self) {
        let shared = &self.handle.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        shared.lock().stopped = true;
        shared.deadline_changed.notify_all();
        // Closing the queue ends the I/O threads once they finish what they hold.
        shared
            .io
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        for thread in self.io_threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
        let waiting: Vec<Completion> = shared.lock().completions.drain().map(|(_, c)| c).collect();
        for completion in waiting {
            completion(Err(Errno::EIO));
        }
    }
}

impl Drop for LocalVolume {
    /// Stops without detaching: to the metadata this looks like a crash, which recovery handles.
    fn drop(&mut self) {
        self.stop();
    }
}

fn io_thread(shared: &Shared, queue: &Receiver<StorageRequest>) {
    while let Ok(request) = queue.recv() {
        let result = shared.backing.execute(&request.op);
        shared.step(
            Input::Storage(StorageCompletion {
                id: request.id,
                result,
            }),
            Dispatch::Pool,
        );
    }
}

/// Sleeps until the replica's deadline (or until woken because it moved), then delivers it.
fn timer_thread(shared: &Shared) {
    let mut state = shared.lock();
    while !shared.stopping.load(Ordering::SeqCst) {
        let now = shared.now().monotonic;
        match state.replica.next_deadline() {
            Some(deadline) if deadline <= now => {
                drop(state);
                shared.step(Input::Timer, Dispatch::Pool);
                state = shared.lock();
            }
            Some(deadline) => {
                let wait = deadline.since(now).max(Duration::from_micros(50));
                state = shared
                    .deadline_changed
                    .wait_timeout(state, wait)
                    .map_or_else(|e| e.into_inner().0, |r| r.0);
            }
            None => {
                let wait = Duration::from_secs(1);
                state = shared
                    .deadline_changed
                    .wait_timeout(state, wait)
                    .map_or_else(|e| e.into_inner().0, |r| r.0);
            }
        }
    }
}
