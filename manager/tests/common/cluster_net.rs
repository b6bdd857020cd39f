//! Three network namespaces for cluster tests: alpha and beta joined by two veth links, and a
//! witness namespace whose bridge joins one more veth from each node (the service network:
//! the witness listens there, clients connect there, the virtual IP lives there).
//!
//! ```text
//!   alpha ab0 10.50.1.1 ────────────────────── ba0 10.50.1.2 beta   link 0: node addresses,
//!                                                                   replication, heartbeat
//!   alpha ab1 10.50.2.1 ────────────────────── ba1 10.50.2.2 beta   link 1: heartbeat
//!   alpha svc0 10.50.3.1 ── wa ─┐       ┌─ wb ── svc0 10.50.3.2 beta
//!                               br0 10.50.3.3 (witness namespace)
//! ```
//!
//! Interface and subnet names only need to be unique inside the namespaces; the namespace
//! names carry the test's tag and the process id. Dropping it kills every process left in the
//! three namespaces (services the daemons started, nbdfuse), detaches the loop devices whose
//! backing file lies under the registered scratch directory, and deletes the namespaces.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::{require_tools, run_ok};

/// The node addresses (link 0): replication, NBD and heartbeat link 0.
pub const NODE_ADDRESSES: [&str; 2] = ["10.50.1.1", "10.50.1.2"];
/// Heartbeat link 1.
pub const LINK1_ADDRESSES: [&str; 2] = ["10.50.2.1", "10.50.2.2"];
/// The nodes on the service network.
pub const SERVICE_ADDRESSES: [&str; 2] = ["10.50.3.1", "10.50.3.2"];
/// The witness (and client) on the service network.
pub const WITNESS_ADDRESS: &str = "10.50.3.3";
/// The service interface in alpha and in beta.
pub const SERVICE_INTERFACE: &str = "svc0";

/// A python3 to run services and clients with: the system's when it has one (a version
/// manager's shim would add its start-up time to every measurement).
pub fn python3() -> String {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".to_string()
    } else {
        "python3".to_string()
    }
}

/// The three namespaces; see the module documentation.
pub struct ClusterNet {
    /// alpha's, beta's and the witness's namespace.
    pub names: [String; 3],
    /// Loop devices backed by files under this directory are detached when dropped.
    scratch: Option<PathBuf>,
}

impl ClusterNet {
    /// Creates the namespaces and links; `tag` tells tests apart (one per test).
    pub fn new(tag: &str) -> Self {
        require_tools(&[("ip", "iproute2")]);
        let id = std::process::id() % 200 + 20;
        let names = ["a", "b", "w"].map(|side| format!("tdm{tag}{side}{id}"));
        for name in &names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
        let net = Self {
            names,
            scratch: None,
        };
        for name in &net.names {
            run_ok(Command::new("ip").args(["netns", "add", name]));
            net.ip(name, &["link", "set", "lo", "up"]);
        }
        let [alpha, beta, witness] = net.names.clone();
        // The two links between alpha and beta.
        for (link, addresses) in [NODE_ADDRESSES, LINK1_ADDRESSES].iter().enumerate() {
            let (a, b) = (format!("ab{link}"), format!("ba{link}"));
            run_ok(Command::new("ip").args([
                "link", "add", &a, "netns", &alpha, "type", "veth", "peer", "name", &b, "netns",
                &beta,
            ]));
            net.ip(
                &alpha,
                &["addr", "add", &format!("{}/24", addresses[0]), "dev", &a],
            );
            net.ip(
                &beta,
                &["addr", "add", &format!("{}/24", addresses[1]), "dev", &b],
            );
            net.ip(&alpha, &["link", "set", &a, "up"]);
            net.ip(&beta, &["link", "set", &b, "up"]);
        }
        // The service network: a bridge in the witness namespace.
        net.ip(&witness, &["link", "add", "br0", "type", "bridge"]);
        net.ip(
            &witness,
            &[
                "addr",
                "add",
                &format!("{WITNESS_ADDRESS}/24"),
                "dev",
                "br0",
            ],
        );
        net.ip(&witness, &["link", "set", "br0", "up"]);
        for (index, (node, port)) in [(&alpha, "wa"), (&beta, "wb")].into_iter().enumerate() {
            run_ok(Command::new("ip").args([
                "link",
                "add",
                SERVICE_INTERFACE,
                "netns",
                node,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                &witness,
            ]));
            let address = format!("{}/24", SERVICE_ADDRESSES[index]);
            net.ip(node, &["addr", "add", &address, "dev", SERVICE_INTERFACE]);
            net.ip(node, &["link", "set", SERVICE_INTERFACE, "up"]);
            net.ip(&witness, &["link", "set", port, "master", "br0"]);
            net.ip(&witness, &["link", "set", port, "up"]);
        }
        net
    }

    fn ip(&self, netns: &str, args: &[&str]) {
        run_ok(Command::new("ip").args(["-n", netns]).args(args));
    }

    /// The namespace of `who`: "alpha", "beta" or "witness".
    pub fn netns(&self, who: &str) -> &str {
        match who {
            "alpha" => &self.names[0],
            "beta" => &self.names[1],
            "witness" => &self.names[2],
            other => panic!("no namespace for {other}"),
        }
    }

    /// Loop devices over files under `dir` are detached when this is dropped.
    pub fn clean_loops_under(&mut self, dir: &Path) {
        self.scratch = Some(dir.to_path_buf());
    }

    /// Takes link 0 or 1 between alpha and beta down or up, on both ends (a cable pulled, or
    /// plugged back).
    pub fn set_link(&self, link: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip(
            &self.names[0],
            &["link", "set", &format!("ab{link}"), state],
        );
        self.ip(
            &self.names[1],
            &["link", "set", &format!("ba{link}"), state],
        );
    }

    /// Takes `who`'s service interface (its way to the witness and the clients) down or up.
    pub fn set_service(&self, who: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        self.ip(self.netns(who), &["link", "set", SERVICE_INTERFACE, state]);
    }

    /// Whether `who`'s namespace holds IPv4 `address` on some interface.
    pub fn holds(&self, who: &str, address: &str) -> bool {
        let output = run_ok(Command::new("ip").args(["-n", self.netns(who), "-4", "-o", "addr"]));
        let needle = format!(" {address}/");
        String::from_utf8_lossy(&output.stdout).contains(&needle)
    }

    /// `program` run inside `who`'s namespace.
    pub fn command(&self, who: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.netns(who), program]);
        command
    }

    /// Starts an HTTP client in `who`'s namespace that asks `http://address:port/path` from
    /// `address` itself (so only a server on this namespace's own copy of the address
    /// answers), every 20 ms until a 200 answer or `limit`.
    pub fn http_poller(
        &self,
        who: &str,
        address: &str,
        port: u16,
        path: &str,
        limit: Duration,
    ) -> HttpPoller {
        self.spawn_http_client(who, address, port, path, limit, true)
    }

    fn spawn_http_client(
        &self,
        who: &str,
        address: &str,
        port: u16,
        path: &str,
        limit: Duration,
        from_address: bool,
    ) -> HttpPoller {
        let mut child = self
            .command(who, &python3())
            .args([
                "-c",
                HTTP_CLIENT,
                address,
                &port.to_string(),
                path,
                &format!("{:.1}", limit.as_secs_f64()),
                if from_address { "from-address" } else { "any" },
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the HTTP client");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "the HTTP client did not start");
        HttpPoller { child, stdout }
    }

    /// The body of `path` as `who` gets it from a server on its own copy of `address`, within
    /// `limit`; `Err` with the last problem otherwise.
    pub fn http_get(
        &self,
        who: &str,
        address: &str,
        port: u16,
        path: &str,
        limit: Duration,
    ) -> Result<String, String> {
        self.http_poller(who, address, port, path, limit).answer()
    }

    /// The body of `path` as a client in `who`'s namespace gets it from `address` over the
    /// network (whoever answers for the address there), within `limit`.
    pub fn http_get_remote(
        &self,
        who: &str,
        address: &str,
        port: u16,
        path: &str,
        limit: Duration,
    ) -> Result<String, String> {
        self.spawn_http_client(who, address, port, path, limit, false)
            .answer()
    }

    /// The processes in the three namespaces.
    fn pids(&self) -> Vec<i32> {
        self.names
            .iter()
            .flat_map(|name| {
                let output = Command::new("ip").args(["netns", "pids", name]).output();
                let text = output
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                text.split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// Kills every process in the three namespaces and waits (boundedly) until none is left.
    ///
    /// Loop devices under the scratch directory are detached first (a mounted one when its
    /// mount goes), and nbdfuse is stopped with SIGTERM before the rest: it then closes its
    /// FUSE connection. Killed together with the rest, nbdfuse can be the last process of a
    /// daemon's mount namespace, whose end unmounts the ext4 on the loop device over
    /// nbdfuse's own file: that final flush would wait for it forever (a D-state task and a
    /// loop device lost until reboot). If it does not go, its FUSE connection is aborted
    /// (where fusectl is mounted) before SIGKILL.
    pub fn kill_everything(&self) {
        if let Some(dir) = &self.scratch {
            Self::detach_loops_under(dir);
        }
        let signal = |pid: i32, signal| {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        };
        let nbdfuse = || -> Vec<i32> {
            self.pids()
                .into_iter()
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "nbdfuse")
                })
                .collect()
        };
        for pid in nbdfuse() {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nbdfuse().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in nbdfuse() {
            abort_fuse_connections(pid);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() >= deadline {
                return;
            }
            for pid in pids {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Detaches every loop device whose backing file lies under `dir` (a busy one is detached
    /// when its last user closes it).
    pub fn detach_loops_under(dir: &Path) {
        let Ok(entries) = std::fs::read_dir("/sys/block") else {
            return;
        };
        let prefix = dir.as_os_str().as_encoded_bytes();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(backing) = std::fs::read(entry.path().join("loop/backing_file")) else {
                continue;
            };
            if backing.starts_with(prefix) {
                let _ = Command::new("losetup")
                    .args(["-d", &format!("/dev/{name}")])
                    .output();
            }
        }
    }
}

impl Drop for ClusterNet {
    fn drop(&mut self) {
        self.kill_everything();
        if let Some(dir) = &self.scratch {
            Self::detach_loops_under(dir);
        }
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Aborts the FUSE connections mounted in `pid`'s mount namespace, through fusectl (if it is
/// mounted): their requests then fail at once.
fn abort_fuse_connections(pid: i32) {
    let Ok(mountinfo) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return;
    };
    for line in mountinfo.lines() {
        let Some((fields, tail)) = line.split_once(" - ") else {
            continue;
        };
        if !tail.starts_with("fuse") {
            continue;
        }
        let Some(minor) = fields
            .split_whitespace()
            .nth(2)
            .and_then(|numbers| numbers.strip_prefix("0:"))
        else {
            continue;
        };
        let abort = format!("/sys/fs/fuse/connections/{minor}/abort");
        if Path::new(&abort).exists() {
            let _ = std::fs::write(abort, "1");
        }
    }
}

/// A running HTTP client (see [`ClusterNet::http_poller`]).
pub struct HttpPoller {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl HttpPoller {
    /// Waits for its result (it gives up by itself after its limit): the body, or the last
    /// problem.
    pub fn answer(mut self) -> Result<String, String> {
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        let _ = self.child.wait();
        let line = line.trim_end_matches('\n');
        match line.split_once(' ') {
            Some(("answer", body)) => Ok(body.to_string()),
            _ => Err(line.to_string()),
        }
    }
}

impl Drop for HttpPoller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The HTTP client: with `from-address`, binds to the address it asks (only a local copy of
/// it answers); sends a GET, prints `answer BODY` for a 200 (the body on one line) or
/// `failed PROBLEM` at the limit.
const HTTP_CLIENT: &str = r#"
import socket, sys, time
address, port, path, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
from_address = sys.argv[5] == "from-address"
print("ready", flush=True)
deadline = time.monotonic() + limit
last = "no attempt"
while True:
    s = socket.socket()
    try:
        s.settimeout(1.0)
        if from_address:
            s.bind((address, 0))
        s.connect((address, port))
        s.sendall(("GET %s HTTP/1.0\r\nHost: tandem\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        fields = head.split(b" ")
        status = fields[1].decode() if len(fields) > 1 else "none"
        if status == "200":
            print("answer " + body.decode(errors="replace").replace("\n", " "), flush=True)
            sys.exit(0)
        last = "HTTP status " + status
    except OSError as error:
        last = str(error)
    finally:
        s.close()
    if time.monotonic() >= deadline:
        print("failed " + last, flush=True)
        sys.exit(1)
    time.sleep(0.02)
"#;
