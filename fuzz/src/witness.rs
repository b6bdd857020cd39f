//! Target `witness`: the witness's datagrams (`manager::cluster::witness::wire`) and the
//! witness answering them (`manager::cluster::witness::Witness`).
//!
//! Input: a control byte, then (mode by bits 0-1):
//!
//! - 0, a request datagram: `decode_request` never panics; a request that decodes re-encodes to
//!   exactly the datagram;
//! - 1, a response datagram and the nonce to expect: `decode_response` never panics; a verdict
//!   that decodes re-encodes to exactly the datagram;
//! - 2, a run of requests, each a length byte, a time step and a datagram, handed to a
//!   witness: it never panics, every reply decodes to the verdict it reports, a grant leaves
//!   the asker holding the lease (and recorded as the only node with current data when it
//!   claims its peer is behind), and an "outdated" refusal names the node the witness recorded.
//!
//! With control bit 2 set the target signs each datagram with the key of the cluster it names,
//! so the fuzzer reaches what lies behind the tag.

use std::sync::Once;

use manager::cluster::witness::wire::{MAX_DATAGRAM_BYTES, WitnessKey, decode_request};
use manager::cluster::witness::{Claims, Kind, Limits, Request, Verdict, Witness};
use ring::hmac;

use crate::input::Input;

const CLUSTER_KEY: [u8; 32] = [9; 32];
const TAG_BYTES: usize = 32;
const REQUEST_HEADER: usize = 48;

/// Signs `body` with the witness key of `cluster` (the derivation of `WitnessKey::new`).
fn sign(cluster: &str, body: &[u8]) -> Vec<u8> {
    let derive = hmac::Key::new(hmac::HMAC_SHA256, &CLUSTER_KEY);
    let mut label = b"tandem witness v1 ".to_vec();
    label.extend_from_slice(cluster.as_bytes());
    let derived = hmac::sign(&derive, &label);
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    let mut packet = body.to_vec();
    packet.extend_from_slice(hmac::sign(&key, body).as_ref());
    packet
}

/// The cluster a request body names in clear, if its bytes are UTF-8 (else any name: the
/// decoder refuses it before checking the tag).
fn named_cluster(body: &[u8]) -> &str {
    let length = body.get(6).map_or(0, |&length| usize::from(length));
    body.get(REQUEST_HEADER..REQUEST_HEADER + length)
        .and_then(|name| std::str::from_utf8(name).ok())
        .unwrap_or("demo")
}

/// The target body.
pub fn witness(data: &[u8]) {
    static SIGNER_MATCHES: Once = Once::new();
    SIGNER_MATCHES.call_once(check_signer);
    let mut input = Input::new(data);
    let control = input.u8();
    let signed = control & 4 != 0;
    match control & 3 {
        0 | 3 => {
            let body = input.rest();
            let packet = if signed {
                sign(named_cluster(body), body)
            } else {
                body.to_vec()
            };
            check_request(&packet);
        }
        1 => {
            let nonce = input.u64();
            let body = input.rest();
            let packet = if signed {
                sign("demo", body)
            } else {
                body.to_vec()
            };
            let key = WitnessKey::new(&CLUSTER_KEY, "demo");
            match key.decode_response(nonce, &packet) {
                Ok(verdict) => {
                    assert_eq!(
                        key.encode_response(nonce, &verdict),
                        packet,
                        "a response re-encodes to other bytes"
                    );
                }
                Err(error) => assert!(!error.to_string().is_empty() && !error.kind().is_empty()),
            }
        }
        _ => serve(&mut input, signed),
    }
}

fn check_request(packet: &[u8]) {
    match decode_request(&CLUSTER_KEY, packet) {
        Ok(request) => {
            assert!(packet.len() <= MAX_DATAGRAM_BYTES);
            let encoded = WitnessKey::new(&CLUSTER_KEY, &request.cluster)
                .encode_request(&request)
                .expect("a decoded request encodes");
            assert_eq!(encoded, packet, "a request re-encodes to other bytes");
        }
        Err(error) => assert!(!error.to_string().is_empty() && !error.kind().is_empty()),
    }
}

fn serve(input: &mut Input<'_>, signed: bool) {
    let limits = Limits {
        max_clusters: 2,
        max_nodes: 3,
        min_lease_ms: 100,
        max_lease_ms: 60_000,
        restart_grace_ms: u64::from(input.u16()),
    };
    let mut now_ms = u64::from(input.u16());
    let mut witness = Witness::new(CLUSTER_KEY, limits, now_ms);
    while !input.is_empty() {
        let length = usize::from(input.u8());
        now_ms += u64::from(input.u16());
        let body = input.bytes(length);
        let packet = if signed {
            sign(named_cluster(body), body)
        } else {
            body.to_vec()
        };
        // The data mark before, for the grant's check below.
        let before = decode_request(&CLUSTER_KEY, &packet)
            .ok()
            .and_then(|r| witness.table().current(&r.cluster).map(str::to_string));
        let Ok(answer) = witness.handle(&packet, now_ms) else {
            continue;
        };
        let request = &answer.request;
        let key = WitnessKey::new(&CLUSTER_KEY, &request.cluster);
        assert_eq!(
            key.decode_response(request.nonce, &answer.reply),
            Ok(answer.verdict.clone()),
            "a reply that does not say its verdict"
        );
        let lease = witness.table().lease(&request.cluster, now_ms);
        match &answer.verdict {
            Verdict::Granted { epoch, .. } => {
                assert_eq!(request.kind, Kind::Acquire);
                let lease = lease.expect("a granted lease is live");
                assert_eq!((&lease.holder, lease.epoch), (&request.node, *epoch));
                let current = witness.table().current(&request.cluster);
                let claims = request.claims;
                let expected = if claims.peer_behind || claims.force {
                    Some(request.node.as_str())
                } else if claims.in_sync {
                    None
                } else {
                    before.as_deref()
                };
                assert_eq!(
                    current, expected,
                    "the data claim of a grant is not recorded"
                );
            }
            Verdict::Refused { holder, epoch, .. } => {
                let lease = lease.expect("a refusal names a live lease");
                assert_ne!(holder, &request.node);
                assert_eq!((&lease.holder, lease.epoch), (holder, *epoch));
            }
            Verdict::Released { .. } => {
                assert_eq!(request.kind, Kind::Release);
                assert!(lease.is_none_or(|lease| lease.holder != request.node));
            }
            Verdict::Outdated { current, epoch } => {
                assert_eq!(request.kind, Kind::Acquire);
                let claims = request.claims;
                assert!(!claims.force, "a forced acquire refused as outdated");
                assert!(!claims.in_sync, "an in-sync acquire refused as outdated");
                assert_ne!(current, &request.node);
                let table = witness.table();
                assert_eq!(table.current(&request.cluster), Some(current.as_str()));
                assert_eq!(table.epoch(&request.cluster), *epoch);
            }
            Verdict::Restarting { .. } | Verdict::Rejected(_) => {}
        }
    }
}

fn check_signer() {
    let request = sample_request(Kind::Acquire, "alpha", 1);
    let packet = WitnessKey::new(&CLUSTER_KEY, &request.cluster)
        .encode_request(&request)
        .expect("encodes");
    assert_eq!(
        sign(&request.cluster, &packet[..packet.len() - TAG_BYTES]),
        packet,
        "the target's signer no longer matches WitnessKey"
    );
}

fn sample_request(kind: Kind, node: &str, seq: u64) -> Request {
    let peer_behind = kind == Kind::Acquire && node == "alpha";
    Request {
        kind,
        cluster: "demo".to_string(),
        node: node.to_string(),
        boot: 1000,
        seq,
        nonce: 0x5eed + seq,
        lease_ms: if kind == Kind::Acquire { 3000 } else { 0 },
        claims: Claims {
            peer_behind,
            ..Claims::default()
        },
    }
}

/// Seeds: requests, responses of every verdict, and a witness session.
pub fn seeds() -> Vec<Vec<u8>> {
    use manager::cluster::witness::Rejection;

    let key = WitnessKey::new(&CLUSTER_KEY, "demo");
    let unsigned = |packet: &[u8]| packet[..packet.len() - TAG_BYTES].to_vec();
    let mut seeds = Vec::new();
    let acquire = key
        .encode_request(&sample_request(Kind::Acquire, "alpha", 1))
        .expect("encodes");
    seeds.push([&[0][..], &acquire].concat());
    seeds.push([&[4][..], &unsigned(&acquire)].concat());
    let verdicts = [
        Verdict::Granted {
            epoch: 3,
            lease_ms: 3000,
        },
        Verdict::Refused {
            holder: "beta".to_string(),
            epoch: 3,
            remaining_ms: 1200,
        },
        Verdict::Released { epoch: 3 },
        Verdict::Outdated {
            current: "alpha".to_string(),
            epoch: 3,
        },
        Verdict::Restarting {
            remaining_ms: 59_000,
        },
        Verdict::Rejected(Rejection::LeaseOutOfRange {
            min_ms: 100,
            max_ms: 60_000,
        }),
        Verdict::Rejected(Rejection::TooManyNodes { max: 8 }),
    ];
    for verdict in &verdicts {
        let nonce = 0x5eed_u64;
        let response = key.encode_response(nonce, verdict);
        seeds.push([&[5][..], &nonce.to_le_bytes(), &unsigned(&response)].concat());
    }
    // A session: alpha acquires with its peer behind, beta is refused, alpha releases, beta is
    // told its data is outdated, then forces.
    let mut session = vec![6, 0, 0, 0, 0];
    let steps = [
        sample_request(Kind::Acquire, "alpha", 1),
        sample_request(Kind::Acquire, "beta", 1),
        sample_request(Kind::Release, "alpha", 2),
        sample_request(Kind::Acquire, "beta", 2),
        Request {
            claims: Claims {
                force: true,
                ..Claims::default()
            },
            ..sample_request(Kind::Acquire, "beta", 3)
        },
        sample_request(Kind::Acquire, "beta", 3),
    ];
    for request in &steps {
        let body = unsigned(&key.encode_request(request).expect("encodes"));
        session.push(body.len() as u8);
        session.extend_from_slice(&100u16.to_le_bytes());
        session.extend_from_slice(&body);
    }
    seeds.push(session);
    seeds
}
