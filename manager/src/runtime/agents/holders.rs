//! The processes that keep a mount busy: those whose working directory, root directory, open
//! files or mapped files are under the mount point (read from `/proc`). This daemon and pid 1
//! are never counted (nor killed).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pidfile::all_pids;

/// How often a forced stop checks that the holders are gone.
const POLL: Duration = Duration::from_millis(50);

/// A process that uses something under a mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Holder {
    /// Its pid.
    pub(super) pid: i32,
    /// Its command name (`/proc/<pid>/comm`).
    pub(super) name: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.name)
    }
}

/// "pid 12 (sleep), pid 40 (bash)".
pub(super) fn describe(holders: &[Holder]) -> String {
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The path of one line of `/proc/<pid>/maps` (after address, permissions, offset, device
/// and inode), if the mapping has one.
pub(super) fn mapped_path(line: &[u8]) -> Option<&Path> {
    let mut rest = line;
    for _ in 0..5 {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[start..];
        let end = rest.iter().position(|&b| b == b' ')?;
        rest = &rest[end..];
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(Path::new(OsStr::from_bytes(&rest[start..])))
}

/// Whether process `pid` uses something under `mount_point`.
fn holds(pid: i32, mount_point: &Path) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let under = |path: &Path| path.starts_with(mount_point);
    let link_under = |name: &Path| std::fs::read_link(name).is_ok_and(|target| under(&target));
    if link_under(&proc_dir.join("cwd")) || link_under(&proc_dir.join("root")) {
        return true;
    }
    if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd"))
        && fds.flatten().any(|fd| link_under(&fd.path()))
    {
        return true;
    }
    std::fs::read(proc_dir.join("maps")).is_ok_and(|maps| {
        maps.split(|&b| b == b'\n')
            .filter_map(mapped_path)
            .any(under)
    })
}

/// The processes that use something under `mount_point`.
pub(super) fn under(mount_point: &Path) -> Vec<Holder> {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && pid != 1 && holds(pid, mount_point))
        .map(|pid| Holder {
            pid,
            name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|name| name.trim().to_string())
                .unwrap_or_default(),
        })
        .collect()
}

/// Sends SIGKILL to every holder of `mount_point` until none is left, at most `limit`; the
/// error names those still there.
pub(super) async fn kill_all(mount_point: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let holders = under(mount_point);
        if holders.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} still in use after SIGKILL by {}",
                mount_point.display(),
                describe(&holders)
            ));
        }
        for holder in &holders {
            match kill(Pid::from_raw(holder.pid), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    return Err(format!("cannot kill {holder}: {e}"));
                }
            }
        }
        tracing::warn!(
            mount = %mount_point.display(),
            "killed the processes that kept it busy: {}",
            describe(&holders)
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_give_their_path() {
        let line = b"7f1c2a000000-7f1c2a021000 r--p 00000000 07:03 131         /srv/my data/lib.so";
        assert_eq!(mapped_path(line), Some(Path::new("/srv/my data/lib.so")));
        let anonymous = b"7ffd5c3f2000-7ffd5c413000 rw-p 00000000 00:00 0 ";
        assert_eq!(mapped_path(anonymous), None);
        let anonymous = b"7ffd5c3f2000-7ffd5c413000 rw-p 00000000 00:00 0";
        assert_eq!(mapped_path(anonymous), None);
        assert_eq!(mapped_path(b""), None);
    }

    #[test]
    fn holders_are_described_by_pid_and_name() {
        let holders = [
            Holder {
                pid: 12,
                name: "sleep".into(),
            },
            Holder {
                pid: 40,
                name: "bash".into(),
            },
        ];
        assert_eq!(describe(&holders), "pid 12 (sleep), pid 40 (bash)");
    }

    #[test]
    fn this_process_is_never_a_holder() {
        let cwd = std::env::current_dir().expect("cwd");
        let me = i32::try_from(std::process::id()).expect("pid");
        assert!(under(&cwd).iter().all(|holder| holder.pid != me));
    }
}
