//! The admin socket: a Unix socket only root can open, one JSON request and one JSON response
//! per connection (see [`crate::admin`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::replica::AdminCommand;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Daemon;
use crate::admin::{MESSAGE_BYTES_MAX, Request, Response};
use crate::cluster::core::Command;

/// Binds the socket at `path` (mode 0600), replacing a stale one.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!("another daemon answers on {}", path.display()));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serves admin requests until aborted.
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let daemon = Arc::clone(&daemon);
        tokio::spawn(async move {
            if let Err(error) = handle(stream, &daemon).await {
                tracing::debug!("admin connection: {error}");
            }
        });
    }
}

async fn handle(stream: UnixStream, daemon: &Daemon) -> Result<(), String> {
    let credentials = stream
        .peer_cred()
        .map_err(|e| format!("peer credentials: {e}"))?;
    let (reader, mut writer) = stream.into_split();
    let response = if credentials.uid() != 0 {
        Response::refused("the admin socket is for root only")
    } else {
        let mut line = Vec::new();
        let mut reader = BufReader::new(reader).take(MESSAGE_BYTES_MAX as u64);
        reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        match serde_json::from_slice::<Request>(&line) {
            Ok(request) => daemon.execute(request).await,
            Err(error) => Response::refused(format!("malformed request: {error}")),
        }
    };
    let mut text = serde_json::to_vec(&response).map_err(|e| format!("encode: {e}"))?;
    text.push(b'\n');
    writer
        .write_all(&text)
        .await
        .map_err(|e| format!("write: {e}"))?;
    Ok(())
}

/// Sends one request to the daemon at `socket` and returns its response; gives up when the
/// daemon does not answer within `timeout`.
pub fn call(
    socket: &Path,
    request: &Request,
    timeout: std::time::Duration,
) -> Result<Response, String> {
    use std::io::{BufRead, Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the daemon at {} ({e}); is tandem daemon running?",
            socket.display()
        )
    })?;
    let timeout = timeout.max(std::time::Duration::from_millis(100));
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut text = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    text.push(b'\n');
    stream
        .write_all(&text)
        .map_err(|e| format!("write to the daemon: {e}"))?;
    let mut line = Vec::new();
    let mut reader = std::io::BufReader::new(Read::take(stream, MESSAGE_BYTES_MAX as u64));
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!(
                    "the daemon did not answer within {:.1} s",
                    timeout.as_secs_f64()
                )
            }
            _ => format!("read from the daemon: {e}"),
        })?;
    serde_json::from_slice(&line).map_err(|e| format!("malformed answer from the daemon: {e}"))
}

/// The engine command for a volume request.
pub(super) fn engine_command(request: &Request) -> Option<(String, AdminCommand)> {
    Some(match request {
        Request::Status
        | Request::SplitBrainResolve { .. }
        | Request::GroupStart { .. }
        | Request::GroupStop { .. }
        | Request::GroupSwitch { .. }
        | Request::Maintenance { .. } => return None,
        Request::Primary { volume, force } => {
            (volume.clone(), AdminCommand::Promote { force: *force })
        }
        Request::Secondary { volume } => (volume.clone(), AdminCommand::Demote),
        Request::Connect { volume } => (volume.clone(), AdminCommand::Connect),
        Request::Disconnect { volume } => (volume.clone(), AdminCommand::Disconnect),
        Request::Resync {
            volume,
            full,
            checksum,
        } => (
            volume.clone(),
            AdminCommand::Resync {
                full: *full,
                checksum: *checksum,
            },
        ),
        Request::Verify { volume, mark } => (volume.clone(), AdminCommand::Verify { mark: *mark }),
        Request::Invalidate { volume } => (volume.clone(), AdminCommand::Invalidate),
    })
}

/// The cluster command for a group or maintenance request.
pub(super) fn cluster_command(request: &Request) -> Option<Command> {
    Some(match request {
        Request::GroupStart { group } => Command::Start(group.clone()),
        Request::GroupStop { group } => Command::Stop(group.clone()),
        Request::GroupSwitch { group, to, force } => Command::Switch {
            group: group.clone(),
            to: to.clone(),
            force: *force,
        },
        Request::Maintenance { on } => Command::Maintenance(*on),
        _ => return None,
    })
}

/// Where this node's admin socket is.
pub fn socket_path(node: &crate::config::NodeSection) -> PathBuf {
    node.admin_socket
        .clone()
        .unwrap_or_else(|| node.state_dir.join("tandem.sock"))
}
