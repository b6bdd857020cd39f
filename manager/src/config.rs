//! The cluster configuration file (TOML), DESIGN §5.
//!
//! [`Config::load`] parses and validates: unknown keys, duplicate names, a volume without a
//! backing store for some node, two volumes on one port: each is refused with a message that
//! names the file and the exact problem. Every command reads the same file, so `tandem config
//! check` and the daemon agree on what is valid.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use engine::layout::LayoutParams;
use serde::Deserialize;
use ublk_target::ublk::UblkOptions;

use crate::cluster::group::GroupSection;
use crate::size::ByteSize;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tandem/tandem.toml";

/// A configuration problem, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub path: String,
    /// What is wrong, in one line.
    pub message: String,
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster-wide settings.
    pub cluster: ClusterSection,
    /// The nodes, `[[node]]`.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeSection>,
    /// The replicated volumes, `[[volume]]`.
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeSection>,
    /// Heartbeat settings, `[heartbeat]`.
    #[serde(default)]
    pub heartbeat: HeartbeatSection,
    /// Resource groups, `[[group]]`.
    #[serde(rename = "group", default)]
    pub groups: Vec<GroupSection>,
    /// Arbitration, `[arbitration]`.
    #[serde(default)]
    pub arbitration: ArbitrationSection,
}

/// `[arbitration]`: who may run the groups when the peer is lost (DESIGN S6).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArbitrationSection {
    /// The witness (`tandem witness`), `host:port`.
    pub witness: Option<String>,
    /// The quorum disk (仲裁盘): a device (or file) both nodes can read and write; its first
    /// 8 KiB hold the lease. Instead of a witness, not with one.
    pub quorum_disk: Option<PathBuf>,
    /// Reference IPs (参考IP): a node that reaches none of them may not run the groups.
    #[serde(default)]
    pub reference_ips: Vec<String>,
    /// Lease the witness grants, in milliseconds (default: the heartbeat dead time).
    pub lease_ms: Option<u64>,
    /// Time a node leaves itself to stop its groups before its lease runs out (default: the
    /// heartbeat interval).
    pub fence_ms: Option<u64>,
    /// At start, wait this long for the peer before taking over alone (default 15000).
    pub startup_wait_ms: Option<u64>,
    /// Without a lease arbiter, take over when the peer is lost anyway (two nodes may then
    /// both run a group when only the links fail).
    #[serde(default)]
    pub takeover_without_arbiter: bool,
}

impl Config {
    /// The witness address, if one is configured (validated at load).
    pub fn witness(&self) -> Option<std::net::SocketAddr> {
        let witness = self.arbitration.witness.as_deref()?;
        Some(
            witness
                .parse()
                .expect("validated when the configuration was loaded"),
        )
    }

    /// The reference IPs (validated at load).
    pub fn reference_ips(&self) -> Vec<IpAddr> {
        self.arbitration
            .reference_ips
            .iter()
            .map(|ip| {
                ip.parse()
                    .expect("validated when the configuration was loaded")
            })
            .collect()
    }

    /// Arbitration timing: (lease_ms, fence_ms, startup_wait_ms).
    pub fn arbitration_timing(&self) -> (u64, u64, u64) {
        let dead = self.heartbeat.interval_ms * u64::from(self.heartbeat.dead_after);
        let section = &self.arbitration;
        (
            section.lease_ms.unwrap_or(dead),
            section.fence_ms.unwrap_or(self.heartbeat.interval_ms),
            section.startup_wait_ms.unwrap_or(15_000),
        )
    }

    fn validate_arbitration(&self) -> Result<(), String> {
        let section = &self.arbitration;
        if section.witness.is_some() && section.quorum_disk.is_some() {
            // Two lease holders could each grant a different node.
            return Err(
                "arbitration: a witness or a quorum_disk, not both (each would grant its own lease)"
                    .to_string(),
            );
        }
        if let Some(witness) = &section.witness
            && witness.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "arbitration.witness {witness:?} is not host:port (10.0.0.3:7790)"
            ));
        }
        if let Some(bad) = section
            .reference_ips
            .iter()
            .find(|a| a.parse::<IpAddr>().is_err())
        {
            return Err(format!(
                "arbitration.reference_ips: {bad:?} is not an IP address"
            ));
        }
        let interval = self.heartbeat.interval_ms;
        let dead = interval * u64::from(self.heartbeat.dead_after);
        let (lease, fence, _) = self.arbitration_timing();
        if !(100..=60_000).contains(&lease) {
            return Err("arbitration.lease_ms must be 100 to 60000".to_string());
        }
        if fence == 0 || fence + interval >= dead || fence >= lease {
            return Err(format!(
                "arbitration.fence_ms {fence} must be above 0, below lease_ms ({lease}) and \
                 below the dead time less one interval ({})",
                dead - interval
            ));
        }
        Ok(())
    }
}

/// `[heartbeat]`: beats over every node's `heartbeat` addresses (link i joins the i-th address
/// of each node; a node without any uses its `address`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatSection {
    /// UDP port on every link.
    #[serde(default = "default_heartbeat_port")]
    pub port: u16,
    /// Milliseconds between beats.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Missed intervals before a link is `suspect`.
    #[serde(default = "default_warn_after")]
    pub warn_after: u32,
    /// Missed intervals before a link is `down`; all links down, the peer is lost.
    #[serde(default = "default_dead_after")]
    pub dead_after: u32,
}

impl Default for HeartbeatSection {
    fn default() -> Self {
        Self {
            port: default_heartbeat_port(),
            interval_ms: default_interval_ms(),
            warn_after: default_warn_after(),
            dead_after: default_dead_after(),
        }
    }
}

fn default_heartbeat_port() -> u16 {
    7788
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_warn_after() -> u32 {
    2
}
fn default_dead_after() -> u32 {
    3
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's name.
    pub name: String,
    /// The file holding the cluster key (base64, 32 bytes).
    pub key_file: PathBuf,
    /// A command run (`sh -c`) for every cluster event, with TANDEM_EVENT, TANDEM_NODE,
    /// TANDEM_GROUP, TANDEM_RESOURCE and TANDEM_STATE in its environment.
    pub alert: Option<String>,
}

/// `[[node]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name (the host name unless `--node` says otherwise).
    pub name: String,
    /// Address for replication and control: where the peer reaches this node.
    pub address: String,
    /// Where this node listens, when the peer reaches it through another address (NAT, a port
    /// forward, a relay); default: `address`.
    pub bind_address: Option<String>,
    /// Heartbeat link addresses, in priority order.
    #[serde(default)]
    pub heartbeat: Vec<String>,
    /// Where this node keeps its state; the admin socket lives here unless set.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The admin socket path.
    pub admin_socket: Option<PathBuf>,
}

impl NodeSection {
    /// Where peers reach this node (validated at load).
    pub fn ip(&self) -> IpAddr {
        self.address
            .parse()
            .expect("validated when the configuration was loaded")
    }

    /// Where this node listens: `bind_address`, else `address` (validated at load).
    pub fn listen_ip(&self) -> IpAddr {
        self.bind_address
            .as_deref()
            .unwrap_or(&self.address)
            .parse()
            .expect("validated when the configuration was loaded")
    }
}

/// Replication protocol: when a write completes (DESIGN §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// Asynchronous: local disk and journal.
    A,
    /// Memory-synchronous: local disk and the peer received it.
    B,
    /// Synchronous: durable on both disks.
    #[default]
    C,
}

/// Compression of the replication stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    None,
    /// LZ4 (fast; the default).
    #[default]
    Lz4,
    /// Zstandard (for slow links).
    Zstd,
}

/// The block device that serves the volume on its primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Frontend {
    /// `/dev/ublkbN` (kernel 6.0+, module `ublk_drv`).
    #[default]
    Ublk,
    /// An NBD export.
    Nbd,
}

/// What to do when a split brain is detected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSplitBrain {
    /// Stay disconnected and let the operator decide.
    #[default]
    Disconnect,
    /// If only one side wrote, resync from it.
    DiscardZeroChanges,
    /// Resync from the side that changed more.
    DiscardLeastChanges,
    /// Resync from the side that became primary first.
    DiscardYoungerPrimary,
}

/// `[[volume]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    /// The volume's name (also the NBD export name).
    pub name: String,
    /// Replication port.
    pub port: u16,
    /// Replication protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// Compression of the replication stream.
    #[serde(default)]
    pub compression: Compression,
    /// Frontend on the primary.
    #[serde(default)]
    pub frontend: Frontend,
    /// NBD port (export name = volume name).
    pub nbd_port: Option<u16>,
    /// ublk hardware queues (default: min(cores, 4)).
    pub ublk_queues: Option<u16>,
    /// ublk requests in flight per queue (default 128).
    pub ublk_depth: Option<u16>,
    /// Logical block size of the ublk device: 512 or 4096.
    #[serde(default = "default_logical_block_size")]
    pub logical_block_size: u32,
    /// Split-brain policy.
    #[serde(default)]
    pub after_split_brain: AfterSplitBrain,
    /// Where an automatic split-brain policy saves the discarded node's blocks (default:
    /// `<state_dir>/discarded`).
    #[serde(default)]
    pub discard_dir: Option<PathBuf>,
    /// Bitmap granule (4KiB to 1MiB, a power of two).
    #[serde(default = "default_granule")]
    pub bitmap_granule: ByteSize,
    /// Size of the on-disk journal ring (0 for none; at most 1GiB).
    #[serde(default = "default_journal_size")]
    pub journal_size: ByteSize,
    /// Journal bytes kept in memory before spilling to the ring.
    #[serde(default = "default_journal_memory")]
    pub journal_memory: ByteSize,
    /// Activity-log extents kept hot.
    #[serde(default = "default_al_extents")]
    pub activity_log_extents: u32,
    /// Size of one activity-log extent.
    #[serde(default = "default_al_extent_size")]
    pub activity_log_extent_size: ByteSize,
    /// A cap on the resync rate, in bytes per second (unset: the resync adapts by itself,
    /// giving way to client writes).
    pub resync_rate: Option<ByteSize>,
    /// Backing store per node: a block device or a file.
    pub backing: BTreeMap<String, PathBuf>,
}

fn default_logical_block_size() -> u32 {
    512
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tandem")
}
fn default_granule() -> ByteSize {
    ByteSize(u64::from(LayoutParams::default().granule_bytes))
}
fn default_journal_size() -> ByteSize {
    ByteSize(LayoutParams::default().journal_bytes)
}
fn default_journal_memory() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_al_extents() -> u32 {
    LayoutParams::default().al_slots
}
fn default_al_extent_size() -> ByteSize {
    ByteSize(u64::from(LayoutParams::default().al_extent_bytes))
}

impl Config {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(error)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| one_line(&e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.cluster.name.trim().is_empty() {
            return Err("cluster.name is empty".to_string());
        }
        let mut names = BTreeSet::new();
        for node in &self.nodes {
            if node.name.trim().is_empty() {
                return Err("a [[node]] has an empty name".to_string());
            }
            if !names.insert(node.name.as_str()) {
                return Err(format!("node {:?} is defined twice", node.name));
            }
            let addresses = [
                ("address", Some(&node.address)),
                ("bind_address", node.bind_address.as_ref()),
            ];
            for (what, value) in addresses {
                if let Some(value) = value
                    && value.parse::<IpAddr>().is_err()
                {
                    return Err(format!(
                        "node {:?}: {what} {value:?} is not an IP address",
                        node.name
                    ));
                }
            }
        }
        if self.nodes.len() != 2 {
            return Err(format!(
                "tandem runs two nodes; {} [[node]] sections found",
                self.nodes.len()
            ));
        }
        self.validate_heartbeat()?;
        self.validate_arbitration()?;
        let mut volume_names = BTreeSet::new();
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for volume in &self.volumes {
            engine::format::validate_volume_name(&volume.name).map_err(|e| e.to_string())?;
            if !volume_names.insert(volume.name.as_str()) {
                return Err(format!("volume {:?} is defined twice", volume.name));
            }
            for port in std::iter::once(volume.port).chain(volume.nbd_port) {
                if port == self.heartbeat.port {
                    return Err(format!(
                        "volume {:?} uses port {port}, the heartbeat port",
                        volume.name
                    ));
                }
                if let Some(other) = ports.insert(port, &volume.name) {
                    return Err(format!(
                        "volumes {other:?} and {:?} both use port {port}",
                        volume.name
                    ));
                }
            }
            for node in &self.nodes {
                if !volume.backing.contains_key(&node.name) {
                    return Err(format!(
                        "volume {:?}: backing has no entry for node {:?}",
                        volume.name, node.name
                    ));
                }
            }
            if let Some(unknown) = volume.backing.keys().find(|n| !names.contains(n.as_str())) {
                return Err(format!(
                    "volume {:?}: backing names unknown node {unknown:?}",
                    volume.name
                ));
            }
            volume
                .layout_params()
                .validate()
                .map_err(|e| format!("volume {:?}: {e}", volume.name))?;
            volume.validate_ublk()?;
        }
        self.validate_groups()
    }

    fn validate_groups(&self) -> Result<(), String> {
        let nodes: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let volumes: BTreeSet<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        let mut names = BTreeSet::new();
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        if self.groups.len() > crate::cluster::advert::GROUPS_MAX {
            return Err(format!(
                "{} groups; at most {} are supported",
                self.groups.len(),
                crate::cluster::advert::GROUPS_MAX
            ));
        }
        for group in &self.groups {
            if !names.insert(group.name.as_str()) {
                return Err(format!("group {:?} is defined twice", group.name));
            }
            group.check(&nodes, &volumes)?;
            let used = group.resources.iter().filter(|r| r.kind == "volume");
            for volume in used.filter_map(|r| r.volume.as_deref()) {
                if let Some(other) = owners.insert(volume, &group.name) {
                    return Err(format!(
                        "volume {volume:?} is in groups {other:?} and {:?}; one group owns it",
                        group.name
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_heartbeat(&self) -> Result<(), String> {
        let beat = &self.heartbeat;
        if !(10..=60_000).contains(&beat.interval_ms) {
            return Err("heartbeat.interval_ms must be 10 to 60000".to_string());
        }
        if beat.warn_after == 0 || beat.dead_after <= beat.warn_after || beat.dead_after > 100 {
            return Err(format!(
                "heartbeat: need 0 < warn_after < dead_after <= 100 (warn_after {}, dead_after {})",
                beat.warn_after, beat.dead_after
            ));
        }
        let counts: Vec<usize> = self.nodes.iter().map(|n| n.heartbeat.len()).collect();
        if counts[0] != counts[1] {
            return Err(format!(
                "node {:?} has {} heartbeat addresses and node {:?} {}: link i joins the i-th \
                 address of each",
                self.nodes[0].name, counts[0], self.nodes[1].name, counts[1]
            ));
        }
        for node in &self.nodes {
            if let Some(bad) = node.heartbeat.iter().find(|a| a.parse::<IpAddr>().is_err()) {
                return Err(format!(
                    "node {:?}: heartbeat address {bad:?} is not an IP address",
                    node.name
                ));
            }
        }
        Ok(())
    }

    /// The heartbeat links, in the configured order: per link and node, where the node binds
    /// and where its peer reaches it. Without `heartbeat` addresses there is one link over
    /// `address` (bound on `bind_address` if set).
    pub fn heartbeat_links(&self) -> Vec<Vec<(IpAddr, IpAddr)>> {
        let count = self.nodes[0].heartbeat.len();
        if count == 0 {
            let ends = self.nodes.iter().map(|n| (n.listen_ip(), n.ip()));
            return vec![ends.collect()];
        }
        (0..count)
            .map(|link| {
                self.nodes
                    .iter()
                    .map(|node| {
                        let ip: IpAddr = node.heartbeat[link].parse().expect("validated");
                        (ip, ip)
                    })
                    .collect()
            })
            .collect()
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Result<&NodeSection, String> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            format!(
                "no node {name:?} in the configuration (nodes: {})",
                known.join(", ")
            )
        })
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Result<&VolumeSection, String> {
        self.volumes.iter().find(|v| v.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
            format!(
                "no volume {name:?} in the configuration (volumes: {})",
                known.join(", ")
            )
        })
    }
}

impl VolumeSection {
    /// The metadata layout parameters this volume asks for.
    pub fn layout_params(&self) -> LayoutParams {
        LayoutParams {
            granule_bytes: u32::try_from(self.bitmap_granule.0).unwrap_or(u32::MAX),
            al_extent_bytes: u32::try_from(self.activity_log_extent_size.0).unwrap_or(u32::MAX),
            al_slots: self.activity_log_extents,
            journal_bytes: self.journal_size.0,
        }
    }

    /// The shape of the ublk device (defaults for what is not set).
    pub fn ublk_options(&self) -> UblkOptions {
        let defaults = UblkOptions::default();
        UblkOptions {
            queues: self.ublk_queues.unwrap_or(defaults.queues),
            depth: self.ublk_depth.unwrap_or(defaults.depth),
            logical_block_bytes: self.logical_block_size,
            ..defaults
        }
    }

    fn validate_ublk(&self) -> Result<(), String> {
        let problem = if !matches!(self.logical_block_size, 512 | 4096) {
            Some(format!(
                "logical_block_size = {} (512 or 4096)",
                self.logical_block_size
            ))
        } else if self.ublk_queues.is_some_and(|q| !(1..=32).contains(&q)) {
            Some("ublk_queues must be 1 to 32".to_string())
        } else if self.ublk_depth.is_some_and(|d| !(1..=4096).contains(&d)) {
            Some("ublk_depth must be 1 to 4096".to_string())
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(format!("volume {:?}: {p}", self.name)))
    }

    /// The backing store of node `node`.
    pub fn backing_for(&self, node: &str) -> Result<&Path, String> {
        self.backing.get(node).map(PathBuf::as_path).ok_or_else(|| {
            format!(
                "volume {:?} has no backing store for node {node:?}",
                self.name
            )
        })
    }
}

/// toml's messages span several lines with a source excerpt; keep the first and the last.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => "invalid TOML".to_string(),
        [only] => (*only).to_string(),
        [first, .., last] => format!("{first} {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
name = "demo"
key_file = "/etc/tandem/cluster.key"

[[node]]
name = "alpha"
address = "127.0.0.1"
state_dir = "/tmp/alpha"

[[node]]
name = "beta"
address = "127.0.0.2"

[[volume]]
name = "r0"
port = 7789
nbd_port = 10809
journal_size = "16MiB"
[volume.backing]
alpha = "/tmp/alpha.img"
beta = "/tmp/beta.img"
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = Config::parse(GOOD).expect("valid");
        let volume = config.volume("r0").expect("r0");
        assert_eq!(volume.protocol, Protocol::C);
        assert_eq!(volume.compression, Compression::Lz4);
        assert_eq!(volume.after_split_brain, AfterSplitBrain::Disconnect);
        assert_eq!(volume.layout_params().journal_bytes, 16 << 20);
        assert_eq!(
            config.node("beta").expect("beta").state_dir,
            PathBuf::from("/var/lib/tandem")
        );
        assert!(config.node("gamma").unwrap_err().contains("alpha, beta"));
        assert_eq!(config.heartbeat.interval_ms, 1000);
        assert_eq!(
            (config.heartbeat.warn_after, config.heartbeat.dead_after),
            (2, 3)
        );
        let links = config.heartbeat_links();
        assert_eq!(links.len(), 1, "one link over the node addresses");
        assert_eq!(links[0][1].1, "127.0.0.2".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn each_problem_is_named() {
        let cases = [
            (
                GOOD.replace("beta = \"/tmp/beta.img\"", ""),
                "backing has no entry for node \"beta\"",
            ),
            (
                GOOD.replace("nbd_port = 10809", "nbd_port = 7789"),
                "both use port 7789",
            ),
            (
                GOOD.replace("journal_size = \"16MiB\"", "journal_size = \"3KiB\""),
                "journal size",
            ),
            (
                GOOD.replace("port = 7789", "port = 7789\nprotocol = \"D\""),
                "unknown variant `D`",
            ),
            (
                GOOD.replace("nbd_port = 10809", "nbd_prot = 10809"),
                "unknown field `nbd_prot`",
            ),
            (
                GOOD.replace("name = \"beta\"", "name = \"alpha\""),
                "node \"alpha\" is defined twice",
            ),
            (
                GOOD.replace(
                    "state_dir = \"/tmp/alpha\"",
                    "state_dir = \"/tmp/alpha\"\nheartbeat = [\"10.0.0.1\"]",
                ),
                "node \"alpha\" has 1 heartbeat addresses and node \"beta\" 0",
            ),
            (
                GOOD.replace("port = 7789", "port = 7788"),
                "uses port 7788, the heartbeat port",
            ),
            (
                format!("{GOOD}[heartbeat]\nwarn_after = 3\ndead_after = 3\n"),
                "need 0 < warn_after < dead_after",
            ),
            (
                format!("{GOOD}[heartbeat]\ninterval_ms = 1\n"),
                "interval_ms must be 10 to 60000",
            ),
            (
                GOOD.replace(
                    "nbd_port = 10809",
                    "nbd_port = 10809\nlogical_block_size = 1024",
                ),
                "logical_block_size = 1024 (512 or 4096)",
            ),
            (
                format!(
                    "{GOOD}[arbitration]\nwitness = \"10.0.0.3:7790\"\nquorum_disk = \"/dev/sdq\"\n"
                ),
                "a witness or a quorum_disk, not both",
            ),
        ];
        for (text, expected) in cases {
            let error = Config::parse(&text).unwrap_err();
            assert!(
                error.contains(expected),
                "expected {expected:?} in {error:?}"
            );
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
    }
}
