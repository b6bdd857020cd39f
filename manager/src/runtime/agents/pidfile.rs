//! Pidfiles and `/proc`: which process an agent started, told apart from a later process that
//! got the same pid, and stopping it with its process group.
//!
//! A pidfile holds one line, `<pid> <start time>`: the start time is field 22 of
//! `/proc/<pid>/stat` (clock ticks since boot), so a recycled pid never matches. It is written
//! to a temporary file and renamed, so it is whole or absent.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How often a stop checks whether the processes are gone.
const POLL: Duration = Duration::from_millis(50);

/// A process, told apart from any later one with the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcessId {
    /// Its pid (and process group id: agents start processes as group leaders).
    pub(super) pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub(super) start_time: u64,
}

impl ProcessId {
    /// Parses a pidfile's text.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let pid = fields.next()?.parse().ok().filter(|&pid: &i32| pid > 1)?;
        let start_time = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some(Self { pid, start_time })
    }

    /// A pidfile's text.
    pub(super) fn render(self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// The process that has `pid` now.
    pub(super) fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|stat| Self {
            pid,
            start_time: stat.start_time,
        })
    }

    /// The process runs (exists with this start time, and is not a zombie).
    pub(super) fn is_running(self) -> bool {
        stat(self.pid).is_some_and(|stat| stat.start_time == self.start_time && stat.is_live())
    }
}

/// The fields of `/proc/<pid>/stat` agents use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    /// Field 3: R, S, D, Z, T, X...
    pub(super) state: char,
    /// Field 5: the process group.
    pub(super) process_group: i32,
    /// Field 22: clock ticks from boot to the process's start.
    pub(super) start_time: u64,
}

impl Stat {
    /// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
    /// spaces and parentheses itself, so fields are counted from the last `)`.
    pub(super) fn parse(text: &str) -> Option<Self> {
        let rest = &text[text.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3.
        Some(Self {
            state: fields.first()?.chars().next()?,
            process_group: fields.get(2)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// Neither a zombie nor dead.
    pub(super) fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc/<pid>/stat` now, if the process exists.
pub(super) fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Stat::parse(&text)
}

/// The pids of `/proc`.
pub(super) fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Some live process is in process group `group`.
pub(super) fn group_alive(group: i32) -> bool {
    all_pids()
        .into_iter()
        .any(|pid| stat(pid).is_some_and(|stat| stat.process_group == group && stat.is_live()))
}

/// Reads a pidfile: `Ok(None)` when there is none, an error when it cannot be read or parsed.
pub(super) fn read(path: &Path) -> Result<Option<ProcessId>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => ProcessId::parse(&text)
            .map(Some)
            .ok_or_else(|| format!("pidfile {} is not \"<pid> <start time>\"", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a pidfile whole: a temporary file, then a rename.
pub(super) fn write(path: &Path, id: ProcessId) -> Result<(), String> {
    let temporary = path.with_extension("pid.tmp");
    std::fs::write(&temporary, id.render())
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Removes a pidfile; an absent one is fine.
pub(super) fn remove(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("cannot remove {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Whether the group of `id` may be signalled: its leader is `id` itself, or the leader is
/// gone and the group holds what it left. A pid number is not reused while a process group
/// still has it as its id, so a group without a live leader is the leader's own leftovers;
/// a pid now held by another process (another start time) means that group is gone.
fn group_is_ours(id: ProcessId) -> bool {
    match stat(id.pid) {
        None => true,
        Some(stat) => stat.start_time == id.start_time,
    }
}

/// Signals a group; a group that no longer exists is fine.
fn signal_group(group: i32, signal: Signal) -> Result<(), String> {
    match killpg(Pid::from_raw(group), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(format!(
            "cannot send {signal} to process group {group}: {e}"
        )),
    }
}

/// Sends SIGKILL to a process group this agent has just started (and not yet recorded).
pub(super) fn kill_group(group: i32) {
    let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
}

/// Waits until no live process is left in `group`, at most `limit`.
async fn group_gone(group: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !group_alive(group) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Stops the process of pidfile `path` with its whole process group: SIGTERM, up to `grace`
/// for it to exit, then SIGKILL (at once when `force`). Removes the pidfile once the group is
/// gone. No pidfile, or a pid now held by another process, is already stopped.
pub(super) async fn stop(path: &Path, force: bool, grace: Duration) -> Result<(), String> {
    let Some(id) = read(path)? else {
        return Ok(());
    };
    if group_is_ours(id) {
        let group = id.pid;
        if !force {
            signal_group(group, Signal::SIGTERM)?;
        }
        if force || !group_gone(group, grace).await {
            signal_group(group, Signal::SIGKILL)?;
            if !group_gone(group, Duration::from_secs(5)).await {
                return Err(format!(
                    "process group {group} still runs 5 s after SIGKILL"
                ));
            }
        }
    }
    remove(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 \
                        20 0 1 0 987654 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 \
                        0 0 17 3 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = Stat::parse(STAT).expect("parses");
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                process_group: 4242,
                start_time: 987_654,
            }
        );
        assert!(stat.is_live());
        let zombie = STAT.replace(") S ", ") Z ");
        assert!(!Stat::parse(&zombie).expect("parses").is_live());
    }

    #[test]
    fn truncated_stat_is_refused() {
        assert_eq!(Stat::parse("12 (x) S 1 12"), None);
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn pidfile_text_round_trips_and_bad_text_is_refused() {
        let id = ProcessId {
            pid: 1234,
            start_time: 5678,
        };
        assert_eq!(id.render(), "1234 5678\n");
        assert_eq!(ProcessId::parse(&id.render()), Some(id));
        for bad in ["", "1234", "x 5", "1234 5678 9", "-5 6", "1 6", "0 6"] {
            assert_eq!(ProcessId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_is_running_and_a_wrong_start_time_is_not() {
        let pid = i32::try_from(std::process::id()).expect("pid");
        let me = ProcessId::of(pid).expect("stat of this process");
        assert!(me.is_running());
        let recycled = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_running());
    }

    #[test]
    fn pidfile_write_read_remove() {
        let dir = std::env::temp_dir().join(format!("tandem-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("g.r.pid");
        assert_eq!(read(&path), Ok(None));
        let id = ProcessId {
            pid: 99,
            start_time: 7,
        };
        write(&path, id).expect("write");
        assert_eq!(read(&path), Ok(Some(id)));
        remove(&path).expect("remove");
        remove(&path).expect("remove again");
        std::fs::write(&path, "junk").expect("junk");
        assert!(read(&path).expect_err("corrupt").contains("g.r.pid"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
