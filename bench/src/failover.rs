//! `tandem-bench failover`: from SIGKILL of the active node's daemon to the service answering on
//! the standby, with real daemons (`tandem daemon`) and a witness (`tandem witness`) on this
//! machine's loopback: alpha on 127.0.0.1, beta on 127.0.0.2, the witness on 127.0.0.3, default
//! heartbeat timing (1000 ms, dead after 3). The group: volume r0 (NBD frontend, protocol C),
//! then an HTTP server (`python3 -m http.server`, a `process` resource) bound to the node's own
//! address. A client polls the standby's address every 10 ms; the time is from the kill to its
//! first answer. The killed daemon is started again (it cleans up what its dead run left and
//! rejoins as standby) before the next run, which kills the other node.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::plot::{Bar, BarChart};
use crate::progress;
use crate::results::{Results, TargetCheck};

/// The nodes: name and address.
const NODES: [(&str, &str); 2] = [("alpha", "127.0.0.1"), ("beta", "127.0.0.2")];

/// The witness's address.
const WITNESS: &str = "127.0.0.3:7790";

/// The HTTP server's port on each node's address.
const HTTP_PORT: u16 = 18080;

/// The heartbeat interval, ms: `[heartbeat] interval_ms`'s default, written into the
/// configuration so that the dead time below is the one the daemons run with.
const HEARTBEAT_INTERVAL_MS: u64 = 1000;

/// Missed intervals before a link is down: `[heartbeat] dead_after`'s default, written too.
const HEARTBEAT_DEAD_AFTER: u64 = 3;

/// The heartbeat dead time.
pub const DEAD_TIME: Duration = Duration::from_millis(HEARTBEAT_INTERVAL_MS * HEARTBEAT_DEAD_AFTER);

/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(90);

/// One failover measured.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverRun {
    /// The node whose daemon was killed.
    pub killed: &'static str,
    /// Seconds from the SIGKILL to the first HTTP answer from the other node.
    pub seconds: f64,
}

/// Runs `runs` failovers with the `tandem` binary at `tandem` in `dir` (created, emptied).
pub fn measure(tandem: &Path, dir: &Path, runs: usize) -> anyhow::Result<Vec<FailoverRun>> {
    anyhow::ensure!(
        tandem.exists(),
        "{} not found: build it (cargo build --release -p manager --bin tandem) or pass --tandem",
        tandem.display()
    );
    let python = which("python3").context("python3 is needed for the HTTP service")?;
    let mut cluster = LoopbackCluster::create(tandem, dir, &python)?;
    progress::step("failover: two daemons and a witness, initial sync, group start");
    cluster.start()?;
    let mut results = Vec::new();
    let mut active = 0;
    for run in 0..runs {
        let standby = 1 - active;
        progress::step(&format!(
            "failover {}/{runs}: SIGKILL of {}'s daemon",
            run + 1,
            NODES[active].0
        ));
        let address: SocketAddr = format!("{}:{HTTP_PORT}", NODES[standby].1).parse()?;
        // Nothing may answer there before the kill (a server the standby's earlier run left
        // would make the failover look instant).
        anyhow::ensure!(
            http_get(address).is_err(),
            "{} answers HTTP before the kill",
            NODES[standby].0
        );
        let killed = Instant::now();
        cluster.kill_daemon(active)?;
        let answered = poll_http(address, WAIT);
        let seconds = killed.elapsed().as_secs_f64();
        answered.with_context(|| {
            format!(
                "{} did not answer within {WAIT:?} of the kill\n{}",
                NODES[standby].0,
                cluster.log_tails()
            )
        })?;
        results.push(FailoverRun {
            killed: NODES[active].0,
            seconds,
        });
        if run + 1 < runs {
            cluster.restart_as_standby(active, standby)?;
        }
        active = standby;
    }
    Ok(results)
}

/// Writes the table, the chart and the verdict to `results`.
pub fn publish(results: &mut Results, runs: &[FailoverRun]) -> anyhow::Result<()> {
    let mut text =
        String::from("| run | daemon killed | seconds to the first answer |\n|---|---|---:|\n");
    let mut chart = BarChart::new(
        "Failover: SIGKILL to the service answering on the standby",
        "seconds",
    )
    .with_target(DEAD_TIME.as_secs_f64() + 1.0, "dead time + 1 s");
    for (index, run) in runs.iter().enumerate() {
        results.record("failover", run)?;
        text.push_str(&format!(
            "| {} | {} | {:.2} |\n",
            index + 1,
            run.killed,
            run.seconds
        ));
        chart.bars.push(Bar::new(
            format!("run {}: {} killed", index + 1, run.killed),
            run.seconds,
        ));
    }
    text.push_str(&format!(
        "\nReal daemons and a witness on loopback (127.0.0.1, .2, .3), default heartbeat \
         (interval 1000 ms, dead after 3: dead time {} s); the group is volume r0 then an HTTP \
         server on the node's address; a client polls the standby every 10 ms.\n",
        DEAD_TIME.as_secs()
    ));
    results.section("Failover", &text)?;
    results.chart("failover", &chart)?;
    let worst = runs
        .iter()
        .map(|run| run.seconds)
        .fold(None, |worst: Option<f64>, s| {
            Some(worst.map_or(s, |w| w.max(s)))
        });
    results.targets(vec![TargetCheck::at_most(
        "failover, SIGKILL to the service answering, worst run, seconds",
        worst,
        DEAD_TIME.as_secs_f64() + 1.0,
        "dead time (3 s) + 1 s; default heartbeat settings",
    )])
}

/// Where `program` is on the PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Polls `GET /` at `address` every 10 ms until an HTTP answer arrives or `timeout` passes.
fn poll_http(address: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if http_get(address).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < timeout, "no HTTP answer from {address}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn http_get(address: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    anyhow::ensure!(answer.starts_with(b"HTTP/1."), "not an HTTP answer");
    Ok(())
}

/// Two daemons and a witness on loopback.
struct LoopbackCluster {
    tandem: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    witness: Option<Child>,
    daemons: [Option<Child>; 2],
}

impl LoopbackCluster {
    fn create(tandem: &Path, dir: &Path, python: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = output_ok(Command::new(tandem).arg("keygen"), "tandem keygen")?;
        let key_file = dir.join("cluster.key");
        std::fs::write(&key_file, key.stdout)?;
        let mut text = format!(
            "[cluster]\nname = \"bench-failover\"\nkey_file = \"{}\"\n\n",
            key_file.display()
        );
        for (name, address) in NODES {
            text += &format!(
                "[[node]]\nname = \"{name}\"\naddress = \"{address}\"\nstate_dir = \"{}\"\n\n",
                dir.join(name).display()
            );
        }
        text += "[[volume]]\nname = \"r0\"\nport = 17789\nfrontend = \"nbd\"\nnbd_port = 18809\n\
                 journal_size = \"4MiB\"\n[volume.backing]\n";
        for (name, _) in NODES {
            let backing = dir.join(format!("{name}.img"));
            std::fs::File::create(&backing)?.set_len(64 << 20)?;
            text += &format!("{name} = \"{}\"\n", backing.display());
        }
        let serve = dir.join("www");
        std::fs::create_dir_all(&serve)?;
        std::fs::write(serve.join("index.html"), "tandem failover bench\n")?;
        // One command for both nodes: each binds its own address.
        let script = format!(
            "case $TANDEM_NODE in alpha) a={};; beta) a={};; esac; exec {} -m http.server {HTTP_PORT} --bind $a --directory {}",
            NODES[0].1,
            NODES[1].1,
            python.display(),
            serve.display()
        );
        text += &format!(
            r#"
[heartbeat]
interval_ms = {HEARTBEAT_INTERVAL_MS}
dead_after = {HEARTBEAT_DEAD_AFTER}

[arbitration]
witness = "{WITNESS}"

[[group]]
name = "web"
nodes = ["alpha", "beta"]
auto_start = false

[[group.resource]]
name = "data"
kind = "volume"
volume = "r0"

[[group.resource]]
name = "http"
kind = "process"
command = ["sh", "-c", "{script}"]
after = ["data"]
[group.resource.monitor]
interval_ms = 1000
"#
        );
        let config = dir.join("tandem.toml");
        std::fs::write(&config, text)?;
        let cluster = Self {
            tandem: tandem.to_path_buf(),
            dir: dir.to_path_buf(),
            config,
            witness: None,
            daemons: [None, None],
        };
        cluster.tandem_ok(0, &["config", "check"])?;
        for node in 0..2 {
            cluster.tandem_ok(node, &["create-md", "r0"])?;
        }
        Ok(cluster)
    }

    /// Witness, daemons, initial sync, the group on alpha.
    fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("witness.log"))?;
        self.witness = Some(
            Command::new(&self.tandem)
                .args(["witness", "--listen", WITNESS, "--key"])
                .arg(self.dir.join("cluster.key"))
                .args(["--restart-grace-ms", "500"])
                .env("TANDEM_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting the witness")?,
        );
        for node in 0..2 {
            self.start_daemon(node)?;
        }
        self.tandem_ok(0, &["volume", "wait", "r0", "connected", "--timeout", "30"])?;
        self.tandem_ok(0, &["volume", "primary", "r0", "--force"])?;
        self.tandem_ok(0, &["volume", "wait", "r0", "synced", "--timeout", "120"])?;
        self.tandem_ok(0, &["volume", "secondary", "r0"])?;
        self.wait_status("both volumes up_to_date and secondary", |status| {
            status.iter().all(|s| {
                s["volumes"][0]["disk"] == "up_to_date" && s["volumes"][0]["role"] == "secondary"
            })
        })?;
        self.tandem_ok(0, &["group", "start", "web"])?;
        poll_http(format!("{}:{HTTP_PORT}", NODES[0].1).parse()?, WAIT)
            .context("the group's HTTP server on alpha")?;
        self.wait_status("the group running on alpha with the lease", |status| {
            status[0]["groups"][0]["active_node"] == "alpha"
                && status[0]["groups"][0]["state"] == "running"
                && status[0]["arbitration"]["lease_held"] == true
        })
    }

    fn start_daemon(&mut self, node: usize) -> anyhow::Result<()> {
        let name = NODES[node].0;
        let socket = self.dir.join(name).join("tandem.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(&self.tandem)
            .arg("--config")
            .arg(&self.config)
            .args(["--node", name, "daemon"])
            .env("TANDEM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}'s daemon"))?;
        self.daemons[node] = Some(child);
        let started = Instant::now();
        while !socket.exists() {
            let exited = self.daemons[node]
                .as_mut()
                .map(Child::try_wait)
                .transpose()
                .context("waiting for the daemon")?
                .flatten();
            if let Some(status) = exited {
                anyhow::bail!("{name}'s daemon exited ({status})\n{}", self.log_tails());
            }
            anyhow::ensure!(
                started.elapsed() < WAIT,
                "{name}'s admin socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill_daemon(&mut self, node: usize) -> anyhow::Result<()> {
        let mut child = self.daemons[node]
            .take()
            .with_context(|| format!("{}'s daemon is not running", NODES[node].0))?;
        child.kill().context("SIGKILL")?;
        child.wait().context("reaping the daemon")?;
        Ok(())
    }

    /// Starts the killed node's daemon again and waits until it is standby with its data in
    /// sync and the group running on the other node.
    fn restart_as_standby(&mut self, node: usize, active: usize) -> anyhow::Result<()> {
        self.start_daemon(node)?;
        let (name, active_name) = (NODES[node].0, NODES[active].0);
        self.wait_status(
            &format!("{name} back as standby, in sync, cleaned up"),
            |status| {
                let back = &status[node];
                let stopped = back["groups"][0]["resources"]
                    .as_array()
                    .is_some_and(|resources| resources.iter().all(|r| r["state"] == "stopped"));
                stopped
                    && back["volumes"][0]["role"] == "secondary"
                    && back["volumes"][0]["disk"] == "up_to_date"
                    && back["volumes"][0]["peer_disk"] == "up_to_date"
                    && back["groups"][0]["active_node"] == active_name
                    && status[active]["groups"][0]["state"] == "running"
                    && status[active]["arbitration"]["lease_held"] == true
            },
        )
    }

    /// Waits until `ready` holds for both nodes' `status --json`.
    fn wait_status(
        &self,
        what: &str,
        ready: impl Fn(&[serde_json::Value; 2]) -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let status = [self.status(0), self.status(1)];
            if let [Ok(alpha), Ok(beta)] = status {
                let both = [alpha, beta];
                if ready(&both) {
                    return Ok(());
                }
                anyhow::ensure!(
                    started.elapsed() < WAIT,
                    "{what}: not within {WAIT:?}\nalpha: {}\nbeta: {}\n{}",
                    both[0],
                    both[1],
                    self.log_tails()
                );
            } else {
                anyhow::ensure!(started.elapsed() < WAIT, "{what}: status failed");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status(&self, node: usize) -> anyhow::Result<serde_json::Value> {
        let output = self.tandem_ok(node, &["status", "--json"])?;
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    fn tandem_ok(&self, node: usize, args: &[&str]) -> anyhow::Result<Output> {
        output_ok(
            Command::new(&self.tandem)
                .arg("--config")
                .arg(&self.config)
                .args(["--node", NODES[node].0])
                .args(args),
            &format!("tandem {} on {}", args.join(" "), NODES[node].0),
        )
    }

    /// The last lines of each daemon's log, for an error.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (name, _) in NODES {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out += &format!("--- {name}.log (last lines)\n{}\n", tail.join("\n"));
        }
        out
    }

    /// Stops the HTTP servers the daemons left (they outlive a killed daemon by design).
    fn kill_services(&self) {
        for (name, _) in NODES {
            let pidfile = self.dir.join(name).join("agents").join("web.http.pid");
            let Ok(text) = std::fs::read_to_string(&pidfile) else {
                continue;
            };
            // `<pid> <start time>`: the start time (field 22 of /proc/<pid>/stat) tells the
            // server from a later process that got its pid.
            let mut fields = text.split_whitespace();
            let (Some(pid), Some(start_time)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let started = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(19));
            if started != Some(start_time) {
                continue;
            }
            // The process runs in a process group of its own, led by itself.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        for daemon in self.daemons.iter_mut().flatten() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        if let Some(witness) = self.witness.as_mut() {
            let _ = witness.kill();
            let _ = witness.wait();
        }
        self.kill_services();
    }
}

fn output_ok(command: &mut Command, what: &str) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}
