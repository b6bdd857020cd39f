//! Admin commands: attach, promote, demote, detach. One runs at a time; each ends with an
//! [`super::Output::AdminDone`] once everything it changed is durable.

use super::{AdminCommand, Event, OpPurpose, Output, Refusal, Replica, StorageOp};
use crate::state::{ConnState, DiskState, Role};
use crate::types::Errno;

/// An admin command waiting for something to become durable.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingAdmin {
    id: u64,
    kind: PendingKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    Attach {
        superblock_version: u64,
    },
    /// Writing the replicated writes received from the old primary first.
    PromoteDraining {
        force: bool,
    },
    /// Waiting for the superblock that records the role and for a flush: what the new
    /// primary serves is durable from the start (under protocol A the old primary's flushes
    /// did not reach this node).
    Promote {
        superblock_version: u64,
        flushed: bool,
    },
    Demote(DemoteStage),
    Detach(DetachStage),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DemoteStage {
    /// Waiting for client I/O in flight to complete.
    Draining,
    /// Waiting for the bitmap and the superblock (last role) to be durable.
    WritingMetadata { superblock_version: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DetachStage {
    /// Waiting for client I/O and activity-log transactions to complete.
    Draining,
    /// Spilling the journal's memory tier to the ring.
    Spilling,
    /// Writing changed bitmap pages.
    WritingBitmap,
    /// A storage flush makes data and journal durable.
    Flushing,
    /// The superblock says "clean shutdown".
    WritingSuperblock { superblock_version: u64 },
}

impl Replica {
    pub(super) fn admin_command(&mut self, id: u64, command: AdminCommand) {
        if self.attach.is_some() || self.pending_admin.is_some() {
            let what = if self.attach.is_some() {
                "attaching"
            } else {
                "a command is running"
            };
            return self.admin_done(id, Err(Refusal::InTransientState(what)));
        }
        match command {
            AdminCommand::Attach { backing_bytes } => self.start_attach(id, backing_bytes),
            AdminCommand::Promote { force } => self.promote(id, force),
            AdminCommand::Demote => self.demote(id),
            AdminCommand::Detach => self.detach(id),
            AdminCommand::Connect
            | AdminCommand::Disconnect
            | AdminCommand::Resync { .. }
            | AdminCommand::Verify { .. }
            | AdminCommand::SplitBrainResolve { .. }
            | AdminCommand::Invalidate => self.peer_admin(id, command),
        }
    }

    pub(super) fn admin_done(&mut self, id: u64, result: Result<(), Refusal>) {
        self.outputs.push_back(Output::AdminDone { id, result });
    }

    /// Finishes the attach once the superblock write it started is durable.
    pub(super) fn wait_for_superblock(&mut self, id: u64, version: u64, command: AdminCommand) {
        let kind = match command {
            AdminCommand::Attach { .. } => PendingKind::Attach {
                superblock_version: version,
            },
            AdminCommand::Promote { .. } => PendingKind::Promote {
                superblock_version: version,
                flushed: false,
            },
            _ => unreachable!("only attach and promote wait for a superblock version"),
        };
        self.pending_admin = Some(PendingAdmin { id, kind });
    }

    /// Whether a detach is under way (client I/O is then refused).
    pub(super) fn detaching(&self) -> bool {
        matches!(
            self.pending_admin,
            Some(PendingAdmin {
                kind: PendingKind::Detach(_),
                ..
            })
        )
    }

    fn promote(&mut self, id: u64, force: bool) {
        if self.volume.is_none() {
            return self.admin_done(id, Err(Refusal::NoDisk));
        }
        if self.disk == DiskState::Failed {
            let reason = self.failure.clone().unwrap_or_default();
            return self.admin_done(id, Err(Refusal::DiskFailed(reason)));
        }
        if self.role == Role::Primary {
            return self.admin_done(id, Ok(()));
        }
        if self.requests.peer_writes_pending(None) {
            // Everything the old primary sent is written before this node serves clients: under
            // protocol B those writes may already have completed there.
            let kind = PendingKind::PromoteDraining { force };
            self.pending_admin = Some(PendingAdmin { id, kind });
            return;
        }
        let connected = matches!(self.peer.conn, ConnState::Connected | ConnState::Connecting);
        let peer_primary = self
            .peer
            .remote
            .as_ref()
            .is_some_and(|r| r.role == Role::Primary);
        if connected && peer_primary {
            return self.admin_done(id, Err(Refusal::PeerIsPrimary));
        }
        if let Some(resync) = &self.peer.resync
            && resync.repl_state() == crate::state::ReplState::SyncTarget
        {
            return self.admin_done(id, Err(Refusal::ResyncRunning(resync.repl_state())));
        }
        let forced = self.disk != DiskState::UpToDate;
        if forced {
            if !force {
                return self.admin_done(id, Err(Refusal::NoUpToDateDisk(self.disk)));
            }
            self.force_up_to_date();
        }
        if !forced && !connected {
            // Promoted without a peer to confirm it has the same data: the data may move away
            // from the peer's from now on, and a peer that crashed while primary must not count
            // as the newer side when they meet (DRBD starts a new UUID here too).
            let volume = self.volume.as_ref().expect("attached");
            if volume.superblock.generations.bitmap.is_none() {
                let version = self.start_diverging_generation("promoted without the peer");
                self.requests.raise_superblock_gate(version);
            }
        }
        self.set_role(Role::Primary);
        // Writes from here on are this node's own: it no longer follows another's journal.
        self.peer.received = None;
        let version = self.update_superblock(|superblock| superblock.last_role = Role::Primary);
        if forced {
            // The data now counts as the newest: the peer must hear it in a new handshake.
            self.renegotiate("forced promotion: renegotiating with the peer");
        } else {
            self.announce_state();
        }
        self.submit(StorageOp::Flush, OpPurpose::PromoteFlush);
        self.wait_for_superblock(id, version, AdminCommand::Promote { force });
    }

    pub(super) fn promote_flush_completion(&mut self, result: Result<(), Errno>) {
        if let Err(errno) = result {
            return self.fail_disk("flushing before serving as primary", errno);
        }
        if let Some(PendingAdmin {
            kind: PendingKind::Promote { flushed, .. },
            ..
        }) = &mut self.pending_admin
        {
            *flushed = true;
        }
    }

    /// The operator accepts this node's data as the newest: it becomes `UpToDate` in a new
    /// generation. On fresh metadata every granule is marked out of sync: the peer needs a full
    /// sync from here.
    fn force_up_to_date(&mut self) {
        let generation = self.new_generation();
        let unix_millis = self.now.unix_millis;
        let volume = self.volume.as_mut().expect("attached");
        let fresh = volume.superblock.generations.current.is_none();
        if fresh {
            volume.bitmap.set_all();
        }
        self.update_superblock(|superblock| {
            if fresh {
                superblock.generations.current = generation;
            } else {
                superblock.generations.start_new(generation);
            }
            superblock.current_started_unix_millis = unix_millis;
            superblock.disk_state = DiskState::UpToDate;
        });
        let generations = self
            .volume
            .as_ref()
            .expect("attached")
            .superblock
            .generations;
        let reason = if fresh {
            "forced promotion of fresh metadata"
        } else {
            "forced promotion"
        };
        self.emit(Event::NewGeneration {
            generations,
            reason,
        });
        self.set_disk_state(DiskState::UpToDate, "forced promotion");
    }

    fn demote(&mut self, id: u64) {
        if self.volume.is_none() {
            return self.admin_done(id, Err(Refusal::NoDisk));
        }
        if self.role == Role::Secondary {
            return self.admin_done(id, Ok(()));
        }
        self.set_role(Role::Secondary);
        self.announce_state();
        self.pending_admin = Some(PendingAdmin {
            id,
            kind: PendingKind::Demote(DemoteStage::Draining),
        });
    }

    fn detach(&mut self, id: u64) {
        if self.volume.is_none() {
            return self.admin_done(id, Ok(()));
        }
        if self.disk == DiskState::Failed {
            self.drop_volume("detached after a disk failure");
            return self.admin_done(id, Ok(()));
        }
        self.pending_admin = Some(PendingAdmin {
            id,
            kind: PendingKind::Detach(DetachStage::Draining),
        });
        if matches!(self.peer.conn, ConnState::Connected | ConnState::Connecting) {
            let reason = "detaching".to_string();
            self.outputs.push_back(Output::PeerClose { reason });
            self.peer_disconnected("detaching");
        }
        self.set_conn(ConnState::StandAlone, "detaching");
    }

    fn set_role(&mut self, to: Role) {
        let from = self.role;
        if from != to {
            self.role = to;
            self.emit(Event::Role { from, to });
        }
    }

    fn drop_volume(&mut self, reason: &str) {
        self.volume = None;
        self.next_bitmap_flush = None;
        self.set_role(Role::Secondary);
        self.set_disk_state(DiskState::Diskless, reason);
    }

    /// Moves the pending admin command forward. Returns whether anything changed.
    pub(super) fn advance_admin(&mut self) -> bool {
        let Some(pending) = self.pending_admin else {
            return false;
        };
        let next = match pending.kind {
            PendingKind::Attach { superblock_version } => {
                if !self.superblock_durable(superblock_version) {
                    return false;
                }
                self.finish_attach();
                None
            }
            PendingKind::PromoteDraining { force } => {
                if self.requests.peer_writes_pending(None) {
                    return false;
                }
                self.pending_admin = None;
                self.promote(pending.id, force);
                return true;
            }
            PendingKind::Promote {
                superblock_version,
                flushed,
            } => {
                if !flushed || !self.superblock_durable(superblock_version) {
                    return false;
                }
                None
            }
            PendingKind::Demote(stage) => match self.advance_demote(stage) {
                Some(next) if next == stage => return false,
                Some(next) => Some(PendingKind::Demote(next)),
                None => None,
            },
            PendingKind::Detach(stage) => match self.advance_detach(stage) {
                Some(next) if next == stage => return false,
                Some(next) => Some(PendingKind::Detach(next)),
                None => None,
            },
        };
        match next {
            Some(kind) => {
                self.pending_admin = Some(PendingAdmin {
                    id: pending.id,
                    kind,
                })
            }
            None => {
                self.pending_admin = None;
                self.admin_done(pending.id, Ok(()));
            }
        }
        true
    }

    fn advance_demote(&mut self, stage: DemoteStage) -> Option<DemoteStage> {
        match stage {
            DemoteStage::Draining => {
                if self.requests.in_flight() > 0 {
                    return Some(stage);
                }
                self.flush_changed_bitmap_pages();
                let version =
                    self.update_superblock(|superblock| superblock.last_role = Role::Secondary);
                Some(DemoteStage::WritingMetadata {
                    superblock_version: version,
                })
            }
            DemoteStage::WritingMetadata { superblock_version } => {
                let done = self.superblock_durable(superblock_version) && self.bitmap_all_durable();
                if done { None } else { Some(stage) }
            }
        }
    }

    fn advance_detach(&mut self, stage: DetachStage) -> Option<DetachStage> {
        let volume = self.volume.as_ref().expect("attached while detaching");
        match stage {
            DetachStage::Draining => {
                let idle = self.requests.in_flight() == 0 && volume.transaction.is_none();
                Some(if idle { DetachStage::Spilling } else { stage })
            }
            DetachStage::Spilling => {
                if volume.journal.has_unspilled() || volume.journal_spill_in_flight {
                    return Some(stage);
                }
                self.flush_changed_bitmap_pages();
                Some(DetachStage::WritingBitmap)
            }
            DetachStage::WritingBitmap => {
                if !self.bitmap_all_durable() {
                    self.flush_changed_bitmap_pages();
                    return Some(stage);
                }
                self.submit(StorageOp::Flush, OpPurpose::DetachFlush);
                Some(DetachStage::Flushing)
            }
            DetachStage::Flushing => Some(stage),
            DetachStage::WritingSuperblock { superblock_version } => {
                if !self.superblock_durable(superblock_version) {
                    return Some(stage);
                }
                self.drop_volume("detached");
                None
            }
        }
    }

    pub(super) fn detach_flush_completion(&mut self, result: Result<(), Errno>) {
        if let Err(errno) = result {
            self.fail_disk("flushing before detach", errno);
            return;
        }
        let role = self.role;
        let version = self.update_superblock(|superblock| {
            superblock.clean_shutdown = true;
            superblock.last_role = role;
        });
        let id = self.pending_admin.expect("detach pending").id;
        self.pending_admin = Some(PendingAdmin {
            id,
            kind: PendingKind::Detach(DetachStage::WritingSuperblock {
                superblock_version: version,
            }),
        });
    }

    /// The disk failed while a command was waiting: promotions fail, demotions and detaches
    /// finish (there is nothing left to write).
    pub(super) fn fail_pending_admin(&mut self) {
        let Some(pending) = self.pending_admin.take() else {
            return;
        };
        match pending.kind {
            PendingKind::Attach { .. }
            | PendingKind::PromoteDraining { .. }
            | PendingKind::Promote { .. } => {
                let reason = self.failure.clone().unwrap_or_default();
                self.admin_done(pending.id, Err(Refusal::DiskFailed(reason)));
            }
            PendingKind::Demote(_) => self.admin_done(pending.id, Ok(())),
            PendingKind::Detach(_) => {
                self.drop_volume("detached after a disk failure");
                self.admin_done(pending.id, Ok(()));
            }
        }
    }
}
