//! [`Replica`]: one volume on one node, as a sans-IO state machine.
//!
//! Inputs ([`Input`]) are client requests, storage completions, admin commands and timer
//! expiries; outputs ([`Output`]) are storage operations, client completions, admin results and
//! events. See the crate documentation for the run-loop contract.
//!
//! A client write passes three gates before it is issued, in arrival order among writes that
//! overlap: no earlier overlapping write still in flight (so both nodes apply overlapping writes
//! in the same order), every activity-log extent it touches is hot, and any superblock change it
//! depends on (a new generation, a journal drop) is durable. When issued it gets the next
//! sequence number, its granules are set in the dirty bitmap (the peer does not have it), the
//! journal records it, and the storage write goes out; the client sees the completion when the
//! storage reports it. The peer side arrives in the next issue: the shape is ready for it (the
//! sequence number, the journal, the bitmap).

mod admin;
mod attach;
mod catchup;
mod digest;
mod metadata;
mod peer;
mod requests;
mod resync;
mod split_brain;
#[cfg(test)]
mod tests;
mod verify;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

pub use attach::RecoveryReport;
pub use resync::SyncProgress;
use serde::Serialize;
pub use split_brain::{SplitBrainPolicy, SplitBrainReport, SplitBrainSide};
pub use verify::VerifyReport;

use crate::activity_log::ActivityLog;
use crate::bitmap::DirtyBitmap;
use crate::buffer::IoBuf;
use crate::generation::{GenerationSet, SyncDecision, SyncRule};
use crate::journal::{Journal, JournalStats};
use crate::layout::Layout;
use crate::prng::Prng;
use crate::protocol::messages::PeerMessage;
use crate::state::{ConnState, DiskState, ReplState, Role};
use crate::superblock::Superblock;
use crate::types::{Errno, Instant, NodeId, Now, RequestTag, StorageOpId};

/// The replication protocol: when a client write completes (DESIGN §2). Switching needs no new
/// metadata; both nodes read it from the same configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Protocol {
    /// Asynchronous: the local write is done and the write is in the journal. The peer stays a
    /// crash-consistent prefix of this node's history; the newest writes can be lost on a
    /// failover.
    A,
    /// Memory-synchronous: the local write is done and the peer has received the write.
    B,
    /// Synchronous: the local write is done and the peer has written it.
    #[default]
    C,
}

/// Settings of a replica that do not live in its metadata.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// The volume's name (checked against the superblock).
    pub volume_name: String,
    /// When client writes complete.
    pub protocol: Protocol,
    /// How a split brain is resolved without an operator.
    pub after_split_brain: SplitBrainPolicy,
    /// This node's id.
    pub node_id: NodeId,
    /// Payload bytes the journal's memory tier holds before spilling to the ring.
    pub journal_memory_bytes_max: u64,
    /// Client requests accepted and not yet completed; more are refused with `EAGAIN`.
    pub requests_in_flight_max: usize,
    /// The largest client write accepted (at most 32 MiB, the journal's record limit). The
    /// activity log must hold the extents of one such write plus two.
    pub request_bytes_max: u64,
    /// While the peer receives writes under protocol B or C and at most one other client
    /// write is in flight, a client data write is cut every this many bytes from its start
    /// into writes of their own (the request completes once, when all of them have):
    /// the peer receives, opens and writes the first piece while the rest is still being
    /// sealed and sent, instead of one large write after the whole transfer.
    pub write_piece_bytes: u64,
    /// How often changed bitmap pages are written even when no extent leaves the activity log.
    pub bitmap_flush_interval: Duration,
    /// How often a ping goes to a connected peer.
    pub ping_interval: Duration,
    /// A connected peer silent for this long is disconnected.
    pub ping_timeout: Duration,
    /// Bytes of replicated writes awaiting the peer's acknowledgement; more client writes wait
    /// (backpressure from a slow peer).
    pub replication_window_bytes: u64,
    /// Resync bytes in flight (read, sent, not yet acknowledged) when clients are idle.
    pub resync_window_bytes: u64,
    /// Clients count as active (the resync keeps one chunk in flight) while a request is in
    /// flight or was accepted within this long.
    pub resync_client_quiet: Duration,
    /// Largest resync read.
    pub resync_chunk_bytes: u64,
    /// An optional cap on the resync rate.
    pub resync_rate_bytes_per_second_max: Option<u64>,
    /// A deliberately planted bug, for showing that the simulator catches it.
    #[cfg(feature = "sim")]
    pub planted_bug: Option<PlantedBug>,
}

impl ReplicaConfig {
    /// Defaults for a volume named `volume_name` on node `node_id`.
    pub fn new(volume_name: impl Into<String>, node_id: NodeId) -> Self {
        Self {
            volume_name: volume_name.into(),
            protocol: Protocol::C,
            after_split_brain: SplitBrainPolicy::Disconnect,
            node_id,
            journal_memory_bytes_max: 64 << 20,
            requests_in_flight_max: 4096,
            request_bytes_max: crate::journal::record::RECORD_PAYLOAD_BYTES_MAX,
            write_piece_bytes: 256 << 10,
            bitmap_flush_interval: Duration::from_secs(10),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(6),
            replication_window_bytes: 64 << 20,
            resync_window_bytes: 16 << 20,
            resync_client_quiet: Duration::from_millis(100),
            resync_chunk_bytes: 1 << 20,
            resync_rate_bytes_per_second_max: None,
            #[cfg(feature = "sim")]
            planted_bug: None,
        }
    }
}

/// Bugs the simulator can plant to show that its checkers catch them (only with the `sim`
/// feature can a configuration plant one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Complete a client FLUSH before the storage flush completes.
    AcknowledgeFlushEarly,
    /// Never write bitmap pages before evicting an activity-log extent.
    SkipBitmapFlushOnEviction,
    /// Let the target of a catch-up apply the journal's records in any order.
    CatchUpUnordered,
    /// Let the peer read for a verify without waiting for the replicated writes sent before
    /// the digests.
    DigestReadUnordered,
    /// Send replicated writes without the writes they depend on (`after` = 0), so the peer
    /// may apply a write before one the client saw complete before submitting it.
    PeerWriteUnordered,
}

impl PlantedBug {
    /// Every planted bug.
    pub const ALL: [Self; 5] = [
        Self::AcknowledgeFlushEarly,
        Self::SkipBitmapFlushOnEviction,
        Self::CatchUpUnordered,
        Self::DigestReadUnordered,
        Self::PeerWriteUnordered,
    ];

    /// The name on the simulator's command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::AcknowledgeFlushEarly => "ack-flush-early",
            Self::SkipBitmapFlushOnEviction => "skip-bitmap-flush-on-eviction",
            Self::CatchUpUnordered => "catch-up-unordered",
            Self::DigestReadUnordered => "digest-read-unordered",
            Self::PeerWriteUnordered => "peer-write-unordered",
        }
    }
}

/// Something that happens to a replica.
#[derive(Debug)]
pub enum Input {
    /// A request from a client of the volume.
    Client(ClientRequest),
    /// A storage operation the replica asked for has completed.
    Storage(StorageCompletion),
    /// An operator or manager command.
    Admin {
        /// Echoed in the [`Output::AdminDone`].
        id: u64,
        /// The command.
        command: AdminCommand,
    },
    /// The deadline the replica asked for has passed.
    Timer,
    /// An authenticated link to the peer is up.
    PeerConnected,
    /// A message from the peer.
    PeerMessage(PeerMessage),
    /// The link to the peer is gone.
    PeerDisconnected {
        /// Why, for the log.
        reason: String,
    },
}

/// A client request and the frontend's tag for it.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    /// Returned in the completion.
    pub tag: RequestTag,
    /// What to do.
    pub op: ClientOp,
}

/// Client operations. Offsets and lengths are in bytes and must be multiples of 512.
#[derive(Clone, Debug)]
pub enum ClientOp {
    /// Read `length` bytes at `offset`.
    Read {
        /// First byte.
        offset: u64,
        /// Bytes to read.
        length: u64,
    },
    /// Write `data` at `offset`; with `fua`, complete only once durable.
    Write {
        /// First byte.
        offset: u64,
        /// The bytes.
        data: IoBuf,
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Discard a range (it reads back as zeros afterwards).
    Trim {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u64,
        /// Force unit access.
        fua: bool,
    },
    /// Set a range to zeros.
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u64,
        /// Force unit access.
        fua: bool,
    },
}

/// The result of a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCompletion {
    /// The request's tag.
    pub tag: RequestTag,
    /// Data for reads, or the error.
    pub result: Result<Option<IoBuf>, Errno>,
}

/// A storage operation the driver must perform.
#[derive(Clone, Debug)]
pub struct StorageRequest {
    /// Returned in the completion.
    pub id: StorageOpId,
    /// What to do.
    pub op: StorageOp,
}

/// Storage operations on the backing store (offsets are backing-store offsets).
#[derive(Clone, Debug)]
pub enum StorageOp {
    /// Read `length` bytes at `offset`; the completion carries the bytes.
    Read {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u64,
    },
    /// Write `data` at `offset`; with `fua`, durable when it completes.
    Write {
        /// First byte.
        offset: u64,
        /// The bytes.
        data: IoBuf,
        /// Force unit access.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Deallocate a range; it must read back as zeros.
    Discard {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u64,
        /// Durable when it completes.
        fua: bool,
    },
    /// Write zeros to a range without deallocating it.
    WriteZeroes {
        /// First byte.
        offset: u64,
        /// Bytes.
        length: u64,
        /// Durable when it completes.
        fua: bool,
    },
}

/// The result of a storage operation.
#[derive(Clone, Debug)]
pub struct StorageCompletion {
    /// The operation's id.
    pub id: StorageOpId,
    /// For reads the bytes; otherwise `None`; or the error.
    pub result: Result<Option<IoBuf>, Errno>,
}

/// Operator and manager commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Open the backing store (`backing_bytes` long) and recover its metadata.
    Attach {
        /// Size of the backing store.
        backing_bytes: u64,
    },
    /// Become primary. Without `force`, only an `UpToDate` disk may be promoted.
    Promote {
        /// Promote even if the disk is not `UpToDate` (it becomes `UpToDate` in a new
        /// generation).
        force: bool,
    },
    /// Become secondary once in-flight client I/O has drained.
    Demote,
    /// Write everything out, mark the metadata clean and close the backing store.
    Detach,
    /// Keep a link to the peer (the driver connects and reconnects).
    Connect,
    /// Drop the link to the peer and stay stand-alone.
    Disconnect,
    /// Resync to the peer as source: every granule (`full`) or those marked out of sync.
    Resync {
        /// Every granule.
        full: bool,
        /// Every granule, compared by digest first: only those that differ are sent.
        checksum: bool,
    },
    /// Resolve a split brain: keep this node's data, or discard it (its changed blocks must have
    /// been saved first: see [`Replica::changed_ranges`]). Then connect.
    SplitBrainResolve {
        /// Keep this node's data (else discard it).
        keep_self: bool,
    },
    /// Compare both replicas online; `mark` sets the mismatches out of sync here.
    Verify {
        /// Mark mismatches out of sync.
        mark: bool,
    },
    /// Throw away this node's data: it becomes the target of a full sync from the peer.
    Invalidate,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Needs an attached disk.
    #[error("no disk attached")]
    NoDisk,
    /// The disk is already attached or attaching.
    #[error("disk already attached")]
    AlreadyAttached,
    /// Promotion needs an `UpToDate` disk.
    #[error("disk is {0}, not up_to_date; promote with --force to accept this data")]
    NoUpToDateDisk(DiskState),
    /// The disk failed.
    #[error("disk failed: {0}")]
    DiskFailed(String),
    /// Another state change is under way.
    #[error("another state change is in progress ({0})")]
    InTransientState(&'static str),
    /// Opening the metadata failed.
    #[error("{0}")]
    Attach(String),
    /// The peer is primary.
    #[error("the peer is primary; demote it first")]
    PeerIsPrimary,
    /// Needs a connected peer.
    #[error("not connected to the peer (connection {0})")]
    NotConnected(ConnState),
    /// A resync is running.
    #[error("a resync is running ({0})")]
    ResyncRunning(ReplState),
    /// Not allowed on a primary.
    #[error("this node is primary; demote it first")]
    IsPrimary,
    /// Nothing to do.
    #[error("{0}")]
    Nothing(&'static str),
}

/// What the replica tells its driver besides I/O.
#[derive(Clone, Debug)]
pub enum Output {
    /// Perform this storage operation and report its completion.
    Storage(StorageRequest),
    /// Complete this client request.
    Client(ClientCompletion),
    /// An admin command finished.
    AdminDone {
        /// The command's id.
        id: u64,
        /// Success, or why it was refused.
        result: Result<(), Refusal>,
    },
    /// Something worth a log line.
    Event(Event),
    /// Send this message to the peer (in order).
    PeerSend(PeerMessage),
    /// Close the link to the peer.
    PeerClose {
        /// Why, for the log.
        reason: String,
    },
}

/// State changes and decisions, one log line each.
#[derive(Clone, Debug)]
pub enum Event {
    /// The disk state changed.
    DiskState {
        /// Before.
        from: DiskState,
        /// After.
        to: DiskState,
        /// Why.
        reason: String,
    },
    /// The role changed.
    Role {
        /// Before.
        from: Role,
        /// After.
        to: Role,
    },
    /// A new data generation started.
    NewGeneration {
        /// The generations after the change.
        generations: GenerationSet,
        /// Why.
        reason: &'static str,
    },
    /// Metadata was opened; the report says what recovery did.
    Recovered(Box<RecoveryReport>),
    /// The journal overflowed and the bitmap took over.
    JournalOverflow {
        /// Records dropped (all still covered by the bitmap).
        records_dropped: u64,
    },
    /// The connection state changed.
    Connection {
        /// Before.
        from: ConnState,
        /// After.
        to: ConnState,
        /// Why.
        reason: String,
    },
    /// The two nodes decided how to bring their data together.
    Decided {
        /// The decision, from this node's side.
        decision: SyncDecision,
        /// The rule that made it.
        rule: SyncRule,
        /// Generations of both sides, for the log.
        detail: String,
    },
    /// The replication state changed.
    Replication {
        /// Before.
        from: ReplState,
        /// After.
        to: ReplState,
        /// Why.
        reason: String,
    },
    /// An online verify started or ended.
    Verify {
        /// What happened, with the mismatching ranges.
        message: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DiskState { from, to, reason } => write!(f, "disk {from} -> {to}: {reason}"),
            Self::Role { from, to } => write!(f, "role {from} -> {to}"),
            Self::NewGeneration {
                generations,
                reason,
            } => {
                write!(f, "new generation ({reason}): {generations}")
            }
            Self::Recovered(report) => write!(f, "{report}"),
            Self::JournalOverflow { records_dropped } => write!(
                f,
                "journal overflow: {records_dropped} records dropped, the bitmap takes over; \
                 the peer will be inconsistent until the bitmap resync ends"
            ),
            Self::Connection { from, to, reason } => {
                write!(f, "connection {from} -> {to}: {reason}")
            }
            Self::Decided {
                decision,
                rule,
                detail,
            } => {
                write!(f, "sync decision {decision} by rule={rule} ({detail})")
            }
            Self::Replication { from, to, reason } => {
                write!(f, "replication {from} -> {to}: {reason}")
            }
            Self::Verify { message } => f.write_str(message),
        }
    }
}

/// A snapshot of a replica's state for status output.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaStatus {
    /// Volume name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Disk state.
    pub disk: DiskState,
    /// Size of the data area in bytes (0 when diskless).
    pub size_bytes: u64,
    /// Bytes marked out of sync with the peer.
    pub out_of_sync_bytes: u64,
    /// Generations, when attached.
    pub generations: Option<GenerationSet>,
    /// Whether the node crashed while primary and has not resynced since.
    pub crashed_primary: bool,
    /// Journal counters.
    pub journal: JournalStatusView,
    /// Extents hot in the activity log.
    pub activity_log_extents: u64,
    /// Client requests in flight.
    pub requests_in_flight: u64,
    /// Bytes sent to the peer that it has not written yet (under protocol A: how far behind it
    /// is).
    pub unacked_bytes: u64,
    /// Writes received from the primary and not written here yet.
    pub peer_writes_pending: u64,
    /// Connection to the peer.
    pub connection: ConnState,
    /// Replication state.
    pub replication: ReplState,
    /// The peer's disk state (`unknown` when not connected).
    pub peer_disk: DiskState,
    /// The peer's role, when connected.
    pub peer_role: Option<Role>,
    /// A split brain was detected and not yet resolved.
    pub split_brain: bool,
    /// The last sync decision and its rule.
    pub last_decision: Option<(SyncDecision, SyncRule)>,
    /// Why the connection is stand-alone or was last lost.
    pub connection_reason: Option<String>,
    /// Resync progress, while a resync runs.
    pub sync: Option<SyncProgress>,
    /// The running online verify, or the last one.
    pub verify: Option<VerifyReport>,
    /// The split brain, while unresolved.
    pub split_brain_detail: Option<SplitBrainReport>,
}

impl ReplicaStatus {
    /// Connected to the peer, replicating, and both disks `up_to_date`: each holds the other's
    /// data.
    pub fn in_sync(&self) -> bool {
        self.connection == ConnState::Connected
            && self.replication == ReplState::Established
            && self.disk == DiskState::UpToDate
            && self.peer_disk == DiskState::UpToDate
    }

    /// The peer misses writes made here: this node is primary and not in sync, or `up_to_date`
    /// with blocks out of sync (written while apart, until a resync sends them; a resync
    /// target's own out-of-sync blocks are what it lacks, not what the peer lacks).
    pub fn peer_behind(&self) -> bool {
        (self.role == Role::Primary && !self.in_sync())
            || (self.disk == DiskState::UpToDate
                && self.out_of_sync_bytes > 0
                && self.replication != ReplState::SyncTarget)
    }
}

/// Journal counters in status.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct JournalStatusView {
    /// Keeping records.
    pub active: bool,
    /// Records held.
    pub records: u64,
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// Ring bytes in use.
    pub ring_used_bytes: u64,
    /// Ring bytes in all.
    pub ring_bytes: u64,
    /// Overflows since open.
    pub overflows: u64,
}

impl From<JournalStats> for JournalStatusView {
    fn from(stats: JournalStats) -> Self {
        Self {
            active: stats.active,
            records: stats.records,
            memory_bytes: stats.memory_bytes,
            ring_used_bytes: stats.ring_used_bytes,
            ring_bytes: stats.ring_bytes,
            overflows: stats.overflows,
        }
    }
}

/// The attached part of a replica: metadata in memory.
#[derive(Debug)]
struct Volume {
    layout: Layout,
    superblock: Superblock,
    /// Which copy (0 A, 1 B) holds the newest durable superblock.
    superblock_copy: usize,
    /// Bumped at every in-memory superblock change.
    superblock_version: u64,
    /// The highest version known durable.
    superblock_durable_version: u64,
    /// The version being written, if a write is in flight.
    superblock_writing: Option<u64>,
    bitmap: DirtyBitmap,
    activity_log: ActivityLog,
    /// The activity-log transaction in flight and its pending pieces.
    transaction: Option<metadata::AlTransaction>,
    journal: Journal,
    /// Set when a journal spill write is in flight (one at a time).
    journal_spill_in_flight: bool,
    /// A journal tail waiting for its superblock version to be durable.
    journal_tail_persisting: Option<(u64, crate::journal::JournalTail)>,
}

impl Volume {
    /// The granules a byte range covers entirely (a partial last granule of the volume counts).
    fn whole_granules(&self, range: crate::types::ByteRange) -> std::ops::Range<u64> {
        let granule = self.bitmap.granule_bytes();
        let first = range.offset.div_ceil(granule);
        let end = if range.end() >= self.layout.data_bytes {
            self.bitmap.granule_count()
        } else {
            range.end() / granule
        };
        first..end.max(first)
    }
}

/// What a storage operation in flight is for.
#[derive(Clone, Copy, Debug)]
enum OpPurpose {
    AttachSuperblocks,
    AttachRegion(attach::Region),
    ClientRead(RequestTag),
    ClientWrite(requests::WriteId),
    ClientFlush(u64),
    PeerFlush(u64),
    ResyncRead { offset: u64 },
    DigestRead(u64),
    VerifyRead { offset: u64 },
    ResyncFlush,
    Superblock { version: u64, copy: usize },
    BitmapPage { page: u32, version: u64 },
    ActivityLogBlock,
    ActivityLogFlush,
    JournalSpill,
    DetachFlush,
    PromoteFlush,
    CatchUpRead(crate::types::Seq),
}

/// One volume on one node. See the module documentation.
#[derive(Debug)]
pub struct Replica {
    config: ReplicaConfig,
    prng: Prng,
    now: Now,
    role: Role,
    disk: DiskState,
    failure: Option<String>,
    volume: Option<Volume>,
    attach: Option<attach::AttachJob>,
    pending_admin: Option<admin::PendingAdmin>,
    requests: requests::Requests,
    peer: peer::Peer,
    ops: HashMap<StorageOpId, OpPurpose>,
    next_op_id: u64,
    outputs: VecDeque<Output>,
    next_bitmap_flush: Option<Instant>,
}

impl Replica {
    /// A diskless secondary. `prng` supplies every random choice (new generation ids).
    pub fn new(config: ReplicaConfig, prng: Prng) -> Self {
        assert!(config.requests_in_flight_max > 0);
        Self {
            config,
            prng,
            now: Now::default(),
            role: Role::Secondary,
            disk: DiskState::Diskless,
            failure: None,
            volume: None,
            attach: None,
            pending_admin: None,
            requests: requests::Requests::default(),
            peer: peer::Peer::default(),
            ops: HashMap::new(),
            next_op_id: 1,
            outputs: VecDeque::new(),
            next_bitmap_flush: None,
        }
    }

    /// Feeds one input at time `now`. Drain [`Replica::poll_output`] afterwards.
    pub fn handle(&mut self, now: Now, input: Input) {
        assert!(
            now.monotonic >= self.now.monotonic,
            "time never goes backwards"
        );
        self.now = now;
        match input {
            Input::Client(request) => self.client_request(request),
            Input::Storage(completion) => self.storage_completion(completion),
            Input::Admin { id, command } => self.admin_command(id, command),
            Input::Timer => self.timer(),
            Input::PeerConnected => self.peer_connected(),
            Input::PeerMessage(message) => self.peer_message(message),
            Input::PeerDisconnected { reason } => self.peer_disconnected(&reason),
        }
        self.advance();
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The activity-log transaction in flight, for diagnostics.
    pub fn debug_transaction(&self) -> String {
        match &self.volume {
            Some(v) => format!("{:?} {:?}", v.transaction, v.activity_log),
            None => "detached".to_string(),
        }
    }

    /// Whether outputs are waiting to be polled.
    pub fn has_output(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// When the replica wants an [`Input::Timer`], if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.next_bitmap_flush, self.peer_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Client data writes cut into pieces so far (see `ReplicaConfig::write_piece_bytes`).
    pub fn pieced_writes(&self) -> u64 {
        self.requests.pieced_writes
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current disk state.
    pub fn disk_state(&self) -> DiskState {
        self.disk
    }

    /// The data area size in bytes, when attached.
    pub fn size_bytes(&self) -> Option<u64> {
        self.volume.as_ref().map(|v| v.layout.data_bytes)
    }

    /// The generations, when attached.
    pub fn generations(&self) -> Option<GenerationSet> {
        self.volume.as_ref().map(|v| v.superblock.generations)
    }

    /// The dirty bitmap, when attached (for checkers and status).
    pub fn bitmap(&self) -> Option<&DirtyBitmap> {
        self.volume.as_ref().map(|v| &v.bitmap)
    }

    /// The journal, when attached (for checkers and status).
    pub fn journal(&self) -> Option<&Journal> {
        self.volume.as_ref().map(|v| &v.journal)
    }

    /// A snapshot for status output.
    pub fn status(&self) -> ReplicaStatus {
        let volume = self.volume.as_ref();
        ReplicaStatus {
            name: self.config.volume_name.clone(),
            role: self.role,
            disk: self.disk,
            size_bytes: volume.map_or(0, |v| v.layout.data_bytes),
            out_of_sync_bytes: volume.map_or(0, |v| {
                (v.bitmap.weight() * v.bitmap.granule_bytes()).min(v.layout.data_bytes)
            }),
            generations: volume.map(|v| v.superblock.generations),
            crashed_primary: volume.is_some_and(|v| v.superblock.crashed_primary),
            journal: volume.map(|v| v.journal.stats().into()).unwrap_or_default(),
            activity_log_extents: volume
                .map_or(0, |v| v.activity_log.active_extents().count() as u64),
            requests_in_flight: self.requests.in_flight() as u64,
            unacked_bytes: self.requests.unacked_bytes(),
            peer_writes_pending: self.requests.peer_writes_pending_count(),
            connection: self.peer.conn,
            replication: self.peer.repl,
            peer_disk: self
                .peer
                .remote
                .as_ref()
                .map_or(DiskState::Unknown, |r| r.disk),
            peer_role: self.peer.remote.as_ref().map(|r| r.role),
            split_brain: self.peer.split_brain,
            last_decision: self.peer.last_decision,
            connection_reason: (self.peer.conn != ConnState::Connected)
                .then(|| self.peer.reason.clone())
                .flatten(),
            sync: self.sync_progress(),
            verify: self.verify_status(),
            split_brain_detail: self.split_brain_report(),
        }
    }

    fn storage_completion(&mut self, completion: StorageCompletion) {
        let purpose = self
            .ops
            .remove(&completion.id)
            .expect("completion of an unknown storage op");
        let result = completion.result;
        match purpose {
            OpPurpose::AttachSuperblocks | OpPurpose::AttachRegion(_) => {
                self.attach_completion(purpose, result);
            }
            OpPurpose::ClientRead(tag) => self.read_completion(tag, result),
            OpPurpose::ClientWrite(write) => self.write_completion(write, result.map(|_| ())),
            OpPurpose::ClientFlush(flush) => self.flush_completion(flush, result.map(|_| ())),
            OpPurpose::PeerFlush(id) => self.peer_flush_completion(id, result.map(|_| ())),
            OpPurpose::ResyncRead { offset } => self.resync_read_completion(offset, result),
            OpPurpose::ResyncFlush => self.resync_flush_completion(result.map(|_| ())),
            OpPurpose::Superblock { version, copy } => {
                self.superblock_completion(version, copy, result.map(|_| ()));
            }
            OpPurpose::BitmapPage { page, version } => {
                self.bitmap_page_completion(page, version, result.map(|_| ()));
            }
            OpPurpose::ActivityLogBlock => self.activity_log_completion(result.map(|_| ())),
            OpPurpose::ActivityLogFlush => self.activity_log_flush_completion(result.map(|_| ())),
            OpPurpose::JournalSpill => self.journal_spill_completion(result.map(|_| ())),
            OpPurpose::DetachFlush => self.detach_flush_completion(result.map(|_| ())),
            OpPurpose::PromoteFlush => self.promote_flush_completion(result.map(|_| ())),
            OpPurpose::CatchUpRead(seq) => self.catch_up_read_completion(seq, result),
            OpPurpose::DigestRead(id) => self.digest_read_completion(id, result),
            OpPurpose::VerifyRead { offset } => self.verify_read_completion(offset, result),
        }
    }

    /// Moves everything forward that may have become possible: queued writes, metadata writes,
    /// journal spills, pending admin commands.
    fn advance(&mut self) {
        // Each step may unblock another; the loop ends when a pass changes nothing. The bound
        // is generous: one pass per queued request and per metadata structure suffices.
        for _ in 0..64 {
            let mut progress = false;
            progress |= self.advance_writes();
            progress |= self.advance_metadata();
            progress |= self.advance_admin();
            progress |= self.advance_peer();
            if !progress {
                return;
            }
        }
    }

    fn submit(&mut self, op: StorageOp, purpose: OpPurpose) {
        let id = StorageOpId(self.next_op_id);
        self.next_op_id += 1;
        self.ops.insert(id, purpose);
        self.outputs
            .push_back(Output::Storage(StorageRequest { id, op }));
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn set_disk_state(&mut self, to: DiskState, reason: impl Into<String>) {
        let from = self.disk;
        if from != to {
            self.disk = to;
            self.emit(Event::DiskState {
                from,
                to,
                reason: reason.into(),
            });
        }
    }

    /// An I/O error: the disk fails, every queued and later request gets `EIO`.
    /// The data of a completed read, or `None` once a failed read has failed the disk.
    fn read_data(&mut self, result: Result<Option<IoBuf>, Errno>, what: &str) -> Option<IoBuf> {
        match result {
            Ok(Some(data)) => Some(data),
            Ok(None) => unreachable!("reads return data"),
            Err(errno) => {
                self.fail_disk(what, errno);
                None
            }
        }
    }

    fn fail_disk(&mut self, what: &str, errno: Errno) {
        if self.disk == DiskState::Failed {
            return;
        }
        let reason = format!("{what}: {errno}");
        self.failure = Some(reason.clone());
        self.set_disk_state(DiskState::Failed, reason);
        self.fail_queued_requests();
        self.fail_pending_admin();
    }

    /// Whether `bug` is planted in this replica.
    fn planted(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "sim")]
        return self.config.planted_bug == Some(bug);
        #[cfg(not(feature = "sim"))]
        {
            let _ = bug;
            false
        }
    }

    fn timer(&mut self) {
        if self
            .next_bitmap_flush
            .is_some_and(|deadline| deadline <= self.now.monotonic)
        {
            self.next_bitmap_flush =
                Some(self.now.monotonic.after(self.config.bitmap_flush_interval));
            self.flush_changed_bitmap_pages();
        }
        self.peer_timer();
    }

    fn send(&mut self, message: PeerMessage) {
        self.outputs.push_back(Output::PeerSend(message));
    }
}
