//! A slow peer slows writes down instead of growing memory: the link between the two network
//! namespaces is limited to 100 Mbit/s with a token bucket (`tc tbf`); under protocol C the
//! primary's writes complete at the link's pace, its memory stays bounded, and the replicas end
//! identical. (This kernel has no netem, so delay and loss cannot be emulated here.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, NetnsPair, NodeSpec, primary_and_synced, require_tools, wait_for};

const LINK_BYTES_PER_SECOND: f64 = 100e6 / 8.0;
const WRITE_BYTES: u64 = 256 << 20;

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0);
    kib * 1024
}

#[test]
fn a_slow_link_slows_writes_down_and_memory_stays_bounded() {
    require_tools(&[
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("qemu-io", "qemu-utils"),
        ("nsenter", "util-linux"),
    ]);
    let netns = NetnsPair::new("sl");
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
    let volume = "compression = \"none\"\njournal_size = \"16MiB\"";
    let mut cluster = Cluster::new("slowlink", nodes, 512 << 20, volume);
    primary_and_synced(&mut cluster);

    netns.limit_rate("100mbit");
    let pid = cluster.daemon_pid("alpha");
    let resident_before = resident_bytes(pid);
    let uri = format!("nbd://{}:10809/r0", netns.addresses[0]);
    let mut writer = Command::new("nsenter");
    writer
        .arg(format!("--net=/var/run/netns/{}", netns.names[0]))
        .args(["qemu-io", "-f", "raw", &uri, "-c"])
        .arg(format!("write -P 0x3c 0 {WRITE_BYTES}"))
        .args(["-c", "flush"]);
    let started = Instant::now();
    let mut child = writer
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("qemu-io");
    let mut resident_max = resident_before;
    wait_for(Duration::from_secs(120), "the writes to finish", || {
        resident_max = resident_max.max(resident_bytes(pid));
        child.try_wait().expect("poll").is_some()
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert!(child.wait().expect("reap").success(), "qemu-io failed");
    let link_seconds = WRITE_BYTES as f64 / LINK_BYTES_PER_SECOND;
    println!(
        "wrote {} MiB in {elapsed:.1} s over a 100 Mbit/s link ({link_seconds:.1} s at line rate); \
         primary resident memory {} MiB before, {} MiB at most",
        WRITE_BYTES >> 20,
        resident_before >> 20,
        resident_max >> 20
    );
    assert!(
        elapsed >= 0.8 * link_seconds,
        "writes completed faster than the link can carry them: {elapsed:.1} s for {link_seconds:.1} s of link time"
    );
    assert!(
        resident_max < resident_before + (WRITE_BYTES / 2),
        "the primary buffered the slow peer's backlog: {} MiB resident",
        resident_max >> 20
    );
    let status = cluster.volume_status("alpha");
    assert_eq!(status["replication"], "established", "{status}");
    assert_eq!(status["out_of_sync_bytes"], 0, "{status}");
    assert!(
        cluster.data_areas_identical(),
        "both backing stores hold the same data"
    );
}
