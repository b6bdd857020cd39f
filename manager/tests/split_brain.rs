//! Split brain between two real daemons: both sides detect it (S5) and overwrite nothing;
//! `split-brain show` lists what each side changed; `resolve` refuses bad requests with one
//! line and changes nothing, saves the discarded side's blocks byte-exact before anything is
//! overwritten, and resyncs only the diverged ranges; an automatic policy does the same.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::nbd::NbdClient;
use common::{Cluster, describe, loopback_pair, primary_and_synced, wait_for};

const BLOCK: u64 = 4096;

fn block(byte: u8) -> Vec<u8> {
    vec![byte; BLOCK as usize]
}

/// Writes `byte` to blocks `blocks` through the node's NBD export.
fn write_blocks(cluster: &Cluster, node: &str, blocks: std::ops::Range<u64>, byte: u8) {
    let address = format!("{}:10809", cluster.node(node).address);
    let mut client = NbdClient::connect(&address, "r0").expect("NBD connect");
    for b in blocks {
        client.write(b * BLOCK, &block(byte)).expect("write");
    }
}

fn read_block(path: &Path, b: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; BLOCK as usize];
    std::fs::File::open(path)
        .expect("open")
        .read_exact_at(&mut bytes, b * BLOCK)
        .expect("read");
    bytes
}

/// Two nodes in sync on blocks 0..16 = 'A'; then apart: alpha (primary) writes blocks 0..4 =
/// 'B', goes secondary; beta is promoted (later) and writes `beta_blocks` = 'C'. Then they meet.
fn diverge(
    test: &str,
    subnet: u8,
    volume_extra: &str,
    beta_blocks: std::ops::Range<u64>,
    beta_stays_primary: bool,
) -> Cluster {
    let mut cluster = Cluster::new(test, loopback_pair(subnet), 128 << 20, volume_extra);
    primary_and_synced(&mut cluster);
    write_blocks(&cluster, "alpha", 0..16, b'A');
    cluster.wait_synced("alpha", 60);

    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["volume", "disconnect", "r0"]);
    }
    write_blocks(&cluster, "alpha", 0..4, b'B');
    cluster.tandem_ok("alpha", &["volume", "secondary", "r0"]);
    cluster.tandem_ok("beta", &["volume", "primary", "r0", "--force"]);
    if !beta_blocks.is_empty() {
        write_blocks(&cluster, "beta", beta_blocks, b'C');
    }
    if !beta_stays_primary {
        cluster.tandem_ok("beta", &["volume", "secondary", "r0"]);
    }
    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["volume", "connect", "r0"]);
    }
    cluster
}

fn ranges(side: &serde_json::Value) -> Vec<[u64; 2]> {
    serde_json::from_value(side["ranges"].clone()).expect("ranges")
}

#[test]
fn a_split_brain_is_shown_and_resolved_keeping_the_discarded_blocks() {
    let cluster = diverge("split-brain", 64, "", 8..10, true);
    wait_for(
        Duration::from_secs(30),
        "both nodes to detect the split brain",
        || {
            ["alpha", "beta"].iter().all(|node| {
                let status = cluster.volume_status(node);
                status["split_brain"] == true && status["connection"] == "stand_alone"
            })
        },
    );
    // S5: nothing was overwritten on either side.
    assert_eq!(read_block(&cluster.backing("alpha"), 0), block(b'B'));
    assert_eq!(read_block(&cluster.backing("alpha"), 8), block(b'A'));
    assert_eq!(read_block(&cluster.backing("beta"), 0), block(b'A'));
    assert_eq!(read_block(&cluster.backing("beta"), 8), block(b'C'));
    for node in ["alpha", "beta"] {
        assert!(
            cluster
                .log(node)
                .contains("split brain detected by rule=bitmap-both"),
            "{node} logs the split brain:\n{}",
            cluster.logs()
        );
    }

    // show: both sides' ranges, roles, from either node.
    let show = cluster.tandem_ok("alpha", &["split-brain", "show", "r0", "--json"]);
    let detail: serde_json::Value = serde_json::from_slice(&show.stdout).expect("JSON");
    assert_eq!(detail["rule"], "bitmap-both", "{detail}");
    assert_eq!(
        ranges(&detail["this_node"]),
        vec![[0, 4 * BLOCK]],
        "{detail}"
    );
    assert_eq!(
        ranges(&detail["peer"]),
        vec![[8 * BLOCK, 2 * BLOCK]],
        "{detail}"
    );
    assert_eq!(detail["this_node"]["role"], "secondary");
    assert_eq!(detail["peer"]["role"], "primary");
    assert_eq!(detail["peer"]["known"], true);
    let text = cluster.tandem_ok("beta", &["split-brain", "show", "r0"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("bytes 32768..40960"), "{text}");
    assert!(text.contains("this node beta: primary"), "{text}");

    // Refusals: one line each, and nothing changes.
    let save = cluster.dir.join("discarded");
    let refusals: [(&str, Vec<&str>, &str); 3] = [
        ("alpha", vec!["--keep", "gamma"], "unknown node \"gamma\""),
        (
            "alpha",
            vec![
                "--keep",
                "beta",
                "--save-discarded",
                "/proc/tandem-discarded",
            ],
            "/proc",
        ),
        ("beta", vec!["--keep", "alpha"], "primary"),
    ];
    for (node, extra, expected) in refusals {
        let mut args = vec!["split-brain", "resolve", "r0"];
        args.extend(extra);
        let output = cluster.tandem(node, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{node} {args:?}: {}",
            describe(&output)
        );
        assert!(stderr.contains(expected), "{node} {args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        let status = cluster.volume_status(node);
        assert_eq!(status["split_brain"], true, "{status}");
        assert_eq!(status["connection"], "stand_alone", "{status}");
    }
    assert_eq!(read_block(&cluster.backing("alpha"), 0), block(b'B'));

    // Keep beta: alpha saves its changed blocks, then resyncs the diverged ranges.
    cluster.tandem_ok("beta", &["split-brain", "resolve", "r0", "--keep", "beta"]);
    let save_arg = save.display().to_string();
    let resolved = cluster.tandem_ok(
        "alpha",
        &[
            "split-brain",
            "resolve",
            "r0",
            "--keep",
            "beta",
            "--save-discarded",
            &save_arg,
        ],
    );
    let message = String::from_utf8_lossy(&resolved.stdout);
    assert!(message.contains("16384 bytes in 1 ranges"), "{message}");
    cluster.wait_synced("beta", 60);
    assert!(cluster.data_areas_identical());
    assert_eq!(read_block(&cluster.backing("alpha"), 0), block(b'A'));
    assert_eq!(read_block(&cluster.backing("alpha"), 8), block(b'C'));
    let beta_log = cluster.log("beta");
    assert!(
        beta_log.contains("by rule=discard-peer") && beta_log.contains("bitmap resync"),
        "the resync names the rule:\n{beta_log}"
    );
    assert_eq!(cluster.volume_status("alpha")["split_brain"], false);

    // The saved folder holds alpha's blocks, byte-exact, where they were.
    let folders: Vec<_> = std::fs::read_dir(&save).expect("save dir").collect();
    assert_eq!(folders.len(), 1, "one folder");
    let folder = folders[0].as_ref().expect("entry").path();
    assert_eq!(
        std::fs::read_to_string(folder.join("ranges")).expect("ranges"),
        "0 16384\n"
    );
    for b in 0..4 {
        assert_eq!(read_block(&folder.join("image"), b), block(b'B'));
    }
    assert!(folder.join("RESTORE").exists());

    // Resolving again: not in split brain.
    let again = cluster.tandem("alpha", &["split-brain", "resolve", "r0", "--keep", "beta"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not in split brain"));
}

#[test]
fn the_least_changes_policy_saves_the_loser_and_resyncs_it() {
    let cluster = diverge(
        "split-brain-policy",
        65,
        "after_split_brain = \"discard-least-changes\"",
        8..10,
        false,
    );
    // Beta changed 2 blocks, alpha 4: beta loses, saves its blocks, and resyncs from alpha.
    let beta_log = wait_resolved(&cluster);
    assert_eq!(read_block(&cluster.backing("beta"), 0), block(b'B'));
    assert_eq!(read_block(&cluster.backing("beta"), 8), block(b'A'));
    assert!(
        beta_log.contains("by rule=least-changes-self"),
        "beta logs the rule that chose it:\n{beta_log}"
    );
    let folder = discard_folder(&cluster, "beta");
    assert_eq!(
        std::fs::read_to_string(folder.join("ranges")).expect("ranges"),
        format!("{} {}\n", 8 * BLOCK, 2 * BLOCK)
    );
    assert_eq!(read_block(&folder.join("image"), 8), block(b'C'));
}

/// The one folder an automatic resolve saved `node`'s blocks in (under `discard_dir`).
fn discard_folder(cluster: &Cluster, node: &str) -> std::path::PathBuf {
    let saved = cluster.dir.join(node).join("discarded");
    let mut folders = std::fs::read_dir(&saved).expect("the discard folder");
    let folder = folders.next().expect("one save").expect("entry").path();
    assert!(folders.next().is_none(), "one save only");
    folder
}

/// Waits for the pair to be in sync again after an automatic resolve; returns beta's log.
fn wait_resolved(cluster: &Cluster) -> String {
    cluster.wait_synced("alpha", 60);
    assert!(cluster.data_areas_identical());
    cluster.log("beta")
}

#[test]
fn the_younger_primary_policy_discards_the_later_primary_even_with_more_changes() {
    // Beta became primary after alpha's changes began, and changed 6 blocks to alpha's 4:
    // least-changes would discard alpha; younger-primary discards beta.
    let cluster = diverge(
        "split-brain-younger",
        68,
        "after_split_brain = \"discard-younger-primary\"",
        8..14,
        false,
    );
    let beta_log = wait_resolved(&cluster);
    assert!(
        beta_log.contains("by rule=younger-primary-self"),
        "beta logs the rule that chose it:\n{beta_log}"
    );
    assert_eq!(read_block(&cluster.backing("beta"), 0), block(b'B'));
    assert_eq!(read_block(&cluster.backing("beta"), 8), block(b'A'));
    let folder = discard_folder(&cluster, "beta");
    assert_eq!(
        std::fs::read_to_string(folder.join("ranges")).expect("ranges"),
        format!("{} {}\n", 8 * BLOCK, 6 * BLOCK)
    );
    assert_eq!(read_block(&folder.join("image"), 13), block(b'C'));
}

#[test]
fn the_zero_changes_policy_discards_the_side_that_wrote_nothing() {
    // Beta was promoted while apart but wrote nothing: it loses, and alpha's 4 blocks win.
    let cluster = diverge(
        "split-brain-zero",
        69,
        "after_split_brain = \"discard-zero-changes\"",
        0..0,
        false,
    );
    let beta_log = wait_resolved(&cluster);
    assert_eq!(read_block(&cluster.backing("beta"), 0), block(b'B'));
    assert_eq!(read_block(&cluster.backing("beta"), 8), block(b'A'));
    assert!(
        beta_log.contains("split brain detected") && beta_log.contains("by rule=zero-changes-self"),
        "beta detects the split brain and logs the rule that chose it:\n{beta_log}"
    );
    // The save still happens (the rule is checked against the bitmaps, not trusted): an empty
    // range list.
    let folder = discard_folder(&cluster, "beta");
    assert_eq!(
        std::fs::read_to_string(folder.join("ranges")).expect("ranges"),
        ""
    );
}
