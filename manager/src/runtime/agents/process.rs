//! Kind `process`: a command the daemon starts and supervises.
//!
//! The command runs in a session and process group of its own, stdin from /dev/null, stdout
//! and stderr appended to `state_dir/agents/<group>.<resource>.log`, with `TANDEM_GROUP`,
//! `TANDEM_RESOURCE` and `TANDEM_NODE` set. Its pid and start time go to
//! `state_dir/agents/<group>.<resource>.pid`. It does not die with the daemon: a restarted
//! daemon finds it through the pidfile (and stops it when it cleans up). The command must stay
//! in the foreground: one that forks a daemon and exits is stopped as soon as it exits.
//!
//! Monitor: the pidfile's process is alive with the recorded start time → running; no pidfile,
//! a dead process or a pid that another process now holds → stopped.
//! Stop: SIGTERM to the process group, up to 5 s for it to exit, then SIGKILL; a forced stop
//! sends SIGKILL at once.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::pidfile::{self, ProcessId};
use super::{AgentContext, Health, required, sys};
use crate::cluster::group::ResourceSection;

/// How long a stop waits after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Kind `process`.
#[derive(Debug)]
pub struct Process {
    context: AgentContext,
    command: Vec<String>,
}

impl Process {
    pub(super) fn new(section: &ResourceSection, context: AgentContext) -> Result<Self, String> {
        let command = required(&context, "process", "command", section.command.as_ref())?.clone();
        if command.is_empty() {
            return Err(context.error("command is empty"));
        }
        Ok(Self { context, command })
    }

    fn pidfile(&self) -> PathBuf {
        self.context.file(".pid")
    }

    /// The log its stdout and stderr are appended to.
    pub fn log_path(&self) -> PathBuf {
        self.context.file(".log")
    }

    /// The recorded process, if it runs.
    fn running(&self) -> Result<Option<ProcessId>, String> {
        Ok(pidfile::read(&self.pidfile())?.filter(|id| id.is_running()))
    }

    pub(super) async fn start(&self) -> Result<(), String> {
        let context = &self.context;
        if self.running().map_err(|e| context.error(e))?.is_some() {
            return Ok(());
        }
        context.create_agents_dir()?;
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| context.error(format!("cannot open {}: {e}", log_path.display())))?;
        let log_too = log
            .try_clone()
            .map_err(|e| context.error(format!("cannot open {}: {e}", log_path.display())))?;
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .env("TANDEM_GROUP", &context.group)
            .env("TANDEM_RESOURCE", &context.resource)
            .env("TANDEM_NODE", &context.node);
        sys::new_session(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| context.error(format!("cannot start {:?}: {e}", self.command[0])))?;
        let Some(id) = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(ProcessId::of)
        else {
            return Err(context.error(format!("{:?} exited at once", self.command[0])));
        };
        // Reap it when it exits, so that it does not linger as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        if let Err(error) = pidfile::write(&self.pidfile(), id) {
            // Unrecorded, it could not be found again: it must not run.
            pidfile::kill_group(id.pid);
            return Err(context.error(error));
        }
        tracing::info!(
            group = %context.group,
            resource = %context.resource,
            pid = id.pid,
            "process started"
        );
        Ok(())
    }

    pub(super) async fn stop(&self, force: bool) -> Result<(), String> {
        let result = match pidfile::stop(&self.pidfile(), force, GRACE).await {
            Err(error) if pidfile::read(&self.pidfile()).is_err() => {
                // A pidfile that is not ours to read names no process we can find: drop it.
                tracing::warn!(
                    group = %self.context.group,
                    resource = %self.context.resource,
                    "{error}; removing it"
                );
                pidfile::remove(&self.pidfile())
            }
            other => other,
        };
        result.map_err(|e| self.context.error(e))
    }

    pub(super) async fn monitor(&self) -> Health {
        match self.running() {
            Ok(Some(_)) => Health::Running,
            Ok(None) => Health::Stopped,
            Err(error) => Health::Failed(self.context.error(error)),
        }
    }
}
