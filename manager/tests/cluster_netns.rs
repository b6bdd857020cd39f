//! The cluster manager with real daemons: alpha, beta and a witness in three network
//! namespaces (see `common::cluster_net`: two veth links between alpha and beta, both
//! heartbeat links, replication on the first; a bridge in the witness namespace joins the
//! service network), `tandem witness` there, and one group on alpha and beta:
//! volume r0 → ext4 on it (filesystem agent: nbdfuse + loop) → a virtual IP on the service
//! network → `python3 -m http.server` serving the filesystem on the virtual IP, each after
//! the previous. Default heartbeat timing (1000 ms, dead after 3). "Served on a node" means
//! a client in that node's namespace, bound to the virtual IP (so only that node's own copy
//! of the address can answer), got the file.
//!
//! - SIGKILL of the active daemon: beta takes over; a file written and fsynced on alpha is
//!   served by beta within dead time + 2 s of the kill (measured and printed). alpha's daemon
//!   restarted cleans up what its dead run left (the virtual IP, the HTTP server) and rejoins
//!   as standby.
//! - One heartbeat link cut (each in turn): no failover, sampled over more than the dead time;
//!   status shows that link down and the peer reachable; back up, r0 is in sync again.
//! - Both links between alpha and beta cut, the witness reachable from both: alpha (holding
//!   the lease) runs on, beta does not start; the virtual IP is never in both namespaces and
//!   the volume never primary on both (sampled every 100 ms, S6). Links back: one node active,
//!   the volumes connected and up_to_date. Then cut again, alpha also cut from the witness:
//!   alpha fences itself, beta takes over, still never two.
//! - The HTTP server killed: restarted by its monitor, three times; the fourth failure within
//!   60 s fails the group over to beta. The virtual IP is never in both namespaces.
//! - Switchover to beta and back with the data intact, also for a client on the service
//!   network; in maintenance a killed HTTP server is neither restarted nor failed over;
//!   maintenance off, it is restarted.
//!
//! The tests run one at a time (a mutex), so that their timing does not suffer from each
//! other on a small machine; each has its own namespaces, scratch directory, daemons and
//! witness, cleaned up when it ends (also when it fails).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster_net::{
    ClusterNet, LINK1_ADDRESSES, NODE_ADDRESSES, SERVICE_INTERFACE, WITNESS_ADDRESS, python3,
};
use common::{Cluster, NodeSpec, describe, require_tools, run_ok, tandem_binary, wait_for};

const VIP: &str = "10.50.3.100";
const PORT: u16 = 8080;
const GROUP: &str = "web";
const WITNESS_PORT: u16 = 7790;
/// Heartbeat defaults: interval 1000 ms, dead after 3 missed intervals.
const DEAD_TIME: Duration = Duration::from_secs(3);

/// One test at a time: they use the same addresses and load the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running cluster: namespaces, witness, both daemons, the group running on alpha with
/// `data.txt` written and fsynced through its mount.
struct Setup {
    /// Dropped after `Setup::drop` killed everything in the namespaces: reaps its daemons,
    /// removes its directory; `net` then deletes the namespaces.
    cluster: Cluster,
    witness: Option<Child>,
    net: ClusterNet,
    /// The content of `data.txt`.
    data: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut witness) = self.witness.take() {
            let _ = witness.kill();
            let _ = witness.wait();
        }
        self.net.kill_everything();
    }
}

/// Who arbitrates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arbiter {
    /// `tandem witness` in the witness namespace.
    Witness,
    /// A file both daemons open as `[arbitration] quorum_disk`.
    QuorumDisk,
}

impl Setup {
    fn new(tag: &str) -> Self {
        Self::with(tag, Arbiter::Witness)
    }

    fn with(tag: &str, arbiter: Arbiter) -> Self {
        require_tools(&[
            ("ip", "iproute2"),
            ("nbdfuse", "libnbd-bin"),
            ("losetup", "util-linux"),
            ("nsenter", "util-linux"),
            ("mkfs.ext4", "e2fsprogs"),
            ("python3", "python3"),
        ]);
        let mut net = ClusterNet::new(tag);
        let nodes = ["alpha", "beta"]
            .iter()
            .enumerate()
            .map(|(index, name)| NodeSpec {
                name: (*name).to_string(),
                address: NODE_ADDRESSES[index].to_string(),
                netns: Some(net.names[index].clone()),
            })
            .collect();
        let mut cluster = Cluster::new(
            &format!("cluster-{tag}"),
            nodes,
            96 << 20,
            "journal_size = \"4MiB\"",
        );
        net.clean_loops_under(&cluster.dir);
        for (index, node) in ["alpha", "beta"].iter().enumerate() {
            let line = format!(
                "heartbeat = [\"{}\", \"{}\"]",
                NODE_ADDRESSES[index], LINK1_ADDRESSES[index]
            );
            cluster.set_node_option(node, &line);
        }
        let mount = cluster.dir.join("mnt");
        let python = python3();
        let arbitration = match arbiter {
            Arbiter::Witness => format!("witness = \"{WITNESS_ADDRESS}:{WITNESS_PORT}\""),
            Arbiter::QuorumDisk => {
                let disk = cluster.dir.join("quorum.disk");
                std::fs::File::create(&disk)
                    .and_then(|f| f.set_len(1 << 20))
                    .expect("the quorum disk file");
                format!("quorum_disk = \"{}\"", disk.display())
            }
        };
        cluster.append_config(&format!(
            r#"[arbitration]
{arbitration}

[[group]]
name = "{GROUP}"
nodes = ["alpha", "beta"]
auto_start = false

[[group.resource]]
name = "data"
kind = "volume"
volume = "r0"

[[group.resource]]
name = "fs"
kind = "filesystem"
volume = "r0"
mount = "{mount}"
after = ["data"]
[group.resource.monitor]
interval_ms = 2000

[[group.resource]]
name = "vip"
kind = "ip"
address = "{VIP}/24"
interface = "{SERVICE_INTERFACE}"
after = ["fs"]
[group.resource.monitor]
interval_ms = 2000

[[group.resource]]
name = "http"
kind = "process"
command = ["{python}", "-m", "http.server", "{PORT}", "--bind", "{VIP}", "--directory", "{mount}"]
after = ["vip"]
[group.resource.monitor]
interval_ms = 1000
action = "restart"
restarts = 3
window_s = 60
"#,
            mount = mount.display(),
        ));
        cluster.tandem_ok("alpha", &["config", "check"]);

        // Fresh metadata on both; ext4 in alpha's data area, which the first sync copies.
        let created = cluster.tandem_ok("alpha", &["create-md", "r0"]);
        let text = String::from_utf8_lossy(&created.stdout).to_string();
        let data_bytes: u64 = text
            .split_once("of data (")
            .and_then(|(_, rest)| rest.split_once(" bytes)"))
            .and_then(|(bytes, _)| bytes.parse().ok())
            .unwrap_or_else(|| panic!("data size in {text:?}"));
        cluster.tandem_ok("beta", &["create-md", "r0"]);
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "nodiscard"])
                .arg(cluster.backing("alpha"))
                .arg(format!("{}k", data_bytes / 1024)),
        );

        let witness = (arbiter == Arbiter::Witness).then(|| {
            let log = std::fs::File::create(cluster.dir.join("witness.log")).expect("log");
            net.command("witness", tandem_binary())
                .args(["witness", "--listen"])
                .arg(format!("{WITNESS_ADDRESS}:{WITNESS_PORT}"))
                .arg("--key")
                .arg(cluster.dir.join("cluster.key"))
                .args(["--restart-grace-ms", "500"])
                .env("TANDEM_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start the witness")
        });
        let mut setup = Self {
            cluster,
            witness,
            net,
            data: String::new(),
        };
        for node in ["alpha", "beta"] {
            setup.cluster.start_daemon(node);
        }
        let cluster = &setup.cluster;
        cluster.tandem_ok(
            "alpha",
            &["volume", "wait", "r0", "connected", "--timeout", "30"],
        );
        cluster.tandem_ok("alpha", &["volume", "primary", "r0", "--force"]);
        cluster.wait_synced("alpha", 120);
        cluster.tandem_ok("alpha", &["volume", "secondary", "r0"]);
        setup.wait_status("both volumes up_to_date and secondary", |s| {
            ["alpha", "beta"].iter().all(|n| {
                let status = s(n);
                let volume = &status["volumes"][0];
                volume["disk"] == "up_to_date" && volume["role"] == "secondary"
            })
        });

        let started = Instant::now();
        setup.cluster.tandem_ok("alpha", &["group", "start", GROUP]);
        setup.wait_serving("alpha", "/");
        eprintln!(
            "group started on alpha in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        setup.wait_status("the group running on alpha with the lease", |s| {
            let alpha = s("alpha");
            group_is(&alpha, "alpha", "running") && alpha["arbitration"]["lease_held"] == true
        });
        setup.data = format!("tandem {tag} {}", std::process::id());
        setup.write_file("alpha", "data.txt", &setup.data.clone());
        assert_eq!(setup.wait_serving("alpha", "/data.txt"), setup.data);
        setup
    }

    /// `tandem status --json` of `node`.
    fn status(&self, node: &str) -> serde_json::Value {
        let output = self.cluster.tandem(node, &["status", "--json"]);
        if !output.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits up to 60 s until `done` holds for the nodes' status; fails with the logs.
    fn wait_status(
        &self,
        what: &str,
        mut done: impl FnMut(&dyn Fn(&str) -> serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if done(&|node: &str| self.status(node)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nalpha: {}\nbeta: {}\n{}",
                self.status("alpha"),
                self.status("beta"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemons' and the witness's logs.
    fn logs(&self) -> String {
        let witness =
            std::fs::read_to_string(self.cluster.dir.join("witness.log")).unwrap_or_default();
        let killed =
            std::fs::read_to_string(self.cluster.dir.join("alpha-killed.log")).unwrap_or_default();
        format!(
            "--- alpha log before the kill (tail) ---\n{}\n{}\n--- witness log (tail) ---\n{}",
            common::tail(&killed, 30),
            self.cluster.logs(),
            common::tail(&witness, 20)
        )
    }

    /// The body of `path` served on `node`'s own virtual IP, waited for up to 30 s.
    fn wait_serving(&self, node: &str, path: &str) -> String {
        self.net
            .http_get(node, VIP, PORT, path, Duration::from_secs(30))
            .unwrap_or_else(|problem| {
                panic!(
                    "{node} did not serve {path} on {VIP}: {problem}\nalpha: {}\nbeta: {}\n{}",
                    self.status("alpha"),
                    self.status("beta"),
                    self.logs()
                )
            })
    }

    /// Writes `name` with `content` on the filesystem mounted by `node`'s daemon (in its
    /// mount namespace), fsyncing the file and the directory.
    fn write_file(&self, node: &str, name: &str, content: &str) {
        let path = self.cluster.dir.join("mnt").join(name);
        let pid = self.cluster.daemon_pid(node).to_string();
        run_ok(
            Command::new("nsenter")
                .args(["-t", &pid, "-m", "--"])
                .arg(python3())
                .args(["-c", WRITE_FSYNC])
                .arg(&path)
                .arg(content),
        );
    }

    /// The HTTP server's process on `node`, from its pidfile.
    fn http_pid(&self, node: &str) -> Option<i32> {
        let pidfile = self.cluster.dir.join(node).join("agents/web.http.pid");
        let text = std::fs::read_to_string(pidfile).ok()?;
        let pid: i32 = text.split_whitespace().next()?.parse().ok()?;
        // Alive and not a zombie.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .to_string();
        (state != "Z" && state != "X").then_some(pid)
    }

    /// Kills `node`'s HTTP server with SIGKILL; returns its pid.
    fn kill_http(&self, node: &str) -> i32 {
        let pid = self.http_pid(node).expect("the HTTP server runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        pid
    }
}

/// Writes argv[2] to argv[1], fsyncs it and its directory.
const WRITE_FSYNC: &str = r#"
import os, sys
with open(sys.argv[1], "w") as f:
    f.write(sys.argv[2])
    f.flush()
    os.fsync(f.fileno())
d = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)
os.fsync(d)
os.close(d)
"#;

/// The intervals in which `log` shows r0 primary, as (from, until) log timestamps (RFC 3339 in
/// UTC with a fixed width, so they compare as strings); "~" is after every timestamp.
fn primary_intervals(log: &str) -> Vec<(String, String)> {
    let mut intervals = Vec::new();
    let mut since = None;
    for line in log.lines() {
        let at = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if line.contains("role secondary -> primary") {
            since = Some(at);
        } else if line.contains("role primary -> secondary")
            && let Some(from) = since.take()
        {
            intervals.push((from, at));
        }
    }
    if let Some(from) = since {
        intervals.push((from, "~".to_string()));
    }
    intervals
}

/// S6 from the daemons' own logs (one clock): the intervals in which alpha and beta held r0
/// primary never overlap.
fn assert_never_both_primary(setup: &Setup) {
    let alpha = primary_intervals(&setup.cluster.log("alpha"));
    let beta = primary_intervals(&setup.cluster.log("beta"));
    for (a_from, a_until) in &alpha {
        for (b_from, b_until) in &beta {
            assert!(
                a_until <= b_from || b_until <= a_from,
                "r0 primary on both: alpha {a_from}..{a_until}, beta {b_from}..{b_until}\n{}",
                setup.logs()
            );
        }
    }
    assert!(!alpha.is_empty(), "alpha was never primary?");
}

/// Whether `status` shows the group on `node` in `state`.
fn group_is(status: &serde_json::Value, node: &str, state: &str) -> bool {
    let group = &status["groups"][0];
    group["active_node"] == node && group["state"] == state
}

/// Samples, every 100 ms in a thread of its own, which namespaces hold the virtual IP and
/// which daemons report r0 primary; counts the samples where both do.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Samples>>,
}

#[derive(Debug, Default)]
struct Samples {
    count: u32,
    vip_on_both: Vec<String>,
    primary_on_both: Vec<String>,
    /// Samples where some node held the virtual IP.
    vip_somewhere: u32,
}

impl Sampler {
    /// Starts sampling `setup`'s namespaces (and with `roles`, the volume roles), for at most
    /// `limit`.
    fn start(setup: &Setup, roles: bool, limit: Duration) -> Self {
        let names = [setup.net.names[0].clone(), setup.net.names[1].clone()];
        let config = setup.cluster.config.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut samples = Samples::default();
            let holds = |netns: &str| {
                Command::new("ip")
                    .args(["-n", netns, "-4", "-o", "addr"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(" {VIP}/")))
            };
            let primary = |index: usize| {
                let output = Command::new("ip")
                    .args(["netns", "exec", &names[index], tandem_binary(), "--config"])
                    .arg(&config)
                    .args(["--node", ["alpha", "beta"][index], "status", "--json"])
                    .output();
                output.is_ok_and(|o| {
                    serde_json::from_slice::<serde_json::Value>(&o.stdout)
                        .is_ok_and(|s| s["volumes"][0]["role"] == "primary")
                })
            };
            while !stopped.load(Ordering::Relaxed) && started.elapsed() < limit {
                let at = format!("{:.1} s", started.elapsed().as_secs_f64());
                let vip = [holds(&names[0]), holds(&names[1])];
                if vip[0] && vip[1] {
                    samples.vip_on_both.push(at.clone());
                }
                if vip[0] || vip[1] {
                    samples.vip_somewhere += 1;
                }
                if roles && primary(0) && primary(1) {
                    samples.primary_on_both.push(at);
                }
                samples.count += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and checks: never on both.
    fn finish(mut self, setup: &Setup) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("sampler");
        assert!(
            samples.vip_on_both.is_empty(),
            "{VIP} in both namespaces at {:?} ({} samples)\n{}",
            samples.vip_on_both,
            samples.count,
            setup.logs()
        );
        assert!(
            samples.primary_on_both.is_empty(),
            "r0 primary on both nodes at {:?} ({} samples)\n{}",
            samples.primary_on_both,
            samples.count,
            setup.logs()
        );
        samples
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_standby_takes_over_when_the_active_daemon_is_killed() {
    let _serial = serial();
    let test_started = Instant::now();
    let mut setup = Setup::new("c1");
    let status = setup.status("beta");
    assert_eq!(status["volumes"][0]["disk"], "up_to_date", "{status}");
    assert_eq!(status["volumes"][0]["connection"], "connected", "{status}");

    // A client in beta's namespace asks the virtual IP from the virtual IP: only a server on
    // beta's own copy of it can answer.
    let poller = setup
        .net
        .http_poller("beta", VIP, PORT, "/data.txt", Duration::from_secs(30));
    let killed = Instant::now();
    setup.cluster.kill_daemon("alpha");
    let answer = poller.answer();
    let failover = killed.elapsed();
    eprintln!(
        "failover: SIGKILL of alpha's daemon -> first HTTP answer from beta in {:.2} s",
        failover.as_secs_f64()
    );
    let body = answer.unwrap_or_else(|problem| {
        panic!(
            "beta did not serve after the kill: {problem}\nbeta: {}\n{}",
            setup.status("beta"),
            setup.logs()
        )
    });
    assert_eq!(body, setup.data, "the data written and fsynced on alpha");
    assert!(
        failover <= DEAD_TIME + Duration::from_secs(2),
        "failover took {failover:?}, more than dead time + 2 s\n{}",
        setup.logs()
    );
    let beta = setup.status("beta");
    assert!(group_is(&beta, "beta", "running"), "{beta}");
    assert_eq!(beta["volumes"][0]["role"], "primary", "{beta}");

    // alpha's daemon comes back: it takes down what its dead run left and joins as standby.
    let stale_http = setup
        .http_pid("alpha")
        .expect("alpha's old HTTP server still runs");
    assert!(
        setup.net.holds("alpha", VIP),
        "alpha's old run left its VIP"
    );
    let dir = &setup.cluster.dir;
    std::fs::rename(dir.join("alpha.log"), dir.join("alpha-killed.log")).expect("keep the log");
    setup.cluster.start_daemon("alpha");
    setup.wait_status("alpha back as standby, cleaned up", |s| {
        let alpha = s("alpha");
        group_is(&alpha, "beta", "running")
            && alpha["volumes"][0]["role"] == "secondary"
            && alpha["volumes"][0]["disk"] == "up_to_date"
            && alpha["groups"][0]["resources"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["state"] == "stopped"))
    });
    assert!(!setup.net.holds("alpha", VIP), "alpha still holds {VIP}");
    assert!(
        std::fs::metadata(format!("/proc/{stale_http}")).is_err()
            || setup.http_pid("alpha").is_none(),
        "alpha's old HTTP server still runs"
    );
    assert_eq!(setup.wait_serving("beta", "/data.txt"), setup.data);
    eprintln!("test 1 took {:.1} s", test_started.elapsed().as_secs_f64());
}

#[test]
fn one_cut_heartbeat_link_causes_no_failover() {
    let _serial = serial();
    let test_started = Instant::now();
    let setup = Setup::new("c2");
    for link in [1, 0] {
        let sampler = Sampler::start(&setup, false, Duration::from_secs(60));
        setup.net.set_link(link, false);
        let cut = Instant::now();
        // Sampled over more than the dead time: the group stays on alpha, beta starts nothing.
        let mut checks = 0;
        while cut.elapsed() < DEAD_TIME + Duration::from_secs(2) {
            let alpha = setup.status("alpha");
            let beta = setup.status("beta");
            assert!(
                group_is(&alpha, "alpha", "running"),
                "link {link} cut: {alpha}\n{}",
                setup.logs()
            );
            assert!(
                group_is(&beta, "alpha", "running"),
                "link {link} cut: {beta}\n{}",
                setup.logs()
            );
            checks += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        let link_health = |s: &serde_json::Value, peer: &str| -> Vec<String> {
            s["nodes"]
                .as_array()
                .and_then(|nodes| nodes.iter().find(|n| n["name"] == peer))
                .and_then(|n| n["links"].as_array())
                .map(|links| {
                    links
                        .iter()
                        .map(|l| l["health"].as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut want = vec!["up".to_string(), "up".to_string()];
        want[link] = "down".to_string();
        setup.wait_status(&format!("link {link} down in status"), |s| {
            let alpha = s("alpha");
            let beta = s("beta");
            link_health(&alpha, "beta") == want
                && link_health(&beta, "alpha") == want
                && alpha["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().all(|n| n["reachable"] == true))
        });
        assert_eq!(
            setup.wait_serving("alpha", "/data.txt"),
            setup.data,
            "link {link} cut"
        );
        let samples = sampler.finish(&setup);
        assert_eq!(
            samples.vip_somewhere, samples.count,
            "the VIP was on neither node at some sample"
        );
        assert!(!setup.net.holds("beta", VIP));
        eprintln!(
            "link {link} cut: {checks} status checks over {:.1} s, the group stayed on alpha",
            cut.elapsed().as_secs_f64()
        );
        setup.net.set_link(link, true);
        // Back up; after link 0 (replication) the volumes have caught up again.
        setup.wait_status(&format!("link {link} up again, r0 in sync"), |s| {
            let beta = s("beta");
            link_health(&s("alpha"), "beta") == ["up", "up"]
                && beta["volumes"][0]["connection"] == "connected"
                && beta["volumes"][0]["disk"] == "up_to_date"
        });
    }
    eprintln!("test 2 took {:.1} s", test_started.elapsed().as_secs_f64());
}

/// Both alpha-beta links cut while the arbiter is reachable from both: alpha alone stays
/// active (the VIP and the roles sampled throughout) and writes alone; beta is refused because
/// of alpha. The links come back and the catch-up ends on both sides.
fn partition_keeps_alpha_alone_active(setup: &Setup) {
    let sampler = Sampler::start(setup, true, Duration::from_secs(120));
    setup.net.set_link(0, false);
    setup.net.set_link(1, false);
    let cut = Instant::now();
    setup.wait_status("each node to lose the other", |s| {
        ["alpha", "beta"].iter().all(|n| {
            s(n)["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|x| x["reachable"] == false))
        })
    });
    // Give beta time to ask the arbiter (and be refused) several times.
    while cut.elapsed() < DEAD_TIME + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let alpha = setup.status("alpha");
    let beta = setup.status("beta");
    assert!(group_is(&alpha, "alpha", "running"), "{alpha}");
    assert_eq!(alpha["arbitration"]["lease_held"], true, "{alpha}");
    assert_eq!(alpha["arbitration"]["fenced"], false, "{alpha}");
    let beta_group = &beta["groups"][0];
    assert!(
        beta_group["active_node"] != "beta" && beta_group["state"] == "stopped",
        "beta must not start: {beta}"
    );
    // The arbiter refused beta because of alpha: alpha holds the lease, or (once alpha has
    // told it that beta misses writes) beta's data is outdated.
    assert_eq!(beta["arbitration"]["lease_held"], false, "{beta}");
    let reason = beta_group["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("held by alpha") || reason.contains("alpha ran without this node"),
        "beta's reason: {beta}"
    );
    assert_eq!(beta["volumes"][0]["role"], "secondary", "{beta}");
    // alpha still serves, and writes go on there alone.
    assert_eq!(setup.wait_serving("alpha", "/data.txt"), setup.data);
    setup.write_file("alpha", "during-partition.txt", "written while cut off");

    setup.net.set_link(0, true);
    setup.net.set_link(1, true);
    setup.wait_status("the cluster to converge", |s| {
        let alpha = s("alpha");
        let beta = s("beta");
        // Resynced: the catch-up of what alpha wrote alone has ended on both sides (a cut
        // during it would rightly leave beta outdated).
        group_is(&alpha, "alpha", "running")
            && group_is(&beta, "alpha", "running")
            && beta["volumes"][0]["disk"] == "up_to_date"
            && beta["volumes"][0]["connection"] == "connected"
            && alpha["volumes"][0]["peer_disk"] == "up_to_date"
            && alpha["volumes"][0]["replication"] == "established"
            && beta["volumes"][0]["replication"] == "established"
            && alpha["volumes"][0]["out_of_sync_bytes"] == 0
    });
    let samples = sampler.finish(setup);
    eprintln!(
        "partition: {} samples of both namespaces and both roles, never two",
        samples.count
    );
    assert!(!setup.net.holds("beta", VIP));
    assert_eq!(
        setup.wait_serving("alpha", "/during-partition.txt"),
        "written while cut off"
    );
}

#[test]
fn a_partition_with_the_witness_reachable_leaves_one_node_active() {
    let _serial = serial();
    let test_started = Instant::now();
    let setup = Setup::new("c3");
    partition_keeps_alpha_alone_active(&setup);

    // Cut again, and alpha loses the witness too: it cannot renew its lease and fences itself
    // (the group stopped, r0 demoted) before the lease runs out; only then does the witness
    // give the lease to beta, which takes over (S6).
    let sampler = Sampler::start(&setup, true, Duration::from_secs(120));
    setup.net.set_link(0, false);
    setup.net.set_link(1, false);
    setup.net.set_service("alpha", false);
    let cut = Instant::now();
    assert_eq!(setup.wait_serving("beta", "/data.txt"), setup.data);
    eprintln!(
        "alpha cut off from beta and the witness: beta serves {:.2} s later",
        cut.elapsed().as_secs_f64()
    );
    setup.wait_status("alpha fenced, the group on beta", |s| {
        let alpha = s("alpha");
        alpha["arbitration"]["fenced"] == true
            && alpha["groups"][0]["state"] == "stopped"
            && alpha["volumes"][0]["role"] == "secondary"
            && group_is(&s("beta"), "beta", "running")
    });
    assert!(!setup.net.holds("alpha", VIP));
    assert_never_both_primary(&setup);
    let samples = sampler.finish(&setup);
    eprintln!(
        "fencing: {} samples of both namespaces and both roles, never two",
        samples.count
    );
    setup.net.set_service("alpha", true);
    setup.net.set_link(0, true);
    setup.net.set_link(1, true);
    setup.wait_status("alpha back, the group on beta", |s| {
        let alpha = s("alpha");
        alpha["arbitration"]["fenced"] == false
            && group_is(&alpha, "beta", "running")
            && group_is(&s("beta"), "beta", "running")
    });
    // alpha's own forced unmount wrote while it was cut off (protocol C: completed once its
    // link gave up), beta wrote after taking over: the volumes have diverged, and meeting
    // again they say so (S5) or connect; either way nothing changes the group's place.
    let settled = |status: &serde_json::Value| {
        let volume = &status["volumes"][0];
        volume["connection"] == "connected" || volume["split_brain"] == true
    };
    setup.wait_status("the volumes to meet again", |s| {
        settled(&s("alpha")) && settled(&s("beta"))
    });
    for node in ["alpha", "beta"] {
        let volume = &setup.status(node)["volumes"][0];
        eprintln!(
            "after the links came back, {node}: r0 {} {}, connection {}, split brain {}",
            volume["role"], volume["disk"], volume["connection"], volume["split_brain"]
        );
    }
    let alpha = setup.status("alpha");
    assert!(group_is(&alpha, "beta", "running"), "{alpha}");
    assert!(!setup.net.holds("alpha", VIP));
    eprintln!("test 3 took {:.1} s", test_started.elapsed().as_secs_f64());
}

#[test]
fn a_quorum_disk_keeps_one_node_active_in_a_partition_and_hands_over_after_a_kill() {
    let _serial = serial();
    let test_started = Instant::now();
    let mut setup = Setup::with("c6", Arbiter::QuorumDisk);
    partition_keeps_alpha_alone_active(&setup);
    // alpha's daemon dies: its slot stops changing, and beta takes the lease a lease later.
    let killed = Instant::now();
    setup.cluster.kill_daemon("alpha");
    assert_eq!(
        setup.wait_serving("beta", "/during-partition.txt"),
        "written while cut off"
    );
    eprintln!(
        "quorum disk: SIGKILL of alpha's daemon -> beta serves in {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    let beta = setup.status("beta");
    assert!(group_is(&beta, "beta", "running"), "{beta}");
    assert_eq!(beta["arbitration"]["lease_held"], true, "{beta}");
    // (No log check of the roles here: a SIGKILLed daemon logs no demotion. The sampler
    // covered the partition; after the kill alpha's engine is gone with its process.)
    eprintln!("test 6 took {:.1} s", test_started.elapsed().as_secs_f64());
}

#[test]
fn a_failing_service_is_restarted_three_times_then_failed_over() {
    let _serial = serial();
    let test_started = Instant::now();
    let setup = Setup::new("c4");
    let sampler = Sampler::start(&setup, false, Duration::from_secs(120));
    let window = Instant::now();
    for restart in 1..=3 {
        let old = setup.kill_http("alpha");
        wait_for(
            Duration::from_secs(15),
            &format!("restart {restart} of the HTTP server"),
            || setup.http_pid("alpha").is_some_and(|pid| pid != old),
        );
        assert_eq!(setup.wait_serving("alpha", "/data.txt"), setup.data);
        let alpha = setup.status("alpha");
        assert!(group_is(&alpha, "alpha", "running"), "{alpha}");
    }
    setup.kill_http("alpha");
    assert_eq!(setup.wait_serving("beta", "/data.txt"), setup.data);
    assert!(
        window.elapsed() < Duration::from_secs(60),
        "four failures took {:?}: not within the monitor's window",
        window.elapsed()
    );
    setup.wait_status("the group on beta, failed on alpha", |s| {
        let alpha = s("alpha");
        group_is(&alpha, "beta", "running")
            && group_is(&s("beta"), "beta", "running")
            && alpha["groups"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("http failed 4 times within 60 s"))
    });
    assert_never_both_primary(&setup);
    sampler.finish(&setup);
    assert!(!setup.net.holds("alpha", VIP));
    eprintln!("test 4 took {:.1} s", test_started.elapsed().as_secs_f64());
}

#[test]
fn switchover_and_back_and_maintenance() {
    let _serial = serial();
    let test_started = Instant::now();
    let setup = Setup::new("c5");
    let sampler = Sampler::start(&setup, true, Duration::from_secs(150));
    // A client on the service network (in the witness's namespace) that has talked to the
    // group on alpha, so its neighbour table has alpha's MAC for the address.
    let client = |what: &str| {
        setup
            .net
            .http_get_remote("witness", VIP, PORT, "/data.txt", Duration::from_secs(30))
            .unwrap_or_else(|problem| panic!("client, {what}: {problem}\n{}", setup.logs()))
    };
    assert_eq!(client("before the switchover"), setup.data);
    for (to, from) in [("beta", "alpha"), ("alpha", "beta")] {
        let started = Instant::now();
        setup
            .cluster
            .tandem_ok(from, &["group", "switch", GROUP, "--to", to]);
        assert_eq!(setup.wait_serving(to, "/data.txt"), setup.data);
        let serving = started.elapsed();
        // The client follows the address to its new node (gratuitous ARP).
        assert_eq!(client(&format!("after the switch to {to}")), setup.data);
        eprintln!(
            "switchover to {to}: serving after {:.2} s, the client served after {:.2} s",
            serving.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        setup.wait_status(&format!("the group on {to}"), |s| {
            group_is(&s("alpha"), to, "running") && group_is(&s("beta"), to, "running")
        });
        assert!(!setup.net.holds(from, VIP));
    }
    let status = setup.status("alpha");
    assert_eq!(status["volumes"][0]["role"], "primary", "{status}");

    // Maintenance: a dead service is left alone, and nothing moves.
    setup.cluster.tandem_ok("beta", &["maintenance", "on"]);
    setup.wait_status("maintenance on both", |s| {
        s("alpha")["arbitration"]["maintenance"] == true
            && s("beta")["arbitration"]["maintenance"] == true
    });
    let old = setup.kill_http("alpha");
    wait_for(Duration::from_secs(5), "the HTTP server to die", || {
        setup.http_pid("alpha") != Some(old)
    });
    let killed = Instant::now();
    while killed.elapsed() < Duration::from_secs(5) {
        assert_eq!(setup.http_pid("alpha"), None, "restarted in maintenance");
        let alpha = setup.status("alpha");
        let beta = setup.status("beta");
        assert!(group_is(&alpha, "alpha", "running"), "{alpha}");
        assert!(group_is(&beta, "alpha", "running"), "{beta}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(setup.net.holds("alpha", VIP));
    setup.cluster.tandem_ok("alpha", &["maintenance", "off"]);
    assert_eq!(setup.wait_serving("alpha", "/data.txt"), setup.data);
    setup.wait_status("maintenance off, the group on alpha", |s| {
        let alpha = s("alpha");
        alpha["arbitration"]["maintenance"] == false
            && s("beta")["arbitration"]["maintenance"] == false
            && group_is(&alpha, "alpha", "running")
    });
    assert_never_both_primary(&setup);
    sampler.finish(&setup);
    let output = setup
        .cluster
        .tandem("alpha", &["group", "switch", GROUP, "--to", "gamma"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let witness = std::fs::read_to_string(setup.cluster.dir.join("witness.log")).expect("log");
    assert!(
        witness.contains("granting no lease for the first 500 ms"),
        "--restart-grace-ms: {witness}"
    );
    eprintln!("test 5 took {:.1} s", test_started.elapsed().as_secs_f64());
}
