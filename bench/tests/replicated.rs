//! The replicated benchmark's harness on small files: a pair replicates what the primary
//! writes under every protocol, and the link-only pair carries writes.

use std::path::PathBuf;
use std::time::Duration;

use bench::data::{DataKind, DataSet};
use bench::delay::Shaping;
use bench::linkonly::LinkPair;
use bench::local::{self, EngineTarget, Schedule, Target, Workload};
use bench::pair::{Pair, PairConfig};
use engine::protocol::compress::Compression;
use engine::replica::Protocol;
use engine::runtime::backing::Backing;

const FILE_BYTES: u64 = 256 << 20;
const BLOCK_BYTES: usize = 1 << 20;

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// A zero-filled file of [`FILE_BYTES`] (sparse: allocation does not matter here).
    fn file(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(FILE_BYTES).expect("size");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pair_replicates_the_primarys_writes() {
    let scratch = Scratch::new("pair");
    let files = [scratch.file("primary.img"), scratch.file("secondary.img")];
    let pair = Pair::start(&PairConfig::new(files.clone(), Compression::Lz4)).expect("pair");
    let data = DataSet::new(DataKind::Random, BLOCK_BYTES, 4);
    let target = EngineTarget(pair.primary());
    for index in 0..16u64 {
        target
            .io(index * BLOCK_BYTES as u64, data.block(index))
            .expect("write");
    }
    let traffic = pair.traffic();
    assert!(
        traffic.payload_bytes_sent >= 16 * BLOCK_BYTES as u64,
        "{traffic:?}"
    );
    pair.check_replicating().expect("still replicating");
    pair.close().expect("close");
    let [primary, secondary] = files.map(|file| Backing::open(&file).expect("open"));
    for index in 0..16u64 {
        let offset = index * BLOCK_BYTES as u64;
        let read = |backing: &Backing| backing.read(offset, BLOCK_BYTES as u64).expect("read");
        assert_eq!(read(&secondary).as_slice(), data.block(index).as_slice());
        assert_eq!(read(&primary).as_slice(), data.block(index).as_slice());
    }
}

/// Under protocols A and B writes complete before the peer has written them: once the peer has
/// caught up, both files hold the same bytes, for 1 MiB and 4 KiB writes alike.
#[test]
fn protocols_a_and_b_replicate_once_the_peer_catches_up() {
    for protocol in [Protocol::A, Protocol::B] {
        let scratch = Scratch::new(&format!("protocol-{protocol:?}"));
        let files = [scratch.file("primary.img"), scratch.file("secondary.img")];
        let config = PairConfig {
            protocol,
            ..PairConfig::new(files.clone(), Compression::Lz4)
        };
        let pair = Pair::start(&config).expect("pair");
        // 4 KiB random writes from two writers over the first half of the file, then 1 MiB
        // writes after it.
        let span = FILE_BYTES / 2;
        let target = EngineTarget(pair.primary());
        let small = DataSet::new(DataKind::Random, 4096, 64);
        let workload = Workload {
            block_bytes: 4096,
            random: true,
            queue_depth: 2,
        };
        let schedule = Schedule {
            warmup: Duration::ZERO,
            measure: Duration::from_millis(200),
        };
        let stats = local::run_with(&target, workload, span, schedule, &small, "writer")
            .expect("random writes");
        assert!(stats.operations > 0);
        let large = DataSet::new(DataKind::Random, BLOCK_BYTES, 4);
        for index in 0..8u64 {
            target
                .io(span + index * BLOCK_BYTES as u64, large.block(index))
                .expect("write");
        }
        pair.wait_caught_up(Duration::from_secs(20))
            .expect("the peer catches up");
        assert_eq!(pair.backlog().unacked_bytes, 0);
        pair.check_replicating().expect("still replicating");
        pair.close().expect("close");
        let [primary, secondary] = files.map(|file| Backing::open(&file).expect("open"));
        // Every byte the writers touched.
        let mut offset = 0;
        while offset < span + 8 * BLOCK_BYTES as u64 {
            let read = |backing: &Backing| backing.read(offset, 8 << 20).expect("read");
            assert!(
                read(&primary).as_slice() == read(&secondary).as_slice(),
                "protocol {protocol:?}: the copies differ in the 8 MiB at {offset}"
            );
            offset += 8 << 20;
        }
        for index in 0..8u64 {
            let offset = span + index * BLOCK_BYTES as u64;
            assert_eq!(
                primary
                    .read(offset, BLOCK_BYTES as u64)
                    .expect("read")
                    .as_slice(),
                large.block(index).as_slice(),
                "protocol {protocol:?}"
            );
        }
    }
}

#[test]
fn the_link_alone_carries_writes() {
    let link = LinkPair::start(Compression::Zstd).expect("link");
    let data = DataSet::new(DataKind::Compressible, BLOCK_BYTES, 4);
    let workload = Workload {
        block_bytes: BLOCK_BYTES as u64,
        random: false,
        queue_depth: 4,
    };
    let schedule = Schedule {
        warmup: Duration::from_millis(50),
        measure: Duration::from_millis(200),
    };
    let (stats, traffic) = link.run(workload, 64 << 20, schedule, &data).expect("run");
    link.close();
    assert!(stats.operations > 0);
    assert!(
        traffic.wire_bytes_sent < traffic.payload_bytes_sent,
        "{traffic:?}"
    );
}

/// With a delay on the link, a protocol C write waits for the round trip (a lower bound that no
/// machine can beat), and the pair still replicates.
#[test]
fn a_delayed_link_delays_protocol_c_writes_by_the_round_trip() {
    let scratch = Scratch::new("delay");
    let files = [scratch.file("primary.img"), scratch.file("secondary.img")];
    let delay = Duration::from_millis(20);
    let config = PairConfig {
        link_shaping: Shaping {
            delay,
            rate_bytes_per_second: None,
        },
        ..PairConfig::new(files.clone(), Compression::Lz4)
    };
    let pair = Pair::start(&config).expect("pair");
    let data = DataSet::new(DataKind::Random, 4096, 4);
    let target = EngineTarget(pair.primary());
    for index in 0..4u64 {
        let started = std::time::Instant::now();
        target.io(index * 4096, data.block(index)).expect("write");
        let took = started.elapsed();
        assert!(took >= 2 * delay, "write {index} took {took:?}");
    }
    pair.check_replicating().expect("still replicating");
    pair.close().expect("close");
    let secondary = Backing::open(&files[1]).expect("open");
    for index in 0..4u64 {
        let read = secondary.read(index * 4096, 4096).expect("read");
        assert_eq!(read.as_slice(), data.block(index).as_slice());
    }
}

/// A cut link, writes on the primary alone, the link back: the engine brings the secondary up
/// to date, and both data areas hold the same bytes.
#[test]
fn a_cut_pair_catches_up_on_what_was_written_apart() {
    let scratch = Scratch::new("cut");
    let files = [scratch.file("primary.img"), scratch.file("secondary.img")];
    let mut pair = Pair::start(&PairConfig::new(files.clone(), Compression::Lz4)).expect("pair");
    pair.cut().expect("cut");
    let data = DataSet::new(DataKind::Random, 4096, 16);
    let target = EngineTarget(pair.primary());
    for index in 0..64u64 {
        target
            .io(index * 7 * 4096, data.block(index))
            .expect("write while apart");
    }
    assert!(
        pair.primary().status().out_of_sync_bytes > 0
            || pair.primary().status().journal.records > 0
    );
    pair.relink().expect("relink");
    // A small catch-up may end between two polls: what it was is not checked, the data is.
    let kinds = pair.wait_synced(Duration::from_secs(60)).expect("synced");
    let written = 64 * 7 * 4096;
    let read = |file: &std::path::Path| {
        let bytes = std::fs::read(file).expect("read");
        bytes[..written].to_vec()
    };
    pair.close().expect("close");
    assert!(
        read(&files[0]) == read(&files[1]),
        "the data areas differ after the sync ({kinds:?})"
    );
}
