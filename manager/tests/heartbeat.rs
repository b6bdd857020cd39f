//! Heartbeats between two real daemons.
//!
//! - Two namespaces joined by two veth links, both configured as heartbeat links: one link
//!   cut shows in status as that link down while the peer stays reachable; both cut, the peer
//!   is unreachable and the log says it was lost; both back, it is reachable again.
//! - Datagrams that are not beats of this cluster (garbage, beats signed with another key)
//!   are dropped with one log line each kind; the daemons keep running and the link stays up.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Cluster, NetnsPair, NodeSpec, loopback_pair, wait_for};

fn nodes(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["nodes"].as_array().expect("nodes").clone()
}

fn status(cluster: &Cluster, node: &str) -> serde_json::Value {
    let output = cluster.tandem_ok(node, &["status", "--json"]);
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

/// `beta` as alpha sees it: (reachable, each link's health).
fn beta_seen_from_alpha(cluster: &Cluster) -> (bool, Vec<String>) {
    let report = status(cluster, "alpha");
    let beta = nodes(&report)
        .into_iter()
        .find(|n| n["name"] == "beta")
        .expect("beta");
    let links = beta["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l["health"].as_str().unwrap_or_default().to_string())
        .collect();
    (beta["reachable"] == true, links)
}

fn wait_seen(cluster: &Cluster, want: (bool, &[&str]), what: &str) {
    wait_for(Duration::from_secs(15), what, || {
        let (reachable, links) = beta_seen_from_alpha(cluster);
        reachable == want.0 && links == want.1
    });
}

#[test]
fn a_cut_link_shows_down_and_the_peer_is_lost_only_when_every_link_is() {
    let mut netns = NetnsPair::new("hb");
    let second = netns.add_link();
    let nodes = (0..2)
        .map(|index| NodeSpec {
            name: ["alpha", "beta"][index].into(),
            address: netns.addresses[index].clone(),
            netns: Some(netns.names[index].clone()),
        })
        .collect();
    let mut cluster = Cluster::new("heartbeat", nodes, 128 << 20, "");
    for (index, node) in ["alpha", "beta"].iter().enumerate() {
        let line = format!(
            "heartbeat = [\"{}\", \"{}\"]",
            netns.addresses[index], second[index]
        );
        cluster.set_node_option(node, &line);
    }
    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["create-md", "r0"]);
        cluster.start_daemon(node);
    }
    wait_seen(&cluster, (true, &["up", "up"]), "both links up");

    netns.set_link(1, false);
    wait_seen(
        &cluster,
        (true, &["up", "down"]),
        "link 1 down, beta reachable",
    );
    let log = cluster.log("alpha");
    assert!(
        log.contains("heartbeat link 1") && log.contains("up -> suspect"),
        "{log}"
    );
    assert!(!log.contains("lost"), "beta was never lost:\n{log}");

    netns.set_link(0, false);
    wait_seen(
        &cluster,
        (false, &["down", "down"]),
        "every link down, beta lost",
    );
    assert!(
        cluster
            .log("alpha")
            .contains("peer beta lost: no heartbeat on any link")
    );

    netns.set_link(0, true);
    netns.set_link(1, true);
    wait_seen(&cluster, (true, &["up", "up"]), "both links back");
    let text = cluster.tandem_ok("alpha", &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("heartbeat links:"), "{text}");
}

#[test]
fn foreign_datagrams_are_dropped_and_the_daemon_keeps_going() {
    let mut cluster = Cluster::new("heartbeat-input", loopback_pair(71), 128 << 20, "");
    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["create-md", "r0"]);
        cluster.start_daemon(node);
    }
    wait_seen(&cluster, (true, &["up"]), "the link up");
    let socket = UdpSocket::bind("127.0.71.9:0").expect("socket");
    let mut garbage = vec![0u8; 72];
    garbage[..4].copy_from_slice(b"TNHB");
    garbage[4] = 2;
    for round in 0..200u32 {
        let datagram: &[u8] = match round % 3 {
            0 => &garbage,
            1 => b"hello",
            _ => &[0xff; 1500],
        };
        socket.send_to(datagram, "127.0.71.1:7788").expect("send");
    }
    wait_for(Duration::from_secs(10), "the daemon to drop them", || {
        cluster
            .log("alpha")
            .contains("not signed with this cluster's key")
    });
    // Still answering, and the link still up.
    wait_seen(&cluster, (true, &["up"]), "the link still up");
    let log = cluster.log("alpha");
    let dropped = log
        .lines()
        .filter(|l| l.contains("dropped a datagram"))
        .count();
    assert!(
        (1..=3).contains(&dropped),
        "one line per kind of refusal, {dropped} lines:\n{log}"
    );
}
