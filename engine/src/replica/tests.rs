//! Scenario tests: short scripts that drive one replica over a simulated disk step by step.

use super::*;
use crate::buffer::IoBuf;
use crate::format::{FormatOptions, InitialData, format};
use crate::generation::Generation;
use crate::layout::LayoutParams;
use crate::sim::disk::{DiskFaults, SimDisk};
use crate::types::{BLOCK_BYTES, ByteRange};

const BACKING_BYTES: u64 = 8 << 20;

/// A replica over a simulated disk, with helpers that run it until a result arrives.
struct Node {
    replica: Replica,
    disk: SimDisk,
    now_nanos: u64,
    next_tag: u64,
    completions: Vec<ClientCompletion>,
    admin: Vec<(u64, Result<(), Refusal>)>,
    events: Vec<String>,
    /// Every storage write submitted: backing offset and length.
    writes: Vec<(u64, u64)>,
}

impl Node {
    fn formatted(initial: InitialData) -> Self {
        let faults = DiskFaults {
            latency_min_nanos: 1000,
            latency_max_nanos: 5000,
            error_ppm: 0,
        };
        let mut disk = SimDisk::new(BACKING_BYTES, faults, Prng::from_seed(11));
        let options = FormatOptions {
            volume_name: "r0".to_string(),
            params: LayoutParams {
                al_slots: 16,
                al_extent_bytes: 4 << 20,
                journal_bytes: 256 << 10,
                ..LayoutParams::default()
            },
            instance_id: [9; 16],
            created_unix_millis: 5,
            initial,
        };
        for (offset, bytes) in format(BACKING_BYTES, &options).expect("fits").writes {
            disk.write_durable(offset, &bytes);
        }
        let mut config = ReplicaConfig::new("r0", NodeId(0));
        config.request_bytes_max = 1 << 20;
        config.journal_memory_bytes_max = 64 << 10;
        Self::with(config, disk)
    }

    fn with(config: ReplicaConfig, disk: SimDisk) -> Self {
        Self {
            replica: Replica::new(config, Prng::from_seed(1)),
            disk,
            now_nanos: 0,
            next_tag: 1,
            completions: Vec::new(),
            admin: Vec::new(),
            events: Vec::new(),
            writes: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            monotonic: Instant::from_nanos(self.now_nanos),
            unix_millis: 1_000,
        }
    }

    fn pump(&mut self) {
        while let Some(output) = self.replica.poll_output() {
            match output {
                Output::Storage(request) => {
                    if let StorageOp::Write { offset, data, .. } = &request.op {
                        self.writes.push((*offset, data.len() as u64));
                    }
                    self.disk.submit(request, self.now_nanos)
                }
                Output::Client(completion) => self.completions.push(completion),
                Output::AdminDone { id, result } => self.admin.push((id, result)),
                Output::Event(event) => self.events.push(event.to_string()),
                Output::PeerSend(message) => panic!("a stand-alone replica sent {message}"),
                Output::PeerClose { reason } => {
                    panic!("a stand-alone replica closed a link: {reason}")
                }
            }
        }
    }

    /// Delivers storage completions until none is in flight (bounded).
    fn settle(&mut self) {
        self.pump();
        for _ in 0..100_000 {
            let Some(due) = self.disk.next_due() else {
                return;
            };
            self.now_nanos = self.now_nanos.max(due);
            let completion = self.disk.complete_next(self.now_nanos).expect("due");
            let now = self.now();
            self.replica.handle(now, Input::Storage(completion));
            self.pump();
        }
        panic!("storage never went idle");
    }

    fn admin(&mut self, command: AdminCommand) -> Result<(), Refusal> {
        let id = self.admin.len() as u64 + 100;
        let now = self.now();
        self.replica.handle(now, Input::Admin { id, command });
        self.settle();
        let position = self
            .admin
            .iter()
            .position(|(done, _)| *done == id)
            .expect("admin done");
        self.admin.remove(position).1
    }

    fn submit(&mut self, op: ClientOp) -> RequestTag {
        let tag = RequestTag(self.next_tag);
        self.next_tag += 1;
        let now = self.now();
        self.replica
            .handle(now, Input::Client(ClientRequest { tag, op }));
        self.pump();
        tag
    }

    fn result(&mut self, tag: RequestTag) -> Result<Option<IoBuf>, Errno> {
        self.settle();
        let position = self
            .completions
            .iter()
            .position(|c| c.tag == tag)
            .expect("completed");
        self.completions.remove(position).result
    }

    fn run(&mut self, op: ClientOp) -> Result<Option<IoBuf>, Errno> {
        let tag = self.submit(op);
        self.result(tag)
    }

    fn write(&mut self, offset: u64, byte: u8, length: usize) -> Result<(), Errno> {
        let data = IoBuf::copy_from(&vec![byte; length]);
        self.run(ClientOp::Write {
            offset,
            data,
            fua: false,
        })
        .map(|_| ())
    }

    fn read(&mut self, offset: u64, length: u64) -> Vec<u8> {
        let data = self
            .run(ClientOp::Read { offset, length })
            .expect("read ok")
            .expect("data");
        data.as_slice().to_vec()
    }

    /// Drops the replica as a crash would, and starts a new one on the same disk.
    fn crash_and_restart(mut self) -> Self {
        self.disk.crash();
        let config = self.replica.config.clone();
        Self::with(config, self.disk)
    }

    fn attach(&mut self) -> Result<(), Refusal> {
        self.admin(AdminCommand::Attach {
            backing_bytes: BACKING_BYTES,
        })
    }
}

mod attach {
    use super::*;

    #[test]
    fn fresh_metadata_is_inconsistent_and_needs_a_forced_promotion() {
        let mut node = Node::formatted(InitialData::Fresh);
        node.attach().expect("attach");
        assert_eq!(node.replica.disk_state(), DiskState::Inconsistent);
        let refusal = node
            .admin(AdminCommand::Promote { force: false })
            .unwrap_err();
        assert_eq!(refusal, Refusal::NoUpToDateDisk(DiskState::Inconsistent));
        assert!(refusal.to_string().contains("--force"), "{refusal}");
        node.admin(AdminCommand::Promote { force: true })
            .expect("forced");
        assert_eq!(node.replica.disk_state(), DiskState::UpToDate);
        assert_eq!(node.replica.role(), Role::Primary);
        let generations = node.replica.generations().expect("attached");
        assert!(!generations.current.is_none());
        let bitmap = node.replica.bitmap().expect("attached");
        assert_eq!(
            bitmap.weight(),
            bitmap.granule_count(),
            "the peer needs a full sync"
        );
    }

    #[test]
    fn metadata_of_another_volume_is_refused() {
        let node = Node::formatted(InitialData::Fresh);
        let config = ReplicaConfig::new("other", NodeId(0));
        let mut node = Node::with(config, node.disk);
        let refusal = node.attach().unwrap_err();
        assert!(
            refusal.to_string().contains("belongs to volume \"r0\""),
            "{refusal}"
        );
        assert_eq!(node.replica.disk_state(), DiskState::Diskless);
    }

    #[test]
    fn a_second_attach_is_refused_while_attached() {
        let mut node = Node::formatted(InitialData::Fresh);
        node.attach().expect("attach");
        assert_eq!(node.attach().unwrap_err(), Refusal::AlreadyAttached);
    }
}

mod io {
    use super::*;

    fn primary() -> Node {
        let mut node = Node::formatted(InitialData::InSync {
            generation: Generation(77),
        });
        node.attach().expect("attach");
        node.admin(AdminCommand::Promote { force: false })
            .expect("up to date");
        node
    }

    #[test]
    fn writes_read_back_and_trim_reads_zeros() {
        let mut node = primary();
        node.write(4096, 0xAA, 8192).expect("write");
        assert!(node.read(4096, 8192).iter().all(|&b| b == 0xAA));
        node.run(ClientOp::Flush).expect("flush");
        node.run(ClientOp::Trim {
            offset: 4096,
            length: 4096,
            fua: false,
        })
        .expect("trim");
        let data = node.read(4096, 8192);
        assert!(data[..4096].iter().all(|&b| b == 0));
        assert!(data[4096..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn a_large_write_without_the_peer_is_one_storage_write() {
        let mut node = primary();
        let piece = node.replica.config.write_piece_bytes;
        // It spans four piece boundaries; pieces pay only while a peer receives the write.
        let (offset, length) = (piece - 4096, 4096 + 3 * piece + 1024);
        let data: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        node.writes.clear();
        node.run(ClientOp::Write {
            offset,
            data: IoBuf::copy_from(&data),
            fua: false,
        })
        .expect("write");
        let data_area = node.replica.size_bytes().expect("attached");
        let data_writes: Vec<(u64, u64)> = node
            .writes
            .iter()
            .copied()
            .filter(|(at, _)| *at < data_area)
            .collect();
        assert_eq!(data_writes, vec![(offset, length)]);
        assert_eq!(node.replica.pieced_writes(), 0);
        assert_eq!(node.read(offset, length), data);
    }

    #[test]
    fn promotion_without_the_peer_starts_a_new_generation_and_writes_keep_it() {
        let mut node = Node::formatted(InitialData::InSync {
            generation: Generation(77),
        });
        node.attach().expect("attach");
        let shared = node.replica.generations().expect("attached");
        node.admin(AdminCommand::Promote { force: false })
            .expect("up to date");
        let promoted = node.replica.generations().expect("attached");
        assert_eq!(
            promoted.bitmap, shared.current,
            "the bitmap counts from the generation shared with the peer"
        );
        assert_ne!(promoted.current, shared.current);
        node.write(0, 1, 512).expect("write");
        node.write(512, 2, 512).expect("write");
        assert_eq!(
            node.replica.generations().expect("attached"),
            promoted,
            "writes stay in the promoted generation"
        );
    }

    #[test]
    fn bad_requests_get_clear_errors_and_change_nothing() {
        let mut node = primary();
        let data = IoBuf::copy_from(&[1; 100]);
        assert_eq!(
            node.run(ClientOp::Write {
                offset: 0,
                data,
                fua: false
            }),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            node.run(ClientOp::Read {
                offset: 7,
                length: 512
            }),
            Err(Errno::EINVAL)
        );
        let size = node.replica.size_bytes().expect("attached");
        assert_eq!(node.write(size, 1, 512), Err(Errno::ENOSPC));
        assert_eq!(
            node.run(ClientOp::Read {
                offset: size - 512,
                length: 1024
            }),
            Err(Errno::EINVAL)
        );
        let too_big = IoBuf::copy_from(&vec![0; 2 << 20]);
        assert_eq!(
            node.run(ClientOp::Write {
                offset: 0,
                data: too_big,
                fua: false
            }),
            Err(Errno::EINVAL)
        );
        assert_eq!(node.replica.bitmap().expect("attached").weight(), 0);
        node.write(0, 3, 512).expect("still serving");
    }

    #[test]
    fn a_secondary_serves_no_client_io() {
        let mut node = primary();
        node.admin(AdminCommand::Demote).expect("demote");
        assert_eq!(
            node.run(ClientOp::Read {
                offset: 0,
                length: 512
            }),
            Err(Errno::EPERM)
        );
        assert_eq!(node.write(0, 1, 512), Err(Errno::EPERM));
    }

    #[test]
    fn overlapping_writes_are_applied_in_arrival_order() {
        let mut node = primary();
        let first = node.submit(ClientOp::Write {
            offset: 0,
            data: IoBuf::copy_from(&[1; 8192]),
            fua: false,
        });
        let second = node.submit(ClientOp::Write {
            offset: 4096,
            data: IoBuf::copy_from(&[2; 4096]),
            fua: false,
        });
        // Only the first is at the disk: the second waits for it.
        assert_eq!(node.disk.in_flight(), 1);
        node.result(first).expect("first");
        node.result(second).expect("second");
        let data = node.read(0, 8192);
        assert!(data[..4096].iter().all(|&b| b == 1) && data[4096..].iter().all(|&b| b == 2));
    }

    #[test]
    fn an_io_error_fails_the_disk_and_every_request_after_it() {
        let mut node = primary();
        node.disk.set_faults(DiskFaults {
            latency_min_nanos: 1,
            latency_max_nanos: 2,
            error_ppm: 1_000_000,
        });
        assert_eq!(node.write(0, 1, 4096), Err(Errno::EIO));
        assert_eq!(node.replica.disk_state(), DiskState::Failed);
        node.disk.set_faults(DiskFaults {
            latency_min_nanos: 1,
            latency_max_nanos: 2,
            error_ppm: 0,
        });
        assert_eq!(
            node.run(ClientOp::Read {
                offset: 0,
                length: 512
            }),
            Err(Errno::EIO)
        );
        assert_eq!(node.run(ClientOp::Flush), Err(Errno::EIO));
        let refusal = node
            .admin(AdminCommand::Promote { force: false })
            .unwrap_err();
        assert!(matches!(refusal, Refusal::DiskFailed(_)), "{refusal}");
        node.admin(AdminCommand::Detach)
            .expect("detach after failure");
        assert_eq!(node.replica.disk_state(), DiskState::Diskless);
    }
}

mod recovery {
    use super::*;

    fn primary() -> Node {
        let mut node = Node::formatted(InitialData::InSync {
            generation: Generation(77),
        });
        node.attach().expect("attach");
        node.admin(AdminCommand::Promote { force: false })
            .expect("up to date");
        node
    }

    #[test]
    fn a_clean_detach_reopens_without_recovery_and_keeps_the_journal() {
        let mut node = primary();
        for index in 0..10u64 {
            node.write(index * 65_536, index as u8, 8192)
                .expect("write");
        }
        node.admin(AdminCommand::Detach).expect("detach");
        let config = node.replica.config.clone();
        let mut node = Node::with(config, node.disk);
        node.attach().expect("attach");
        let report = node
            .events
            .iter()
            .find(|e| e.starts_with("attached"))
            .expect("report");
        assert!(report.contains("after a clean shutdown"), "{report}");
        let journal = node.replica.journal().expect("attached");
        assert!(journal.is_active(), "the journal is still complete");
        assert_eq!(journal.stats().records, 10);
        assert_eq!(node.replica.bitmap().expect("attached").weight(), 10 * 2);
    }

    #[test]
    fn a_journal_overflow_hands_over_to_the_bitmap_and_is_remembered() {
        let mut node = primary();
        for index in 0..40u64 {
            node.write(index * 65_536, index as u8, 65_536)
                .expect("write");
        }
        assert!(
            node.events
                .iter()
                .any(|e| e.starts_with("journal overflow")),
            "{:?}",
            node.events
        );
        let status = node.replica.status();
        assert!(!status.journal.active);
        assert_eq!(status.journal.overflows, 1);
        assert_eq!(
            status.out_of_sync_bytes,
            40 * 65_536,
            "the bitmap holds every write"
        );
        node.admin(AdminCommand::Detach).expect("detach");
        let config = node.replica.config.clone();
        let mut node = Node::with(config, node.disk);
        node.attach().expect("attach");
        assert!(!node.replica.journal().expect("attached").is_active());
        assert_eq!(node.replica.status().out_of_sync_bytes, 40 * 65_536);
    }

    #[test]
    fn a_crash_marks_every_activity_log_extent_out_of_sync_and_flags_the_crashed_primary() {
        let mut node = primary();
        node.write(0, 1, 4096).expect("write");
        node.write(5 << 20, 2, 4096).expect("write");
        let node = node.crash_and_restart();
        let mut node = node;
        node.attach().expect("attach");
        let status = node.replica.status();
        assert!(status.crashed_primary);
        let bitmap = node.replica.bitmap().expect("attached");
        // Both written extents (4 MiB each) are entirely out of sync.
        let extent_granules = (4 << 20) / 4096;
        assert!(
            bitmap
                .granules_of(ByteRange::new(0, 4 << 20))
                .all(|g| bitmap.is_set(g))
        );
        assert!(
            bitmap.weight() >= 2 * extent_granules - 256,
            "{}",
            bitmap.weight()
        );
        let report = node
            .events
            .iter()
            .find(|e| e.starts_with("attached"))
            .expect("report");
        assert!(
            report.contains("after a crash") && report.contains("crashed primary"),
            "{report}"
        );
    }

    #[test]
    fn both_superblocks_damaged_is_reported_as_such() {
        let mut node = primary();
        node.admin(AdminCommand::Detach).expect("detach");
        let last = BACKING_BYTES - 2 * BLOCK_BYTES;
        node.disk.damage(last, BLOCK_BYTES, 1);
        node.disk.damage(last + BLOCK_BYTES, BLOCK_BYTES, 1);
        let config = node.replica.config.clone();
        let mut node = Node::with(config, node.disk);
        let refusal = node.attach().unwrap_err();
        let text = refusal.to_string();
        assert!(
            text.contains("both superblocks unusable") && text.contains("checksum"),
            "{text}"
        );
    }
}
