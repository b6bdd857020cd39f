//! The NBD server against real clients (qemu-io, nbdinfo) and hand-driven sockets.
//!
//! Needs `qemu-io` (qemu-utils) and `nbdinfo` (libnbd-bin); a missing tool fails the test with
//! the package to install. Every external client runs under `timeout`.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{
    HoldingBackend, MemoryBackend, NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ,
    NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_OPT_EXPORT_NAME, OpCounts, RawClient,
    TestServer, assert_success, run_client, run_client_with_env, spawn_client,
};
use ublk_target::nbd::{ExportState, NbdLimits};

const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;

fn qemu_io(server: &TestServer, export: &str, commands: &[&str]) -> String {
    let uri = server.uri(export);
    let mut args = vec!["-f", "raw", uri.as_str()];
    for command in commands {
        args.extend(["-c", command]);
    }
    let output = run_client("qemu-io", &args);
    let stdout = assert_success(&output, "qemu-io");
    assert!(
        !stdout.contains("failed") && !stdout.contains("error"),
        "qemu-io reported a failure:\n{stdout}"
    );
    stdout
}

#[test]
fn qemu_io_writes_reads_zeroes_discards_and_flushes() {
    let server = TestServer::start(NbdLimits::default());
    let backend = MemoryBackend::new(8 * MIB, 0x11);
    server.serve("r0", backend.clone());

    qemu_io(
        &server,
        "r0",
        &[
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -z 1M 64k",
            "write -z -u 1536k 64k",
            "discard 2M 64k",
            "write -f -P 0xcd 3M 4k",
            "read -P 0x11 4M 64k",
            "read -P 0 1M 64k",
            "flush",
        ],
    );

    assert!(backend.range_is(0, MIB, 0xab));
    assert!(backend.range_is(MIB, 64 * KIB, 0));
    assert!(backend.range_is(MIB + 64 * KIB, 448 * KIB, 0x11));
    assert!(backend.range_is(1536 * KIB, 64 * KIB, 0));
    assert!(backend.range_is(2 * MIB, 64 * KIB, 0));
    assert!(backend.range_is(2 * MIB + 64 * KIB, MIB - 64 * KIB, 0x11));
    assert!(backend.range_is(3 * MIB, 4 * KIB, 0xcd));
    assert!(backend.range_is(3 * MIB + 4 * KIB, 5 * MIB - 4 * KIB, 0x11));
    let counts = &backend.counts;
    assert!(
        OpCounts::get(&counts.flushes) >= 1,
        "the flush reached the backend"
    );
    assert_eq!(
        OpCounts::get(&counts.write_zeroes),
        2,
        "write -z, with and without -u, is NBD_CMD_WRITE_ZEROES"
    );
    assert_eq!(OpCounts::get(&counts.trims), 1, "discard is NBD_CMD_TRIM");
    assert!(OpCounts::get(&counts.fua) >= 1, "write -f carries FUA");
}

#[test]
fn qemu_io_works_when_completions_run_on_other_threads() {
    let server = TestServer::start(NbdLimits::default());
    let backend = MemoryBackend::completing_elsewhere(4 * MIB, 0);
    server.serve("r0", backend.clone());
    qemu_io(
        &server,
        "r0",
        &[
            "aio_write -P 0x21 0 256k",
            "aio_write -P 0x22 256k 256k",
            "aio_write -P 0x23 512k 256k",
            "aio_flush",
            "read -P 0x21 0 256k",
            "read -P 0x22 256k 256k",
            "read -P 0x23 512k 256k",
        ],
    );
    assert!(backend.range_is(0, 256 * KIB, 0x21));
    assert!(backend.range_is(256 * KIB, 256 * KIB, 0x22));
    assert!(backend.range_is(512 * KIB, 256 * KIB, 0x23));
}

#[test]
fn nbdinfo_shows_size_and_capabilities() {
    let server = TestServer::start(NbdLimits::default());
    server.serve("r0", MemoryBackend::new(8 * MIB, 0));
    let output = run_client("nbdinfo", &[&server.uri("r0")]);
    let stdout = assert_success(&output, "nbdinfo");
    for expected in [
        "export-size: 8388608",
        "can_flush: true",
        "can_fua: true",
        "can_trim: true",
        "can_zero: true",
        "can_multi_conn: true",
        "is_read_only: false",
        "block_size_minimum: 512",
        "block_size_preferred: 4096",
        "block_size_maximum: 33554432",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}

#[test]
fn nbdinfo_lists_the_serving_exports() {
    let server = TestServer::start(NbdLimits::default());
    server.serve("r0", MemoryBackend::new(MIB, 0));
    server.serve("data-volume", MemoryBackend::new(2 * MIB, 0));
    let uri = format!("nbd://127.0.0.1:{}", server.port);
    let output = run_client("nbdinfo", &["--list", &uri]);
    let stdout = assert_success(&output, "nbdinfo --list");
    assert!(stdout.contains("export=\"r0\""), "{stdout}");
    assert!(stdout.contains("export=\"data-volume\""), "{stdout}");
    assert!(stdout.contains("export-size: 1048576"), "{stdout}");
    assert!(stdout.contains("export-size: 2097152"), "{stdout}");

    // An export that is unavailable here is not listed (nbdinfo --list would fail as a whole
    // on it).
    server.registry.set(
        "r0",
        ExportState::Unavailable("volume r0 is secondary on this node".to_string()),
    );
    let output = run_client("nbdinfo", &["--list", &uri]);
    let stdout = assert_success(&output, "nbdinfo --list with an unavailable export");
    assert!(!stdout.contains("export=\"r0\""), "{stdout}");
    assert!(stdout.contains("export=\"data-volume\""), "{stdout}");
}

#[test]
fn clients_show_why_an_export_is_unavailable() {
    let server = TestServer::start(NbdLimits::default());
    let reason = "volume r0 is secondary on this node; use the primary";
    server
        .registry
        .set("r0", ExportState::Unavailable(reason.to_string()));

    // libnbd shows the server's message only in its debug output.
    let debug = [("LIBNBD_DEBUG", "1")];
    let output = run_client_with_env("nbdinfo", &[&server.uri("r0")], &debug);
    assert!(!output.status.success(), "nbdinfo must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("server error message: {reason}")),
        "the reason is shown: {stderr}"
    );
    let output = run_client(
        "qemu-io",
        &["-f", "raw", &server.uri("r0"), "-c", "read 0 512"],
    );
    assert!(!output.status.success(), "qemu-io must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("server reported: {reason}")),
        "the reason is shown: {stderr}"
    );

    let output = run_client_with_env("nbdinfo", &[&server.uri("nope")], &debug);
    assert!(!output.status.success(), "nbdinfo must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server error message: no export named \"nope\""),
        "the reason is shown: {stderr}"
    );

    // Promotion flips the export to serving; new connections see it at once.
    server.serve("r0", MemoryBackend::new(MIB, 0));
    let output = run_client("nbdinfo", &[&server.uri("r0")]);
    let stdout = assert_success(&output, "nbdinfo after promotion");
    assert!(stdout.contains("export-size: 1048576"), "{stdout}");
}

#[test]
fn two_qemu_io_clients_at_once() {
    let server = TestServer::start(NbdLimits::default());
    let backend = MemoryBackend::new(8 * MIB, 0);
    server.serve("r0", backend.clone());
    let uri = server.uri("r0");
    let clients: Vec<_> = [(0x31, "0"), (0x32, "4M")]
        .into_iter()
        .map(|(pattern, offset)| {
            let write = format!("write -P {pattern} {offset} 2M");
            let read = format!("read -P {pattern} {offset} 2M");
            let args = ["-f", "raw", &uri, "-c", &write, "-c", &read, "-c", "flush"];
            spawn_client("qemu-io", &args)
        })
        .collect();
    for child in clients {
        let output = child.wait_with_output().unwrap();
        let stdout = assert_success(&output, "concurrent qemu-io");
        assert!(!stdout.contains("failed"), "{stdout}");
    }
    assert!(backend.range_is(0, 2 * MIB, 0x31));
    assert!(backend.range_is(4 * MIB, 2 * MIB, 0x32));
    assert!(OpCounts::get(&backend.counts.flushes) >= 2);
}

#[test]
fn a_malformed_request_closes_only_its_connection() {
    let server = TestServer::start(NbdLimits::default());
    let backend = MemoryBackend::new(4 * MIB, 0);
    server.serve("r0", backend.clone());

    let mut healthy = RawClient::transmission(server.port, "r0");
    assert_eq!(healthy.write(1, 0, &[0x41; 4096]), 0);

    let mut broken = RawClient::transmission(server.port, "r0");
    broken.send(b"this is not an NBD request header at all");
    broken.expect_closed();

    let mut broken_mid_write = RawClient::transmission(server.port, "r0");
    broken_mid_write.send_request(1, 0, 9, 0, 4096);
    broken_mid_write.send(&[0x99; 100]);
    broken_mid_write.close_write();
    broken_mid_write.expect_closed();

    // The connection opened before keeps working, and so do new ones.
    assert_eq!(healthy.write(2, 4096, &[0x42; 4096]), 0);
    assert_eq!(healthy.read(3, 0, 8192).unwrap()[..4096], [0x41; 4096]);
    qemu_io(&server, "r0", &["read -P 0x42 4k 4k", "read -P 0 8k 4k"]);
    assert!(
        backend.range_is(0, 100, 0x41),
        "the truncated write was not applied"
    );
    assert!(server.is_running());
}

#[test]
fn export_name_negotiation_with_and_without_zeroes() {
    let server = TestServer::start(NbdLimits::default());
    let backend = MemoryBackend::new(3 * MIB, 0x55);
    server.serve("r0", backend.clone());

    for no_zeroes in [false, true] {
        let mut client = RawClient::connect(server.port);
        let flags = NBD_FLAG_C_FIXED_NEWSTYLE | if no_zeroes { NBD_FLAG_C_NO_ZEROES } else { 0 };
        client.send_client_flags(flags);
        client.send_option(NBD_OPT_EXPORT_NAME, b"r0");
        let reply = client.read_bytes(10);
        assert_eq!(&reply[0..8], &(3 * MIB as u64).to_be_bytes());
        let transmission_flags = u16::from_be_bytes([reply[8], reply[9]]);
        assert_eq!(
            transmission_flags, 0b1_0110_1101,
            "HAS_FLAGS FLUSH FUA TRIM ZEROES MULTI_CONN"
        );
        if !no_zeroes {
            assert_eq!(client.read_bytes(124), vec![0u8; 124]);
        }
        // The first reply byte after the negotiation is the reply to this read.
        assert_eq!(client.read(7, 512, 512).unwrap(), vec![0x55; 512]);
        assert_eq!(client.write(8, 1024, &[0x66; 1024]), 0);
        client.send_request(NBD_CMD_FLUSH, 0, 9, 0, 0);
        assert_eq!(client.read_simple_reply(), (0, 9));
        client.send_request(NBD_CMD_DISC, 0, 10, 0, 0);
        client.expect_closed();
    }
    assert!(backend.range_is(1024, 1024, 0x66));
    assert_eq!(OpCounts::get(&backend.counts.flushes), 2);

    // An unknown name cannot be answered with an error: the server closes.
    let mut client = RawClient::connect(server.port);
    client.send_client_flags(NBD_FLAG_C_FIXED_NEWSTYLE);
    client.send_option(NBD_OPT_EXPORT_NAME, b"missing");
    client.expect_closed();
}

#[test]
fn requests_in_flight_are_bounded_and_disconnect_waits_for_them() {
    let limits = NbdLimits {
        requests_in_flight_per_connection: 2,
        ..NbdLimits::default()
    };
    let server = TestServer::start(limits);
    let backend = Arc::new(HoldingBackend::default());
    server.serve("held", backend.clone());

    let mut client = RawClient::transmission(server.port, "held");
    for cookie in 0..6u64 {
        client.send_request(NBD_CMD_READ, 0, cookie, cookie * 512, 512);
    }
    client.send_request(NBD_CMD_DISC, 0, 99, 0, 0);
    // Release the requests one at a time, each time once the server has handed the backend as
    // many as it may (two, until fewer remain); never more than two reach it at once.
    let mut replies = Vec::new();
    for answered in 0..6 {
        backend.wait_held((6 - answered).min(2));
        assert!(backend.held_now() <= 2);
        backend.release_one(512);
        let (error, cookie) = client.read_simple_reply();
        assert_eq!(error, 0);
        assert_eq!(client.read_bytes(512), vec![0u8; 512]);
        replies.push(cookie);
    }
    replies.sort_unstable();
    assert_eq!(replies, (0..6).collect::<Vec<_>>());
    assert_eq!(backend.submitted.load(Ordering::SeqCst), 6);
    assert_eq!(backend.held_max.load(Ordering::SeqCst), 2);
    // Every request was answered before the disconnect closed the connection.
    client.expect_closed();
}
