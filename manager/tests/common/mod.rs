//! Running real `tandem` daemons for tests: a scratch directory, a configuration, the cluster
//! key, processes that are killed when the test ends, and bounded waits on real conditions.
#![allow(dead_code, unreachable_pub)]

pub mod cluster_net;
pub mod nbd;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The tandem binary under test.
pub fn tandem_binary() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

/// Panics with an install hint when a tool the test needs is missing.
pub fn require_tools(tools: &[(&str, &str)]) {
    for (tool, package) in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} is missing: install {package} (scripts/test.sh does)"
        );
    }
}

/// One node of the test cluster.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Its name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Run its commands inside this network namespace.
    pub netns: Option<String>,
}

/// A scratch cluster: directory, configuration, key, daemons.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub nodes: Vec<NodeSpec>,
    daemons: Vec<(String, Child)>,
    /// Nodes that use their own copy of the configuration (with another cluster key).
    own_configs: Vec<(String, PathBuf)>,
}

impl Cluster {
    /// Creates the scratch directory, key, backing files of `backing_bytes` and configuration.
    /// `volume_extra` is appended to the `[[volume]]` section (before its backing table).
    pub fn new(test: &str, nodes: Vec<NodeSpec>, backing_bytes: u64, volume_extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-it-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let key = run_ok(Command::new(tandem_binary()).arg("keygen"));
        std::fs::write(dir.join("cluster.key"), key.stdout).expect("key");
        let mut text = format!(
            "[cluster]\nname = \"it\"\nkey_file = \"{}\"\n\n",
            dir.join("cluster.key").display()
        );
        for node in &nodes {
            text += &format!(
                "[[node]]\nname = \"{}\"\naddress = \"{}\"\nstate_dir = \"{}\"\n\n",
                node.name,
                node.address,
                dir.join(&node.name).display()
            );
        }
        text += &format!(
            "[[volume]]\nname = \"r0\"\nport = 7789\nfrontend = \"nbd\"\nnbd_port = 10809\n{volume_extra}\n[volume.backing]\n"
        );
        for node in &nodes {
            let backing = dir.join(format!("{}.img", node.name));
            std::fs::File::create(&backing)
                .expect("backing")
                .set_len(backing_bytes)
                .expect("size");
            text += &format!("{} = \"{}\"\n", node.name, backing.display());
        }
        let config = dir.join("tandem.toml");
        std::fs::write(&config, text).expect("config");
        Self {
            dir,
            config,
            nodes,
            daemons: Vec::new(),
            own_configs: Vec::new(),
        }
    }

    /// Gives `name` a configuration of its own whose cluster key differs from everyone else's.
    pub fn give_other_key(&mut self, name: &str) {
        let key = run_ok(Command::new(tandem_binary()).arg("keygen"));
        let key_path = self.dir.join(format!("{name}-other.key"));
        std::fs::write(&key_path, key.stdout).expect("key");
        let text = std::fs::read_to_string(&self.config).expect("config");
        let shared_key = self.dir.join("cluster.key").display().to_string();
        let text = text.replace(&shared_key, &key_path.display().to_string());
        let path = self.dir.join(format!("{name}-tandem.toml"));
        std::fs::write(&path, text).expect("config copy");
        self.own_configs.push((name.to_string(), path));
    }

    /// Adds `line` to the `[[node]]` section of `name`.
    pub fn set_node_option(&mut self, name: &str, line: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let anchor = format!("name = \"{name}\"\n");
        assert!(text.contains(&anchor), "node {name} in the configuration");
        let text = text.replacen(&anchor, &format!("{anchor}{line}\n"), 1);
        std::fs::write(&self.config, text).expect("config");
    }

    /// Appends `text` (whole sections: `[arbitration]`, `[[group]]`...) to the configuration.
    pub fn append_config(&mut self, text: &str) {
        let mut config = std::fs::read_to_string(&self.config).expect("config");
        config += "\n";
        config += text;
        std::fs::write(&self.config, config).expect("config");
    }

    fn config_of(&self, name: &str) -> &Path {
        self.own_configs
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.config.as_path(), |(_, p)| p)
    }

    pub fn node(&self, name: &str) -> &NodeSpec {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("known node")
    }

    pub fn backing(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    /// A command run as `node` (inside its network namespace, if any).
    pub fn command(&self, name: &str, program: &str) -> Command {
        match &self.node(name).netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, program]);
                command
            }
            None => Command::new(program),
        }
    }

    /// `tandem --config C --node NAME args...`, output captured.
    pub fn tandem(&self, name: &str, args: &[&str]) -> Output {
        let mut command = self.command(name, tandem_binary());
        command
            .arg("--config")
            .arg(self.config_of(name))
            .args(["--node", name])
            .args(args);
        command.output().expect("run tandem")
    }

    /// Like [`Cluster::tandem`], and it must succeed.
    pub fn tandem_ok(&self, name: &str, args: &[&str]) -> Output {
        let output = self.tandem(name, args);
        assert!(
            output.status.success(),
            "tandem {args:?} on {name} failed: {}",
            describe(&output)
        );
        output
    }

    /// Starts the daemon of `name` and waits for its admin socket.
    pub fn start_daemon(&mut self, name: &str) {
        // A socket left by a killed daemon must not count as this one's.
        let _ = std::fs::remove_file(self.dir.join(name).join("tandem.sock"));
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let mut command = self.command(name, tandem_binary());
        command
            .arg("--config")
            .arg(self.config_of(name))
            .args(["--node", name, "daemon"])
            .env("TANDEM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().expect("start daemon");
        self.daemons.push((name.to_string(), child));
        let socket = self.dir.join(name).join("tandem.sock");
        wait_for(
            Duration::from_secs(20),
            &format!("{name}'s admin socket"),
            || socket.exists(),
        );
    }

    /// The process id of `name`'s daemon.
    pub fn daemon_pid(&self, name: &str) -> u32 {
        self.daemons
            .iter()
            .find(|(n, _)| n == name)
            .expect("running")
            .1
            .id()
    }

    /// Kills the daemon of `name` with SIGKILL (a crash) and reaps it.
    pub fn kill_daemon(&mut self, name: &str) {
        let position = self
            .daemons
            .iter()
            .position(|(n, _)| n == name)
            .expect("running");
        let (_, mut child) = self.daemons.remove(position);
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Stops the daemon of `name` with SIGTERM and waits for it to exit.
    pub fn stop_daemon(&mut self, name: &str) {
        let position = self
            .daemons
            .iter()
            .position(|(n, _)| n == name)
            .expect("running");
        let (_, mut child) = self.daemons.remove(position);
        let pid = nix::unistd::Pid::from_raw(child.id().cast_signed());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_for(Duration::from_secs(30), "the daemon to exit", || {
            child.try_wait().ok().flatten().is_some()
        });
    }

    /// Waits until `node` reports r0 in sync with its peer (`volume wait r0 synced`), at most
    /// `seconds`; fails with both logs otherwise.
    pub fn wait_synced(&self, node: &str, seconds: u32) {
        let timeout = seconds.to_string();
        let synced = self.tandem(
            node,
            &["volume", "wait", "r0", "synced", "--timeout", &timeout],
        );
        assert!(
            synced.status.success(),
            "{}\n{}",
            describe(&synced),
            self.logs()
        );
    }

    /// The daemon log of `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `tandem status --json` of `name`, the volume part.
    pub fn volume_status(&self, name: &str) -> serde_json::Value {
        let output = self.tandem_ok(name, &["status", "--json"]);
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("status JSON");
        report["volumes"][0].clone()
    }

    /// Compares the data areas of the two backing stores.
    pub fn data_areas_identical(&self) -> bool {
        let data_bytes = self.volume_status(&self.nodes[0].name)["size_bytes"]
            .as_u64()
            .expect("size");
        let read = |name: &str| {
            let mut bytes = std::fs::read(self.backing(name)).expect("backing");
            bytes.truncate(data_bytes as usize);
            bytes
        };
        read(&self.nodes[0].name) == read(&self.nodes[1].name)
    }

    /// Both daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- {} log (tail) ---\n{}",
                    n.name,
                    tail(&self.log(&n.name), 40)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("TANDEM_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs a command that must succeed.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        describe(&output)
    );
    output
}

/// stdout and stderr of a finished command.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `done` every 50 ms until it holds; panics after `limit`.
pub fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A pair of network namespaces joined by a veth pair, removed when dropped.
pub struct NetnsPair {
    pub names: [String; 2],
    pub addresses: [String; 2],
    pub veths: [String; 2],
    /// The veths of links added with `add_link`.
    links: Vec<[String; 2]>,
}

impl NetnsPair {
    pub fn new(tag: &str) -> Self {
        require_tools(&[("ip", "iproute2")]);
        let id = std::process::id() % 200 + 20;
        let names = [format!("tdm{tag}a{id}"), format!("tdm{tag}b{id}")];
        let addresses = [format!("10.231.{id}.1"), format!("10.231.{id}.2")];
        for name in &names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            run_ok(Command::new("ip").args(["netns", "add", name]));
            run_ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        }
        let veth = [format!("tdv{id}a"), format!("tdv{id}b")];
        run_ok(Command::new("ip").args([
            "link", "add", &veth[0], "netns", &names[0], "type", "veth", "peer", "name", &veth[1],
            "netns", &names[1],
        ]));
        for index in 0..2 {
            let address = format!("{}/24", addresses[index]);
            run_ok(Command::new("ip").args([
                "-n",
                &names[index],
                "addr",
                "add",
                &address,
                "dev",
                &veth[index],
            ]));
            run_ok(Command::new("ip").args([
                "-n",
                &names[index],
                "link",
                "set",
                &veth[index],
                "up",
            ]));
        }
        Self {
            names,
            addresses,
            veths: veth,
            links: Vec::new(),
        }
    }

    /// Adds another veth link between the namespaces, on subnet 10.(232 + n).ID.0/24; returns
    /// its two addresses. Links are numbered from 0 (the one `new` made).
    pub fn add_link(&mut self) -> [String; 2] {
        let id = std::process::id() % 200 + 20;
        let n = self.links.len() + 1;
        let veth = [format!("tdv{id}a{n}"), format!("tdv{id}b{n}")];
        let addresses = [
            format!("10.{}.{id}.1", 231 + n),
            format!("10.{}.{id}.2", 231 + n),
        ];
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &veth[0],
            "netns",
            &self.names[0],
            "type",
            "veth",
            "peer",
            "name",
            &veth[1],
            "netns",
            &self.names[1],
        ]));
        for index in 0..2 {
            let address = format!("{}/24", addresses[index]);
            let netns = &self.names[index];
            run_ok(Command::new("ip").args([
                "-n",
                netns,
                "addr",
                "add",
                &address,
                "dev",
                &veth[index],
            ]));
            run_ok(Command::new("ip").args(["-n", netns, "link", "set", &veth[index], "up"]));
        }
        self.links.push(veth);
        addresses
    }

    /// Takes link `link` down or up on both sides (a cable pulled, or plugged back).
    pub fn set_link(&self, link: usize, up: bool) {
        let veth = if link == 0 {
            &self.veths
        } else {
            &self.links[link - 1]
        };
        for (netns, veth) in self.names.iter().zip(veth) {
            let state = if up { "up" } else { "down" };
            run_ok(Command::new("ip").args(["-n", netns, "link", "set", veth, state]));
        }
    }

    /// Limits each side's sending rate with a token bucket (`tc qdisc ... tbf`).
    pub fn limit_rate(&self, rate: &str) {
        for index in 0..2 {
            run_ok(Command::new("ip").args([
                "netns",
                "exec",
                &self.names[index],
                "tc",
                "qdisc",
                "add",
                "dev",
                &self.veths[index],
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kb",
                "latency",
                "400ms",
            ]));
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// An NBD export mounted as ext4 on the host: nbdfuse (in `netns`, if given) → loop → mount.
pub struct NbdMount {
    pub fuse_dir: PathBuf,
    pub mount_dir: PathBuf,
    pub loop_device: Option<String>,
    nbdfuse: Option<Child>,
}

impl NbdMount {
    /// Starts nbdfuse for `uri` and attaches a loop device to its file.
    pub fn attach(dir: &Path, tag: &str, uri: &str, netns: Option<&str>) -> Self {
        require_tools(&[
            ("nbdfuse", "libnbd-bin"),
            ("losetup", "util-linux"),
            ("nsenter", "util-linux"),
            ("mkfs.ext4", "e2fsprogs"),
        ]);
        let fuse_dir = dir.join(format!("fuse-{tag}"));
        let mount_dir = dir.join(format!("mnt-{tag}"));
        std::fs::create_dir_all(&fuse_dir).expect("fuse dir");
        std::fs::create_dir_all(&mount_dir).expect("mount dir");
        let file = fuse_dir.join("disk");
        // nsenter enters only the network namespace: `ip netns exec` would also give nbdfuse a
        // private mount namespace, and its FUSE mount would not be seen here.
        let mut command = match netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{netns}"))
                    .arg("nbdfuse");
                c
            }
            None => Command::new("nbdfuse"),
        };
        let child = command
            .arg(&file)
            .arg(uri)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nbdfuse");
        let mut mount = Self {
            fuse_dir,
            mount_dir,
            loop_device: None,
            nbdfuse: Some(child),
        };
        wait_for(Duration::from_secs(20), "the nbdfuse file", || {
            file.exists()
        });
        let output = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&file));
        mount.loop_device = Some(String::from_utf8_lossy(&output.stdout).trim().to_string());
        mount
    }

    pub fn mkfs(&self) {
        run_ok(Command::new("mkfs.ext4").args([
            "-q",
            "-F",
            self.loop_device.as_deref().expect("loop"),
        ]));
    }

    pub fn mount(&self) {
        run_ok(
            Command::new("mount")
                .arg(self.loop_device.as_deref().expect("loop"))
                .arg(&self.mount_dir),
        );
    }

    /// Unmounts and detaches everything (lazily, so a dead server cannot hang it).
    pub fn detach(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_dir)
            .output();
        if let Some(device) = self.loop_device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).output();
        }
        if let Some(mut child) = self.nbdfuse.take() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.fuse_dir)
                .output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NbdMount {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Alpha and beta on loopback addresses `127.0.SUBNET.1` and `.2`.
pub fn loopback_pair(subnet: u8) -> Vec<NodeSpec> {
    ["alpha", "beta"]
        .iter()
        .enumerate()
        .map(|(index, name)| NodeSpec {
            name: (*name).to_string(),
            address: format!("127.0.{subnet}.{}", index + 1),
            netns: None,
        })
        .collect()
}

/// Makes alpha primary over fresh metadata and waits for the full sync.
pub fn primary_and_synced(cluster: &mut Cluster) {
    for node in ["alpha", "beta"] {
        cluster.tandem_ok(node, &["create-md", "r0"]);
        cluster.start_daemon(node);
    }
    cluster.tandem_ok(
        "alpha",
        &["volume", "wait", "r0", "connected", "--timeout", "30"],
    );
    cluster.tandem_ok("alpha", &["volume", "primary", "r0", "--force"]);
    cluster.wait_synced("alpha", 120);
}
