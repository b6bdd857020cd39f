//! The replicated benchmark's harness on small files: a pair replicates what the primary
//! writes, and the link-only pair carries writes.

use std::path::PathBuf;
use std::time::Duration;

use bench::data::{DataKind, DataSet};
use bench::linkonly::LinkPair;
use bench::local::{EngineTarget, Schedule, Target, Workload};
use bench::pair::{Pair, PairConfig};
use engine::protocol::compress::Compression;
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
    let pair = Pair::start(&PairConfig {
        files: files.clone(),
        compression: Compression::Lz4,
    })
    .expect("pair");
    let data = DataSet::new(DataKind::Random, BLOCK_BYTES, 4);
    let target = EngineTarget(pair.primary());
    for index in 0..16u64 {
        target
            .write(index * BLOCK_BYTES as u64, data.block(index))
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
