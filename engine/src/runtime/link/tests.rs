//! Unit tests of the link's pieces; end-to-end tests live in `engine/tests/link.rs`.

use std::time::Duration;

use tokio::net::TcpListener;

use super::hello::{HelloMessage, negotiate};
use super::*;
use crate::prng::Prng;

const KEY: [u8; 32] = [0x42; 32];

fn hello(node: &str) -> Hello {
    Hello::new("cluster-a", node, "volume-1")
}

#[test]
fn hello_round_trips_and_ignores_trailing_bytes() {
    let message = HelloMessage {
        hello: Hello {
            protocol_version_min: 1,
            protocol_version_max: 3,
            features: 0xDEAD_BEEF_0000_0001,
            cluster_name: "cluster-a".to_owned(),
            node_name: "nødé-1".to_owned(),
            volume_name: "v".repeat(NAME_BYTES_MAX),
        },
        frame_payload_bytes_max: 1 << 20,
    };
    let mut bytes = message.encode();
    assert_eq!(HelloMessage::decode(&bytes), Some(message.clone()));
    bytes.extend_from_slice(b"future fields");
    assert_eq!(HelloMessage::decode(&bytes), Some(message));
}

#[test]
fn malformed_hellos_are_refused_and_never_panic() {
    let bytes = HelloMessage {
        hello: hello("n1"),
        frame_payload_bytes_max: 100,
    }
    .encode();
    for cut in 0..bytes.len() {
        assert_eq!(HelloMessage::decode(&bytes[..cut]), None, "cut at {cut}");
    }
    let mut empty_name = bytes.clone();
    empty_name[14] = 0; // the cluster name's length
    assert_eq!(HelloMessage::decode(&empty_name), None);
    let mut bad_utf8 = bytes.clone();
    bad_utf8[15] = 0xFF;
    assert_eq!(HelloMessage::decode(&bad_utf8), None);
    let mut empty_range = bytes;
    empty_range[0] = 2;
    empty_range[1] = 1;
    assert_eq!(HelloMessage::decode(&empty_range), None);

    let mut prng = Prng::from_seed(11);
    for _ in 0..10_000 {
        let len = prng.below(120) as usize;
        let noise: Vec<u8> = (0..len).map(|_| prng.next_u64() as u8).collect();
        if let Some(message) = HelloMessage::decode(&noise) {
            assert!(message.hello.validate().is_ok());
        }
    }
}

#[test]
fn negotiation_agrees_on_versions_and_features() {
    let mut ours = hello("n1");
    let mut theirs = hello("n2");
    ours.protocol_version_max = 3;
    ours.features = 0b1011;
    theirs.protocol_version_min = 1;
    theirs.protocol_version_max = 2;
    theirs.features = 0b0110;
    let agreement = negotiate(&ours, &theirs).expect("compatible");
    assert_eq!(agreement.protocol_version, 2);
    assert_eq!(agreement.features, 0b0010);
    assert_eq!(negotiate(&theirs, &ours), Ok(agreement), "symmetric");
}

#[test]
fn negotiation_refusals_name_the_reason() {
    let ours = hello("n1");
    let cases: [(Hello, &str); 4] = [
        (
            Hello {
                protocol_version_min: 2,
                protocol_version_max: 4,
                ..hello("n2")
            },
            "no common protocol version: we speak 1..=1, the peer 2..=4",
        ),
        (
            Hello::new("cluster-b", "n2", "volume-1"),
            "cluster name mismatch: we are in \"cluster-a\", the peer in \"cluster-b\"",
        ),
        (
            Hello::new("cluster-a", "n2", "volume-2"),
            "volume name mismatch: ours is \"volume-1\", the peer's is \"volume-2\"",
        ),
        (
            hello("n1"),
            "the peer has our own node name \"n1\" (connected to ourselves?)",
        ),
    ];
    for (theirs, reason) in cases {
        let refusal = negotiate(&ours, &theirs).expect_err("incompatible");
        assert_eq!(refusal.to_string(), reason);
        assert!(negotiate(&theirs, &ours).is_err(), "symmetric: {reason}");
    }
}

#[test]
fn invalid_configurations_are_refused() {
    let mut config = LinkConfig::new(KEY, hello("n1"));
    assert!(config.validate().is_ok());
    let printed = format!("{config:?}");
    assert!(printed.contains("<redacted>") && !printed.contains("66, 66"));
    config.frame_payload_bytes_max = FRAME_PAYLOAD_BYTES_MAX + 1;
    assert!(matches!(
        config.validate(),
        Err(LinkError::InvalidConfig(_))
    ));
    config.frame_payload_bytes_max = FRAME_PAYLOAD_BYTES_MAX;
    config.hello.node_name = String::new();
    assert!(matches!(
        config.validate(),
        Err(LinkError::InvalidConfig(_))
    ));
    config.hello.node_name = "n".repeat(NAME_BYTES_MAX + 1);
    assert!(matches!(
        config.validate(),
        Err(LinkError::InvalidConfig(_))
    ));
}

/// Both directions rekey every 3 records (a real link uses 2^24): dozens of key changes, and
/// every frame still arrives in order.
#[tokio::test]
async fn frames_cross_many_rekeys_over_tcp() {
    let policy = RekeyPolicy {
        records_per_key: 3,
        bytes_per_key: 5000,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("has an address");
    let server_config = LinkConfig::new(KEY, hello("server"));
    let client_config = LinkConfig::new(KEY, hello("client"));
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accepts");
        let (mut sender, mut receiver, peer) = accept_with_policy(stream, &server_config, policy)
            .await
            .expect("handshake");
        assert_eq!(peer.hello.node_name, "client");
        // Echo every frame back.
        for _ in 0..60 {
            let (kind, payload) = receiver.recv().await.expect("receives");
            sender.send(kind, &payload).await.expect("echoes");
        }
        (sender.key_generation(), receiver.key_generation())
    });
    let run = async {
        let (mut sender, mut receiver, _) = connect_with_policy(address, &client_config, policy)
            .await
            .expect("handshake");
        for i in 0..60u16 {
            let payload = vec![i as u8; usize::from(i) * 97];
            sender.send(i, &payload).await.expect("sends");
            let (kind, echoed) = receiver.recv().await.expect("receives the echo");
            assert_eq!((kind, echoed), (i, payload));
        }
        // 61 records (with the key confirmation) at 3 per key, fewer when 5000 bytes come first.
        let (server_sent, server_received) = server.await.expect("server task");
        assert_eq!(sender.key_generation(), server_received);
        assert_eq!(receiver.key_generation(), server_sent);
        assert!(server_received >= 20, "{server_received} rekeys");
        assert!(server_sent >= 20, "{server_sent} rekeys");
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("finishes in time");
}
