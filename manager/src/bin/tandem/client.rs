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
