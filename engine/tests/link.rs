//! End-to-end tests of the replication link over real TCP on 127.0.0.1.
//!
//! Two endpoints run `connect` and `accept` in one process. Where the wire must be tampered
//! with, a small proxy task sits between them: it forwards the handshake untouched, then parses
//! the record stream from the initiator (`[u32 LE length][sealed bytes]`, the first record being
//! the key confirmation) and flips, duplicates, drops, swaps or holds back records. Every test
//! is bounded by a timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::prng::Prng;
use engine::protocol::compress::Compression;
use engine::runtime::link::{
    self, HANDSHAKE_PREAMBLE, Hello, Incompatibility, LinkConfig, LinkError, LinkReceiver,
    LinkSender, PeerHello, RECORD_OVERHEAD_BYTES, Refusal,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const KEY: [u8; 32] = [0x5A; 32];
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

type Link = (LinkSender, LinkReceiver, PeerHello);

fn config(node: &str, compression: Compression) -> LinkConfig {
    let mut config = LinkConfig::new(KEY, Hello::new("cluster-a", node, "volume-1"));
    config.compression = compression;
    config
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("the test finished in time")
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("has an address");
    (listener, address)
}

/// Runs a handshake between a client and a server, optionally through a proxy started on the
/// server's address; returns both results.
async fn handshake(
    client: &LinkConfig,
    server: &LinkConfig,
    tamper: Option<Tamper>,
) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
    let (listener, server_address) = bind().await;
    let server_config = server.clone();
    let server_task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        link::accept(stream, &server_config).await
    });
    let target = match tamper {
        Some(tamper) => start_proxy(server_address, tamper).await,
        None => server_address,
    };
    let client_result = link::connect(target, client).await;
    let server_result = server_task.await.expect("server task");
    (client_result, server_result)
}

async fn established(client: &LinkConfig, server: &LinkConfig) -> (Link, Link) {
    let (client, server) = handshake(client, server, None).await;
    (
        client.expect("client handshake"),
        server.expect("server handshake"),
    )
}

/// Deterministic payload `index` of `len` bytes: even indexes compress well (text and zeros),
/// odd ones are random.
fn payload(index: u64, len: usize) -> Vec<u8> {
    let mut prng = Prng::from_seed(index);
    let mut bytes = Vec::with_capacity(len + 8);
    if index.is_multiple_of(2) {
        let text = b"block 0000042 written at generation 7 by node-a; ";
        while bytes.len() < len {
            let at = bytes.len();
            if (at / 4096).is_multiple_of(2) {
                bytes.extend_from_slice(text);
            } else {
                bytes.resize(at + 4096, 0);
            }
            if prng.chance(1, 64) {
                bytes.extend_from_slice(&prng.next_u64().to_le_bytes());
            }
        }
    } else {
        while bytes.len() < len {
            bytes.extend_from_slice(&prng.next_u64().to_le_bytes());
        }
    }
    bytes.truncate(len);
    bytes
}

const SIZES: [usize; 9] = [
    0,
    1,
    15,
    4096,
    65_536 + 3,
    1 << 20,
    (4 << 20) + 1,
    32 << 20,
    (32 << 20) + 4096,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_every_size_arrive_intact_with_every_codec() {
    within(async {
        for codec in Compression::ALL {
            let (client, server) =
                established(&config("client", codec), &config("server", codec)).await;
            let (mut client_sender, mut client_receiver, server_hello) = client;
            let (mut server_sender, mut server_receiver, client_hello) = server;
            assert_eq!(server_hello.hello.node_name, "server");
            assert_eq!(client_hello.hello.node_name, "client");
            assert_eq!(server_hello.protocol_version, link::PROTOCOL_VERSION);
            assert_eq!(client_sender.payload_bytes_max(), 33 << 20);

            // Each size twice (compressible, then random), client to server.
            let plan: Vec<(u64, usize)> = SIZES
                .iter()
                .enumerate()
                .flat_map(|(i, &len)| [(2 * i as u64, len), (2 * i as u64 + 1, len)])
                .collect();
            let expected = plan.clone();
            let receiving = tokio::spawn(async move {
                for (index, len) in expected {
                    let (kind, bytes) = server_receiver.recv().await.expect("receives");
                    assert_eq!(kind, index as u16);
                    assert!(
                        bytes == payload(index, len),
                        "payload {index} ({len} B) intact"
                    );
                    server_receiver.recycle(bytes);
                }
                server_receiver
            });
            for &(index, len) in &plan {
                client_sender
                    .send(index as u16, &payload(index, len))
                    .await
                    .expect("sends");
            }
            let server_receiver = receiving.await.expect("receiver task");

            // And the other direction works too.
            server_sender.send(7, b"ack").await.expect("sends back");
            assert_eq!(
                client_receiver.recv().await.expect("receives"),
                (7, b"ack".to_vec())
            );

            let sent = client_sender.counters().snapshot();
            let received = server_receiver.counters().snapshot();
            let payload_bytes: u64 = plan.iter().map(|&(_, len)| len as u64).sum();
            assert_eq!(sent.frames_sent, plan.len() as u64);
            assert_eq!(sent.payload_bytes_sent, payload_bytes);
            assert_eq!(received.frames_received, plan.len() as u64);
            assert_eq!(received.payload_bytes_received, payload_bytes);
            assert_eq!(received.wire_bytes_received, sent.wire_bytes_sent);
            let overhead = (plan.len() * RECORD_OVERHEAD_BYTES) as u64;
            match codec {
                Compression::None => {
                    assert_eq!(sent.wire_bytes_sent, payload_bytes + overhead);
                }
                Compression::Lz4 | Compression::Zstd => {
                    // Half the bytes are random and travel as they are; the other half shrinks.
                    assert!(
                        sent.wire_bytes_sent < payload_bytes * 6 / 10,
                        "{codec}: {} wire bytes for {payload_bytes} payload bytes",
                        sent.wire_bytes_sent
                    );
                }
            }
            eprintln!(
                "{codec}: {payload_bytes} payload bytes took {} wire bytes",
                sent.wire_bytes_sent
            );
        }
    })
    .await;
}

#[tokio::test]
async fn payloads_above_the_peer_limit_are_refused_and_the_link_survives() {
    within(async {
        let mut server_config = config("server", Compression::Lz4);
        server_config.frame_payload_bytes_max = 1 << 20;
        let (client, server) =
            established(&config("client", Compression::Lz4), &server_config).await;
        let (mut sender, _client_receiver, peer) = client;
        let (_server_sender, mut receiver, _) = server;
        assert_eq!(peer.frame_payload_bytes_max, 1 << 20);
        assert_eq!(sender.payload_bytes_max(), 1 << 20);
        let too_big = payload(1, (1 << 20) + 1);
        let error = sender.send(1, &too_big).await.expect_err("refused");
        assert!(matches!(
            error,
            LinkError::PayloadTooLarge { bytes, max } if bytes == (1 << 20) + 1 && max == 1 << 20
        ));
        let just_fits = payload(3, 1 << 20);
        sender.send(2, &just_fits).await.expect("still usable");
        assert_eq!(receiver.recv().await.expect("receives"), (2, just_fits));
    })
    .await;
}

#[tokio::test]
async fn closing_the_sender_ends_the_peer_receiver_cleanly() {
    within(async {
        let (client, server) = established(
            &config("client", Compression::None),
            &config("server", Compression::None),
        )
        .await;
        let (mut sender, _client_receiver, _) = client;
        let (_server_sender, mut receiver, _) = server;
        sender.send(1, b"last words").await.expect("sends");
        sender.close().await.expect("closes");
        assert_eq!(
            receiver.recv().await.expect("receives"),
            (1, b"last words".to_vec())
        );
        let error = receiver.recv().await.expect_err("closed");
        assert!(matches!(error, LinkError::Closed));
        assert_eq!(error.to_string(), "peer closed the connection");
        assert!(matches!(receiver.recv().await, Err(LinkError::Broken(_))));
    })
    .await;
}

// ---- Refusals ----------------------------------------------------------------------------

/// A `tracing` subscriber that keeps the warnings and errors emitted on this thread.
#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("not poisoned").clone()
    }
}

struct MessageVisitor(String);

impl tracing::field::Visit for MessageVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut visitor = MessageVisitor(String::new());
        event.record(&mut visitor);
        let line = format!("{} {}", event.metadata().level(), visitor.0);
        self.lines.lock().expect("not poisoned").push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Runs on a current-thread runtime so every task logs into the capture.
#[tokio::test]
async fn wrong_cluster_key_is_refused_with_one_warning_on_each_side() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    within(async {
        let client = config("client", Compression::Lz4);
        let mut server = config("server", Compression::Lz4);
        server.cluster_key[31] ^= 1;
        let (client_result, server_result) = handshake(&client, &server, None).await;

        let client_error = client_result.map(|_| ()).expect_err("client refused");
        assert!(matches!(
            client_error,
            LinkError::Refused(Refusal::KeyMismatch)
        ));
        assert_eq!(
            client_error.to_string(),
            "peer refused the handshake: cluster key mismatch"
        );
        let server_error = server_result.map(|_| ()).expect_err("server refused");
        assert!(matches!(server_error, LinkError::KeyMismatch));
        assert_eq!(server_error.to_string(), "handshake: cluster key mismatch");
    })
    .await;
    let lines = capture.lines();
    assert_eq!(lines.len(), 2, "one warning per side: {lines:#?}");
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with("WARN link with peer 127.0.0.1:"))
    );
    assert!(
        lines
            .iter()
            .any(|line| line.ends_with("failed: peer refused the handshake: cluster key mismatch"))
    );
    assert!(
        lines
            .iter()
            .any(|line| line.ends_with("failed: handshake: cluster key mismatch"))
    );
}

#[tokio::test]
async fn incompatible_hellos_are_refused_on_both_sides() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    within(async {
        let server = config("server", Compression::Lz4);
        let mut newer = config("client", Compression::Lz4);
        newer.hello.protocol_version_min = 2;
        newer.hello.protocol_version_max = 3;
        let cases = [
            (newer, "no common protocol version"),
            (
                LinkConfig::new(KEY, Hello::new("cluster-b", "client", "volume-1")),
                "cluster name mismatch",
            ),
            (
                LinkConfig::new(KEY, Hello::new("cluster-a", "client", "volume-2")),
                "volume name mismatch",
            ),
            (config("server", Compression::Lz4), "our own node name"),
        ];
        for (client, reason) in &cases {
            let (client_result, server_result) = handshake(client, &server, None).await;
            for (side, result) in [("client", client_result), ("server", server_result)] {
                let error = result.map(|_| ()).expect_err("refused");
                assert!(
                    matches!(error, LinkError::Incompatible(_)),
                    "{side}: {error}"
                );
                let text = error.to_string();
                assert!(text.starts_with("handshake: "), "{side}: {text}");
                assert!(text.contains(reason), "{side}: {text} (expected {reason})");
            }
        }
        // The reason names both sides' values.
        let (client_result, _) = handshake(&cases[1].0, &server, None).await;
        match client_result.map(|_| ()) {
            Err(LinkError::Incompatible(Incompatibility::ClusterName { ours, theirs })) => {
                assert_eq!((ours.as_str(), theirs.as_str()), ("cluster-b", "cluster-a"));
            }
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    // One warning per side per refused handshake.
    assert_eq!(capture.lines().len(), 2 * 5, "{:#?}", capture.lines());
}

#[tokio::test]
async fn random_bytes_sent_to_accept_fail_cleanly() {
    within(async {
        let mut server_config = config("server", Compression::Lz4);
        server_config.handshake_timeout = Duration::from_secs(2);
        let mut prng = Prng::from_seed(0xBAD_F00D);
        for round in 0..60u32 {
            let len = prng.below(3000) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| prng.next_u64() as u8).collect();
            if round % 3 != 0 {
                // Get past the preamble, so the Noise and hello decoders see the noise too.
                let mut framed = HANDSHAKE_PREAMBLE.to_vec();
                let declared = if round % 3 == 1 {
                    len as u16
                } else {
                    prng.below(u64::from(u16::MAX)) as u16
                };
                framed.extend_from_slice(&declared.to_le_bytes());
                framed.extend_from_slice(&bytes);
                bytes = framed;
            }
            let (listener, address) = bind().await;
            let config = server_config.clone();
            let server = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.expect("accepts");
                link::accept(stream, &config).await
            });
            let mut client = TcpStream::connect(address).await.expect("connects");
            // The server may close before reading everything; that is its right.
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
            let error = server
                .await
                .expect("no panic")
                .map(|_| ())
                .expect_err("random bytes never make a link");
            assert!(
                matches!(
                    error,
                    LinkError::NotTandem
                        | LinkError::HandshakeClosed
                        | LinkError::KeyMismatch
                        | LinkError::MalformedHandshake(_)
                ),
                "round {round}: {error}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_silent_peer_times_out_and_a_non_tandem_server_is_named() {
    within(async {
        // A client that connects and says nothing.
        let mut server_config = config("server", Compression::Lz4);
        server_config.handshake_timeout = Duration::from_millis(200);
        let (listener, address) = bind().await;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accepts");
            link::accept(stream, &server_config).await
        });
        let _silent = TcpStream::connect(address).await.expect("connects");
        let error = server
            .await
            .expect("no panic")
            .map(|_| ())
            .expect_err("times out");
        assert!(matches!(error, LinkError::HandshakeTimeout(_)));

        // A server that answers with something else entirely, then closes.
        let (listener, address) = bind().await;
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accepts");
            let mut request = [0u8; 64];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let error = link::connect(address, &config("client", Compression::Lz4))
            .await
            .map(|_| ())
            .expect_err("no link");
        assert!(
            matches!(
                error,
                LinkError::MalformedHandshake(_)
                    | LinkError::KeyMismatch
                    | LinkError::HandshakeClosed
            ),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_newer_handshake_version_is_told_why_it_is_refused() {
    within(async {
        let (listener, address) = bind().await;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accepts");
            link::accept(stream, &config("server", Compression::Lz4)).await
        });
        let mut client = TcpStream::connect(address).await.expect("connects");
        let mut hello = b"tandem\x00\x02".to_vec();
        hello.extend_from_slice(&[0x55; 300]); // whatever version 2 would send next
        client.write_all(&hello).await.expect("writes");
        let mut reply = Vec::new();
        client
            .read_to_end(&mut reply)
            .await
            .expect("reads the refusal, then EOF");
        assert_eq!(reply, [0, 0, 3], "the refusal marker: length 0, reason 3");
        drop(client);
        let error = server
            .await
            .expect("no panic")
            .map(|_| ())
            .expect_err("refused");
        assert!(matches!(error, LinkError::HandshakeVersion(2)));
        assert_eq!(
            error.to_string(),
            "handshake: unsupported handshake version 2 (this build speaks 1)"
        );
        assert_eq!(
            LinkError::Refused(Refusal::HandshakeVersion).to_string(),
            "peer refused the handshake: unsupported handshake version"
        );
    })
    .await;
}

/// Message 1 of NNpsk0 can be replayed by anyone who recorded it; the responder answers, but
/// only the holder of the initiator's ephemeral key can send the key confirmation.
#[tokio::test]
async fn a_replayed_first_message_does_not_make_a_link() {
    within(async {
        // Record a genuine first message with a fake server that then hangs up.
        let (recorder, recorder_address) = bind().await;
        let recording = tokio::spawn(async move {
            let (mut stream, _) = recorder.accept().await.expect("accepts");
            let mut head = [0u8; 10];
            stream.read_exact(&mut head).await.expect("reads");
            let mut message = vec![0u8; usize::from(u16::from_le_bytes([head[8], head[9]]))];
            stream.read_exact(&mut message).await.expect("reads");
            [head.to_vec(), message].concat()
        });
        let client_result =
            link::connect(recorder_address, &config("client", Compression::Lz4)).await;
        assert!(matches!(client_result, Err(LinkError::HandshakeClosed)));
        let first_message = recording.await.expect("recorder task");

        for bogus_confirmation in [false, true] {
            let (listener, address) = bind().await;
            let server = tokio::spawn(async move {
                let (stream, _) = listener.accept().await.expect("accepts");
                link::accept(stream, &config("server", Compression::Lz4)).await
            });
            let mut replay = TcpStream::connect(address).await.expect("connects");
            replay.write_all(&first_message).await.expect("replays");
            let mut length = [0u8; 2];
            replay
                .read_exact(&mut length)
                .await
                .expect("the server answers");
            assert_ne!(
                u16::from_le_bytes(length),
                0,
                "not a refusal: message 1 is genuine"
            );
            if bogus_confirmation {
                let mut record = 44u32.to_le_bytes().to_vec();
                record.extend_from_slice(&[0xA5; 44]);
                replay.write_all(&record).await.expect("writes");
            } else {
                replay.shutdown().await.expect("closes");
            }
            let error = server
                .await
                .expect("no panic")
                .map(|_| ())
                .expect_err("no link");
            if bogus_confirmation {
                assert!(matches!(error, LinkError::ConfirmationFailed), "{error}");
            } else {
                assert!(matches!(error, LinkError::HandshakeClosed), "{error}");
            }
        }
    })
    .await;
}

// ---- Tampering ---------------------------------------------------------------------------

/// What the proxy does to the initiator's records; frame indexes count the records after the
/// key confirmation.
enum Tamper {
    /// Forward everything.
    Nothing,
    /// Flip one bit in the middle of frame `n`'s record.
    FlipByte(usize),
    /// Send frame `n`'s record twice.
    Duplicate(usize),
    /// Leave out frame `n`'s record.
    Drop(usize),
    /// Send frame `n + 1`'s record before frame `n`'s.
    Swap(usize),
    /// Replace frame `n`'s length prefix with 4 GiB - 1.
    HugeLength(usize),
    /// Send the first half of frame `n`'s record, report it, and wait before the rest.
    Hold {
        frame: usize,
        half_sent: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    },
}

async fn start_proxy(upstream: SocketAddr, tamper: Tamper) -> SocketAddr {
    let (listener, address) = bind().await;
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("proxy accepts");
        let server = TcpStream::connect(upstream).await.expect("proxy connects");
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let downstream = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
        });
        let _ = forward_records(&mut client_read, &mut server_write, tamper).await;
        let _ = server_write.shutdown().await;
        let _ = downstream.await;
    });
    address
}

async fn read_record(from: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; 4];
    match from.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = u32::from_le_bytes(prefix) as usize;
    let mut record = vec![0u8; 4 + len];
    record[..4].copy_from_slice(&prefix);
    from.read_exact(&mut record[4..]).await?;
    Ok(Some(record))
}

async fn forward_records(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    mut tamper: Tamper,
) -> std::io::Result<()> {
    // The handshake's first message: preamble, u16 length, Noise message.
    let mut head = [0u8; 10];
    from.read_exact(&mut head).await?;
    let mut message = vec![0u8; usize::from(u16::from_le_bytes([head[8], head[9]]))];
    from.read_exact(&mut message).await?;
    to.write_all(&head).await?;
    to.write_all(&message).await?;
    // The key confirmation.
    let Some(confirmation) = read_record(from).await? else {
        return Ok(());
    };
    to.write_all(&confirmation).await?;

    let mut held: Option<Vec<u8>> = None;
    let mut frame = 0usize;
    while let Some(mut record) = read_record(from).await? {
        match &mut tamper {
            Tamper::FlipByte(n) if *n == frame => {
                let middle = record.len() / 2;
                record[middle] ^= 0x01;
                to.write_all(&record).await?;
            }
            Tamper::Duplicate(n) if *n == frame => {
                to.write_all(&record).await?;
                to.write_all(&record).await?;
            }
            Tamper::Drop(n) if *n == frame => {}
            Tamper::Swap(n) if *n == frame => held = Some(record),
            Tamper::Swap(n) if *n + 1 == frame => {
                to.write_all(&record).await?;
                to.write_all(&held.take().expect("held")).await?;
            }
            Tamper::HugeLength(n) if *n == frame => {
                record[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                to.write_all(&record).await?;
            }
            Tamper::Hold { frame: n, .. } if *n == frame => {
                let Tamper::Hold {
                    half_sent, release, ..
                } = std::mem::replace(&mut tamper, Tamper::Nothing)
                else {
                    unreachable!()
                };
                let half = record.len() / 2;
                to.write_all(&record[..half]).await?;
                to.flush().await?;
                let _ = half_sent.send(());
                let _ = release.await;
                to.write_all(&record[half..]).await?;
            }
            _ => to.write_all(&record).await?,
        }
        frame += 1;
    }
    Ok(())
}

fn frame_payload(index: usize) -> Vec<u8> {
    format!("frame {index} ").repeat(100).into_bytes()
}

#[tokio::test]
async fn tampered_replayed_dropped_or_reordered_records_end_the_link() {
    within(async {
        let cases: [(Tamper, usize, &str); 5] = [
            (
                Tamper::FlipByte(2),
                2,
                "record failed authentication (tampered or replayed)",
            ),
            (
                Tamper::Duplicate(1),
                2,
                "record failed authentication (tampered or replayed)",
            ),
            (
                Tamper::Drop(1),
                1,
                "record failed authentication (tampered or replayed)",
            ),
            (
                Tamper::Swap(1),
                1,
                "record failed authentication (tampered or replayed)",
            ),
            (
                Tamper::HugeLength(1),
                1,
                "record length 4294967295 is outside",
            ),
        ];
        for (tamper, delivered, reason) in cases {
            let client_config = config("client", Compression::Lz4);
            let server_config = config("server", Compression::Lz4);
            let (client, server) = handshake(&client_config, &server_config, Some(tamper)).await;
            let (mut client_sender, mut client_receiver, _) = client.expect("client handshake");
            let (_server_sender, mut server_receiver, _) = server.expect("server handshake");
            let sending = tokio::spawn(async move {
                for index in 0..5 {
                    // Sends may fail once the server has hung up.
                    if client_sender
                        .send(index as u16, &frame_payload(index))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let mut received = Vec::new();
            let error = loop {
                match server_receiver.recv().await {
                    Ok((kind, bytes)) => received.push((kind, bytes)),
                    Err(error) => break error,
                }
            };
            let expected: Vec<(u16, Vec<u8>)> = (0..delivered)
                .map(|index| (index as u16, frame_payload(index)))
                .collect();
            assert_eq!(received, expected, "{reason}: frames before the damage");
            assert!(
                error.to_string().starts_with(reason),
                "expected {reason:?}, got {error}"
            );
            assert!(matches!(
                server_receiver.recv().await,
                Err(LinkError::Broken(_))
            ));
            // The server shut the connection down; the client sees it end.
            let client_error = client_receiver.recv().await.expect_err("link closed");
            assert!(
                matches!(client_error, LinkError::Closed | LinkError::Io { .. }),
                "{client_error}"
            );
            sending.await.expect("sender task");
        }
    })
    .await;
}

#[tokio::test]
async fn recv_is_cancel_safe_in_the_middle_of_a_record() {
    within(async {
        let (half_sent_tx, half_sent_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let tamper = Tamper::Hold {
            frame: 0,
            half_sent: half_sent_tx,
            release: release_rx,
        };
        let (client, server) = handshake(
            &config("client", Compression::None),
            &config("server", Compression::None),
            Some(tamper),
        )
        .await;
        let (mut sender, _client_receiver, _) = client.expect("client handshake");
        let (_server_sender, mut receiver, _) = server.expect("server handshake");
        let big = payload(1, 300_000);
        let to_send = big.clone();
        let sending = tokio::spawn(async move {
            sender.send(1, &to_send).await.expect("sends");
            sender.send(2, b"after").await.expect("sends");
            sender
        });
        half_sent_rx.await.expect("the proxy sent half a record");
        // Half a record is there to read but no whole frame: these calls are cancelled
        // midway, after reading part of the record.
        for _ in 0..3 {
            let attempt = tokio::time::timeout(Duration::from_millis(50), receiver.recv()).await;
            assert!(attempt.is_err(), "no frame can be complete yet");
        }
        release_tx.send(()).expect("proxy waits");
        assert_eq!(receiver.recv().await.expect("receives"), (1, big));
        assert_eq!(
            receiver.recv().await.expect("receives"),
            (2, b"after".to_vec())
        );
        let _sender = sending.await.expect("sender task");
    })
    .await;
}

// ---- Throughput ----------------------------------------------------------------------------

/// `cargo test --release -p engine --test link -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run in release"]
async fn throughput() {
    const FRAME_BYTES: usize = 1 << 20;
    const TOTAL_BYTES: usize = 4 << 30;
    for (codec, index, recycle) in [
        (Compression::None, 1, false),
        (Compression::None, 1, true),
        (Compression::Lz4, 1, true),
        (Compression::Lz4, 0, true),
        (Compression::Zstd, 0, true),
    ] {
        let (client, server) =
            established(&config("client", codec), &config("server", codec)).await;
        let (mut sender, _client_receiver, _) = client;
        let (_server_sender, mut receiver, _) = server;
        let data = payload(index, FRAME_BYTES);
        let frames = TOTAL_BYTES / FRAME_BYTES;
        let started = Instant::now();
        let receiving = tokio::spawn(async move {
            for _ in 0..frames {
                let (_, bytes) = receiver.recv().await.expect("receives");
                assert_eq!(bytes.len(), FRAME_BYTES);
                if recycle {
                    receiver.recycle(bytes);
                }
            }
            receiver
        });
        for _ in 0..frames {
            sender.send(1, &data).await.expect("sends");
        }
        let receiver = receiving.await.expect("receiver task");
        let seconds = started.elapsed().as_secs_f64();
        let traffic = receiver.counters().snapshot();
        println!(
            "{codec:>4} {:>8} {}: {:.2} GiB/s of payload, {:.2} GiB/s on the wire",
            if recycle { "recycled" } else { "fresh" },
            if index.is_multiple_of(2) {
                "compressible"
            } else {
                "random"
            },
            TOTAL_BYTES as f64 / seconds / f64::from(1 << 30),
            traffic.wire_bytes_received as f64 / seconds / f64::from(1 << 30),
        );
    }
}
