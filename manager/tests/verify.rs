//! Online verify and checksum resync between two real daemons.
//!
//! - `volume verify` while a client writes reports no mismatch; a block changed behind the
//!   secondary's back is reported as exactly its range, `--mark` marks it, and `volume resync`
//!   repairs it.
//! - `volume resync --checksum` on identical replicas sends digests, not data: the bytes on the
//!   wire stay a small fraction of the volume.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::nbd::NbdClient;
use common::{Cluster, loopback_pair, primary_and_synced};

const BLOCK: u64 = 4096;

fn pair(test: &str, subnet: u8) -> Cluster {
    let nodes = loopback_pair(subnet);
    let mut cluster = Cluster::new(test, nodes, 128 << 20, "compression = \"none\"");
    primary_and_synced(&mut cluster);
    cluster
}

fn verify_json(cluster: &Cluster, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["volume", "verify", "r0", "--json"];
    args.extend_from_slice(extra);
    let output = cluster.tandem_ok("alpha", &args);
    serde_json::from_slice(&output.stdout).expect("verify JSON")
}

#[test]
fn verify_finds_exactly_the_corrupted_block_and_never_a_block_being_written() {
    let cluster = pair("verify", 66);
    let address = format!("{}:10809", cluster.node("alpha").address);
    // A writer rewrites the first 4 MiB in a loop while the verify runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, address) = (Arc::clone(&stop), address.clone());
        std::thread::spawn(move || {
            let mut client = NbdClient::connect(&address, "r0").expect("NBD connect");
            let mut writes = 0u64;
            while !stop.load(Ordering::SeqCst) && writes < 200_000 {
                let b = writes % 1024;
                client
                    .write(b * BLOCK, &[(writes % 251) as u8; BLOCK as usize])
                    .expect("write");
                writes += 1;
            }
            writes
        })
    };
    let report = verify_json(&cluster, &[]);
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer");
    assert!(writes > 0);
    assert_eq!(report["state"], "finished", "{report}");
    assert_eq!(
        report["mismatched_bytes"], 0,
        "a false mismatch under {writes} writes: {report}"
    );
    assert_eq!(
        report["checked_bytes"],
        cluster.volume_status("alpha")["size_bytes"]
    );

    // A byte changed on beta's disk behind tandem's back.
    let corrupt_at = 5 * 1024 * 1024 + 3 * BLOCK + 17;
    let beta = std::fs::OpenOptions::new()
        .write(true)
        .open(cluster.backing("beta"))
        .expect("beta backing");
    beta.write_all_at(&[0xA5], corrupt_at).expect("corrupt");
    beta.sync_all().expect("sync");
    let report = verify_json(&cluster, &["--mark"]);
    let start = corrupt_at / BLOCK * BLOCK;
    assert_eq!(
        report["mismatched_ranges"],
        serde_json::json!([[start, BLOCK]]),
        "{report}"
    );
    assert_eq!(report["marked"], true);
    let status = cluster.volume_status("alpha");
    assert_eq!(status["out_of_sync_bytes"], BLOCK, "{status}");
    assert!(
        cluster
            .log("alpha")
            .contains(&format!("differs: [{start}, {})", start + BLOCK))
    );
    let text = cluster.tandem_ok("alpha", &["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("verify finished"));

    cluster.tandem_ok("alpha", &["volume", "resync", "r0"]);
    cluster.wait_synced("alpha", 60);
    assert!(cluster.data_areas_identical());
    let report = verify_json(&cluster, &[]);
    assert_eq!(report["mismatched_bytes"], 0, "{report}");

    // Verify is the primary's job.
    let on_beta = cluster.tandem("beta", &["volume", "verify", "r0"]);
    assert!(!on_beta.status.success());
    assert!(String::from_utf8_lossy(&on_beta.stderr).contains("the peer is primary"));
}

#[test]
fn a_checksum_resync_of_identical_replicas_sends_digests_not_data() {
    let cluster = pair("checksum-resync", 67);
    let size = cluster.volume_status("alpha")["size_bytes"]
        .as_u64()
        .expect("size");
    let sent = |c: &Cluster| {
        c.volume_status("alpha")["wire_bytes_sent"]
            .as_u64()
            .expect("sent")
    };
    let before = sent(&cluster);
    cluster.tandem_ok("alpha", &["volume", "resync", "r0", "--checksum"]);
    cluster.wait_synced("alpha", 120);
    let wire = sent(&cluster) - before;
    eprintln!("checksum resync of {size} identical bytes: {wire} bytes on the wire");
    assert!(
        wire * 100 < size,
        "{wire} bytes sent for {size} identical bytes: more than 1%"
    );
    assert!(cluster.log("alpha").contains("checksum resync"));
    assert!(cluster.data_areas_identical());
}
