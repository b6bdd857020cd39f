//! The witness over real UDP (served in-process on a random loopback port) and the reference
//! IP ping.
//!
//! - Two nodes of cluster "t": alpha is granted epoch 1, beta is refused naming alpha with at
//!   most the lease left; alpha renews; once alpha stops renewing, beta is granted epoch 2, not
//!   before alpha's lease ran out (S6).
//! - A client with another key gets no answer (an error after its timeout); garbage and
//!   replayed datagrams get no answer either, and the witness keeps serving (S8, S9).
//! - A witness that just started grants nothing for its restart grace.
//! - Ping: loopback answers; in a network namespace of the test's own, an address nobody
//!   holds times out and one without a route fails at once, both `Ok(false)`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use manager::cluster::witness::{Claims, Kind, Limits, Request, Verdict, WitnessKey};
use manager::runtime::ping::reachable;
use manager::runtime::witness::{WitnessClient, serve, serve_with};
use tokio::net::UdpSocket;

const KEY: [u8; 32] = [3; 32];
const LEASE_MS: u64 = 1000;
const CALL: Duration = Duration::from_secs(2);

async fn start_witness(limits: Option<Limits>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let address = socket.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let served = match limits {
            Some(limits) => serve_with(socket, KEY, limits).await,
            None => serve(socket, KEY).await,
        };
        panic!("the witness stopped: {served:?}");
    });
    (address, server)
}

async fn client(witness: SocketAddr, key: &[u8; 32], node: &str) -> WitnessClient {
    WitnessClient::new(
        witness,
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        key,
        "t",
        node,
    )
    .await
    .expect("client")
}

fn assert_refused_by(verdict: &Verdict, holder: &str, epoch: u64) -> u64 {
    match verdict {
        Verdict::Refused {
            holder: h,
            epoch: e,
            remaining_ms,
        } if h == holder && *e == epoch && *remaining_ms <= LEASE_MS => *remaining_ms,
        other => panic!("expected a refusal naming {holder} at epoch {epoch}: {other:?}"),
    }
}

#[tokio::test]
async fn the_lease_changes_hands_only_after_it_ran_out() {
    let no_grace = Limits {
        restart_grace_ms: 0,
        ..Limits::default()
    };
    let (witness, server) = start_witness(Some(no_grace)).await;
    let alpha = client(witness, &KEY, "alpha").await;
    let beta = client(witness, &KEY, "beta").await;
    let granted = |epoch| Verdict::Granted {
        epoch,
        lease_ms: LEASE_MS,
    };

    assert_eq!(
        alpha.acquire(LEASE_MS, Claims::default(), CALL).await,
        Ok(granted(1))
    );
    let refusal = beta
        .acquire(LEASE_MS, Claims::default(), CALL)
        .await
        .expect("answer");
    assert_refused_by(&refusal, "alpha", 1);
    let renewed_at = Instant::now();
    assert_eq!(
        alpha.acquire(LEASE_MS, Claims::default(), CALL).await,
        Ok(granted(1))
    );

    // Alpha stops renewing: beta polls until it is granted, within a bounded time.
    let deadline = renewed_at + Duration::from_millis(LEASE_MS) + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "beta never got the lease");
        match beta
            .acquire(LEASE_MS, Claims::default(), CALL)
            .await
            .expect("answer")
        {
            Verdict::Granted { epoch: 2, lease_ms } if lease_ms == LEASE_MS => break,
            refused => {
                let remaining = assert_refused_by(&refused, "alpha", 1);
                tokio::time::sleep(Duration::from_millis(remaining.clamp(1, 100))).await;
            }
        }
    }
    assert!(
        renewed_at.elapsed() >= Duration::from_millis(LEASE_MS),
        "beta was granted before alpha's renewed lease ran out"
    );
    let refusal = alpha
        .acquire(LEASE_MS, Claims::default(), CALL)
        .await
        .expect("answer");
    assert_refused_by(&refusal, "beta", 2);

    // A client with another key gets no valid answer; the witness serves on.
    let stranger = client(witness, &[9; 32], "alpha").await;
    let started = Instant::now();
    let error = stranger
        .acquire(LEASE_MS, Claims::default(), Duration::from_millis(400))
        .await
        .expect_err("no answer under another key");
    assert!(error.contains("no valid answer"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by its timeout"
    );

    // Garbage of every size, and a replayed request: no answer, no harm.
    let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for garbage in [&b""[..], b"TNWR", &[0xff; 300], &[0; 74]] {
        raw.send_to(garbage, witness).await.expect("send");
    }
    let key = WitnessKey::new(&KEY, "t");
    let release = |node: &str| Request {
        kind: Kind::Release,
        cluster: "t".into(),
        node: node.into(),
        boot: 1,
        seq: 1,
        nonce: 77,
        lease_ms: 0,
        claims: Claims::default(),
    };
    let gamma = key.encode_request(&release("gamma")).expect("valid");
    let answer = exchange(&raw, witness, &gamma, Duration::from_secs(2)).await;
    let answer = answer.expect("gamma's first request is answered");
    assert_eq!(
        key.decode_response(77, &answer),
        Ok(Verdict::Released { epoch: 2 })
    );
    let again = exchange(&raw, witness, &gamma, Duration::from_millis(300)).await;
    assert_eq!(again, None, "a replayed request was answered");
    // A release from an older boot of beta than its client's (boot ids come from the clock)
    // is dropped: beta keeps the lease, without a gap (the same epoch). Beta's lease may have
    // lapsed during the waits above: then it gets a new epoch now.
    let epoch = match beta.acquire(LEASE_MS, Claims::default(), CALL).await {
        Ok(Verdict::Granted { epoch, .. }) if epoch == 2 || epoch == 3 => epoch,
        other => panic!("beta should get the lease again: {other:?}"),
    };
    let old_beta = key.encode_request(&release("beta")).expect("valid");
    let old = exchange(&raw, witness, &old_beta, Duration::from_millis(300)).await;
    assert_eq!(old, None, "a request of an old boot was answered");
    assert_eq!(
        beta.acquire(LEASE_MS, Claims::default(), CALL).await,
        Ok(granted(epoch))
    );

    assert_eq!(beta.release(CALL).await, Ok(Verdict::Released { epoch }));
    assert_eq!(
        alpha.acquire(LEASE_MS, Claims::default(), CALL).await,
        Ok(granted(epoch + 1))
    );
    assert!(!server.is_finished());
    server.abort();
}

/// Sends `packet` to the witness; its answer, if one comes within `wait`.
async fn exchange(
    socket: &UdpSocket,
    witness: SocketAddr,
    packet: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    socket.send_to(packet, witness).await.expect("send");
    let mut buffer = [0u8; 512];
    let received = tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await;
    received
        .ok()
        .map(|r| buffer[..r.expect("receive").0].to_vec())
}

#[tokio::test]
async fn a_witness_that_just_started_grants_nothing() {
    let (witness, server) = start_witness(None).await;
    let alpha = client(witness, &KEY, "alpha").await;
    match alpha.acquire(LEASE_MS, Claims::default(), CALL).await {
        Ok(Verdict::Restarting { remaining_ms }) => {
            assert!((50_000..=60_000).contains(&remaining_ms), "{remaining_ms}");
        }
        other => panic!("expected the restart grace: {other:?}"),
    }
    server.abort();
}

const CHILD: &str = "TANDEM_PING_TEST_IN_NETNS";
const PING_TEST: &str = "ping_answers_on_loopback_and_not_where_nobody_answers";

#[test]
fn ping_answers_on_loopback_and_not_where_nobody_answers() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var_os(CHILD).is_some() {
        return runtime.block_on(checks_in_namespace());
    }
    let loopback = runtime.block_on(reachable(IpAddr::V4(Ipv4Addr::LOCALHOST), CALL));
    assert_eq!(loopback, Ok(true));
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    if inet6.contains("00000000000000000000000000000001") {
        let ipv6 = runtime.block_on(reachable("::1".parse().expect("ip"), CALL));
        assert_eq!(ipv6, Ok(true));
    }
    // This host may route anything (even TEST-NET-1) somewhere: the negative checks run in
    // a network namespace of this test's own, in a child process of this test binary.
    let namespace = Namespace::new();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &namespace.0])
        .arg(std::env::current_exe().expect("test binary"))
        .args([PING_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the check in the namespace");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the check in the namespace did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "in the namespace: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn checks_in_namespace() {
    assert_eq!(
        reachable(IpAddr::V4(Ipv4Addr::LOCALHOST), CALL).await,
        Ok(true)
    );
    // 10.241.0.2 is on tp0's subnet, but nobody holds it: the echo goes nowhere.
    let started = Instant::now();
    let nobody = reachable(
        IpAddr::V4(Ipv4Addr::new(10, 241, 0, 2)),
        Duration::from_millis(300),
    );
    assert_eq!(nobody.await, Ok(false));
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(290)..Duration::from_secs(2)).contains(&waited),
        "{waited:?}"
    );
    // TEST-NET-1 has no route here at all.
    let started = Instant::now();
    let no_route = reachable(
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        Duration::from_millis(300),
    );
    assert_eq!(no_route.await, Ok(false));
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A network namespace with loopback up and a veth pair (tp0 10.241.0.1/24, tp1 without an
/// address); deleted on drop.
struct Namespace(String);

impl Namespace {
    fn new() -> Self {
        let name = format!("tandem-ping-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let namespace = Self(name);
        let n = namespace.0.as_str();
        for args in [
            &["netns", "add", n][..],
            &["-n", n, "link", "set", "lo", "up"],
            &[
                "-n", n, "link", "add", "tp0", "type", "veth", "peer", "name", "tp1",
            ],
            &["-n", n, "addr", "add", "10.241.0.1/24", "dev", "tp0"],
            &["-n", n, "link", "set", "tp0", "up"],
            &["-n", n, "link", "set", "tp1", "up"],
        ] {
            let output = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                output.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        namespace
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
