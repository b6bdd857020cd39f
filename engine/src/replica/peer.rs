//! The connection to the peer: state exchange, the sync decision, message dispatch, liveness.
//!
//! When a link comes up both sides send their [`PeerState`]. Each decides with the generation
//! table ([`decide_sync`]) and sends its decision; each checks that the peer's decision is the
//! mirror image of its own before acting on it, so a disagreement (a bug, or mixed versions)
//! closes the link instead of syncing the wrong way. Refusals that need an operator (split
//! brain, unrelated data, a size mismatch, two primaries, a primary that would be overwritten)
//! leave the connection stand-alone with the reason; the driver does not reconnect until
//! `connect` is run again. Any other loss leaves it unconnected, and the driver reconnects.

use super::resync::Resync;
use super::{AdminCommand, Event, Output, Refusal, Replica};
use crate::generation::{SyncDecision, SyncRule, SyncView, decide_sync};
use crate::protocol::messages::{DigestPurpose, JournalMark, PeerMessage, PeerState, ReceivedMark};
use crate::state::{ConnState, DiskState, ReplState, Role};
use crate::types::Instant;

/// What the replica knows about its peer and the link to it.
#[derive(Debug, Default)]
pub(super) struct Peer {
    /// The connection state.
    pub(super) conn: ConnState,
    /// The replication state.
    pub(super) repl: ReplState,
    /// The peer's last state, while connected.
    pub(super) remote: Option<PeerState>,
    /// This side's decision on this connection.
    decision: Option<(SyncDecision, SyncRule)>,
    /// The peer's decision on this connection.
    remote_decision: Option<(SyncDecision, SyncRule)>,
    /// The decision was acted upon.
    acted: bool,
    /// The last decision, kept for status.
    pub(super) last_decision: Option<(SyncDecision, SyncRule)>,
    /// A split brain was detected and not resolved.
    pub(super) split_brain: bool,
    /// Why the connection is stand-alone or was last lost.
    pub(super) reason: Option<String>,
    /// The resync in progress, as source or target.
    pub(super) resync: Option<Resync>,
    /// The state this node sent on this connection (decisions rest on it).
    pub(super) sent: Option<PeerState>,
    /// The newest write received from the primary's journal run (kept across connections).
    pub(super) received: Option<ReceivedMark>,
    /// What is known about an unresolved split brain.
    pub(super) split_brain_detail: Option<super::split_brain::SplitBrain>,
    /// The operator told this node to discard its data at the next connection.
    pub(super) discard_my_data: bool,
    /// The peer's digests waiting to be compared here.
    pub(super) digest_reads: super::digest::DigestReads,
    /// The online verify this node runs.
    pub(super) verify: Option<super::verify::Verify>,
    /// The last verify's report.
    pub(super) last_verify: Option<super::verify::VerifyReport>,
    last_received: Option<Instant>,
    next_ping: Option<Instant>,
    next_ping_id: u64,
}

impl Replica {
    /// Whether client writes go to the peer now.
    pub(super) fn replicating(&self) -> bool {
        let Some(remote) = &self.peer.remote else {
            return false;
        };
        self.peer.conn == ConnState::Connected
            && self.role == Role::Primary
            && matches!(
                self.peer.repl,
                ReplState::Established | ReplState::SyncSource
            )
            && remote.role == Role::Secondary
            && !matches!(remote.disk, DiskState::Failed | DiskState::Diskless)
            && !matches!(&self.peer.resync, Some(Resync::CatchUp(c)) if c.holds_client_writes())
    }

    fn local_state(&self) -> PeerState {
        let volume = self.volume.as_ref().expect("attached");
        let superblock = &volume.superblock;
        PeerState {
            node_id: self.config.node_id,
            role: self.role,
            disk: self.disk,
            generations: superblock.generations,
            current_started_unix_millis: superblock.current_started_unix_millis,
            crashed_primary: superblock.crashed_primary,
            crashed_secondary: superblock.crashed_secondary,
            out_of_sync_granules: volume.bitmap.weight(),
            data_bytes: volume.layout.data_bytes,
            granule_bytes: volume.layout.params.granule_bytes,
            journal: volume.journal.id().map(|id| JournalMark {
                id,
                tail: volume.journal.tail().seq,
                head: volume.journal.next_seq(),
            }),
            received: self.peer.received,
            discard_my_data: self.peer.discard_my_data,
        }
    }

    /// Tells a connected peer about a change of role or disk state.
    pub(super) fn announce_state(&mut self) {
        if matches!(self.peer.conn, ConnState::Connected | ConnState::Connecting)
            && self.volume.is_some()
        {
            let state = self.local_state();
            self.send(PeerMessage::State(Box::new(state)));
        }
    }

    pub(super) fn set_conn(&mut self, to: ConnState, reason: impl Into<String>) {
        let from = self.peer.conn;
        let reason = reason.into();
        if from != to {
            self.peer.conn = to;
            self.emit(Event::Connection {
                from,
                to,
                reason: reason.clone(),
            });
        }
        if matches!(to, ConnState::StandAlone | ConnState::Unconnected) {
            self.peer.reason = Some(reason);
        }
    }

    pub(super) fn set_repl(&mut self, to: ReplState, reason: impl Into<String>) {
        let from = self.peer.repl;
        if from != to {
            self.peer.repl = to;
            self.emit(Event::Replication {
                from,
                to,
                reason: reason.into(),
            });
        }
    }

    pub(super) fn peer_connected(&mut self) {
        if self.volume.is_none() || self.disk == DiskState::Failed {
            return self.close_link("this node has no usable disk");
        }
        if self.peer.conn != ConnState::Unconnected {
            let reason = format!("not accepting a connection ({})", self.peer.conn);
            return self.close_link(&reason);
        }
        self.peer.decision = None;
        self.peer.remote_decision = None;
        self.peer.acted = false;
        self.peer.remote = None;
        self.peer.last_received = Some(self.now.monotonic);
        self.peer.next_ping = Some(self.now.monotonic.after(self.config.ping_interval));
        self.set_conn(ConnState::Connecting, "link up");
        let state = self.local_state();
        self.peer.sent = Some(state.clone());
        self.send(PeerMessage::State(Box::new(state)));
    }

    pub(super) fn peer_disconnected(&mut self, reason: &str) {
        if matches!(
            self.peer.conn,
            ConnState::StandAlone | ConnState::Unconnected
        ) {
            return;
        }
        let exchanging = self.split_brain_exchanging();
        self.lose_peer();
        self.set_conn(ConnState::Unconnected, reason);
        if exchanging {
            // The peer saw the split brain too and closed first: act on it all the same.
            self.split_brain_link_lost(reason);
        }
    }

    /// Everything that depends on the link ends: writes awaiting acks, resync, the peer's state.
    fn lose_peer(&mut self) {
        if self.volume.is_some() {
            self.writes_lose_peer();
        }
        self.resync_lose_peer();
        self.digest_reads_lose_peer();
        if let Some(detail) = &mut self.peer.split_brain_detail {
            detail.exchanging = false; // The peer's changes stay unknown.
        }
        self.verify_lose_peer();
        self.peer.remote = None;
        self.peer.sent = None;
        self.peer.decision = None;
        self.peer.remote_decision = None;
        self.peer.acted = false;
        self.peer.last_received = None;
        self.peer.next_ping = None;
        self.set_repl(ReplState::Off, "connection lost");
    }

    /// Closes the link; the connection stays unconnected (the driver will reconnect).
    pub(super) fn close_link(&mut self, reason: &str) {
        self.outputs.push_back(Output::PeerClose {
            reason: reason.to_string(),
        });
        self.peer_disconnected(reason);
    }

    /// Closes the link and stays stand-alone until an operator runs `connect`.
    pub(super) fn refuse_link(&mut self, reason: &str) {
        self.outputs.push_back(Output::PeerClose {
            reason: reason.to_string(),
        });
        if !matches!(
            self.peer.conn,
            ConnState::StandAlone | ConnState::Unconnected
        ) {
            self.lose_peer();
        }
        self.set_conn(ConnState::StandAlone, reason);
    }

    pub(super) fn peer_message(&mut self, message: PeerMessage) {
        if !matches!(self.peer.conn, ConnState::Connecting | ConnState::Connected) {
            return; // A message from a link already given up.
        }
        self.peer.last_received = Some(self.now.monotonic);
        if let Err(reason) = self.dispatch(message) {
            self.close_link(&format!("protocol error: {reason}"));
        }
    }

    fn dispatch(&mut self, message: PeerMessage) -> Result<(), String> {
        let connected = self.peer.conn == ConnState::Connected;
        match message {
            PeerMessage::State(state) => self.remote_state(*state),
            PeerMessage::Decision { decision, rule } => {
                if self.peer.remote_decision.is_some() {
                    return Err("a second decision on one connection".to_string());
                }
                self.peer.remote_decision = Some((decision, rule));
                self.act_on_decision();
                Ok(())
            }
            PeerMessage::Ping { id } => {
                self.send(PeerMessage::Pong { id });
                Ok(())
            }
            PeerMessage::Pong { .. } => Ok(()),
            PeerMessage::Bitmap { granules, last } if self.split_brain_exchanging() => {
                if granules.len() > crate::protocol::messages::BITMAP_CHUNK_BYTES_MAX {
                    return Err("bitmap chunk too large".to_string());
                }
                let set = roaring::RoaringTreemap::deserialize_from(&granules[..])
                    .map_err(|e| format!("bitmap: {e}"))?;
                self.split_brain_bitmap(&set, last);
                Ok(())
            }
            _ if !connected => Err(format!("{message} before the sync decision")),
            PeerMessage::Write { .. }
            | PeerMessage::Trim { .. }
            | PeerMessage::WriteZeroes { .. } => {
                if self.role == Role::Primary {
                    return Err("the peer replicates writes to a primary".to_string());
                }
                self.queue_peer_write(message)
            }
            PeerMessage::Flush { id } => {
                self.queue_peer_flush(id);
                Ok(())
            }
            PeerMessage::Received { seq } => self.peer_write_received(seq),
            PeerMessage::WriteAck { seq, ok } => self.peer_write_acknowledged(seq, ok),
            PeerMessage::FlushAck { id, ok } => {
                self.peer_flush_acknowledged(id, ok);
                Ok(())
            }
            PeerMessage::Bitmap { granules, last } => self.resync_bitmap_received(&granules, last),
            PeerMessage::StartResync { full, .. } => self.resync_requested(full),
            PeerMessage::Digests {
                purpose,
                offset,
                length,
                digests,
            } => self.digests_received(purpose, offset, length, digests),
            PeerMessage::DigestReply {
                purpose,
                offset,
                length,
                differing,
            } => {
                self.check_digest_range(offset, length, 1, differing.len(), false)?;
                match purpose {
                    DigestPurpose::Resync => {
                        self.resync_digests_compared(offset, length, &differing)
                    }
                    DigestPurpose::Verify => self.verify_compared(offset, length, &differing),
                }
            }
            PeerMessage::ResyncData { offset, data } => self.resync_data_received(offset, data),
            PeerMessage::ResyncAck { offset, length, ok } => {
                self.resync_acknowledged(offset, length, ok)
            }
            PeerMessage::ResyncDone { generations } => self.resync_done_received(generations),
            PeerMessage::ResyncDoneAck => self.resync_done_acknowledged(),
        }
    }

    fn remote_state(&mut self, state: PeerState) -> Result<(), String> {
        if state.node_id == self.config.node_id {
            return Err("the peer has this node's id (same --node on both ends?)".to_string());
        }
        let first = self.peer.remote.is_none();
        if self.peer.conn == ConnState::Connected
            && state.role == Role::Primary
            && self.role == Role::Primary
        {
            self.peer.remote = Some(state);
            self.refuse_link("both nodes are primary");
            return Ok(());
        }
        self.peer.remote = Some(state);
        if first && self.peer.conn == ConnState::Connecting {
            self.decide();
        }
        Ok(())
    }

    fn decide(&mut self) {
        let local = self.local_state();
        let remote = self.peer.remote.clone().expect("remote state received");
        if local.data_bytes != remote.data_bytes || local.granule_bytes != remote.granule_bytes {
            let reason = format!(
                "the peer's volume is {} bytes with a {}-byte granule, this one {} bytes with {}",
                remote.data_bytes, remote.granule_bytes, local.data_bytes, local.granule_bytes
            );
            return self.refuse_link(&reason);
        }
        let view = |state: &PeerState| SyncView {
            generations: state.generations,
            node_id: state.node_id,
            crashed_primary: state.crashed_primary,
            crashed_secondary: state.crashed_secondary,
            primary: state.role == Role::Primary,
            out_of_sync_granules: state.out_of_sync_granules,
        };
        let (mut decision, mut rule) = decide_sync(&view(&local), &view(&remote));
        if decision.is_split_brain()
            && let Some((self_loses, by)) =
                super::split_brain::loser(self.config.after_split_brain, decision, &local, &remote)
            && (local.discard_my_data || remote.discard_my_data)
        {
            // The operator resolved it; the discarded side's blocks were saved first.
            let bitmap = decision == SyncDecision::SplitBrainAutoRecover;
            decision = match (self_loses, bitmap) {
                (true, true) => SyncDecision::TargetUseBitmap,
                (true, false) => SyncDecision::TargetFullSync,
                (false, true) => SyncDecision::SourceUseBitmap,
                (false, false) => SyncDecision::SourceFullSync,
            };
            rule = by;
        }
        let detail = format!("self {}, peer {}", local.generations, remote.generations);
        self.emit(Event::Decided {
            decision,
            rule,
            detail,
        });
        self.peer.decision = Some((decision, rule));
        self.peer.last_decision = Some((decision, rule));
        self.send(PeerMessage::Decision { decision, rule });
        self.act_on_decision();
    }

    /// Acts once both decisions are in and agree.
    fn act_on_decision(&mut self) {
        let (Some((decision, rule)), Some(remote)) =
            (self.peer.decision, self.peer.remote_decision)
        else {
            return;
        };
        if self.peer.acted {
            return;
        }
        self.peer.acted = true;
        if remote != (decision.reverse(), rule.reverse()) {
            let reason = format!(
                "the peer decided {} by rule={}, not the mirror of {decision} by rule={rule}",
                remote.0, remote.1
            );
            return self.close_link(&reason);
        }
        if decision.is_split_brain() {
            return self.begin_split_brain(decision, rule);
        }
        if let Some(reason) = self.refusal(decision, rule) {
            return self.refuse_link(&reason);
        }
        self.split_brain_resolved();
        self.set_conn(ConnState::Connected, format!("{decision} by rule={rule}"));
        let bitmap_resync = matches!(
            decision,
            SyncDecision::SourceUseBitmap | SyncDecision::TargetUseBitmap
        );
        let catch_up = bitmap_resync
            .then(|| self.catch_up_point(decision.is_source()))
            .flatten();
        if let Some(from) = catch_up {
            // The peer behind can follow this node's journal (or this node the peer's) in
            // write order instead of a bitmap resync.
            if decision.is_source() {
                self.begin_catch_up(from);
            } else {
                self.begin_catch_up_target(from);
            }
        } else if decision.is_source() || decision.is_target() {
            self.start_resync(decision);
        } else {
            self.set_repl(ReplState::Established, format!("{decision} by rule={rule}"));
            if decision == SyncDecision::NoSync {
                self.confirm_up_to_date("the peer has the same data");
            }
        }
    }

    /// Why a decision cannot be carried out without an operator, if it cannot.
    fn refusal(&mut self, decision: SyncDecision, rule: SyncRule) -> Option<String> {
        let remote = self.peer.remote.as_ref().expect("remote state");
        if decision == SyncDecision::UnrelatedData {
            return Some("unrelated data: the two sides share no generation".to_string());
        }
        if self.role == Role::Primary && remote.role == Role::Primary {
            return Some("both nodes are primary".to_string());
        }
        if decision.is_target() && self.role == Role::Primary {
            return Some(format!(
                "this node is primary and would be overwritten by the peer ({decision} by \
                 rule={rule}); demote it first"
            ));
        }
        if decision.is_source() && remote.role == Role::Primary {
            return Some(format!(
                "the peer is primary and would be overwritten ({decision} by rule={rule})"
            ));
        }
        let source_disk = if decision.is_source() {
            self.disk
        } else {
            remote.disk
        };
        if (decision.is_source() || decision.is_target()) && !source_disk.is_consistent() {
            return Some(format!(
                "the sync source's disk is {source_disk}: no consistent copy"
            ));
        }
        None
    }

    /// A consistent disk that the peer confirmed identical (no sync needed, or a resync just
    /// ended with this side as source) is up to date again.
    pub(super) fn confirm_up_to_date(&mut self, reason: &str) {
        if self.disk != DiskState::Consistent {
            return;
        }
        self.update_superblock(|superblock| {
            superblock.disk_state = DiskState::UpToDate;
            superblock.crashed_primary = false;
            superblock.crashed_secondary = false;
        });
        self.set_disk_state(DiskState::UpToDate, reason);
        self.announce_state();
    }

    /// While in sync with the peer the journal keeps every write it has not acknowledged. It
    /// starts (a new run) once nothing is out of sync and nothing the peer may lack is
    /// outside it: no resync, no write in flight to the peer.
    fn resume_journal(&mut self) -> bool {
        let both_in_sync = self.disk.is_consistent()
            && self
                .peer
                .remote
                .as_ref()
                .is_some_and(|r| r.disk.is_consistent());
        let quiet = self.peer.conn == ConnState::Connected
            && self.peer.repl == ReplState::Established
            && self.peer.resync.is_none()
            && self.requests.unacked_is_empty();
        let Some(volume) = self.volume.as_mut() else {
            return false;
        };
        if !both_in_sync
            || !quiet
            || volume.journal.is_active()
            || volume.journal_tail_persisting.is_some()
            || volume.bitmap.weight() > 0
        {
            return false;
        }
        let id = self.prng.next_u64();
        let tail = volume.journal.activate(self.requests.next_seq(), id);
        let ring_bytes = volume.layout.params.journal_bytes.max(1);
        let version = self.update_superblock(|superblock| {
            superblock.journal_complete = true;
            superblock.journal_tail_offset = tail.position % ring_bytes;
            superblock.journal_tail_seq = tail.seq;
        });
        self.volume
            .as_mut()
            .expect("attached")
            .journal_tail_persisting = Some((version, tail));
        // The peer learns the run's id before any write of it.
        self.announce_state();
        true
    }

    /// The journal stops: a bitmap resync now describes what the peer lacks.
    pub(super) fn drop_journal(&mut self) {
        let volume = self.volume.as_mut().expect("attached");
        if volume.journal.is_active() {
            volume.journal.deactivate();
            let version = self.update_superblock(|superblock| superblock.journal_complete = false);
            self.requests.raise_superblock_gate(version);
        }
    }

    /// When the peer needs attention: the next ping, or the moment it counts as gone.
    pub(super) fn peer_deadline(&self) -> Option<Instant> {
        let timeout = self
            .peer
            .last_received
            .map(|last| last.after(self.config.ping_timeout));
        [self.peer.next_ping, timeout].into_iter().flatten().min()
    }

    pub(super) fn peer_timer(&mut self) {
        let now = self.now.monotonic;
        if let Some(last) = self.peer.last_received
            && now >= last.after(self.config.ping_timeout)
        {
            let silence = self.config.ping_timeout.as_millis();
            return self.close_link(&format!("no message from the peer for {silence} ms"));
        }
        if self.peer.next_ping.is_some_and(|at| now >= at) {
            self.peer.next_ping_id += 1;
            let id = self.peer.next_ping_id;
            self.send(PeerMessage::Ping { id });
            self.peer.next_ping = Some(now.after(self.config.ping_interval));
        }
    }

    /// Moves the resync forward, and restarts the journal once it can hold everything.
    pub(super) fn advance_peer(&mut self) -> bool {
        self.advance_resync()
            | self.advance_digest_reads()
            | self.advance_verify()
            | self.resume_journal()
    }

    /// `connect`, `disconnect`, `resync`, `invalidate`.
    pub(super) fn peer_admin(&mut self, id: u64, command: AdminCommand) {
        if self.volume.is_none() {
            return self.admin_done(id, Err(Refusal::NoDisk));
        }
        let result = match command {
            AdminCommand::Connect => {
                if self.peer.conn == ConnState::StandAlone {
                    self.peer.split_brain = false;
                    self.set_conn(ConnState::Unconnected, "connect");
                }
                Ok(())
            }
            AdminCommand::Disconnect => {
                if matches!(self.peer.conn, ConnState::Connected | ConnState::Connecting) {
                    self.outputs.push_back(Output::PeerClose {
                        reason: "disconnect".to_string(),
                    });
                    self.lose_peer();
                }
                self.set_conn(ConnState::StandAlone, "disconnect");
                Ok(())
            }
            AdminCommand::Resync { full, checksum } => self.admin_resync(full, checksum),
            AdminCommand::Verify { mark } => self.admin_verify(mark),
            AdminCommand::SplitBrainResolve { keep_self } => {
                self.admin_split_brain_resolve(keep_self)
            }
            AdminCommand::Invalidate => self.invalidate(),
            _ => unreachable!("not a peer command"),
        };
        self.admin_done(id, result);
    }

    /// Throws away this node's data: fresh generations, every granule out of sync, disk
    /// inconsistent. A connected peer renegotiates, which makes this node a full-sync target.
    fn invalidate(&mut self) -> Result<(), Refusal> {
        if self.role == Role::Primary {
            return Err(Refusal::IsPrimary);
        }
        if let Some(resync) = &self.peer.resync {
            return Err(Refusal::ResyncRunning(resync.repl_state()));
        }
        let volume = self.volume.as_mut().expect("attached");
        volume.bitmap.set_all();
        volume.journal.deactivate();
        self.peer.received = None;
        self.update_superblock(|superblock| {
            superblock.generations = crate::generation::GenerationSet::default();
            superblock.disk_state = DiskState::Inconsistent;
            superblock.journal_complete = false;
            superblock.crashed_primary = false;
            superblock.crashed_secondary = false;
        });
        self.set_disk_state(DiskState::Inconsistent, "invalidated by the operator");
        if matches!(self.peer.conn, ConnState::Connected | ConnState::Connecting) {
            self.close_link("invalidated: renegotiating with the peer");
        }
        Ok(())
    }

    /// After a forced promotion on a connected node the two sides renegotiate.
    pub(super) fn renegotiate(&mut self, reason: &str) {
        if matches!(self.peer.conn, ConnState::Connected | ConnState::Connecting) {
            self.close_link(reason);
        }
    }
}
