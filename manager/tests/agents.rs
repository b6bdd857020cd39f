//! Resource agents on this machine: a supervised process, a script, an OCF agent, a systemd
//! unit (only its refusal without systemd), a filesystem on a loop device and over NBD
//! (qemu-nbd → nbdfuse → loop), and a virtual IP inside network namespaces of the test's own.
//! Every wait polls a real condition with a deadline.

mod common;

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{describe, require_tools, run_ok};
use manager::cluster::group::ResourceSection;
use manager::runtime::agents::{Agent, AgentContext, FsDevice, Health};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A scratch directory, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tandem-agents-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn context(&self, group: &str, resource: &str) -> AgentContext {
        AgentContext {
            state_dir: self.path("state"),
            node: "alpha".into(),
            group: group.into(),
            resource: resource.into(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("TANDEM_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn section(text: &str) -> ResourceSection {
    toml::from_str(text).unwrap_or_else(|e| panic!("section {text}: {e}"))
}

/// Polls `done` every 50 ms (yielding to the runtime) until it holds; panics after `limit`.
async fn wait_until(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Field 3 of `/proc/<pid>/stat`, None when the process is gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

fn pid_in(pidfile: &Path) -> i32 {
    let text = std::fs::read_to_string(pidfile).expect("pidfile");
    text.split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("pidfile {text:?}"))
}

/// Installs `text` as an executable at `path`, written by a child process so that no
/// descriptor open for writing leaks into a concurrently forked child (ETXTBSY).
fn install_executable(scratch: &Scratch, path: &Path, text: &str) {
    let source = scratch.path("install.tmp");
    std::fs::write(&source, text).expect("write script");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    run_ok(
        Command::new("install")
            .args(["-m", "755"])
            .arg(&source)
            .arg(path),
    );
}

// ---------------------------------------------------------------------------------------------
// process

#[tokio::test]
async fn process_is_supervised_and_a_later_agent_stops_it() {
    let scratch = Scratch::new("process");
    let config = section("name = \"worker\"\nkind = \"process\"\ncommand = [\"sleep\", \"1000\"]");
    let first = Agent::new(&config, scratch.context("web", "worker"), None).expect("agent");
    let pidfile = scratch.path("state/agents/web.worker.pid");

    assert_eq!(first.monitor().await, Health::Stopped);
    first.start().await.expect("start");
    assert_eq!(first.monitor().await, Health::Running);
    let pid = pid_in(&pidfile);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(cmdline.starts_with(b"sleep\0"), "{cmdline:?}");
    let session = nix::unistd::getsid(Some(Pid::from_raw(pid))).expect("session");
    assert_eq!(
        session.as_raw(),
        pid,
        "the process leads a session of its own"
    );
    first.start().await.expect("start again");
    assert_eq!(
        pid_in(&pidfile),
        pid,
        "a second start does not start another one"
    );

    // Killed behind the agent's back: stopped.
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    wait_until(
        Duration::from_secs(5),
        "monitor to say stopped",
        async || first.monitor().await == Health::Stopped,
    )
    .await;
    first.stop(false).await.expect("stop a dead process");
    assert!(!pidfile.exists());
    first.stop(false).await.expect("stop again");

    // Started by one agent, stopped by another built from the same section (a daemon restart).
    first.start().await.expect("start");
    let pid = pid_in(&pidfile);
    let second = Agent::new(&config, scratch.context("web", "worker"), None).expect("agent");
    assert_eq!(second.monitor().await, Health::Running);
    second.stop(false).await.expect("stop by the second agent");
    assert!(!alive(pid), "stopped: {:?}", process_state(pid));
    assert_eq!(first.monitor().await, Health::Stopped);
    assert_eq!(second.monitor().await, Health::Stopped);
    wait_until(
        Duration::from_secs(5),
        "the process to be reaped",
        async || process_state(pid).is_none(),
    )
    .await;
}

#[tokio::test]
async fn process_stop_escalates_to_sigkill_and_takes_the_whole_group() {
    let scratch = Scratch::new("process-group");
    let child_file = scratch.path("child.pid");
    let script = format!(
        "trap '' TERM; sleep 1000 & echo $! > {}; echo started; echo complaint >&2; wait",
        child_file.display()
    );
    let config = section(&format!(
        "name = \"stubborn\"\nkind = \"process\"\ncommand = [\"sh\", \"-c\", {script:?}]"
    ));
    let agent = Agent::new(&config, scratch.context("g", "stubborn"), None).expect("agent");
    let log = scratch.path("state/agents/g.stubborn.log");

    for force in [true, false] {
        let _ = std::fs::remove_file(&child_file);
        agent.start().await.expect("start");
        let leader = pid_in(&scratch.path("state/agents/g.stubborn.pid"));
        wait_until(Duration::from_secs(5), "the child's pid", async || {
            std::fs::read_to_string(&child_file).is_ok_and(|t| t.ends_with('\n'))
        })
        .await;
        let child: i32 = std::fs::read_to_string(&child_file)
            .expect("child pid")
            .trim()
            .parse()
            .expect("number");
        assert!(alive(child));
        let started = Instant::now();
        agent.stop(force).await.expect("stop");
        let took = started.elapsed();
        assert!(!alive(leader), "the leader is gone");
        assert!(!alive(child), "its child in the same group is gone");
        assert_eq!(agent.monitor().await, Health::Stopped);
        if force {
            assert!(took < Duration::from_secs(3), "forced stop took {took:?}");
        } else {
            assert!(
                took >= Duration::from_millis(4900),
                "a process ignoring SIGTERM gets 5 s first, took {took:?}"
            );
        }
    }
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.matches("started").count(), 2, "{text}");
    assert!(
        text.contains("complaint"),
        "stderr goes to the log too: {text}"
    );
}

#[tokio::test]
async fn process_pidfile_of_a_recycled_pid_never_kills() {
    let scratch = Scratch::new("process-recycled");
    let config = section("name = \"w\"\nkind = \"process\"\ncommand = [\"sleep\", \"1000\"]");
    let agent = Agent::new(&config, scratch.context("g", "w"), None).expect("agent");
    let pidfile = scratch.path("state/agents/g.w.pid");
    std::fs::create_dir_all(pidfile.parent().expect("dir")).expect("dir");

    // Some unrelated process now holds the recorded pid (its start time differs).
    let mut bystander = Command::new("sleep").arg("1000").spawn().expect("sleep");
    let pid = i32::try_from(bystander.id()).expect("pid");
    std::fs::write(&pidfile, format!("{pid} 1\n")).expect("pidfile");
    assert_eq!(agent.monitor().await, Health::Stopped);
    agent.stop(false).await.expect("stop");
    assert!(!pidfile.exists(), "the stale pidfile is removed");
    assert!(
        bystander.try_wait().expect("try_wait").is_none() && alive(pid),
        "the bystander still runs"
    );
    bystander.kill().expect("kill");
    bystander.wait().expect("reap");

    // A pidfile that is not "<pid> <start time>" is failed for monitor, dropped by stop.
    std::fs::write(&pidfile, "junk").expect("pidfile");
    let Health::Failed(problem) = agent.monitor().await else {
        panic!("a corrupt pidfile is failed");
    };
    assert!(problem.contains("g.w.pid"), "{problem}");
    agent.stop(false).await.expect("stop");
    assert!(!pidfile.exists());
}

#[tokio::test]
async fn process_that_cannot_start_is_an_error() {
    let scratch = Scratch::new("process-missing");
    let config = section("name = \"w\"\nkind = \"process\"\ncommand = [\"/nonexistent/tandem\"]");
    let agent = Agent::new(&config, scratch.context("g", "w"), None).expect("agent");
    let error = agent.start().await.expect_err("no such program");
    assert!(
        error.starts_with("resource g/w: cannot start \"/nonexistent/tandem\""),
        "{error}"
    );
    assert_eq!(agent.monitor().await, Health::Stopped);
}

// ---------------------------------------------------------------------------------------------
// script

fn script_section(start: &str, stop: &str, status: &str) -> ResourceSection {
    section(&format!(
        "name = \"site\"\nkind = \"script\"\nstart = {start:?}\nstop = {stop:?}\nstatus = {status:?}"
    ))
}

#[tokio::test]
async fn script_exit_codes_are_lsb() {
    let scratch = Scratch::new("script");
    let marker = scratch.path("marker");
    let marker = marker.display();
    let config = script_section(
        &format!("echo \"$TANDEM_NODE $TANDEM_GROUP $TANDEM_RESOURCE\" > {marker}"),
        &format!("rm -f {marker}"),
        &format!(
            "test -f {marker} || exit 7; if grep -q broken {marker}; then echo 'it is broken' >&2; exit 2; fi"
        ),
    );
    let agent = Agent::new(&config, scratch.context("web", "site"), None).expect("agent");

    assert_eq!(agent.monitor().await, Health::Stopped, "status 7");
    agent.start().await.expect("start");
    let written = std::fs::read_to_string(scratch.path("marker")).expect("marker");
    assert_eq!(
        written, "alpha web site\n",
        "the environment names the resource"
    );
    assert_eq!(agent.monitor().await, Health::Running, "status 0");
    std::fs::write(scratch.path("marker"), "broken").expect("break it");
    let Health::Failed(problem) = agent.monitor().await else {
        panic!("status 2 is failed");
    };
    assert!(problem.contains("exit code 2: it is broken"), "{problem}");
    assert!(problem.contains("web/site"), "{problem}");
    agent.stop(false).await.expect("stop");
    assert_eq!(agent.monitor().await, Health::Stopped);
    agent.stop(false).await.expect("stop again");

    let failing = script_section(
        "echo first >&2; echo 'no disk' >&2; exit 4",
        "true",
        "exit 3",
    );
    let agent = Agent::new(&failing, scratch.context("web", "site"), None).expect("agent");
    let error = agent.start().await.expect_err("exit 4");
    assert_eq!(
        error,
        "resource web/site: start script failed: exit code 4: no disk"
    );
    assert_eq!(agent.monitor().await, Health::Stopped, "status 3");
}

#[tokio::test]
async fn script_background_children_do_not_hold_start_and_a_dropped_start_kills_its_group() {
    let scratch = Scratch::new("script-background");
    let daemon_pid = scratch.path("daemon.pid");
    let config = script_section(
        &format!("sleep 1000 & echo $! > {}", daemon_pid.display()),
        "true",
        "true",
    );
    let agent = Agent::new(&config, scratch.context("g", "s"), None).expect("agent");
    tokio::time::timeout(Duration::from_secs(10), agent.start())
        .await
        .expect("a background child does not hold the start")
        .expect("start");
    let daemon = pid_in(&daemon_pid);
    assert!(alive(daemon), "what the script started lives on");
    kill(Pid::from_raw(daemon), Signal::SIGKILL).expect("kill");

    // A start that times out (the caller drops it) takes its whole process group with it.
    let hanging = scratch.path("hanging.pid");
    let config = script_section(
        &format!("sleep 1000 & echo $! > {}; sleep 1000", hanging.display()),
        "true",
        "true",
    );
    let agent = Agent::new(&config, scratch.context("g", "s"), None).expect("agent");
    let outcome = tokio::time::timeout(Duration::from_secs(1), agent.start()).await;
    assert!(outcome.is_err(), "the start hangs until dropped");
    let orphan = pid_in(&hanging);
    wait_until(
        Duration::from_secs(5),
        "the dropped start's child to die",
        async || !alive(orphan),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// ocf

const DUMMY_AGENT: &str = r#"#!/bin/sh
state="${OCF_RESKEY_state:?}"
case "$1" in
start)
    if [ "$OCF_RESKEY_mode" = fail ]; then echo "dummy: not installed" >&2; exit 5; fi
    echo "$OCF_ROOT $OCF_RESOURCE_INSTANCE $OCF_RESOURCE_PROVIDER $OCF_RESOURCE_TYPE $OCF_RESKEY_CRM_meta_timeout" > "$state"
    exit 0 ;;
stop)
    [ -f "$state" ] || exit 7
    rm -f "$state"; exit 0 ;;
monitor)
    if [ -f "$state.broken" ]; then echo "state is broken" >&2; exit 1; fi
    [ -f "$state" ] && exit 0
    exit 7 ;;
*) exit 3 ;;
esac
"#;

fn ocf_agent(config: &ResourceSection, context: AgentContext, root: &Path) -> Agent {
    match Agent::new(config, context, None).expect("agent") {
        Agent::Ocf(ocf) => Agent::Ocf(ocf.with_root(root.to_path_buf())),
        other => panic!("not an OCF agent: {other:?}"),
    }
}

#[tokio::test]
async fn ocf_agent_start_monitor_stop_and_exit_codes() {
    let scratch = Scratch::new("ocf");
    let root = scratch.path("ocf");
    install_executable(&scratch, &root.join("resource.d/test/dummy"), DUMMY_AGENT);
    let state = scratch.path("dummy.state");
    let config = section(&format!(
        "name = \"db\"\nkind = \"ocf\"\nagent = \"test/dummy\"\nstart_timeout_ms = 4321\n\
         [params]\nstate = {:?}\n",
        state.display().to_string()
    ));
    let agent = ocf_agent(&config, scratch.context("g", "db"), &root);

    assert_eq!(agent.monitor().await, Health::Stopped, "OCF_NOT_RUNNING");
    agent.start().await.expect("start");
    let written = std::fs::read_to_string(&state).expect("state");
    assert_eq!(written, format!("{} db test dummy 4321\n", root.display()));
    assert_eq!(agent.monitor().await, Health::Running);
    std::fs::write(state.with_extension("state.broken"), "").expect("break");
    let Health::Failed(problem) = agent.monitor().await else {
        panic!("exit 1 is failed");
    };
    assert!(
        problem.ends_with("ocf test/dummy monitor failed: OCF_ERR_GENERIC (1): state is broken"),
        "{problem}"
    );
    std::fs::remove_file(state.with_extension("state.broken")).expect("mend");
    agent.stop(false).await.expect("stop");
    assert!(!state.exists());
    assert_eq!(agent.monitor().await, Health::Stopped);
    agent
        .stop(false)
        .await
        .expect("a stop answered OCF_NOT_RUNNING is Ok");

    let failing = section(&format!(
        "name = \"db\"\nkind = \"ocf\"\nagent = \"test/dummy\"\n\
         [params]\nstate = {:?}\nmode = \"fail\"\n",
        state.display().to_string()
    ));
    let agent = ocf_agent(&failing, scratch.context("g", "db"), &root);
    let error = agent.start().await.expect_err("exit 5");
    assert_eq!(
        error,
        "resource g/db: ocf test/dummy start failed: OCF_ERR_INSTALLED (5): dummy: not installed"
    );
}

#[tokio::test]
async fn ocf_agent_that_does_not_exist_is_named() {
    let scratch = Scratch::new("ocf-missing");
    let root = scratch.path("ocf");
    let config = section("name = \"db\"\nkind = \"ocf\"\nagent = \"test/nosuch\"");
    let agent = ocf_agent(&config, scratch.context("g", "db"), &root);
    let path = root.join("resource.d/test/nosuch").display().to_string();
    let error = agent.start().await.expect_err("missing");
    assert!(error.contains(&path), "{error}");
    let Health::Failed(problem) = agent.monitor().await else {
        panic!("a missing agent is failed");
    };
    assert!(problem.contains(&path), "{problem}");
}

// ---------------------------------------------------------------------------------------------
// service

#[tokio::test]
async fn service_needs_systemd() {
    let scratch = Scratch::new("service");
    let unit = format!("tandem-agents-test-{}.service", std::process::id());
    let config = section(&format!(
        "name = \"web\"\nkind = \"service\"\nunit = {unit:?}"
    ));
    let agent = Agent::new(&config, scratch.context("g", "web"), None).expect("agent");
    if Path::new("/run/systemd/system").is_dir() {
        // A unit that does not exist is inactive; nothing on the host is touched.
        assert_eq!(agent.monitor().await, Health::Stopped);
        return;
    }
    let refusal = "systemd is not running on this node: kind service needs it";
    let error = agent.start().await.expect_err("no systemd");
    assert_eq!(error, format!("resource g/web: {refusal}"));
    assert!(
        agent
            .stop(true)
            .await
            .expect_err("no systemd")
            .contains(refusal)
    );
    assert_eq!(agent.monitor().await, Health::Failed(error));
}

// ---------------------------------------------------------------------------------------------
// filesystem

/// A loop device over a scratch file, detached when dropped (after a lazy unmount of
/// `mount`, in case the test failed with it mounted).
struct LoopDevice {
    device: String,
    mount: PathBuf,
}

impl LoopDevice {
    fn new(image: &Path, bytes: u64, mount: &Path) -> Self {
        std::fs::File::create(image)
            .expect("image")
            .set_len(bytes)
            .expect("size");
        let output = run_ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(image),
        );
        Self {
            device: String::from_utf8_lossy(&output.stdout).trim().to_string(),
            mount: mount.to_path_buf(),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
    }
}

/// The source of what is mounted on `mount`, if anything.
fn mounted_source(mount: &Path) -> Option<String> {
    let output = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE", "--mountpoint"])
        .arg(mount)
        .output()
        .expect("findmnt");
    let source = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !source.is_empty()).then_some(source)
}

fn filesystem_section(mount: &Path) -> ResourceSection {
    section(&format!(
        "name = \"fs\"\nkind = \"filesystem\"\nvolume = \"r0\"\nmount = {:?}\nfsck = true",
        mount.display().to_string()
    ))
}

fn spawn_holder(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("holder")
}

#[tokio::test]
async fn filesystem_mounts_keeps_data_and_a_forced_stop_kills_its_holders() {
    require_tools(&[
        ("losetup", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
        ("fsck", "util-linux"),
        ("findmnt", "util-linux"),
    ]);
    let scratch = Scratch::new("fs");
    let mount = scratch.path("mnt/data");
    let disk = LoopDevice::new(&scratch.path("disk.img"), 64 << 20, &mount);
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", &disk.device]));
    let device = Some(FsDevice::Block(PathBuf::from(&disk.device)));
    let agent = Agent::new(
        &filesystem_section(&mount),
        scratch.context("g", "fs"),
        device,
    )
    .expect("agent");

    assert_eq!(agent.monitor().await, Health::Stopped);
    agent.start().await.expect("start");
    assert_eq!(
        mounted_source(&mount).as_deref(),
        Some(disk.device.as_str())
    );
    assert_eq!(agent.monitor().await, Health::Running);
    agent
        .start()
        .await
        .expect("starting a mounted filesystem is Ok");
    std::fs::write(mount.join("hello.txt"), "survives").expect("write");

    agent.stop(false).await.expect("stop");
    assert_eq!(mounted_source(&mount), None);
    assert_eq!(agent.monitor().await, Health::Stopped);
    assert!(!mount.join("hello.txt").exists());
    agent.start().await.expect("start again");
    let read = std::fs::read_to_string(mount.join("hello.txt")).expect("read");
    assert_eq!(read, "survives");

    // One holder has its working directory there, the other an open file.
    let mut in_dir = spawn_holder(Command::new("sleep").arg("1000").current_dir(&mount));
    let mut with_file = spawn_holder(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3< {}; exec sleep 1000",
                mount.join("hello.txt").display()
            ))
            .current_dir("/"),
    );
    let with_file_pid = with_file.id();
    wait_until(
        Duration::from_secs(5),
        "the second holder to open its file",
        async || {
            std::fs::read_link(format!("/proc/{with_file_pid}/fd/3"))
                .is_ok_and(|target| target.starts_with(&mount))
        },
    )
    .await;
    let error = agent.stop(false).await.expect_err("busy");
    assert!(error.contains("busy"), "{error}");
    assert!(
        error.contains(&format!("pid {} (sleep)", in_dir.id())),
        "{error}"
    );
    assert!(
        error.contains(&format!("pid {with_file_pid} (sleep)")),
        "{error}"
    );
    assert_eq!(agent.monitor().await, Health::Running);

    agent.stop(true).await.expect("forced stop");
    assert_eq!(mounted_source(&mount), None);
    assert_eq!(agent.monitor().await, Health::Stopped);
    for holder in [&mut in_dir, &mut with_file] {
        let status = holder.wait().expect("reap");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "killed with SIGKILL"
        );
    }
    agent.stop(true).await.expect("stop again");
}

#[tokio::test]
async fn filesystem_fsck_failure_refuses_to_mount() {
    require_tools(&[
        ("losetup", "mount"),
        ("fsck", "util-linux"),
        ("e2fsck", "e2fsprogs"),
    ]);
    let scratch = Scratch::new("fs-fsck");
    let mount = scratch.path("mnt");
    // Zeros: no superblock, e2fsck exits 8.
    let disk = LoopDevice::new(&scratch.path("zeros.img"), 16 << 20, &mount);
    let device = Some(FsDevice::Block(PathBuf::from(&disk.device)));
    let agent = Agent::new(
        &filesystem_section(&mount),
        scratch.context("g", "fs"),
        device,
    )
    .expect("agent");
    let error = agent.start().await.expect_err("fsck refuses");
    assert!(
        error.contains("fsck found errors it did not correct"),
        "{error}"
    );
    assert!(error.contains("exit code 8"), "{error}");
    assert_eq!(mounted_source(&mount), None);
    assert_eq!(agent.monitor().await, Health::Stopped);
}

/// qemu-nbd serving a file on a free loopback port, killed when dropped.
struct NbdServer {
    child: Child,
    port: u16,
}

impl NbdServer {
    fn start(image: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "-b",
                "127.0.0.1",
                "-x",
                "r0",
                "--persistent",
                "-p",
            ])
            .arg(port.to_string())
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "qemu-nbd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn filesystem_over_nbd_attaches_mounts_and_detaches() {
    require_tools(&[
        ("qemu-nbd", "qemu-utils"),
        ("nbdfuse", "libnbd-bin"),
        ("losetup", "mount"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("findmnt", "util-linux"),
    ]);
    let scratch = Scratch::new("fs-nbd");
    let image = scratch.path("export.img");
    std::fs::File::create(&image)
        .expect("image")
        .set_len(64 << 20)
        .expect("size");
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    let server = NbdServer::start(&image);
    let mount = scratch.path("mnt");
    let fuse_dir = scratch.path("state/agents/g.fs.fuse");
    let _cleanup = NbdCleanup {
        mount: mount.clone(),
        fuse_dir: fuse_dir.clone(),
    };
    let device = Some(FsDevice::Nbd {
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: server.port,
        export: "r0".into(),
    });
    let agent = Agent::new(
        &filesystem_section(&mount),
        scratch.context("g", "fs"),
        device,
    )
    .expect("agent");

    agent.start().await.expect("start");
    let source = mounted_source(&mount).expect("mounted");
    assert!(source.starts_with("/dev/loop"), "{source}");
    assert!(mounted_source(&fuse_dir).is_some(), "nbdfuse's FUSE mount");
    assert_eq!(agent.monitor().await, Health::Running);
    std::fs::write(mount.join("hello.txt"), "over nbd").expect("write");

    agent.stop(false).await.expect("stop");
    assert_eq!(mounted_source(&mount), None);
    assert_eq!(mounted_source(&fuse_dir), None, "the FUSE mount is gone");
    assert!(!scratch.path("state/agents/g.fs.nbdfuse.pid").exists());
    let loops = run_ok(Command::new("losetup").arg("-a"));
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(&*fuse_dir.to_string_lossy()), "{loops}");
    assert_eq!(agent.monitor().await, Health::Stopped);
    agent.stop(false).await.expect("stop again");

    // The data reached the server's file.
    let dumped = run_ok(
        Command::new("debugfs")
            .args(["-R", "cat /hello.txt"])
            .arg(&image),
    );
    assert_eq!(String::from_utf8_lossy(&dumped.stdout), "over nbd");

    // A dead nbdfuse is failed; a forced stop still cleans everything up.
    agent.start().await.expect("start again");
    let nbdfuse = pid_in(&scratch.path("state/agents/g.fs.nbdfuse.pid"));
    kill(Pid::from_raw(nbdfuse), Signal::SIGKILL).expect("kill nbdfuse");
    wait_until(
        Duration::from_secs(5),
        "monitor to see nbdfuse gone",
        async || matches!(agent.monitor().await, Health::Failed(_)),
    )
    .await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), agent.stop(true)).await;
    stopped.expect("the forced stop ends").expect("forced stop");
    assert_eq!(mounted_source(&mount), None);
    assert_eq!(mounted_source(&fuse_dir), None);
    assert_eq!(agent.monitor().await, Health::Stopped);
}

/// Lazily unmounts what a failed NBD test may leave.
struct NbdCleanup {
    mount: PathBuf,
    fuse_dir: PathBuf,
}

impl Drop for NbdCleanup {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
        let disk = self.fuse_dir.join("disk");
        if let Ok(output) = Command::new("losetup").arg("-j").arg(&disk).output() {
            let text = String::from_utf8_lossy(&output.stdout).to_string();
            for device in text.lines().filter_map(|line| line.split(':').next()) {
                let _ = Command::new("losetup").args(["-d", device]).output();
            }
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.fuse_dir)
            .output();
    }
}

// ---------------------------------------------------------------------------------------------
// ip

/// Two network namespaces joined by a veth pair on 10.240.X.0/24, deleted when dropped.
struct Namespaces {
    names: [String; 2],
    veths: [String; 2],
    subnet: u32,
}

impl Namespaces {
    fn new() -> Self {
        let pid = std::process::id();
        let names = [
            format!("tandem-agents-{pid}"),
            format!("tandem-agents-{pid}-peer"),
        ];
        let veths = [format!("tav{pid}a"), format!("tav{pid}b")];
        let subnet = pid % 250 + 1;
        let made = Self {
            names,
            veths,
            subnet,
        };
        for name in &made.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            run_ok(Command::new("ip").args(["netns", "add", name]));
            run_ok(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        }
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &made.veths[0],
            "netns",
            &made.names[0],
            "type",
            "veth",
            "peer",
            "name",
            &made.veths[1],
            "netns",
            &made.names[1],
        ]));
        // The peer learns addresses from gratuitous ARP (which is how the test sees one).
        run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &made.names[1],
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.conf.all.arp_accept=1",
        ]));
        for index in 0..2 {
            let address = format!("10.240.{subnet}.{}/24", index + 1);
            let (name, veth) = (&made.names[index], &made.veths[index]);
            run_ok(Command::new("ip").args(["-n", name, "addr", "add", &address, "dev", veth]));
            run_ok(Command::new("ip").args(["-n", name, "link", "set", veth, "up"]));
        }
        made
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Runs [`ip_agent_inside_its_namespace`] in a namespace of its own: this test binary again,
/// under `ip netns exec`, so the agent's netlink and packet sockets are that namespace's.
#[test]
fn ip_address_in_a_network_namespace() {
    require_tools(&[("ip", "iproute2"), ("sysctl", "procps")]);
    let namespaces = Namespaces::new();
    let output = Command::new("ip")
        .args(["netns", "exec", &namespaces.names[0]])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "ip_agent_inside_its_namespace",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TANDEM_AGENTS_PEER", &namespaces.names[1])
        .env("TANDEM_AGENTS_INTERFACE", &namespaces.veths[0])
        .env("TANDEM_AGENTS_PEER_INTERFACE", &namespaces.veths[1])
        .env("TANDEM_AGENTS_SUBNET", namespaces.subnet.to_string())
        .output()
        .expect("run the inner test");
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the inner test ran: {text}");
}

fn ip_section(address: &str, interface: &str) -> ResourceSection {
    section(&format!(
        "name = \"vip\"\nkind = \"ip\"\naddress = {address:?}\ninterface = {interface:?}"
    ))
}

fn addresses_of(interface: &str) -> String {
    let output = run_ok(Command::new("ip").args(["-o", "addr", "show", "dev", interface]));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
#[ignore = "run by ip_address_in_a_network_namespace inside the namespace it makes"]
async fn ip_agent_inside_its_namespace() {
    let (Ok(peer), Ok(interface), Ok(peer_interface), Ok(subnet)) = (
        std::env::var("TANDEM_AGENTS_PEER"),
        std::env::var("TANDEM_AGENTS_INTERFACE"),
        std::env::var("TANDEM_AGENTS_PEER_INTERFACE"),
        std::env::var("TANDEM_AGENTS_SUBNET"),
    ) else {
        panic!("only ip_address_in_a_network_namespace runs this, inside its namespace");
    };
    let scratch = Scratch::new("ip");
    let vip = format!("10.240.{subnet}.100");
    let agent = Agent::new(
        &ip_section(&format!("{vip}/24"), &interface),
        scratch.context("g", "vip"),
        None,
    )
    .expect("agent");

    assert_eq!(agent.monitor().await, Health::Stopped);
    agent.start().await.expect("start");
    assert!(addresses_of(&interface).contains(&format!("inet {vip}/24 ")));
    assert_eq!(agent.monitor().await, Health::Running);
    agent
        .start()
        .await
        .expect("starting a present address is Ok");

    // The peer learnt the address from the gratuitous ARP, with this interface's MAC.
    let mac = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
        .expect("mac")
        .trim()
        .to_string();
    wait_until(
        Duration::from_secs(5),
        "the peer to learn the VIP",
        async || {
            let output = run_ok(Command::new("ip").args([
                "-n",
                &peer,
                "neigh",
                "show",
                &vip,
                "dev",
                &peer_interface,
            ]));
            String::from_utf8_lossy(&output.stdout).contains(&mac)
        },
    )
    .await;

    agent.stop(false).await.expect("stop");
    assert!(!addresses_of(&interface).contains(&vip));
    assert_eq!(agent.monitor().await, Health::Stopped);
    agent
        .stop(false)
        .await
        .expect("stopping an absent address is Ok");

    // IPv6: added and removed the same way.
    let vip6 = format!("fd00:240:{subnet}::100");
    let agent6 = Agent::new(
        &ip_section(&format!("{vip6}/64"), &interface),
        scratch.context("g", "vip6"),
        None,
    )
    .expect("agent");
    agent6.start().await.expect("start v6");
    assert!(
        addresses_of(&interface).contains(&format!("inet6 {vip6}/64 ")),
        "{}",
        addresses_of(&interface)
    );
    assert_eq!(agent6.monitor().await, Health::Running);
    agent6.stop(false).await.expect("stop v6");
    assert!(!addresses_of(&interface).contains(&vip6));
    assert_eq!(agent6.monitor().await, Health::Stopped);

    // An interface that does not exist.
    let missing = Agent::new(
        &ip_section(&format!("{vip}/24"), "tandemnone0"),
        scratch.context("g", "vip"),
        None,
    )
    .expect("agent");
    let error = missing.start().await.expect_err("no interface");
    assert_eq!(error, "resource g/vip: no interface tandemnone0");
    missing.stop(false).await.expect("nothing to remove");
    assert_eq!(missing.monitor().await, Health::Failed(error));
}
