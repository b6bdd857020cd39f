//! Target `config`: the cluster configuration (`manager::config::Config::parse`): arbitrary
//! bytes as TOML text (invalid UTF-8 replaced, as no file read would pass it on), or, for an
//! input starting with a zero byte (never valid TOML), edits of a complete valid configuration:
//! three bytes per edit pick a line and delete it, duplicate it, or give its key a value from a
//! list of boundary values, so the fuzzer reaches the validation behind the TOML syntax.
//!
//! Parsing and validation never panic; a refusal is one non-empty line (`tandem config check`
//! promises one line per problem); an accepted configuration answers every accessor the daemon
//! calls on it (nodes, volumes, heartbeat links, arbitration, layout, ublk options, backing
//! stores) without panicking, and with layout parameters that pass the engine's own checks.

use manager::config::Config;

/// The target body.
pub fn config(data: &[u8]) {
    let text = match data.split_first() {
        Some((0, edits)) => edited_config(edits),
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    let config = match Config::parse(&text) {
        Ok(config) => config,
        Err(message) => {
            assert!(!message.is_empty(), "an empty refusal");
            assert!(
                !message.contains('\n'),
                "a refusal of several lines: {message:?}"
            );
            return;
        }
    };
    assert_eq!(config.nodes.len(), 2);
    let links = config.heartbeat_links();
    assert!(!links.is_empty());
    assert!(links.iter().all(|link| link.len() == 2));
    let _ = config.witness();
    let _ = config.reference_ips();
    let (lease_ms, fence_ms, _) = config.arbitration_timing();
    assert!(fence_ms < lease_ms);
    for node in &config.nodes {
        assert_eq!(
            config.node(&node.name).map(|found| &found.name),
            Ok(&node.name)
        );
        let _ = (node.ip(), node.listen_ip());
    }
    for volume in &config.volumes {
        let found = config.volume(&volume.name).expect("a listed volume");
        assert_eq!(found.name, volume.name);
        let params = volume.layout_params();
        assert!(
            params.validate().is_ok(),
            "accepted layout {params:?} fails its check"
        );
        let _ = volume.ublk_options();
        for node in &config.nodes {
            assert!(volume.backing_for(&node.name).is_ok());
        }
    }
}

/// Values an edit gives a key: boundaries of the checks, wrong types, names that clash.
const VALUES: [&str; 40] = [
    "0",
    "1",
    "-1",
    "10",
    "100",
    "4096",
    "60000",
    "65535",
    "65536",
    "4294967296",
    "9223372036854775807",
    "true",
    "\"\"",
    "\" \"",
    "\"a\\nb\"",
    "\"alpha\"",
    "\"beta\"",
    "\"r0\"",
    "\"r0/x\"",
    "\"10.0.0.1\"",
    "\"::1\"",
    "\"0.0.0.0\"",
    "\"10.0.0.3:7790\"",
    "\"10.0.0.100/33\"",
    "\"1KiB\"",
    "\"3KiB\"",
    "\"1MiB\"",
    "\"2MiB\"",
    "\"1GiB\"",
    "\"2GiB\"",
    "\"16383TiB\"",
    "\"99999999999TiB\"",
    "[]",
    "[\"alpha\"]",
    "[\"alpha\", \"alpha\"]",
    "[\"10.0.0.1\", \"10.0.0.9\", \"10.0.0.8\"]",
    "[\"data\", \"http\"]",
    "\"B\"",
    "\"failover\"",
    "\"discard-least-changes\"",
];

/// A complete configuration with every section, as lines.
fn full_config() -> String {
    format!("{BASE}{GROUPS}{ARBITRATION}")
}

/// The full configuration with `edits` applied, three bytes each: a line, an action, a value.
fn edited_config(edits: &[u8]) -> String {
    let full = full_config();
    let mut lines: Vec<String> = full.lines().map(str::to_string).collect();
    for edit in edits.chunks(3) {
        let line = usize::from(edit[0]) % lines.len();
        let action = edit.get(1).copied().unwrap_or(0);
        let value = VALUES[usize::from(edit.get(2).copied().unwrap_or(0)) % VALUES.len()];
        match action % 4 {
            0 => {
                lines.remove(line);
                if lines.is_empty() {
                    break;
                }
            }
            1 => {
                let copy = lines[line].clone();
                lines.insert(line, copy);
            }
            _ => {
                if let Some((key, _)) = lines[line].split_once('=') {
                    lines[line] = format!("{key}= {value}");
                }
            }
        }
    }
    lines.join("\n")
}

const BASE: &str = r#"[cluster]
name = "demo"
key_file = "/etc/tandem/cluster.key"

[[node]]
name = "alpha"
address = "10.0.0.1"
bind_address = "0.0.0.0"
heartbeat = ["10.0.0.1", "192.168.50.1"]
state_dir = "/var/lib/tandem"

[[node]]
name = "beta"
address = "10.0.0.2"
heartbeat = ["10.0.0.2", "192.168.50.2"]

[heartbeat]
port = 7788
interval_ms = 1000
warn_after = 2
dead_after = 3

[[volume]]
name = "r0"
port = 7789
protocol = "C"
compression = "lz4"
frontend = "ublk"
ublk_queues = 4
ublk_depth = 128
logical_block_size = 512
nbd_port = 10809
after_split_brain = "disconnect"
bitmap_granule = "4KiB"
journal_size = "64MiB"
journal_memory = "64MiB"
activity_log_extents = 1015
activity_log_extent_size = "4MiB"
resync_rate = "200MiB"
[volume.backing]
alpha = "/dev/vdb"
beta = "/dev/vdb"
"#;
const GROUPS: &str = r#"
[[group]]
name = "web"
nodes = ["alpha", "beta"]
failback = false
auto_start = true

[[group.resource]]
name = "data"
kind = "volume"
volume = "r0"

[[group.resource]]
name = "fs"
kind = "filesystem"
volume = "r0"
mount = "/srv/data"
after = ["data"]

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.0.0.100/24"
interface = "eth0"

[[group.resource]]
name = "http"
kind = "process"
command = ["python3", "-m", "http.server", "80"]
after = ["fs", "vip"]
[group.resource.monitor]
interval_ms = 5000
action = "restart"
restarts = 3
window_s = 60
"#;
const ARBITRATION: &str = r#"
[arbitration]
witness = "10.0.0.3:7790"
reference_ips = ["10.0.0.254"]
lease_ms = 3000
fence_ms = 1000
startup_wait_ms = 15000
takeover_without_arbiter = false
"#;

/// Seeds: the README's configuration pieces, small variants, and edits of the full one.
pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        BASE.as_bytes().to_vec(),
        format!("{BASE}{GROUPS}{ARBITRATION}").into_bytes(),
        BASE.replace("protocol = \"C\"", "protocol = \"D\"")
            .into_bytes(),
        BASE.replace("journal_size = \"64MiB\"", "journal_size = \"3KiB\"")
            .into_bytes(),
        format!("{BASE}{GROUPS}")
            .replace("after = [\"data\"]", "after = [\"http\"]")
            .into_bytes(),
        b"[cluster]\nname = \"x\"\nkey_file = \"k\"\n".to_vec(),
        vec![0],
        vec![0, 28, 2, 26, 60, 2, 15],
        vec![0, 70, 0, 0, 95, 2, 1],
    ]
}
