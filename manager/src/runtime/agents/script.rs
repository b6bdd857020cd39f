//! Kind `script`: `start`, `stop` and `status` are shell command strings, each run with
//! `sh -c` and `TANDEM_GROUP`, `TANDEM_RESOURCE` and `TANDEM_NODE` in its environment.
//!
//! Exit codes, LSB-style:
//!
//! | action        | 0       | 3 or 7  | anything else (or a signal)                 |
//! |---------------|---------|---------|---------------------------------------------|
//! | start, stop   | success | failure | failure                                     |
//! | status        | running | stopped | failed                                      |
//!
//! A failure names the exit code and the last line of stderr. A script may leave a background
//! process behind (`mydaemon &`); it is not waited for.

use tokio::process::Command;

use super::command::{self, Finished};
use super::{AgentContext, Health, required};
use crate::cluster::group::ResourceSection;

/// Kind `script`.
#[derive(Debug)]
pub struct Script {
    context: AgentContext,
    start: String,
    stop: String,
    status: String,
}

/// What a status exit code means.
pub(super) fn status_health(code: Option<i32>) -> Option<Health> {
    match code {
        Some(0) => Some(Health::Running),
        Some(3 | 7) => Some(Health::Stopped),
        _ => None,
    }
}

impl Script {
    pub(super) fn new(section: &ResourceSection, context: AgentContext) -> Result<Self, String> {
        let field =
            |name, value: Option<&String>| required(&context, "script", name, value).cloned();
        Ok(Self {
            start: field("start", section.start.as_ref())?,
            stop: field("stop", section.stop.as_ref())?,
            status: field("status", section.status.as_ref())?,
            context,
        })
    }

    async fn run(&self, action: &str, script: &str) -> Result<Finished, String> {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(script)
            .env("TANDEM_GROUP", &self.context.group)
            .env("TANDEM_RESOURCE", &self.context.resource)
            .env("TANDEM_NODE", &self.context.node);
        command::run(shell, &format!("the {action} script"))
            .await
            .map_err(|e| self.context.error(e))
    }

    async fn run_ok(&self, action: &str, script: &str) -> Result<(), String> {
        let finished = self.run(action, script).await?;
        if finished.status.success() {
            Ok(())
        } else {
            Err(self
                .context
                .error(format!("{action} script failed: {}", finished.describe())))
        }
    }

    pub(super) async fn start(&self) -> Result<(), String> {
        self.run_ok("start", &self.start).await
    }

    pub(super) async fn stop(&self) -> Result<(), String> {
        self.run_ok("stop", &self.stop).await
    }

    pub(super) async fn monitor(&self) -> Health {
        match self.run("status", &self.status).await {
            Ok(finished) => status_health(finished.code()).unwrap_or_else(|| {
                Health::Failed(
                    self.context
                        .error(format!("status script: {}", finished.describe())),
                )
            }),
            Err(error) => Health::Failed(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_lsb() {
        assert_eq!(status_health(Some(0)), Some(Health::Running));
        assert_eq!(status_health(Some(3)), Some(Health::Stopped));
        assert_eq!(status_health(Some(7)), Some(Health::Stopped));
        for other in [Some(1), Some(2), Some(4), Some(127), None] {
            assert_eq!(status_health(other), None, "{other:?}");
        }
    }
}
