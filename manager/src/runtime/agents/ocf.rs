//! Kind `ocf`: an OCF resource agent (the kind Pacemaker runs), `agent = "provider/type"`,
//! run as `$OCF_ROOT/resource.d/<provider>/<type> <action>` for actions `start`, `stop` and
//! `monitor`.
//!
//! Environment: `OCF_ROOT` (the daemon's `OCF_ROOT`, else `/usr/lib/ocf`),
//! `OCF_RESOURCE_INSTANCE` (the resource's name), `OCF_RESOURCE_TYPE`,
//! `OCF_RESOURCE_PROVIDER`, `OCF_RESKEY_<name>=<value>` for each of `params`, and
//! `OCF_RESKEY_CRM_meta_timeout` (the action's timeout in milliseconds; monitors also get
//! `OCF_RESKEY_CRM_meta_interval`).
//!
//! Exit codes: 0 `OCF_SUCCESS`, 1 `OCF_ERR_GENERIC`, 2 `OCF_ERR_ARGS`, 3
//! `OCF_ERR_UNIMPLEMENTED`, 4 `OCF_ERR_PERM`, 5 `OCF_ERR_INSTALLED`, 6 `OCF_ERR_CONFIGURED`, 7
//! `OCF_NOT_RUNNING` (8 and 9 are the promoted states). Start succeeds on 0; stop on 0 or 7;
//! monitor 0 (or 8) → running, 7 → stopped, anything else → failed, named with its code and
//! the last line of stderr.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tokio::process::Command;

use super::command::{self, Finished, with_line};
use super::{AgentContext, Health, required};
use crate::cluster::group::ResourceSection;

/// `OCF_ROOT` when the daemon's environment has none.
const DEFAULT_ROOT: &str = "/usr/lib/ocf";

/// Default start and stop timeout, as the group configuration's.
const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// Default monitor timeout, as the group configuration's.
const DEFAULT_MONITOR_TIMEOUT_MS: u64 = 10_000;

/// `OCF_NOT_RUNNING`.
const NOT_RUNNING: i32 = 7;

/// The OCF name of an exit code.
pub(super) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OCF_SUCCESS",
        1 => "OCF_ERR_GENERIC",
        2 => "OCF_ERR_ARGS",
        3 => "OCF_ERR_UNIMPLEMENTED",
        4 => "OCF_ERR_PERM",
        5 => "OCF_ERR_INSTALLED",
        6 => "OCF_ERR_CONFIGURED",
        7 => "OCF_NOT_RUNNING",
        8 => "OCF_RUNNING_PROMOTED",
        9 => "OCF_FAILED_PROMOTED",
        _ => "OCF_UNKNOWN_CODE",
    }
}

/// What a monitor exit code means.
pub(super) fn monitor_health(code: Option<i32>) -> Option<Health> {
    match code {
        Some(0 | 8) => Some(Health::Running),
        Some(NOT_RUNNING) => Some(Health::Stopped),
        _ => None,
    }
}

/// `OCF_ERR_GENERIC (1): <last line>`.
fn describe(finished: &Finished) -> String {
    match finished.code() {
        Some(code) => with_line(
            format!("{} ({code})", code_name(code)),
            &finished.last_line(),
        ),
        None => finished.describe(),
    }
}

/// Kind `ocf`.
#[derive(Debug)]
pub struct Ocf {
    context: AgentContext,
    provider: String,
    kind: String,
    root: PathBuf,
    params: BTreeMap<String, String>,
    start_timeout_ms: u64,
    stop_timeout_ms: u64,
    monitor_timeout_ms: u64,
    monitor_interval_ms: u64,
}

impl Ocf {
    pub(super) fn new(section: &ResourceSection, context: AgentContext) -> Result<Self, String> {
        let agent = required(&context, "ocf", "agent", section.agent.as_ref())?;
        let name_ok = |part: &str| {
            !part.is_empty() && part != "." && part != ".." && !part.contains(['/', '\0'])
        };
        let (provider, kind) = agent
            .split_once('/')
            .filter(|(provider, kind)| name_ok(provider) && name_ok(kind))
            .ok_or_else(|| context.error(format!("agent {agent:?} is not \"provider/type\"")))?;
        let params = section.params.clone().unwrap_or_default();
        for (name, value) in &params {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(context.error(format!(
                    "parameter name {name:?} is not letters, digits and _"
                )));
            }
            if value.contains('\0') {
                return Err(context.error(format!("parameter {name} holds a NUL byte")));
            }
        }
        let root = std::env::var_os("OCF_ROOT")
            .filter(|root| !root.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from);
        Ok(Self {
            provider: provider.to_string(),
            kind: kind.to_string(),
            root,
            params,
            start_timeout_ms: section.start_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            stop_timeout_ms: section.stop_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            monitor_timeout_ms: section
                .monitor
                .as_ref()
                .map_or(DEFAULT_MONITOR_TIMEOUT_MS, |m| m.timeout_ms),
            monitor_interval_ms: section.monitor.as_ref().map_or(0, |m| m.interval_ms),
            context,
        })
    }

    /// The same agent under another `OCF_ROOT` (tests; a daemon takes its environment's).
    #[must_use]
    pub fn with_root(self, root: PathBuf) -> Self {
        Self { root, ..self }
    }

    /// `$OCF_ROOT/resource.d/<provider>/<type>`.
    pub fn agent_path(&self) -> PathBuf {
        self.root
            .join("resource.d")
            .join(&self.provider)
            .join(&self.kind)
    }

    async fn run(&self, action: &str, timeout_ms: u64) -> Result<Finished, String> {
        let path = self.agent_path();
        if !path.is_file() {
            return Err(self
                .context
                .error(format!("OCF agent {} does not exist", path.display())));
        }
        let mut agent = Command::new(&path);
        agent
            .arg(action)
            .env("OCF_ROOT", &self.root)
            .env("OCF_RESOURCE_INSTANCE", &self.context.resource)
            .env("OCF_RESOURCE_TYPE", &self.kind)
            .env("OCF_RESOURCE_PROVIDER", &self.provider)
            .env("OCF_RESKEY_CRM_meta_timeout", timeout_ms.to_string())
            .env("TANDEM_GROUP", &self.context.group)
            .env("TANDEM_RESOURCE", &self.context.resource)
            .env("TANDEM_NODE", &self.context.node);
        if action == "monitor" {
            agent.env(
                "OCF_RESKEY_CRM_meta_interval",
                self.monitor_interval_ms.to_string(),
            );
        }
        for (name, value) in &self.params {
            agent.env(format!("OCF_RESKEY_{name}"), value);
        }
        command::run(agent, &format!("OCF agent {}", path.display()))
            .await
            .map_err(|e| self.context.error(e))
    }

    fn failed(&self, action: &str, finished: &Finished) -> String {
        self.context.error(format!(
            "ocf {}/{} {action} failed: {}",
            self.provider,
            self.kind,
            describe(finished)
        ))
    }

    pub(super) async fn start(&self) -> Result<(), String> {
        let finished = self.run("start", self.start_timeout_ms).await?;
        match finished.code() {
            Some(0) => Ok(()),
            _ => Err(self.failed("start", &finished)),
        }
    }

    pub(super) async fn stop(&self) -> Result<(), String> {
        let finished = self.run("stop", self.stop_timeout_ms).await?;
        match finished.code() {
            Some(0 | NOT_RUNNING) => Ok(()),
            _ => Err(self.failed("stop", &finished)),
        }
    }

    pub(super) async fn monitor(&self) -> Health {
        match self.run("monitor", self.monitor_timeout_ms).await {
            Ok(finished) => monitor_health(finished.code())
                .unwrap_or_else(|| Health::Failed(self.failed("monitor", &finished))),
            Err(error) => Health::Failed(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn section(agent: &str) -> ResourceSection {
        toml::from_str(&format!(
            "name = \"db\"\nkind = \"ocf\"\nagent = \"{agent}\"\nstart_timeout_ms = 1234\n\
             [params]\nstate = \"/tmp/x\"\n"
        ))
        .expect("section")
    }

    fn context() -> AgentContext {
        AgentContext {
            state_dir: PathBuf::from("/nonexistent"),
            node: "alpha".into(),
            group: "g".into(),
            resource: "db".into(),
        }
    }

    #[test]
    fn codes_have_their_ocf_names() {
        assert_eq!(code_name(1), "OCF_ERR_GENERIC");
        assert_eq!(code_name(5), "OCF_ERR_INSTALLED");
        assert_eq!(code_name(7), "OCF_NOT_RUNNING");
        assert_eq!(code_name(42), "OCF_UNKNOWN_CODE");
    }

    #[test]
    fn monitor_codes() {
        assert_eq!(monitor_health(Some(0)), Some(Health::Running));
        assert_eq!(monitor_health(Some(7)), Some(Health::Stopped));
        for other in [Some(1), Some(2), Some(3), Some(5), Some(6), None] {
            assert_eq!(monitor_health(other), None, "{other:?}");
        }
    }

    #[test]
    fn agent_names_are_provider_slash_type() {
        let ocf = Ocf::new(&section("heartbeat/IPaddr2"), context())
            .expect("valid")
            .with_root(PathBuf::from("/opt/ocf"));
        assert_eq!(
            ocf.agent_path(),
            Path::new("/opt/ocf/resource.d/heartbeat/IPaddr2")
        );
        assert_eq!(ocf.start_timeout_ms, 1234);
        assert!(!ocf.agent_path().is_file());
        for bad in ["IPaddr2", "../x", "a/../b", "a/", "/b", "a/b/c"] {
            let error = Ocf::new(&section(bad), context()).expect_err(bad);
            assert!(error.contains("provider/type"), "{error}");
        }
    }

    #[test]
    fn parameter_names_are_checked() {
        let mut bad = section("test/dummy");
        bad.params = Some(BTreeMap::from([("a=b".to_string(), "x".to_string())]));
        let error = Ocf::new(&bad, context()).expect_err("refused");
        assert!(error.contains("a=b"), "{error}");
    }
}
