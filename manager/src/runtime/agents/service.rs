//! Kind `service`: a systemd unit, through `systemctl start`, `stop` and `is-active`.
//!
//! Monitor maps `is-active`'s answer: `active`, `activating`, `reloading` → running;
//! `inactive`, `deactivating` → stopped; `failed` and anything else → failed. A forced stop
//! first sends SIGKILL to every process of the unit (`systemctl kill --signal=SIGKILL`).
//! Without systemd (no `/run/systemd/system`) every action fails and says so.

use std::path::Path;

use tokio::process::Command;

use super::command::{self, Finished};
use super::{AgentContext, Health, required};
use crate::cluster::group::ResourceSection;

/// Where systemd says it is the running init system.
const SYSTEMD_MARK: &str = "/run/systemd/system";

/// The refusal on a node without systemd.
const NO_SYSTEMD: &str = "systemd is not running on this node: kind service needs it";

/// What `systemctl is-active` printed.
pub(super) fn active_state_health(state: &str) -> Health {
    match state.trim() {
        "active" | "activating" | "reloading" => Health::Running,
        "inactive" | "deactivating" => Health::Stopped,
        other => Health::Failed(format!("unit is {other}")),
    }
}

/// Kind `service`.
#[derive(Debug)]
pub struct Service {
    context: AgentContext,
    unit: String,
}

impl Service {
    pub(super) fn new(section: &ResourceSection, context: AgentContext) -> Result<Self, String> {
        let unit = required(&context, "service", "unit", section.unit.as_ref())?.clone();
        if unit.is_empty() || unit.contains('\0') {
            return Err(context.error(format!("unit {unit:?} is not a unit name")));
        }
        Ok(Self { context, unit })
    }

    async fn systemctl(&self, args: &[&str]) -> Result<Finished, String> {
        if !Path::new(SYSTEMD_MARK).is_dir() {
            return Err(self.context.error(NO_SYSTEMD));
        }
        let mut systemctl = Command::new("systemctl");
        systemctl.args(args).arg("--").arg(&self.unit);
        command::run(systemctl, "systemctl")
            .await
            .map_err(|e| self.context.error(e))
    }

    async fn systemctl_ok(&self, args: &[&str]) -> Result<(), String> {
        let finished = self.systemctl(args).await?;
        if finished.status.success() {
            Ok(())
        } else {
            Err(self.context.error(format!(
                "systemctl {} {} failed: {}",
                args.join(" "),
                self.unit,
                finished.describe()
            )))
        }
    }

    pub(super) async fn start(&self) -> Result<(), String> {
        self.systemctl_ok(&["start"]).await
    }

    pub(super) async fn stop(&self, force: bool) -> Result<(), String> {
        if force {
            // Killing a unit that runs nothing fails; the stop that follows is what counts.
            let _ = self.systemctl(&["kill", "--signal=SIGKILL"]).await?;
        }
        self.systemctl_ok(&["stop"]).await
    }

    pub(super) async fn monitor(&self) -> Health {
        match self.systemctl(&["is-active"]).await {
            Ok(finished) => match active_state_health(&finished.stdout) {
                Health::Failed(problem) => {
                    Health::Failed(self.context.error(format!("{problem} ({})", self.unit)))
                }
                health => health,
            },
            Err(error) => Health::Failed(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_active_states() {
        assert_eq!(active_state_health("active\n"), Health::Running);
        assert_eq!(active_state_health("reloading\n"), Health::Running);
        assert_eq!(active_state_health("inactive\n"), Health::Stopped);
        assert_eq!(
            active_state_health("failed\n"),
            Health::Failed("unit is failed".into())
        );
    }
}
