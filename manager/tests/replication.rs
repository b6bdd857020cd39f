//! Two daemons on loopback addresses: resync after a disconnect moves only what changed, and a
//! peer with the wrong cluster key is refused without changing anything.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Cluster, loopback_pair, primary_and_synced, require_tools, run_ok, wait_for};

const GIB: u64 = 1 << 30;

#[test]
fn resync_after_a_disconnect_moves_only_the_changed_blocks() {
    require_tools(&[("qemu-io", "qemu-utils")]);
    let mut cluster = Cluster::new(
        "resync",
        loopback_pair(61),
        GIB + (80 << 20),
        "compression = \"none\"",
    );
    primary_and_synced(&mut cluster);
    let size = cluster.volume_status("alpha")["size_bytes"]
        .as_u64()
        .expect("size");

    cluster.tandem_ok("alpha", &["volume", "disconnect", "r0"]);
    wait_for(Duration::from_secs(10), "beta to notice", || {
        cluster.volume_status("beta")["connection"] != "connected"
    });
    // 1% of the volume in 4 KiB writes spread over all of it.
    let blocks = size / 100 / 4096;
    let stride = size / blocks / 4096 * 4096;
    let mut qemu_io = Command::new("qemu-io");
    qemu_io.args(["-f", "raw", "nbd://127.0.61.1:10809/r0"]);
    for index in 0..blocks {
        qemu_io.arg("-c").arg(format!(
            "write -P {} {} 4k",
            index % 250 + 1,
            index * stride
        ));
    }
    run_ok(&mut qemu_io);
    let dirty = cluster.volume_status("alpha")["out_of_sync_bytes"]
        .as_u64()
        .expect("oos");
    assert_eq!(
        dirty,
        blocks * 4096,
        "every written block is marked, nothing else"
    );

    let sent_before = cluster.volume_status("alpha")["wire_bytes_sent"]
        .as_u64()
        .expect("counter");
    cluster.tandem_ok("alpha", &["volume", "connect", "r0"]);
    cluster.wait_synced("alpha", 60);
    let sent = cluster.volume_status("alpha")["wire_bytes_sent"]
        .as_u64()
        .expect("counter")
        - sent_before;
    println!(
        "resync of {blocks} blocks ({} bytes) moved {sent} bytes on the wire",
        blocks * 4096
    );
    assert!(
        sent >= blocks * 4096,
        "the changed blocks travelled ({sent} bytes)"
    );
    assert!(
        sent <= size / 50,
        "at most 2% of the volume on the wire, moved {sent} of {size}"
    );
    for node in ["alpha", "beta"] {
        let status = cluster.volume_status(node);
        assert_eq!(status["disk"], "up_to_date", "{node}: {status}");
        assert_eq!(status["out_of_sync_bytes"], 0, "{node}: {status}");
    }
    assert!(
        cluster.data_areas_identical(),
        "both backing stores hold the same data"
    );
}

#[test]
fn a_peer_with_the_wrong_cluster_key_is_refused_and_nothing_changes() {
    require_tools(&[("qemu-io", "qemu-utils")]);
    let mut cluster = Cluster::new(
        "wrongkey",
        loopback_pair(62),
        64 << 20,
        "journal_size = \"4MiB\"",
    );
    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["create-md", "r0"]);
    }
    cluster.give_other_key("beta");
    cluster.start_daemon("alpha");
    cluster.start_daemon("beta");
    wait_for(
        Duration::from_secs(20),
        "both sides to log the refusal",
        || {
            cluster.log("alpha").contains("cluster key mismatch")
                && cluster.log("beta").contains("cluster key mismatch")
        },
    );
    let refusal = |log: String| {
        log.lines()
            .filter(|l| l.contains("cluster key mismatch"))
            .count()
    };
    assert!(refusal(cluster.log("beta")) >= 1);
    println!(
        "alpha: {}",
        cluster
            .log("alpha")
            .lines()
            .find(|l| l.contains("mismatch"))
            .unwrap_or_default()
    );
    println!(
        "beta: {}",
        cluster
            .log("beta")
            .lines()
            .find(|l| l.contains("mismatch"))
            .unwrap_or_default()
    );

    let beta_before = std::fs::read(cluster.backing("beta")).expect("backing");
    cluster.tandem_ok("alpha", &["volume", "primary", "r0", "--force"]);
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "nbd://127.0.62.1:10809/r0",
        "-c",
        "write -P 0x5a 0 1M",
        "-c",
        "flush",
    ]));
    for node in ["alpha", "beta"] {
        let status = cluster.volume_status(node);
        assert_ne!(status["connection"], "connected", "{node}: {status}");
    }
    assert_eq!(cluster.volume_status("beta")["disk"], "inconsistent");
    assert_eq!(cluster.volume_status("beta")["role"], "secondary");
    let beta_after = std::fs::read(cluster.backing("beta")).expect("backing");
    assert!(
        beta_before == beta_after,
        "nothing reached beta's backing store"
    );
}
