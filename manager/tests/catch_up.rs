//! Protocol A across a link with 2 ms of delay each way (a relay: this kernel has no netem).
//!
//! - After a disconnect the secondary catches up from the primary's journal in write order: at
//!   every sampled moment its backing store holds a prefix of the primary's write history (S2),
//!   while a writer keeps writing.
//! - When the journal overflows, status and the log say so, and the bitmap resync that follows
//!   ends `up_to_date` with identical data.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::nbd::NbdClient;
use common::proxy::DelayRelay;
use common::{Cluster, NodeSpec, wait_for};

const BLOCK: u64 = 4096;
/// The region the writer stamps: 16 MiB.
const BLOCKS: u64 = 4096;
const DELAY: Duration = Duration::from_millis(2);

/// The block write `i` goes to: scattered over the region.
fn block_of(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) % BLOCKS
}

/// The content of write `i`: (i, block) pairs, so a block read back names its write.
fn stamp(i: u64) -> Vec<u8> {
    let block = block_of(i);
    let mut bytes = Vec::with_capacity(BLOCK as usize);
    while bytes.len() < BLOCK as usize {
        bytes.extend_from_slice(&i.to_le_bytes());
        bytes.extend_from_slice(&block.to_le_bytes());
    }
    bytes
}

/// The write a block holds (0: never written), or `None` if the block is not one write's
/// stamp (torn by a concurrent write, or damaged).
fn decode(bytes: &[u8], block: u64) -> Option<u64> {
    if bytes.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let i = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let intact = bytes == stamp(i).as_slice() && block_of(i) == block;
    intact.then_some(i)
}

/// The writes of the history, per block, in order.
fn writes_per_block(last: u64) -> Vec<Vec<u64>> {
    let mut per_block = vec![Vec::new(); BLOCKS as usize];
    for i in 1..=last {
        per_block[block_of(i) as usize].push(i);
    }
    per_block
}

/// S2 for an image read in address order while it may change: there must be prefixes
/// `k_0 <= k_1 <= ...` of the history (write order) such that block `b` holds the newest write
/// to it among the first `k_b` writes. (A read of a changing file sees later blocks later.)
/// Returns the range of prefixes seen.
fn check_prefix(image: &[u8], per_block: &[Vec<u64>]) -> Result<(u64, u64), String> {
    let mut k = 0;
    let mut first = None;
    for block in 0..BLOCKS {
        let start = (block * BLOCK) as usize;
        let bytes = &image[start..start + BLOCK as usize];
        let Some(held) = decode(bytes, block) else {
            return Err(format!("block {block} is not one write's stamp"));
        };
        let writes = &per_block[block as usize];
        // The prefixes for which `held` is the newest write to this block.
        let next = writes
            .iter()
            .copied()
            .find(|&i| i > held)
            .unwrap_or(u64::MAX);
        if held != 0 && !writes.contains(&held) {
            return Err(format!(
                "block {block} holds write {held}, never written there"
            ));
        }
        k = k.max(held);
        if k >= next {
            return Err(format!(
                "block {block} holds write {held} (superseded by write {next}) while an earlier \
                 block already holds write {k}: not a prefix of the write history"
            ));
        }
        first.get_or_insert(k);
    }
    Ok((first.unwrap_or(0), k))
}

/// Writes `from..=to` one at a time (each completes before the next starts: the history is a
/// total order), publishing the newest completed write.
fn write_range(uri: &str, from: u64, to: u64, done: &AtomicU64) {
    let mut client = NbdClient::connect(uri, "r0").expect("NBD connect");
    for i in from..=to {
        client
            .write(block_of(i) * BLOCK, &stamp(i))
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        done.store(i, Ordering::SeqCst);
    }
}

struct Setup {
    cluster: Cluster,
    relay: DelayRelay,
    nbd: String,
}

/// Alpha primary, beta behind a relay that delays each direction by 2 ms; in sync.
fn setup(test: &str, subnet: u8, volume_extra: &str) -> Setup {
    let alpha = format!("127.0.{subnet}.1");
    let beta_bind = format!("127.0.{subnet}.2");
    let beta_via_relay = format!("127.0.{subnet}.3");
    let nodes = vec![
        NodeSpec {
            name: "alpha".to_string(),
            address: alpha.clone(),
            netns: None,
        },
        NodeSpec {
            name: "beta".to_string(),
            address: beta_via_relay.clone(),
            netns: None,
        },
    ];
    let mut cluster = Cluster::new(test, nodes, 128 << 20, volume_extra);
    // Alpha dials beta's address, the relay; beta listens behind it.
    cluster.set_node_option("beta", &format!("bind_address = \"{beta_bind}\""));
    let relay = DelayRelay::start(
        format!("{beta_via_relay}:7789")
            .parse::<SocketAddr>()
            .unwrap(),
        format!("{beta_bind}:7789").parse::<SocketAddr>().unwrap(),
        DELAY,
    );
    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["create-md", "r0"]);
        cluster.start_daemon(node);
    }
    cluster.tandem_ok(
        "alpha",
        &["volume", "wait", "r0", "connected", "--timeout", "30"],
    );
    cluster.tandem_ok("alpha", &["volume", "primary", "r0", "--force"]);
    cluster.wait_synced("alpha", 120);
    Setup {
        cluster,
        relay,
        nbd: format!("{alpha}:10809"),
    }
}

/// Cuts the link and waits until both sides noticed.
fn cut(setup: &Setup) {
    setup.relay.cut();
    wait_for(
        Duration::from_secs(30),
        "both nodes to lose the link",
        || {
            ["alpha", "beta"]
                .iter()
                .all(|node| setup.cluster.volume_status(node)["connection"] != "connected")
        },
    );
}

fn read_region(setup: &Setup, node: &str) -> Vec<u8> {
    let file = std::fs::File::open(setup.cluster.backing(node)).expect("backing store");
    let mut image = vec![0u8; (BLOCKS * BLOCK) as usize];
    file.read_exact_at(&mut image, 0)
        .expect("read the data area");
    image
}

#[test]
fn a_catch_up_keeps_the_secondary_a_prefix_of_the_primary() {
    let setup = setup(
        "catch-up",
        62,
        "protocol = \"A\"\ncompression = \"none\"\njournal_size = \"64MiB\"\njournal_memory = \"4MiB\"",
    );
    let done = AtomicU64::new(0);
    // Connected: beta keeps up.
    write_range(&setup.nbd, 1, 500, &done);
    setup.cluster.wait_synced("alpha", 120);

    // Disconnected: 3500 writes (14 MiB) go to the journal, most of it spilled to the ring.
    cut(&setup);
    write_range(&setup.nbd, 501, 4000, &done);
    let status = setup.cluster.volume_status("alpha");
    assert!(
        status["journal"]["records"].as_u64().unwrap() >= 3500,
        "the journal holds the writes made while disconnected: {status}"
    );
    assert_eq!(status["journal"]["active"], true, "{status}");

    // Reconnected, while the writer goes on: sample beta's backing store until it is up to date.
    let last = 6000;
    let per_block = writes_per_block(last);
    setup.relay.restore();
    let writer = {
        let (uri, done) = (setup.nbd.clone(), Arc::new(AtomicU64::new(0)));
        let published = Arc::clone(&done);
        (
            std::thread::spawn(move || write_range(&uri, 4001, last, &published)),
            done,
        )
    };
    let mut during_catch_up = 0;
    let mut samples = 0;
    let mut prefixes = Vec::new();
    let consistent = |s: &serde_json::Value| s["disk"] == "outdated" || s["disk"] == "up_to_date";
    let catching_up =
        |s: &serde_json::Value| s["sync"]["kind"] == "journal" && s["disk"] == "outdated";
    for _ in 0..2_000 {
        let before = setup.cluster.volume_status("beta");
        let image = read_region(&setup, "beta");
        let after = setup.cluster.volume_status("beta");
        // S2 holds whenever beta is consistent (a bitmap resync would make it inconsistent).
        assert!(
            consistent(&before) && consistent(&after),
            "beta went {} / {}: no catch-up\n{}",
            before["disk"],
            after["disk"],
            setup.cluster.logs()
        );
        let (low, high) = check_prefix(&image, &per_block).unwrap_or_else(|error| {
            panic!(
                "S2 violated on beta ({}): {error}\n{}",
                before["disk"],
                setup.cluster.logs()
            )
        });
        samples += 1;
        if catching_up(&before) && catching_up(&after) {
            during_catch_up += 1;
            prefixes.push((low, high));
        }
        let up_to_date = after["disk"] == "up_to_date" && after["replication"] == "established";
        if up_to_date && writer.0.is_finished() {
            break;
        }
    }
    writer.0.join().expect("writer");
    assert_eq!(writer.1.load(Ordering::SeqCst), last);
    setup.cluster.wait_synced("alpha", 120);
    let log = setup.cluster.log("alpha");
    assert!(
        log.contains("catch-up from the journal"),
        "alpha logs the catch-up:\n{log}"
    );
    assert!(
        during_catch_up >= 3,
        "only {during_catch_up} of {samples} samples fell inside the catch-up\n{}",
        setup.cluster.logs()
    );
    // In sync at the end: the same data, and every block holds its newest write.
    assert!(setup.cluster.data_areas_identical());
    let image = read_region(&setup, "beta");
    for block in 0..BLOCKS {
        let want = per_block[block as usize].last().copied().unwrap_or(0);
        let start = (block * BLOCK) as usize;
        assert_eq!(
            decode(&image[start..start + BLOCK as usize], block),
            Some(want)
        );
    }
    eprintln!(
        "{samples} samples, {during_catch_up} during the catch-up, prefixes seen: {:?}",
        &prefixes[..prefixes.len().min(8)]
    );
}

#[test]
fn a_journal_overflow_is_reported_and_the_bitmap_resync_ends_in_sync() {
    let setup = setup(
        "journal-overflow",
        63,
        "protocol = \"A\"\ncompression = \"none\"\njournal_size = \"2MiB\"\njournal_memory = \"1MiB\"",
    );
    cut(&setup);
    // 12 MiB of writes against 3 MiB of journal.
    let done = AtomicU64::new(0);
    write_range(&setup.nbd, 1, 3000, &done);
    let status = setup.cluster.volume_status("alpha");
    assert_eq!(status["journal"]["active"], false, "{status}");
    assert!(
        status["journal"]["overflows"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["out_of_sync_bytes"].as_u64().unwrap() > 0,
        "{status}"
    );
    let text = setup.cluster.tandem_ok("alpha", &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("overflows"),
        "text status shows the journal: {text}"
    );
    let log = setup.cluster.log("alpha");
    assert!(
        log.contains("journal overflow"),
        "alpha logs the overflow:\n{log}"
    );

    setup.relay.restore();
    setup.cluster.wait_synced("alpha", 120);
    let log = setup.cluster.log("beta");
    assert!(
        log.contains("bitmap resync") && !log.contains("catch-up"),
        "beta was brought up to date by a bitmap resync:\n{log}"
    );
    assert!(setup.cluster.data_areas_identical());
    let image = read_region(&setup, "beta");
    let per_block = writes_per_block(3000);
    for block in 0..BLOCKS {
        let want = per_block[block as usize].last().copied().unwrap_or(0);
        let start = (block * BLOCK) as usize;
        assert_eq!(
            decode(&image[start..start + BLOCK as usize], block),
            Some(want)
        );
    }
}
