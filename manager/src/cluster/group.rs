//! Resource groups (资源树): what runs together on one node, in dependency order. A group names
//! its nodes in priority order and its resources; a resource starts after the resources in its
//! `after` list, and stops before them. The configuration is checked whole here: unknown names,
//! cycles, fields that do not belong to a kind, each with the exact problem in one line.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// `[[group]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// The group's name.
    pub name: String,
    /// The nodes that may run it, preferred first.
    pub nodes: Vec<String>,
    /// Move back to the preferred node when it returns.
    #[serde(default)]
    pub failback: bool,
    /// Start when the cluster starts.
    #[serde(default = "yes")]
    pub auto_start: bool,
    /// Its resources, `[[group.resource]]`.
    #[serde(rename = "resource", default)]
    pub resources: Vec<ResourceSection>,
}

fn yes() -> bool {
    true
}

/// `[[group.resource]]`: the fields common to every kind, and each kind's own (a field of
/// another kind is refused by name).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    /// The resource's name, unique in its group.
    pub name: String,
    /// `volume`, `filesystem`, `ip`, `service`, `process`, `script` or `ocf`.
    pub kind: String,
    /// Resources of the same group that must run before this one.
    #[serde(default)]
    pub after: Vec<String>,
    /// Milliseconds a start may take (default 60 000).
    pub start_timeout_ms: Option<u64>,
    /// Milliseconds a stop may take (default 60 000).
    pub stop_timeout_ms: Option<u64>,
    /// Health checks.
    pub monitor: Option<MonitorSection>,
    /// volume, filesystem: the replicated volume.
    pub volume: Option<String>,
    /// filesystem: where to mount it.
    pub mount: Option<String>,
    /// filesystem: its type (default ext4).
    pub fstype: Option<String>,
    /// filesystem: mount options.
    pub options: Option<String>,
    /// filesystem: run fsck before mounting.
    pub fsck: Option<bool>,
    /// ip: the virtual address with its prefix, `10.0.0.100/24`.
    pub address: Option<String>,
    /// ip: the interface to add it to.
    pub interface: Option<String>,
    /// service: the systemd unit.
    pub unit: Option<String>,
    /// process: the command and its arguments.
    pub command: Option<Vec<String>>,
    /// script: start, stop and monitor scripts.
    pub start: Option<String>,
    /// script: see `start`.
    pub stop: Option<String>,
    /// script: see `start`.
    pub status: Option<String>,
    /// ocf: the agent, `provider/type` under `$OCF_ROOT/resource.d`.
    pub agent: Option<String>,
    /// ocf: its parameters, passed as `OCF_RESKEY_<name>`.
    pub params: Option<BTreeMap<String, String>>,
}

/// `[group.resource.monitor]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Milliseconds between checks.
    pub interval_ms: u64,
    /// Milliseconds a check may take before it counts as failed.
    #[serde(default = "default_monitor_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failed checks before acting.
    #[serde(default = "one")]
    pub failures: u32,
    /// `restart`, `failover` or `alert`.
    #[serde(default = "default_action")]
    pub action: String,
    /// With `restart`: at most this many restarts within `window_s`; one more failure fails
    /// the group over ("more than 3 failures in 60 s: failover" is `restarts = 3`,
    /// `window_s = 60`).
    pub restarts: Option<u32>,
    /// See `restarts`.
    pub window_s: Option<u64>,
}

fn default_monitor_timeout() -> u64 {
    10_000
}
fn one() -> u32 {
    1
}
fn default_action() -> String {
    "restart".to_string()
}

/// The kinds and the fields each may set besides the common ones, and must set.
const KINDS: [(&str, &[&str], &[&str]); 7] = [
    ("volume", &["volume"], &["volume"]),
    (
        "filesystem",
        &["volume", "mount", "fstype", "options", "fsck"],
        &["volume", "mount"],
    ),
    ("ip", &["address", "interface"], &["address", "interface"]),
    ("service", &["unit"], &["unit"]),
    ("process", &["command"], &["command"]),
    (
        "script",
        &["start", "stop", "status"],
        &["start", "stop", "status"],
    ),
    ("ocf", &["agent", "params"], &["agent"]),
];

impl ResourceSection {
    /// The kind-specific fields that are set.
    fn set_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("volume", self.volume.is_some()),
            ("mount", self.mount.is_some()),
            ("fstype", self.fstype.is_some()),
            ("options", self.options.is_some()),
            ("fsck", self.fsck.is_some()),
            ("address", self.address.is_some()),
            ("interface", self.interface.is_some()),
            ("unit", self.unit.is_some()),
            ("command", self.command.is_some()),
            ("start", self.start.is_some()),
            ("stop", self.stop.is_some()),
            ("status", self.status.is_some()),
            ("agent", self.agent.is_some()),
            ("params", self.params.is_some()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }

    fn check(&self, volumes: &BTreeSet<&str>) -> Result<(), String> {
        let Some((_, allowed, required)) = KINDS.iter().find(|(kind, ..)| *kind == self.kind)
        else {
            let kinds: Vec<&str> = KINDS.iter().map(|(kind, ..)| *kind).collect();
            return Err(format!(
                "kind {:?} is not one of {}",
                self.kind,
                kinds.join(", ")
            ));
        };
        let set = self.set_fields();
        if let Some(stray) = set.iter().find(|field| !allowed.contains(field)) {
            return Err(format!("{stray} does not belong to kind {}", self.kind));
        }
        if let Some(missing) = required.iter().find(|field| !set.contains(field)) {
            return Err(format!("kind {} needs {missing}", self.kind));
        }
        if let Some(volume) = &self.volume
            && !volumes.contains(volume.as_str())
        {
            return Err(format!("no volume {volume:?} in the configuration"));
        }
        if self.command.as_ref().is_some_and(Vec::is_empty) {
            return Err("command is empty".to_string());
        }
        if let Some(address) = &self.address {
            check_prefix(address)?;
        }
        if let Some(monitor) = &self.monitor {
            monitor.check()?;
        }
        Ok(())
    }
}

fn check_prefix(address: &str) -> Result<(), String> {
    let problem =
        || format!("address {address:?} is not an IP address with a prefix (10.0.0.100/24)");
    let (ip, prefix) = address.split_once('/').ok_or_else(problem)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| problem())?;
    let prefix: u8 = prefix.parse().map_err(|_| problem())?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > bits {
        return Err(problem());
    }
    Ok(())
}

impl MonitorSection {
    fn check(&self) -> Result<(), String> {
        if !["restart", "failover", "alert"].contains(&self.action.as_str()) {
            return Err(format!(
                "monitor action {:?} is not restart, failover or alert",
                self.action
            ));
        }
        if self.interval_ms < 100 || self.timeout_ms == 0 || self.failures == 0 {
            return Err("monitor needs interval_ms >= 100, timeout_ms > 0, failures > 0".into());
        }
        if self.action != "restart" && (self.restarts.is_some() || self.window_s.is_some()) {
            return Err(format!(
                "monitor restarts and window_s go with action restart, not {}",
                self.action
            ));
        }
        Ok(())
    }
}

impl GroupSection {
    /// Checks the group against the cluster's node and volume names.
    pub fn check(&self, nodes: &[&str], volumes: &BTreeSet<&str>) -> Result<(), String> {
        let at = |problem: String| format!("group {:?}: {problem}", self.name);
        if self.nodes.is_empty() {
            return Err(at("nodes is empty".to_string()));
        }
        let mut seen = BTreeSet::new();
        for node in &self.nodes {
            if !nodes.contains(&node.as_str()) {
                return Err(at(format!(
                    "unknown node {node:?} (nodes: {})",
                    nodes.join(", ")
                )));
            }
            if !seen.insert(node) {
                return Err(at(format!("node {node:?} is listed twice")));
            }
        }
        let mut names = BTreeSet::new();
        for resource in &self.resources {
            if !names.insert(resource.name.as_str()) {
                return Err(at(format!("resource {:?} is defined twice", resource.name)));
            }
        }
        for resource in &self.resources {
            let at = |problem: String| at(format!("resource {:?}: {problem}", resource.name));
            resource.check(volumes).map_err(at)?;
            if let Some(unknown) = resource.after.iter().find(|a| !names.contains(a.as_str())) {
                return Err(at(format!("after names unknown resource {unknown:?}")));
            }
        }
        self.start_order().map(|_| ()).map_err(at)
    }

    /// Resource indexes in the order to start them: each after everything in its `after`,
    /// otherwise in configuration order. Stop in the reverse order. A cycle is an error that
    /// names it.
    pub fn start_order(&self) -> Result<Vec<usize>, String> {
        let index: BTreeMap<&str, usize> = self
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        let mut order = Vec::with_capacity(self.resources.len());
        let mut state = vec![Mark::New; self.resources.len()];
        for start in 0..self.resources.len() {
            let mut path = Vec::new();
            self.visit(start, &index, &mut state, &mut path, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        at: usize,
        index: &BTreeMap<&str, usize>,
        state: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), String> {
        match state[at] {
            Mark::Done => return Ok(()),
            Mark::Open => {
                let from = path.iter().position(|&p| p == at).unwrap_or(0);
                let mut cycle: Vec<&str> = path[from..]
                    .iter()
                    .map(|&i| self.resources[i].name.as_str())
                    .collect();
                cycle.push(&self.resources[at].name);
                return Err(format!(
                    "resources depend on each other in a cycle: {}",
                    cycle.join(" after ")
                ));
            }
            Mark::New => {}
        }
        state[at] = Mark::Open;
        path.push(at);
        for before in &self.resources[at].after {
            if let Some(&next) = index.get(before.as_str()) {
                self.visit(next, index, state, path, order)?;
            }
        }
        path.pop();
        state[at] = Mark::Done;
        order.push(at);
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    Open,
    Done,
}

#[cfg(test)]
mod tests;
