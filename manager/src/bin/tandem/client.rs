//! Commands that talk to the running daemon: `status`, `volume ...`.

use std::time::{Duration, Instant};

use manager::admin::{Request, Response};
use manager::config::Config;
use manager::runtime::admin::{call, socket_path};
use manager::status::{NodeReport, VolumeReport};

/// How long a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a volume command may take (a demotion drains in-flight I/O first).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `request` to this node's daemon; a refusal becomes an error.
pub(crate) fn send(config: &Config, node: &str, request: &Request) -> anyhow::Result<Response> {
    let timeout = if matches!(request, Request::Status) {
        STATUS_TIMEOUT
    } else {
        COMMAND_TIMEOUT
    };
    send_within(config, node, request, timeout)
}

fn send_within(
    config: &Config,
    node: &str,
    request: &Request,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let section = config.node(node).map_err(anyhow::Error::msg)?;
    let response = call(&socket_path(section), request, timeout).map_err(anyhow::Error::msg)?;
    if !response.ok {
        anyhow::bail!(
            "{}",
            response.error.unwrap_or_else(|| "refused".to_string())
        );
    }
    Ok(response)
}

pub(crate) fn status(config: &Config, node: &str) -> anyhow::Result<NodeReport> {
    send(config, node, &Request::Status)?
        .status
        .ok_or_else(|| anyhow::anyhow!("the daemon sent no status"))
}

pub(crate) fn print_status(
    config: &Config,
    node: &str,
    json: bool,
    watch: bool,
) -> anyhow::Result<()> {
    loop {
        let report = status(config, node)?;
        if watch {
            // Clear the screen and go home, like watch(1).
            print!("\x1b[2J\x1b[H");
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// What `volume wait` waits for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Condition {
    /// Connected to the peer.
    Connected,
    /// Connected, established, and both disks up to date.
    Synced,
    /// This node is primary.
    Primary,
}

pub(crate) fn wait(
    config: &Config,
    node: &str,
    volume: &str,
    condition: Condition,
    timeout: Option<u64>,
) -> anyhow::Result<()> {
    config.volume(volume).map_err(anyhow::Error::msg)?;
    let deadline = timeout.map(|seconds| Instant::now() + Duration::from_secs(seconds));
    loop {
        let remaining = deadline.map_or(STATUS_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let report = send_within(
            config,
            node,
            &Request::Status,
            remaining.min(STATUS_TIMEOUT),
        )?
        .status
        .ok_or_else(|| anyhow::anyhow!("the daemon sent no status"))?;
        let state = report
            .volumes
            .into_iter()
            .find(|v| v.name == volume)
            .ok_or_else(|| anyhow::anyhow!("the daemon does not run volume {volume}"))?;
        if holds(&state, condition) {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let wanted = format!("{condition:?}").to_lowercase();
            anyhow::bail!(
                "timed out waiting for {volume} to be {wanted}: role {}, disk {}, connection {}, \
                 replication {}, peer {}",
                state.role,
                state.disk,
                state.connection,
                state.replication,
                state.peer_disk
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn holds(state: &VolumeReport, condition: Condition) -> bool {
    match condition {
        Condition::Connected => state.connection == "connected",
        Condition::Synced => {
            state.connection == "connected"
                && state.replication == "established"
                && state.disk == "up_to_date"
                && state.peer_disk == "up_to_date"
                && state.unacked_bytes == 0
        }
        Condition::Primary => state.role == "primary",
    }
}

/// The volume's status on this node.
fn volume_report(config: &Config, node: &str, volume: &str) -> anyhow::Result<VolumeReport> {
    status(config, node)?
        .volumes
        .into_iter()
        .find(|v| v.name == volume)
        .ok_or_else(|| anyhow::anyhow!("the daemon does not run volume {volume}"))
}

/// Waits for the verify just started to end and prints what it found. A verify that was
/// aborted is an error.
pub(crate) fn wait_verify(
    config: &Config,
    node: &str,
    volume: &str,
    json: bool,
) -> anyhow::Result<()> {
    let verify = loop {
        let report = volume_report(config, node, volume)?;
        match report.verify {
            Some(verify) if verify.state != "running" => break verify,
            Some(_) => std::thread::sleep(Duration::from_millis(200)),
            None => anyhow::bail!("{volume}: the daemon reports no verify"),
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&verify)?);
    } else {
        println!("{volume}: {}", verify.summary());
        for [offset, length] in &verify.mismatched_ranges {
            println!(
                "  differs: bytes {offset}..{} ({length} bytes)",
                offset + length
            );
        }
        if !verify.ranges_complete {
            println!("  (only the first ranges are listed)");
        }
    }
    if verify.state == "aborted" {
        anyhow::bail!(
            "the verify was aborted: {}",
            verify.reason.as_deref().unwrap_or("unknown reason")
        );
    }
    Ok(())
}

/// `split-brain show`.
pub(crate) fn show_split_brain(
    config: &Config,
    node: &str,
    volume: &str,
    json: bool,
) -> anyhow::Result<()> {
    let report = volume_report(config, node, volume)?;
    let Some(detail) = report.split_brain_detail else {
        if report.split_brain {
            anyhow::bail!(
                "{volume}: split brain detected, but this daemon has no detail (restarted since?): \
                 run `tandem volume connect {volume}` on both nodes to detect it again"
            );
        }
        anyhow::bail!("{volume}: not in split brain");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
        return Ok(());
    }
    let name_of = |id: u8| {
        config
            .nodes
            .get(usize::from(id))
            .map_or_else(|| format!("node {id}"), |n| n.name.clone())
    };
    println!(
        "{volume}: split brain detected by rule={} at {} (Unix ms)",
        detail.rule, detail.detected_unix_millis
    );
    for (label, side) in [("this node", &detail.this_node), ("peer", &detail.peer)] {
        println!(
            "  {label} {}: {}, diverged at {} (Unix ms), changed {} in {} range{}",
            name_of(side.node_id),
            side.role,
            side.diverged_unix_millis,
            manager::status::human_bytes(side.changed_bytes),
            side.ranges.len(),
            if side.ranges.len() == 1 { "" } else { "s" },
        );
        if !side.known {
            println!("    (ranges unknown: only the count of changed granules is)");
        }
        for [offset, length] in &side.ranges {
            println!("    bytes {offset}..{} ({length} bytes)", offset + length);
        }
        if !side.ranges_complete {
            println!("    (only the first ranges are listed)");
        }
    }
    if let Some(rule) = detail.discard_pending {
        println!("  the policy discards this node's changes by rule={rule}; saving them first");
    }
    if detail.discarding {
        println!("  this node was told to discard its changes; waiting for the peer");
    }
    println!(
        "  resolve: tandem split-brain resolve {volume} --keep NODE --save-discarded DIR (on both \
         nodes)"
    );
    Ok(())
}
