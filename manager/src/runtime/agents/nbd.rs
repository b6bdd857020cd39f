//! A volume's NBD export as a local block device, for a filesystem on a node without kernel
//! NBD or ublk: nbdfuse (in this network namespace) shows the export as the file
//! `state_dir/agents/<group>.<resource>.fuse/disk`, and a loop device over that file is the
//! device to mount.
//!
//! nbdfuse runs in a session of its own with its pid in
//! `state_dir/agents/<group>.<resource>.nbdfuse.pid` and its stderr appended to
//! `<group>.<resource>.log`. Detaching finds everything from scratch (the loop devices backed by
//! the file, in `/sys/block/loop*/loop/backing_file`; the FUSE mount in mountinfo; nbdfuse by
//! its pidfile), so it also works after a daemon restart or a start that was cut short. Once
//! the filesystem is mounted on it, the loop device is marked to go with the mount (the kernel
//! detaches it on the last unmount), so it does not outlive a mount that a stop cannot see: one
//! in the mount namespace of a daemon that died, gone with its last process.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::command::{last_line, run_ok};
use super::pidfile::{self, ProcessId};
use super::{AgentContext, mountinfo, sys};

/// How long nbdfuse may take to connect and show its file.
const ATTACH_LIMIT: Duration = Duration::from_secs(30);

/// How often the attachment is checked while waiting.
const POLL: Duration = Duration::from_millis(50);

/// How long nbdfuse has to exit after its FUSE mount is gone, before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// `nbd://host:port/export`, with the export name percent-encoded.
pub(super) fn uri(host: IpAddr, port: u16, export: &str) -> String {
    let host = match host {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let mut export_encoded = String::with_capacity(export.len());
    for byte in export.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            export_encoded.push(char::from(byte));
        } else {
            export_encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("nbd://{host}:{port}/{export_encoded}")
}

/// A loop device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LoopDevice {
    /// `/dev/loopN`.
    pub(super) path: PathBuf,
    /// Its device numbers.
    pub(super) device: (u32, u32),
}

/// Parses `major:minor`.
pub(super) fn parse_device_numbers(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The loop devices whose backing file is `file`.
pub(super) fn loop_devices(file: &Path) -> Vec<LoopDevice> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let wanted = file.as_os_str().as_encoded_bytes();
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            if !name.starts_with("loop") {
                return None;
            }
            let backing = std::fs::read(entry.path().join("loop/backing_file")).ok()?;
            if backing.strip_suffix(b"\n").unwrap_or(&backing) != wanted {
                return None;
            }
            let numbers = std::fs::read_to_string(entry.path().join("dev")).ok()?;
            Some(LoopDevice {
                path: Path::new("/dev").join(&name),
                device: parse_device_numbers(&numbers)?,
            })
        })
        .collect()
}

/// The paths of one resource's attachment.
#[derive(Debug)]
pub(super) struct Attachment<'a> {
    context: &'a AgentContext,
}

impl<'a> Attachment<'a> {
    /// The attachment of `context`'s resource.
    pub(super) fn new(context: &'a AgentContext) -> Self {
        Self { context }
    }

    fn fuse_dir_name(&self) -> PathBuf {
        self.context.file(".fuse")
    }

    fn pidfile(&self) -> PathBuf {
        self.context.file(".nbdfuse.pid")
    }

    /// The FUSE directory as the kernel names it (symbolic links resolved), if the agents'
    /// directory exists.
    fn fuse_dir(&self) -> Option<PathBuf> {
        let agents = std::fs::canonicalize(self.context.agents_dir()).ok()?;
        Some(agents.join(self.fuse_dir_name().file_name()?))
    }

    /// nbdfuse runs.
    pub(super) fn nbdfuse_running(&self) -> bool {
        pidfile::read(&self.pidfile()).is_ok_and(|id| id.is_some_and(ProcessId::is_running))
    }

    /// The loop devices over this attachment's file.
    pub(super) fn loop_devices(&self) -> Vec<LoopDevice> {
        self.fuse_dir()
            .map(|dir| loop_devices(&dir.join("disk")))
            .unwrap_or_default()
    }

    fn fuse_mounted(&self, dir: &Path) -> Result<bool, String> {
        mountinfo::at(dir).map(|mount| mount.is_some())
    }

    /// Attaches `host:port/export` and returns the loop device; an attachment that is whole
    /// already is reused, a partial one is undone first.
    pub(super) async fn attach(
        &self,
        host: IpAddr,
        port: u16,
        export: &str,
    ) -> Result<PathBuf, String> {
        if self.nbdfuse_running()
            && let Some(dir) = self.fuse_dir()
            && self.fuse_mounted(&dir)?
            && let Some(device) = self.loop_devices().into_iter().next()
        {
            return Ok(device.path);
        }
        self.detach().await?;
        self.context.create_agents_dir()?;
        let dir = self
            .fuse_dir()
            .ok_or_else(|| "the agents directory vanished".to_string())?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let file = dir.join("disk");
        let log_path = self.context.file(".log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let address = uri(host, port, export);
        let mut nbdfuse = Command::new("nbdfuse");
        nbdfuse
            .arg(&file)
            .arg(&address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        sys::new_session(&mut nbdfuse);
        let mut child = nbdfuse
            .spawn()
            .map_err(|e| format!("cannot start nbdfuse: {e}"))?;
        let id = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(ProcessId::of)
            .ok_or_else(|| "nbdfuse exited at once".to_string())?;
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        if let Err(error) = pidfile::write(&self.pidfile(), id) {
            pidfile::kill_group(id.pid);
            return Err(error);
        }
        let deadline = Instant::now() + ATTACH_LIMIT;
        while !self.fuse_mounted(&dir)? {
            if !id.is_running() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "nbdfuse {address} exited: {}",
                    last_line(&log).unwrap_or_default()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nbdfuse {address} did not show its file within {} s",
                    ATTACH_LIMIT.as_secs()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        let losetup = run_ok(
            "losetup",
            &[OsStr::new("--find"), OsStr::new("--show"), file.as_os_str()],
        )
        .await?;
        let device = losetup.stdout.trim();
        if device.is_empty() {
            return Err("losetup --find --show printed no device".to_string());
        }
        Ok(PathBuf::from(device))
    }

    /// Marks the loop device `device`, mounted, to be detached by the kernel when its last
    /// user (the mount) closes it (`losetup -d` on a busy device).
    pub(super) async fn detach_with_mount(device: &Path) -> Result<(), String> {
        run_ok("losetup", &[OsStr::new("-d"), device.as_os_str()])
            .await
            .map(drop)
            .map_err(|e| format!("cannot tie {} to its mount: {e}", device.display()))
    }

    /// Detaches the loop devices, unmounts the FUSE directory and stops nbdfuse; what is
    /// already gone is skipped.
    pub(super) async fn detach(&self) -> Result<(), String> {
        if let Some(dir) = self.fuse_dir() {
            for device in loop_devices(&dir.join("disk")) {
                run_ok("losetup", &[OsStr::new("-d"), device.path.as_os_str()]).await?;
            }
            if self.fuse_mounted(&dir)? {
                // nbdfuse exits once its mount is gone; a lazy unmount covers a mount whose
                // nbdfuse died (the kernel then answers "transport endpoint not connected").
                if run_ok("umount", &[dir.as_os_str()]).await.is_err() {
                    run_ok("umount", &[OsStr::new("-l"), dir.as_os_str()]).await?;
                }
            }
        }
        pidfile::stop(&self.pidfile(), false, EXIT_GRACE)
            .await
            .map_err(|e| format!("nbdfuse: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn uris_bracket_ipv6_and_encode_the_export() {
        assert_eq!(
            uri(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 10809, "r0"),
            "nbd://10.0.0.1:10809/r0"
        );
        assert_eq!(
            uri(IpAddr::V6(Ipv6Addr::LOCALHOST), 10809, "my vol/1"),
            "nbd://[::1]:10809/my%20vol%2F1"
        );
    }

    #[test]
    fn device_numbers() {
        assert_eq!(parse_device_numbers("7:3\n"), Some((7, 3)));
        assert_eq!(parse_device_numbers("7"), None);
        assert_eq!(parse_device_numbers("a:b"), None);
    }

    #[test]
    fn no_loop_device_is_backed_by_a_file_that_does_not_exist() {
        assert!(loop_devices(Path::new("/nonexistent/tandem/disk")).is_empty());
    }
}
