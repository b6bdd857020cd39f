//! Resource agents: the code that starts, stops and monitors one resource of a group (资源树) on
//! this node. One agent per kind: `filesystem`, `ip`, `service`, `process`, `script`, `ocf`.
//! Kind `volume` is not an agent: the daemon promotes and demotes its own volumes.
//!
//! The caller bounds every call with its timeout (`start_timeout_ms`, `stop_timeout_ms`, the
//! monitor's `timeout_ms`) by dropping the future, so every future here may be dropped at any
//! await: short-lived commands are killed with their process group, state files are written
//! whole (a temporary file renamed), and whatever a dropped start left behind is found and
//! undone by the next `stop`.
//!
//! `stop` is idempotent and needs nothing from the `start` that preceded it, so it also works
//! after a daemon restart: a process is found through its pidfile
//! (`state_dir/agents/<group>.<resource>.pid`), an address on its interface, a mount in
//! `/proc/self/mountinfo`, an NBD attachment through its nbdfuse pidfile and the loop devices
//! backed by its file.
//!
//! Errors are one line that names the resource and what failed.

mod command;
mod filesystem;
mod holders;
mod ip;
mod mountinfo;
mod nbd;
mod netlink;
mod ocf;
mod pidfile;
mod process;
mod script;
mod service;
mod sys;

use std::net::IpAddr;
use std::path::PathBuf;

use crate::cluster::group::ResourceSection;

pub use filesystem::Filesystem;
pub use ip::Ip;
pub use ocf::Ocf;
pub use process::Process;
pub use script::Script;
pub use service::Service;

/// Where a filesystem's device comes from, resolved by the caller from the volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsDevice {
    /// A local block device (the volume's ublk device, or any block device).
    Block(PathBuf),
    /// The volume's NBD export, attached here through nbdfuse and a loop device.
    Nbd {
        /// The NBD server's address.
        host: IpAddr,
        /// Its port.
        port: u16,
        /// The export name (the volume's name).
        export: String,
    },
}

/// Per-resource context.
#[derive(Clone, Debug)]
pub struct AgentContext {
    /// This node's state directory; agents keep their files in `state_dir/agents`.
    pub state_dir: PathBuf,
    /// This node's name.
    pub node: String,
    /// The group the resource belongs to.
    pub group: String,
    /// The resource's name.
    pub resource: String,
}

impl AgentContext {
    /// The directory of the agents' pidfiles, logs and attachments.
    fn agents_dir(&self) -> PathBuf {
        self.state_dir.join("agents")
    }

    /// `state_dir/agents/<group>.<resource><suffix>`.
    fn file(&self, suffix: &str) -> PathBuf {
        self.agents_dir()
            .join(format!("{}.{}{suffix}", self.group, self.resource))
    }

    /// Creates `state_dir/agents`.
    fn create_agents_dir(&self) -> Result<(), String> {
        let dir = self.agents_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| self.error(format!("cannot create {}: {e}", dir.display())))
    }

    /// An error message naming the resource.
    fn error(&self, problem: impl std::fmt::Display) -> String {
        format!("resource {}/{}: {problem}", self.group, self.resource)
    }
}

/// Monitor result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The resource runs.
    Running,
    /// The resource does not run (cleanly stopped, or gone).
    Stopped,
    /// The resource is in a state its agent calls failed, or its state cannot be known.
    Failed(String),
}

/// One resource's agent on this node.
#[derive(Debug)]
pub enum Agent {
    /// Kind `filesystem`: a mount.
    Filesystem(Filesystem),
    /// Kind `ip`: a virtual address on an interface (参考IP).
    Ip(Ip),
    /// Kind `service`: a systemd unit.
    Service(Service),
    /// Kind `process`: a supervised command.
    Process(Process),
    /// Kind `script`: start, stop and status shell commands.
    Script(Script),
    /// Kind `ocf`: an OCF resource agent.
    Ocf(Ocf),
}

impl Agent {
    /// The agent for `section`. `device` is where a filesystem's device comes from; the other
    /// kinds ignore it. Kind `volume` is refused: the daemon runs volumes itself.
    pub fn new(
        section: &ResourceSection,
        context: AgentContext,
        device: Option<FsDevice>,
    ) -> Result<Self, String> {
        for (what, name) in [("group", &context.group), ("resource", &context.resource)] {
            if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
                return Err(context.error(format!(
                    "{what} name {name:?} cannot name a file (empty, leading '.', '/' or NUL)"
                )));
            }
        }
        match section.kind.as_str() {
            "filesystem" => Filesystem::new(section, context, device).map(Self::Filesystem),
            "ip" => Ip::new(section, context).map(Self::Ip),
            "service" => Service::new(section, context).map(Self::Service),
            "process" => Process::new(section, context).map(Self::Process),
            "script" => Script::new(section, context).map(Self::Script),
            "ocf" => Ocf::new(section, context).map(Self::Ocf),
            "volume" => Err(context.error(
                "kind volume has no agent: the daemon promotes and demotes its volumes itself",
            )),
            other => Err(context.error(format!("kind {other:?} has no agent"))),
        }
    }

    /// Starts the resource; starting a running resource is Ok.
    pub async fn start(&self) -> Result<(), String> {
        match self {
            Self::Filesystem(agent) => agent.start().await,
            Self::Ip(agent) => agent.start().await,
            Self::Service(agent) => agent.start().await,
            Self::Process(agent) => agent.start().await,
            Self::Script(agent) => agent.start().await,
            Self::Ocf(agent) => agent.start().await,
        }
    }

    /// Stops the resource; stopping a stopped resource is Ok. `force` kills what a plain stop
    /// would wait for or refuse on (a process that ignores SIGTERM, processes that keep a
    /// filesystem busy).
    pub async fn stop(&self, force: bool) -> Result<(), String> {
        match self {
            Self::Filesystem(agent) => agent.stop(force).await,
            Self::Ip(agent) => agent.stop().await,
            Self::Service(agent) => agent.stop(force).await,
            Self::Process(agent) => agent.stop(force).await,
            Self::Script(agent) => agent.stop().await,
            Self::Ocf(agent) => agent.stop().await,
        }
    }

    /// Checks the resource once.
    pub async fn monitor(&self) -> Health {
        match self {
            Self::Filesystem(agent) => agent.monitor().await,
            Self::Ip(agent) => agent.monitor().await,
            Self::Service(agent) => agent.monitor().await,
            Self::Process(agent) => agent.monitor().await,
            Self::Script(agent) => agent.monitor().await,
            Self::Ocf(agent) => agent.monitor().await,
        }
    }
}

/// A kind-specific field `Agent::new` needs; the configuration check guarantees it, but an
/// agent built from an unchecked section gets an error, not a panic.
fn required<'a, T>(
    context: &AgentContext,
    kind: &str,
    field: &str,
    value: Option<&'a T>,
) -> Result<&'a T, String>
where
    T: ?Sized,
{
    value.ok_or_else(|| context.error(format!("kind {kind} needs {field}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> AgentContext {
        AgentContext {
            state_dir: PathBuf::from("/var/lib/tandem"),
            node: "alpha".into(),
            group: "web".into(),
            resource: "thing".into(),
        }
    }

    fn section(text: &str) -> ResourceSection {
        toml::from_str(&format!("name = \"thing\"\n{text}")).expect("section")
    }

    #[test]
    fn files_live_under_state_dir_agents() {
        assert_eq!(
            context().file(".pid"),
            PathBuf::from("/var/lib/tandem/agents/web.thing.pid")
        );
    }

    #[test]
    fn volumes_and_unknown_kinds_have_no_agent() {
        let error = Agent::new(
            &section("kind = \"volume\"\nvolume = \"r0\""),
            context(),
            None,
        )
        .expect_err("volume");
        assert!(
            error.starts_with("resource web/thing: kind volume"),
            "{error}"
        );
        let error =
            Agent::new(&section("kind = \"teleport\""), context(), None).expect_err("unknown");
        assert!(error.contains("teleport"), "{error}");
    }

    #[test]
    fn missing_fields_are_errors_not_panics() {
        for kind in ["filesystem", "ip", "service", "process", "script", "ocf"] {
            let error = Agent::new(&section(&format!("kind = \"{kind}\"")), context(), None)
                .expect_err(kind);
            assert!(error.contains(&format!("kind {kind} needs")), "{error}");
        }
        let error = Agent::new(
            &section("kind = \"process\"\ncommand = []"),
            context(),
            None,
        )
        .expect_err("empty command");
        assert!(error.contains("command is empty"), "{error}");
    }

    #[test]
    fn agents_and_their_futures_can_move_between_tasks() {
        fn send<T: Send>(_: &T) {}
        fn shared<T: Send + Sync>(_: &T) {}
        let agent = Agent::new(
            &section("kind = \"process\"\ncommand = [\"true\"]"),
            context(),
            None,
        )
        .expect("agent");
        shared(&agent);
        send(&agent.start());
        send(&agent.stop(true));
        send(&agent.monitor());
    }

    #[test]
    fn names_that_cannot_name_a_file_are_refused() {
        let process = section("kind = \"process\"\ncommand = [\"true\"]");
        for bad in ["", "..", "a/b", ".hidden"] {
            let context = AgentContext {
                resource: bad.to_string(),
                ..context()
            };
            let error = Agent::new(&process, context, None).expect_err(bad);
            assert!(error.contains("cannot name a file"), "{error}");
        }
    }
}
