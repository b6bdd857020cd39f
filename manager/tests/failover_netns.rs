//! The acceptance test of the two-node volume: two daemons in separate network namespaces
//! joined by veth; ext4 made and mounted through NBD (nbdfuse + loop) on the primary; 200 MiB
//! of files written and fsynced with recorded checksums; the primary's daemon killed with
//! SIGKILL; the other node promoted; every file verified there.

mod common;

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Cluster, NbdMount, NetnsPair, NodeSpec, describe, primary_and_synced, require_tools, run_ok,
};

const FILES: usize = 20;
const FILE_BYTES: usize = 10 << 20;

fn checksum(path: &std::path::Path) -> String {
    let output = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn files_on_ext4_survive_a_sigkill_of_the_primary_and_a_failover() {
    require_tools(&[
        ("ip", "iproute2"),
        ("nbdfuse", "libnbd-bin"),
        ("sha256sum", "coreutils"),
    ]);
    let netns = NetnsPair::new("fo");
    let nodes = vec![
        NodeSpec {
            name: "alpha".into(),
            address: netns.addresses[0].clone(),
            netns: Some(netns.names[0].clone()),
        },
        NodeSpec {
            name: "beta".into(),
            address: netns.addresses[1].clone(),
            netns: Some(netns.names[1].clone()),
        },
    ];
    let mut cluster = Cluster::new("failover", nodes, 640 << 20, "journal_size = \"32MiB\"");
    primary_and_synced(&mut cluster);

    // ext4 on the primary's NBD export, seen through FUSE and a loop device.
    let alpha_uri = format!("nbd://{}:10809/r0", netns.addresses[0]);
    let mut alpha_mount =
        NbdMount::attach(&cluster.dir, "alpha", &alpha_uri, Some(&netns.names[0]));
    alpha_mount.mkfs();
    alpha_mount.mount();
    let started = Instant::now();
    let mut expected = Vec::new();
    let mut seed = 0x1234_5678u64;
    for index in 0..FILES {
        let path = alpha_mount.mount_dir.join(format!("file-{index:02}.bin"));
        let mut data = vec![0u8; FILE_BYTES];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes());
        }
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(&data).expect("write");
        file.sync_all().expect("fsync");
        expected.push((format!("file-{index:02}.bin"), checksum(&path)));
    }
    run_ok(Command::new("sync").arg("-f").arg(&alpha_mount.mount_dir));
    println!(
        "wrote and fsynced {} MiB in {:.1} s",
        (FILES * FILE_BYTES) >> 20,
        started.elapsed().as_secs_f64()
    );
    let status = cluster.volume_status("alpha");
    assert_eq!(status["replication"], "established", "{status}");
    assert_eq!(status["peer_disk"], "up_to_date", "{status}");

    // The primary dies with everything mounted.
    let killed = Instant::now();
    cluster.kill_daemon("alpha");
    alpha_mount.detach();
    common::wait_for(
        Duration::from_secs(15),
        "beta to notice the primary is gone",
        || cluster.volume_status("beta")["connection"] != "connected",
    );
    let promoted = cluster.tandem("beta", &["volume", "primary", "r0"]);
    assert!(
        promoted.status.success(),
        "{}\n{}",
        describe(&promoted),
        cluster.logs()
    );
    println!(
        "beta promoted {:.2} s after the SIGKILL",
        killed.elapsed().as_secs_f64()
    );

    let beta_uri = format!("nbd://{}:10809/r0", netns.addresses[1]);
    let beta_mount = NbdMount::attach(&cluster.dir, "beta", &beta_uri, Some(&netns.names[1]));
    beta_mount.mount();
    for (name, sum) in &expected {
        let path = beta_mount.mount_dir.join(name);
        assert_eq!(
            &checksum(&path),
            sum,
            "{name} differs on beta after the failover"
        );
    }
    println!("all {FILES} files verified on beta");
    let status = cluster.volume_status("beta");
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["disk"], "up_to_date", "{status}");
}
