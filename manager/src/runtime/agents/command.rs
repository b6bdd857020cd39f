//! Short-lived commands (scripts, OCF actions, mount, fsck, losetup, systemctl): run in a
//! process group of their own, stdout and stderr kept (their last 64 KiB each), and killed
//! with their whole group when the caller drops the future (a timeout).
//!
//! A command may leave a background child holding its stdout or stderr (a start script that
//! runs `daemon &`): once the command itself has exited, its output is read for at most
//! [`DRAIN`] more, so such a child cannot hold the call.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// How long output is still read after the command has exited.
const DRAIN: Duration = Duration::from_millis(200);

/// How much of each output stream is kept (the end of it).
const KEEP_BYTES: usize = 64 * 1024;

/// A finished command.
#[derive(Debug)]
pub(super) struct Finished {
    /// How it ended.
    pub(super) status: ExitStatus,
    /// The end of its stdout.
    pub(super) stdout: String,
    /// The end of its stderr.
    pub(super) stderr: String,
}

impl Finished {
    /// The exit code, `None` when a signal ended it.
    pub(super) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The last non-empty line of stderr, or of stdout when stderr is empty.
    pub(super) fn last_line(&self) -> String {
        last_line(&self.stderr)
            .or_else(|| last_line(&self.stdout))
            .unwrap_or_default()
    }

    /// `exit code 2: <last line>` or `killed by signal 9`.
    pub(super) fn describe(&self) -> String {
        let how = match self.code() {
            Some(code) => format!("exit code {code}"),
            None => {
                use std::os::unix::process::ExitStatusExt;
                match self.status.signal() {
                    Some(signal) => format!("killed by signal {signal}"),
                    None => "ended without an exit code".to_string(),
                }
            }
        };
        with_line(how, &self.last_line())
    }
}

/// `what: line`, or `what` alone when `line` is empty.
pub(super) fn with_line(what: String, line: &str) -> String {
    if line.is_empty() {
        what
    } else {
        format!("{what}: {line}")
    }
}

/// The last non-empty line of `text`, trimmed.
pub(super) fn last_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_string)
}

/// Kills a started command's process group when dropped before it finished.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// The end of a stream, at most [`KEEP_BYTES`].
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > KEEP_BYTES {
            let excess = self.0.len() - KEEP_BYTES;
            self.0.drain(..excess);
        }
    }

    fn into_string(self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// Reads once from `stream` into `tail`; at end of stream (or an error) `stream` becomes None.
async fn read_some<R: AsyncRead + Unpin>(stream: &mut Option<R>, tail: &mut Tail) {
    let Some(reader) = stream else {
        return std::future::pending().await;
    };
    let mut buffer = [0u8; 4096];
    match reader.read(&mut buffer).await {
        Ok(0) | Err(_) => *stream = None,
        Ok(n) => tail.push(&buffer[..n]),
    }
}

/// Runs `command` to its end. `name` is how errors name it ("mount", "script start").
/// Fails only when it cannot be started; a non-zero exit is the caller's to judge.
pub(super) async fn run(mut command: Command, name: &str) -> Result<Finished, String> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut guard = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out = Tail::default();
    let mut err = Tail::default();
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = read_some(&mut stdout, &mut out), if stdout.is_some() => {}
            () = read_some(&mut stderr, &mut err), if stderr.is_some() => {}
        }
    };
    // The command has exited and been reaped: its group may now hold only children it left
    // behind on purpose (a start script's daemon), which must live on.
    guard.0 = None;
    let status = status.map_err(|e| format!("cannot wait for {name}: {e}"))?;
    let _ = tokio::time::timeout(DRAIN, async {
        while stdout.is_some() || stderr.is_some() {
            tokio::select! {
                () = read_some(&mut stdout, &mut out), if stdout.is_some() => {}
                () = read_some(&mut stderr, &mut err), if stderr.is_some() => {}
            }
        }
    })
    .await;
    Ok(Finished {
        status,
        stdout: out.into_string(),
        stderr: err.into_string(),
    })
}

/// Runs `program args…` and requires exit code 0; the error is `<program> failed: exit code N:
/// <last line>`.
pub(super) async fn run_ok(program: &str, args: &[&std::ffi::OsStr]) -> Result<Finished, String> {
    let mut command = Command::new(program);
    command.args(args);
    let finished = run(command, program).await?;
    if finished.status.success() {
        Ok(finished)
    } else {
        Err(format!("{program} failed: {}", finished.describe()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(last_line("one\ntwo\n\n  \n"), Some("two".to_string()));
        assert_eq!(last_line("\n\n"), None);
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut tail = Tail::default();
        tail.push(&vec![b'a'; KEEP_BYTES]);
        tail.push(b"end");
        let text = tail.into_string();
        assert_eq!(text.len(), KEEP_BYTES);
        assert!(text.ends_with("aend"));
    }

    #[tokio::test]
    async fn describes_the_exit_code_and_the_last_stderr_line() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo first >&2; echo last >&2; exit 3"]);
        let finished = run(command, "test").await.expect("runs");
        assert_eq!(finished.code(), Some(3));
        assert_eq!(finished.describe(), "exit code 3: last");
        assert_eq!(finished.stdout, "out\n");
    }

    #[tokio::test]
    async fn a_background_child_holding_stderr_does_not_hold_the_call() {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & echo $! ; exit 0"]);
        let started = std::time::Instant::now();
        let finished = run(command, "test").await.expect("runs");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(finished.status.success());
        let pid: i32 = finished.stdout.trim().parse().expect("pid");
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_an_error() {
        let error = run(Command::new("/nonexistent/tandem-test"), "thing")
            .await
            .expect_err("fails");
        assert!(error.starts_with("cannot run thing: "), "{error}");
    }
}
