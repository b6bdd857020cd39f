//! The NBD server against hostile or broken clients: malformed options and requests keep or
//! close only their own connection, limits hold, and seeded random byte streams never panic the
//! server.
//!
//! This file is its own test binary because it installs a panic hook that counts panics on any
//! thread (a panic in a server task would otherwise be swallowed by the runtime).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    MemoryBackend, NBD_CMD_DISC, NBD_CMD_READ, NBD_CMD_WRITE, NBD_FLAG_C_FIXED_NEWSTYLE,
    NBD_FLAG_C_NO_ZEROES, NBD_OPT_GO, NBD_REP_ACK, OpCounts, RawClient, TEST_DEADLINE, TestServer,
    assert_success, run_client,
};
use engine::prng::Prng;
use ublk_target::nbd::NbdLimits;

const NBD_OPT_INFO: u32 = 6;
const NBD_OPT_LIST: u32 = 3;
const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
const NBD_REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const NBD_REP_ERR_INVALID: u32 = (1 << 31) | 3;
const NBD_REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
const NBD_REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;
const NBD_EINVAL: u32 = 22;
const NBD_ENOSPC: u32 = 28;
const NBD_CMD_FLAG_NO_HOLE: u16 = 2;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic of the process from now on, on any thread.
fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

#[test]
fn malformed_options_get_errors_without_losing_framing() {
    let server = TestServer::start(NbdLimits::default());
    server.serve("r0", MemoryBackend::new(1 << 20, 0));
    let mut client = RawClient::connect(server.port);
    client.send_client_flags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);

    client.send_option(NBD_OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(client.read_option_reply().reply_type, NBD_REP_ERR_UNSUP);
    client.send_option(0x1234, b"abc");
    let reply = client.read_option_reply();
    assert_eq!(
        (reply.option, reply.reply_type),
        (0x1234, NBD_REP_ERR_UNSUP)
    );
    client.send_option(NBD_OPT_STRUCTURED_REPLY, &vec![7u8; 100_000]);
    assert_eq!(client.read_option_reply().reply_type, NBD_REP_ERR_TOO_BIG);
    client.send_option(NBD_OPT_INFO, &[0, 0, 0, 9, b'r']);
    assert_eq!(client.read_option_reply().reply_type, NBD_REP_ERR_INVALID);
    client.send_option(NBD_OPT_LIST, b"x");
    assert_eq!(client.read_option_reply().reply_type, NBD_REP_ERR_INVALID);
    client.send_option(NBD_OPT_INFO, &[0, 0, 0, 2, 0xff, 0xfe, 0, 0]);
    let reply = client.read_option_reply();
    assert_eq!(reply.reply_type, NBD_REP_ERR_UNKNOWN);
    assert!(
        String::from_utf8(reply.data)
            .unwrap()
            .starts_with("no export named")
    );

    client.send_option(NBD_OPT_LIST, &[]);
    let entry = client.read_option_reply();
    assert_eq!(entry.data, [0, 0, 0, 2, b'r', b'0']);
    assert_eq!(client.read_option_reply().reply_type, NBD_REP_ACK);

    let information = client.go("r0").expect("GO after errors");
    assert_eq!(information[&0][0..8], (1u64 << 20).to_be_bytes());
    assert_eq!(information[&3], [0, 0, 2, 0, 0, 0, 16, 0, 2, 0, 0, 0]);
    assert_eq!(client.read(1, 0, 512).unwrap(), vec![0u8; 512]);
}

#[test]
fn an_absurd_option_length_closes_the_connection() {
    let server = TestServer::start(NbdLimits::default());
    let mut client = RawClient::connect(server.port);
    client.send_client_flags(NBD_FLAG_C_FIXED_NEWSTYLE);
    let mut header = b"IHAVEOPT".to_vec();
    header.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    client.send(&header);
    client.expect_closed();

    let mut client = RawClient::connect(server.port);
    client.send_client_flags(1 << 7);
    client.expect_closed();

    let mut client = RawClient::connect(server.port);
    client.send_client_flags(NBD_FLAG_C_FIXED_NEWSTYLE);
    client.send(b"IHAVEOPX\0\0\0\x07\0\0\0\0");
    client.expect_closed();
}

#[test]
fn bad_requests_get_errors_and_the_connection_goes_on() {
    let server = TestServer::start(NbdLimits::default());
    let backend = MemoryBackend::new(1 << 20, 0x5a);
    server.serve("r0", backend.clone());
    let mut client = RawClient::transmission(server.port, "r0");

    assert_eq!(client.read(1, 100, 512), Err(NBD_EINVAL), "unaligned");
    assert_eq!(
        client.read(2, 1 << 20, 512),
        Err(NBD_EINVAL),
        "past the end"
    );
    assert_eq!(
        client.read(3, 0, (32 << 20) + 512),
        Err(NBD_EINVAL),
        "too large"
    );
    assert_eq!(
        client.write(4, 1 << 20, &[1; 512]),
        NBD_ENOSPC,
        "write past the end"
    );
    assert_eq!(client.write(5, 0, &[1; 100]), NBD_EINVAL, "unaligned write");
    client.send_request(NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 6, 0, 512);
    client.send(&[1; 512]);
    assert_eq!(
        client.read_simple_reply(),
        (NBD_EINVAL, 6),
        "flag not valid for writes"
    );
    client.send_request(77, 0, 7, 0, 512);
    assert_eq!(
        client.read_simple_reply(),
        (NBD_EINVAL, 7),
        "unknown command"
    );
    assert_eq!(client.read(8, 512, 0), Ok(Vec::new()), "zero-length read");
    assert!(
        backend.range_is(0, 1 << 20, 0x5a),
        "no refused write was applied"
    );

    assert_eq!(client.write(9, 512, &[0x77; 512]), 0);
    assert_eq!(client.read(10, 512, 512).unwrap(), vec![0x77; 512]);

    // A write payload too large even to discard ends the connection.
    client.send_request(NBD_CMD_WRITE, 0, 11, 0, u32::MAX - 511);
    client.expect_closed();
}

#[test]
fn connections_beyond_the_limit_are_closed_until_a_slot_frees() {
    let limits = NbdLimits {
        connections_max: 2,
        ..NbdLimits::default()
    };
    let server = TestServer::start(limits);
    server.serve("r0", MemoryBackend::new(1 << 20, 0));
    let first = RawClient::connect(server.port);
    let _second = RawClient::connect(server.port);

    let mut refused = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    refused.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        refused.read(&mut byte).unwrap_or(0),
        0,
        "no greeting beyond the limit"
    );

    drop(first);
    // The slot frees once the server sees the first client go; retry until then.
    let deadline = Instant::now() + TEST_DEADLINE;
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
        let mut greeting = [0u8; 8];
        if stream.read_exact(&mut greeting).is_ok() {
            assert_eq!(&greeting, b"NBDMAGIC");
            break;
        }
        assert!(Instant::now() < deadline, "the slot never freed");
    }
}

#[test]
fn a_stalled_handshake_times_out_without_affecting_transmission() {
    let limits = NbdLimits {
        handshake_timeout: Duration::from_millis(300),
        ..NbdLimits::default()
    };
    let server = TestServer::start(limits);
    let backend = MemoryBackend::new(1 << 20, 0);
    server.serve("r0", backend.clone());
    let mut working = RawClient::transmission(server.port, "r0");

    let started = Instant::now();
    let mut stalled = RawClient::connect(server.port);
    stalled.expect_closed();
    assert!(started.elapsed() >= Duration::from_millis(300));

    // More than the handshake timeout after it connected, the negotiated client still works.
    assert_eq!(working.write(1, 0, &[3; 4096]), 0);
    assert_eq!(working.read(2, 0, 4096).unwrap(), vec![3; 4096]);
}

/// Bytes a client might send after entering transmission: plausible requests (some with
/// payloads cut short), with occasional garbage.
fn random_requests(prng: &mut Prng, export_bytes: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for cookie in 0..prng.range_inclusive(1, 40) {
        if prng.chance(1, 30) {
            bytes.extend((0..prng.below(64)).map(|_| prng.next_u64() as u8));
            continue;
        }
        let command = prng.below(9) as u16;
        let flags = if prng.chance(1, 5) {
            prng.below(1 << 16)
        } else {
            prng.below(4)
        } as u16;
        let sectors = export_bytes / 512;
        let offset = if prng.chance(1, 10) {
            prng.next_u64()
        } else {
            prng.below(sectors) * 512
        };
        let length = match prng.below(10) {
            0 => prng.next_u64() as u32,
            1 => prng.below(4096) as u32,
            _ => prng.range_inclusive(0, 64) as u32 * 512,
        };
        bytes.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&command.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        if command == NBD_CMD_WRITE {
            let payload = if prng.chance(1, 20) {
                prng.below(u64::from(length).min(1 << 16) + 1)
            } else {
                u64::from(length).min(1 << 16)
            };
            bytes.extend((0..payload).map(|_| prng.next_u64() as u8));
        }
        if command == NBD_CMD_DISC && prng.chance(1, 2) {
            break;
        }
    }
    bytes
}

/// Bytes a client might send during option haggling.
fn random_options(prng: &mut Prng) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..prng.range_inclusive(1, 10) {
        let option = if prng.chance(1, 5) {
            prng.next_u64() as u32
        } else {
            prng.below(12) as u32
        };
        let data: Vec<u8> = match prng.below(4) {
            0 => {
                let name = if prng.chance(1, 2) {
                    &b"r0"[..]
                } else {
                    &b"zz"[..]
                };
                let mut data = (name.len() as u32).to_be_bytes().to_vec();
                data.extend_from_slice(name);
                let count = prng.below(4) as u16;
                data.extend_from_slice(&count.to_be_bytes());
                data.extend((0..count * 2).map(|_| prng.below(5) as u8));
                data
            }
            _ => (0..prng.below(40)).map(|_| prng.next_u64() as u8).collect(),
        };
        let magic: &[u8] = if prng.chance(1, 30) {
            b"IHAVEOPX"
        } else {
            b"IHAVEOPT"
        };
        bytes.extend_from_slice(magic);
        bytes.extend_from_slice(&option.to_be_bytes());
        let length = if prng.chance(1, 20) {
            prng.next_u64() as u32
        } else {
            data.len() as u32
        };
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(&data);
    }
    bytes
}

/// Sends `bytes` on a fresh connection while draining whatever the server answers, then
/// half-closes and waits for the server to close. Returns whether the server closed in time.
fn play(port: u16, bytes: &[u8]) -> bool {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TEST_DEADLINE)).unwrap();
    stream.set_write_timeout(Some(TEST_DEADLINE)).unwrap();
    let mut reading = stream.try_clone().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 1 << 16];
        loop {
            match reading.read(&mut buffer) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(error) => {
                    return matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    );
                }
            }
        }
    });
    let mut writing = stream;
    // The server may close first; then writing fails, which is fine.
    if writing.write_all(bytes).is_ok() {
        let _ = writing.shutdown(Shutdown::Write);
    }
    drain.join().expect("drain thread")
}

#[test]
fn random_client_bytes_never_panic_the_server() {
    count_panics();
    let server = TestServer::start(NbdLimits {
        requests_in_flight_per_connection: 4,
        ..NbdLimits::default()
    });
    let export_bytes = 1 << 20;
    let backend = MemoryBackend::new(export_bytes as usize, 0);
    server.serve("r0", backend.clone());

    // Client flags, then NBD_OPT_GO for "r0" with no information requests.
    let mut go = (NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)
        .to_be_bytes()
        .to_vec();
    go.extend_from_slice(b"IHAVEOPT");
    go.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    go.extend_from_slice(&8u32.to_be_bytes());
    go.extend_from_slice(&[0, 0, 0, 2, b'r', b'0', 0, 0]);

    for seed in 0..600u64 {
        let mut prng = Prng::from_seed(seed);
        let bytes = match seed % 3 {
            0 => (0..prng.below(200))
                .map(|_| prng.next_u64() as u8)
                .collect(),
            1 => {
                let mut bytes = 3u32.to_be_bytes().to_vec();
                bytes.extend(random_options(&mut prng));
                bytes
            }
            _ => {
                let mut bytes = go.clone();
                bytes.extend(random_requests(&mut prng, export_bytes));
                bytes
            }
        };
        assert!(
            play(server.port, &bytes),
            "seed {seed}: the server did not close"
        );
    }

    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    let counts = &backend.counts;
    assert!(
        OpCounts::get(&counts.reads) > 0 && OpCounts::get(&counts.writes) > 0,
        "the random requests reached the backend too"
    );
    assert!(server.is_running());
    assert_eq!(backend.data.lock().unwrap().len(), export_bytes as usize);
    // The server still serves well-behaved clients.
    let output = run_client(
        "qemu-io",
        &[
            "-f",
            "raw",
            &server.uri("r0"),
            "-c",
            "write -P 0x3c 0 64k",
            "-c",
            "read -P 0x3c 0 64k",
        ],
    );
    let stdout = assert_success(&output, "qemu-io after the random clients");
    assert!(!stdout.contains("failed"), "{stdout}");
    let mut client = RawClient::transmission(server.port, "r0");
    client.send_request(NBD_CMD_READ, 0, 1, 0, 512);
    assert_eq!(client.read_simple_reply(), (0, 1));
    assert_eq!(client.read_bytes(512), vec![0x3c; 512]);
    client.send_request(NBD_CMD_DISC, 0, 2, 0, 0);
    client.expect_closed();
}

#[test]
fn stopping_the_server_closes_its_connections() {
    let mut server = TestServer::start(NbdLimits::default());
    server.serve("r0", MemoryBackend::new(1 << 20, 0));
    let mut negotiating = RawClient::connect(server.port);
    let mut transmitting = RawClient::transmission(server.port, "r0");
    assert_eq!(transmitting.read(1, 0, 512).unwrap(), vec![0u8; 512]);
    server.stop();
    negotiating.expect_closed();
    transmitting.expect_closed();
}
