//! Unit tests of the registry, the limits and whole connections over in-memory streams (why
//! each connection ends, as logged).

use std::sync::Arc;
use std::time::Duration;

use engine::buffer::IoBuf;
use engine::replica::ClientOp;
use engine::runtime::Completion;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::server::{CloseReason, serve_connection};
use super::wire::{self, ExportRequest, ProtocolViolation, RequestHeader};
use super::{BlockBackend, ExportRegistry, ExportState, NbdLimits};

/// A backend of zeros that completes at once.
struct Zeros;

impl BlockBackend for Zeros {
    fn size_bytes(&self) -> u64 {
        // Not a multiple of 512: the server advertises it rounded down.
        (1 << 20) + 100
    }

    fn submit(&self, op: ClientOp, completion: Completion) {
        match op {
            ClientOp::Read { length, .. } => {
                completion(Ok(Some(IoBuf::zeroed(usize::try_from(length).unwrap()))));
            }
            _ => completion(Ok(None)),
        }
    }
}

#[test]
fn the_registry_tracks_exports_and_their_states() {
    let registry = ExportRegistry::new();
    assert!(registry.get("r0").is_none());
    assert!(
        registry
            .set("r1", ExportState::Serving(Arc::new(Zeros)))
            .is_none()
    );
    let previous = registry.set("r0", ExportState::Unavailable("secondary".to_string()));
    assert!(previous.is_none());
    assert_eq!(registry.names(), ["r0", "r1"]);
    assert_eq!(registry.serving_names(), ["r1"]);
    assert!(
        matches!(registry.get("r0"), Some(ExportState::Unavailable(reason)) if reason == "secondary")
    );

    let previous = registry.set("r0", ExportState::Serving(Arc::new(Zeros)));
    assert!(matches!(previous, Some(ExportState::Unavailable(_))));
    assert_eq!(registry.serving_names(), ["r0", "r1"]);
    assert!(matches!(
        registry.remove("r1"),
        Some(ExportState::Serving(_))
    ));
    assert_eq!(registry.names(), ["r0"]);
    assert_eq!(format!("{registry:?}"), "{\"r0\": Serving(1048676 bytes)}");
}

#[test]
fn limits_are_raised_to_workable_values() {
    let limits = NbdLimits {
        connections_max: 0,
        requests_in_flight_per_connection: 0,
        request_bytes_max: 1,
        payload_bytes_in_flight_per_connection: 0,
        handshake_timeout: Duration::from_secs(1),
    }
    .effective();
    assert_eq!(limits.connections_max, 1);
    assert_eq!(limits.requests_in_flight_per_connection, 1);
    assert_eq!(limits.request_bytes_max, 4096);
    assert_eq!(limits.payload_bytes_in_flight_per_connection, 4096);
}

/// Runs one connection whose client sends `client_bytes` and then closes its side; returns
/// why the server ended it, the export, and everything the server sent.
async fn run(client_bytes: Vec<u8>) -> (CloseReason, Option<String>, Vec<u8>) {
    let registry = ExportRegistry::new();
    registry.set("r0", ExportState::Serving(Arc::new(Zeros)));
    registry.set(
        "r9",
        ExportState::Unavailable("r9 is secondary".to_string()),
    );
    let (client, server) = tokio::io::duplex(1 << 20);
    let (server_read, server_write) = tokio::io::split(server);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    client_write.write_all(&client_bytes).await.unwrap();
    client_write.shutdown().await.unwrap();
    let limits = NbdLimits::default().effective();
    let (reason, export) = serve_connection(server_read, server_write, &registry, limits).await;
    let mut sent = Vec::new();
    client_read.read_to_end(&mut sent).await.unwrap();
    (reason, export, sent)
}

fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut bytes = wire::OPTION_MAGIC.to_be_bytes().to_vec();
    bytes.extend_from_slice(&option.to_be_bytes());
    bytes.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Client flags and `NBD_OPT_GO` for `name`.
fn go(name: &str) -> Vec<u8> {
    let mut bytes = 3u32.to_be_bytes().to_vec();
    let request = ExportRequest {
        name: name.as_bytes().to_vec(),
        info_requests: vec![wire::INFO_NAME],
    };
    bytes.extend(option(wire::OPT_GO, &request.encode()));
    bytes
}

fn request(command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let header = RequestHeader {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    };
    header.encode().to_vec()
}

#[tokio::test]
async fn connections_end_for_the_reason_logged() {
    let (reason, export, sent) = run(vec![0, 0, 0, 4]).await;
    assert!(matches!(
        reason,
        CloseReason::Protocol(ProtocolViolation::UnknownClientFlags(4))
    ));
    assert_eq!(
        reason.to_string(),
        "protocol violation: unknown client flags 0x4"
    );
    assert!(export.is_none());
    assert_eq!(sent, wire::greeting());

    let (reason, _, _) = run(vec![0, 0, 0, 3]).await;
    assert!(matches!(reason, CloseReason::ClientClosed));

    let (reason, _, _) = run(vec![0, 0, 0, 3, b'I', b'H']).await;
    assert!(matches!(reason, CloseReason::Truncated));

    let mut abort = 3u32.to_be_bytes().to_vec();
    abort.extend(option(wire::OPT_ABORT, &[]));
    let (reason, _, sent) = run(abort).await;
    assert!(matches!(reason, CloseReason::Aborted));
    assert_eq!(
        sent[wire::GREETING_BYTES..],
        wire::option_reply(wire::OPT_ABORT, wire::REP_ACK, &[])
    );

    let mut export_name = 3u32.to_be_bytes().to_vec();
    export_name.extend(option(wire::OPT_EXPORT_NAME, b"r9"));
    let (reason, _, sent) = run(export_name).await;
    assert_eq!(
        reason.to_string(),
        "NBD_OPT_EXPORT_NAME refused: r9 is secondary"
    );
    assert_eq!(sent.len(), wire::GREETING_BYTES, "no reply, just the close");
}

#[tokio::test]
async fn go_answers_the_rounded_size_the_name_and_the_block_sizes() {
    let (reason, export, sent) = run(go("r0")).await;
    assert!(matches!(reason, CloseReason::ClientClosed));
    assert_eq!(export.as_deref(), Some("r0"));
    let mut expected = wire::greeting().to_vec();
    let info = wire::info_export(1 << 20, wire::TRANSMISSION_FLAGS);
    expected.extend(wire::option_reply(wire::OPT_GO, wire::REP_INFO, &info));
    let sizes = wire::BlockSizes::for_payload_max(32 << 20).encode();
    expected.extend(wire::option_reply(wire::OPT_GO, wire::REP_INFO, &sizes));
    let name = wire::info_name("r0");
    expected.extend(wire::option_reply(wire::OPT_GO, wire::REP_INFO, &name));
    expected.extend(wire::option_reply(wire::OPT_GO, wire::REP_ACK, &[]));
    assert_eq!(sent, expected);

    let (reason, export, sent) = run(go("r9")).await;
    assert!(matches!(reason, CloseReason::ClientClosed));
    assert!(export.is_none());
    let refusal = wire::option_reply(wire::OPT_GO, wire::REP_ERR_UNKNOWN, b"r9 is secondary");
    assert_eq!(sent[wire::GREETING_BYTES..], refusal);
}

#[tokio::test]
async fn transmission_ends_for_the_reason_logged() {
    let mut disconnect = go("r0");
    disconnect.extend(request(wire::CMD_READ, 1, 0, 512));
    disconnect.extend(request(wire::CMD_DISC, 2, 0, 0));
    disconnect.extend(b"ignored after the disconnect");
    let (reason, export, sent) = run(disconnect).await;
    assert!(matches!(reason, CloseReason::Disconnected));
    assert_eq!(export.as_deref(), Some("r0"));
    let mut tail = wire::simple_reply_header(None, 1).to_vec();
    tail.extend([0u8; 512]);
    assert!(
        sent.ends_with(&tail),
        "the read is answered before the close"
    );

    let mut garbage = go("r0");
    garbage.extend([0xee; 28]);
    let (reason, _, _) = run(garbage).await;
    assert_eq!(
        reason.to_string(),
        "protocol violation: bad request magic 0xeeeeeeee"
    );

    let mut truncated = go("r0");
    truncated.extend(request(wire::CMD_WRITE, 1, 0, 4096));
    truncated.extend([1u8; 1000]);
    let (reason, _, _) = run(truncated).await;
    assert!(matches!(reason, CloseReason::Truncated));

    let mut past_end = go("r0");
    past_end.extend(request(wire::CMD_READ, 7, 1 << 20, 512));
    let (reason, _, sent) = run(past_end).await;
    assert!(matches!(reason, CloseReason::ClientClosed));
    let refused = wire::simple_reply_header(Some(wire::ErrorCode::Invalid), 7);
    assert!(
        sent.ends_with(&refused),
        "the rounded-off tail is past the end"
    );
}
