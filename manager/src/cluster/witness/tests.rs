use engine::prng::Prng;

use super::wire::MAX_DATAGRAM_BYTES;
use super::*;

const KEY: [u8; 32] = [7; 32];

/// Limits without the restart grace, so that leases are granted at once.
fn limits() -> Limits {
    Limits {
        restart_grace_ms: 0,
        ..Limits::default()
    }
}

fn table() -> LeaseTable {
    LeaseTable::new(limits(), 0)
}

fn granted(epoch: u64, lease_ms: u64) -> Verdict {
    Verdict::Granted { epoch, lease_ms }
}

fn request(kind: Kind, node: &str, boot: u64, seq: u64) -> Request {
    Request {
        kind,
        cluster: "t".into(),
        node: node.into(),
        boot,
        seq,
        nonce: 0x5eed ^ seq,
        lease_ms: if kind == Kind::Acquire { 1000 } else { 0 },
        claims: Claims::default(),
    }
}

#[test]
fn a_free_lease_is_granted_renewed_and_refused_to_the_other_node() {
    let mut table = table();
    assert_eq!(
        table.acquire("t", "alpha", 1000, Claims::default(), 10),
        granted(1, 1000)
    );
    assert_eq!(
        table.acquire("t", "alpha", 1000, Claims::default(), 500),
        granted(1, 1000)
    );
    assert_eq!(
        table.lease("t", 600),
        Some(Lease {
            holder: "alpha".into(),
            epoch: 1,
            expires_at_ms: 1500
        })
    );
    assert_eq!(
        table.acquire("t", "beta", 1000, Claims::default(), 700),
        Verdict::Refused {
            holder: "alpha".into(),
            epoch: 1,
            remaining_ms: 800
        }
    );
    // Another cluster is independent.
    assert_eq!(
        table.acquire("u", "beta", 1000, Claims::default(), 700),
        granted(1, 1000)
    );
}

#[test]
fn a_renewal_never_shortens_the_lease() {
    let mut table = table();
    assert_eq!(
        table.acquire("t", "alpha", 5000, Claims::default(), 0),
        granted(1, 5000)
    );
    assert_eq!(
        table.acquire("t", "alpha", 100, Claims::default(), 1000),
        granted(1, 100)
    );
    assert_eq!(table.lease("t", 4999).map(|l| l.expires_at_ms), Some(5000));
}

#[test]
fn an_expired_lease_changes_hands_with_a_new_epoch() {
    let mut table = table();
    assert_eq!(
        table.acquire("t", "alpha", 1000, Claims::default(), 0),
        granted(1, 1000)
    );
    assert!(matches!(
        table.acquire("t", "beta", 1000, Claims::default(), 999),
        Verdict::Refused {
            remaining_ms: 1,
            ..
        }
    ));
    assert_eq!(table.lease("t", 1000), None);
    assert_eq!(
        table.acquire("t", "beta", 1000, Claims::default(), 1000),
        granted(2, 1000)
    );
    assert!(matches!(
        table.acquire("t", "alpha", 1000, Claims::default(), 1500),
        Verdict::Refused { ref holder, epoch: 2, remaining_ms: 500 } if holder == "beta"
    ));
    // A lapsed lease taken again by the same node is a new epoch too: there was a gap.
    assert_eq!(
        table.acquire("t", "beta", 1000, Claims::default(), 3000),
        granted(3, 1000)
    );
}

#[test]
fn release_frees_only_the_holders_lease() {
    let mut table = table();
    assert_eq!(
        table.release("t", "alpha", 0),
        Verdict::Released { epoch: 0 }
    );
    assert_eq!(
        table.acquire("t", "alpha", 1000, Claims::default(), 0),
        granted(1, 1000)
    );
    assert_eq!(
        table.release("t", "beta", 10),
        Verdict::Released { epoch: 1 }
    );
    assert_eq!(table.lease("t", 10).map(|l| l.holder), Some("alpha".into()));
    assert_eq!(
        table.release("t", "alpha", 20),
        Verdict::Released { epoch: 1 }
    );
    assert_eq!(table.lease("t", 20), None);
    assert_eq!(
        table.acquire("t", "beta", 1000, Claims::default(), 30),
        granted(2, 1000)
    );
}

#[test]
fn lease_lengths_clusters_and_nodes_are_bounded() {
    let mut table = LeaseTable::new(
        Limits {
            max_clusters: 2,
            max_nodes: 2,
            ..limits()
        },
        0,
    );
    let range = Verdict::Rejected(Rejection::LeaseOutOfRange {
        min_ms: 100,
        max_ms: 60_000,
    });
    assert_eq!(table.acquire("t", "alpha", 99, Claims::default(), 0), range);
    assert_eq!(
        table.acquire("t", "alpha", 60_001, Claims::default(), 0),
        range
    );
    assert_eq!(
        table.acquire("t", "alpha", 100, Claims::default(), 0),
        granted(1, 100)
    );
    assert_eq!(
        table.acquire("u", "alpha", 60_000, Claims::default(), 0),
        granted(1, 60_000)
    );
    let full = Verdict::Rejected(Rejection::TooManyClusters { max: 2 });
    assert_eq!(
        table.acquire("v", "alpha", 1000, Claims::default(), 0),
        full
    );
    assert_eq!(
        table.handle(&request(Kind::Acquire, "alpha", 1, 1), 0),
        Ok(granted(1, 1000))
    );
    assert_eq!(
        table.handle(&request(Kind::Acquire, "beta", 1, 1), 0),
        Ok(Verdict::Refused {
            holder: "alpha".into(),
            epoch: 1,
            remaining_ms: 1000
        })
    );
    assert_eq!(
        table.handle(&request(Kind::Acquire, "gamma", 1, 1), 0),
        Ok(Verdict::Rejected(Rejection::TooManyNodes { max: 2 }))
    );
    let mut other_cluster = request(Kind::Acquire, "alpha", 1, 2);
    other_cluster.cluster = "w".into();
    assert_eq!(table.handle(&other_cluster, 0), Ok(full));
    let message = Rejection::TooManyClusters { max: 2 }.to_string();
    assert!(message.contains("2 clusters"), "{message}");
}

#[test]
fn nothing_is_granted_during_the_restart_grace() {
    let mut table = LeaseTable::new(Limits::default(), 1000);
    assert_eq!(
        table.acquire("t", "alpha", 1000, Claims::default(), 2000),
        Verdict::Restarting {
            remaining_ms: 59_000
        }
    );
    assert_eq!(
        table.acquire("t", "alpha", 1000, Claims::default(), 61_000),
        granted(1, 1000)
    );
}

#[test]
fn replayed_or_late_requests_are_dropped_and_a_new_boot_is_taken() {
    let mut table = table();
    let first = request(Kind::Acquire, "alpha", 10, 1);
    assert_eq!(table.handle(&first, 0), Ok(granted(1, 1000)));
    // The same request again, after alpha's lease ran out: it must not renew it.
    assert_eq!(table.handle(&first, 5000), Err(Stale::Sequence));
    assert_eq!(table.lease("t", 5000), None);
    assert_eq!(
        table.handle(&request(Kind::Acquire, "alpha", 10, 3), 5000),
        Ok(granted(2, 1000))
    );
    assert_eq!(
        table.handle(&request(Kind::Release, "alpha", 10, 2), 5100),
        Err(Stale::Sequence)
    );
    assert_eq!(table.lease("t", 5100).map(|l| l.epoch), Some(2));
    // Alpha restarts: a larger boot id starts its sequence over.
    assert_eq!(
        table.handle(&request(Kind::Release, "alpha", 11, 1), 5200),
        Ok(Verdict::Released { epoch: 2 })
    );
    assert_eq!(
        table.handle(&request(Kind::Acquire, "alpha", 11, 2), 5300),
        Ok(granted(3, 1000))
    );
    // Requests of the old boot are refused from then on.
    assert_eq!(
        table.handle(&request(Kind::Release, "alpha", 10, 9), 5400),
        Err(Stale::Boot)
    );
    assert_eq!(table.lease("t", 5400).map(|l| l.epoch), Some(3));
    // Each node has its own sequence.
    assert!(matches!(
        table.handle(&request(Kind::Acquire, "beta", 1, 1), 5400),
        Ok(Verdict::Refused { .. })
    ));
}

#[test]
fn the_witness_answers_authentic_requests_and_drops_the_rest() {
    let mut witness = Witness::new(KEY, limits(), 0);
    let key = WitnessKey::new(&KEY, "t");
    let ask = request(Kind::Acquire, "alpha", 1, 1);
    let packet = key.encode_request(&ask).expect("valid");
    let answer = witness.handle(&packet, 0).expect("answered");
    assert_eq!(answer.request, ask);
    assert_eq!(answer.verdict, granted(1, 1000));
    assert!(answer.new_epoch);
    assert_eq!(
        key.decode_response(ask.nonce, &answer.reply),
        Ok(granted(1, 1000))
    );
    assert!(matches!(
        witness.handle(&packet, 10),
        Err(Dropped::Stale {
            stale: Stale::Sequence,
            ..
        })
    ));
    let renew = key
        .encode_request(&request(Kind::Acquire, "alpha", 1, 2))
        .expect("valid");
    assert!(!witness.handle(&renew, 10).expect("answered").new_epoch);
    let foreign = WitnessKey::new(&[8; 32], "t")
        .encode_request(&request(Kind::Acquire, "beta", 1, 1))
        .expect("valid");
    assert_eq!(
        witness.handle(&foreign, 20).map(|a| a.verdict),
        Err(Dropped::Wire(WireError::Tag))
    );
    assert_eq!(
        witness.table().lease("t", 20).map(|l| l.holder),
        Some("alpha".into())
    );
}

#[test]
fn a_node_that_ran_with_its_peer_behind_keeps_the_peer_out_until_it_resyncs() {
    let mut table = table();
    // alpha's data is generation 2 once it writes without beta; beta's stays 1.
    let plain = Claims {
        generation: 1,
        ..Claims::default()
    };
    let behind = Claims {
        peer_behind: true,
        generation: 2,
        ..Claims::default()
    };
    let forced = Claims {
        force: true,
        generation: 1,
        ..Claims::default()
    };
    let in_sync = Claims {
        in_sync: true,
        generation: 2,
        ..Claims::default()
    };
    let outdated = |current: &str, epoch| Verdict::Outdated {
        current: current.into(),
        epoch,
    };
    // alpha runs, in sync: beta may take over once alpha's lease is gone.
    assert_eq!(
        table.acquire("t", "alpha", 1000, in_sync, 0),
        granted(1, 1000)
    );
    assert_eq!(table.current("t"), None);
    // alpha loses its peer and keeps writing: beta's data is outdated from now on.
    assert_eq!(
        table.acquire("t", "alpha", 1000, behind, 500),
        granted(1, 1000)
    );
    assert_eq!(table.current("t"), Some("alpha"));
    assert_eq!(
        table.acquire("t", "beta", 1000, plain, 900),
        outdated("alpha", 1)
    );
    // Still once alpha is no longer primary (it still has the writes beta missed and says
    // so), and once its lease expired or was released.
    assert_eq!(
        table.acquire("t", "alpha", 1000, behind, 1200),
        granted(1, 1000)
    );
    assert_eq!(table.current("t"), Some("alpha"));
    assert_eq!(
        table.acquire("t", "beta", 1000, plain, 5000),
        outdated("alpha", 1)
    );
    assert_eq!(
        table.release("t", "alpha", 5000),
        Verdict::Released { epoch: 1 }
    );
    assert_eq!(
        table.acquire("t", "beta", 1000, plain, 5001),
        outdated("alpha", 1)
    );
    // alpha comes back, resyncs beta and says so: beta may take over again.
    assert_eq!(
        table.acquire("t", "alpha", 1000, behind, 6000),
        granted(2, 1000)
    );
    assert_eq!(
        table.acquire("t", "alpha", 1000, in_sync, 6500),
        granted(2, 1000)
    );
    assert_eq!(table.current("t"), None);
    assert_eq!(
        table.acquire("t", "beta", 1000, plain, 7500),
        granted(3, 1000)
    );
    // The operator may force a node's data: it is then the current one.
    assert_eq!(
        table.acquire("t", "beta", 1000, behind, 7600),
        granted(3, 1000)
    );
    assert_eq!(
        table.acquire("t", "alpha", 1000, forced, 9000),
        granted(4, 1000)
    );
    assert_eq!(table.current("t"), Some("alpha"));
    // A node in sync with the current one has its data: it may run, and clears the mark.
    let beta_behind_forced = Claims {
        generation: 2,
        ..Claims::default()
    };
    assert_eq!(
        table.acquire("t", "beta", 1000, beta_behind_forced, 11_000),
        outdated("alpha", 4)
    );
    assert_eq!(
        table.acquire("t", "beta", 1000, in_sync, 11_000),
        granted(5, 1000)
    );
    assert_eq!(table.current("t"), None);
    // So does a node that got the current generation in a resync and asks later, alone; and
    // what it writes then (a new generation) is not refused by the old mark:
    // alpha ran alone (generation 2), stopped, resynced beta and died without asking again.
    assert_eq!(
        table.acquire("t", "alpha", 1000, behind, 20_000),
        granted(6, 1000)
    );
    assert_eq!(
        table.release("t", "alpha", 20_500),
        Verdict::Released { epoch: 6 }
    );
    assert_eq!(
        table.acquire("t", "beta", 1000, plain, 21_000),
        outdated("alpha", 6)
    );
    let resynced = Claims {
        generation: 2,
        ..Claims::default()
    };
    assert_eq!(
        table.acquire("t", "beta", 1000, resynced, 30_000),
        granted(7, 1000)
    );
    let beta_alone = Claims {
        peer_behind: true,
        generation: 3,
        ..Claims::default()
    };
    assert_eq!(
        table.acquire("t", "beta", 1000, beta_alone, 30_500),
        granted(7, 1000)
    );
    assert_eq!(table.current("t"), Some("beta"));
}

// The codec.

fn sample_request() -> Request {
    Request {
        kind: Kind::Acquire,
        cluster: "demo".into(),
        node: "alpha".into(),
        boot: 0x0102_0304_0506_0708,
        seq: 42,
        nonce: 0xdead_beef_cafe_f00d,
        lease_ms: 3000,
        claims: Claims {
            peer_behind: true,
            force: false,
            in_sync: true,
            generation: 0x1122_3344_5566_7788,
        },
    }
}

fn sample_verdicts() -> Vec<Verdict> {
    vec![
        granted(3, 3000),
        Verdict::Refused {
            holder: "beta".into(),
            epoch: 4,
            remaining_ms: 1234,
        },
        Verdict::Released { epoch: 5 },
        Verdict::Restarting { remaining_ms: 777 },
        Verdict::Outdated {
            current: "beta".into(),
            epoch: 6,
        },
        Verdict::Rejected(Rejection::LeaseOutOfRange {
            min_ms: 100,
            max_ms: 60_000,
        }),
        Verdict::Rejected(Rejection::TooManyClusters { max: 64 }),
        Verdict::Rejected(Rejection::TooManyNodes { max: 8 }),
    ]
}

#[test]
fn requests_round_trip_and_names_are_checked() {
    let key = WitnessKey::new(&KEY, "demo");
    let mut ask = sample_request();
    for kind in [Kind::Acquire, Kind::Release] {
        ask.kind = kind;
        let packet = key.encode_request(&ask).expect("valid");
        assert_eq!(packet.len(), 56 + 4 + 5 + 32);
        assert_eq!(decode_request(&KEY, &packet), Ok(ask.clone()));
    }
    let longest = Request {
        cluster: "c".repeat(64),
        node: "n".repeat(64),
        ..sample_request()
    };
    let packet = WitnessKey::new(&KEY, &longest.cluster)
        .encode_request(&longest)
        .expect("valid");
    assert_eq!(packet.len(), MAX_DATAGRAM_BYTES);
    assert_eq!(decode_request(&KEY, &packet), Ok(longest));
    for (cluster, node) in [("", "a"), ("a", ""), (&*"c".repeat(65), "a"), ("a", "b\nc")] {
        let bad = Request {
            cluster: cluster.into(),
            node: node.into(),
            ..sample_request()
        };
        assert!(matches!(key.encode_request(&bad), Err(WireError::Name(_))));
    }
}

#[test]
fn every_truncation_or_changed_bit_of_a_request_is_refused() {
    let packet = WitnessKey::new(&KEY, "demo")
        .encode_request(&sample_request())
        .expect("valid");
    for length in 0..packet.len() {
        assert!(decode_request(&KEY, &packet[..length]).is_err(), "{length}");
    }
    let mut longer = packet.clone();
    longer.push(0);
    assert!(decode_request(&KEY, &longer).is_err());
    for index in 0..packet.len() {
        for bit in 0..8 {
            let mut changed = packet.clone();
            changed[index] ^= 1 << bit;
            assert!(
                decode_request(&KEY, &changed).is_err(),
                "byte {index} bit {bit}"
            );
        }
    }
}

#[test]
fn a_request_under_another_key_or_cluster_name_is_refused() {
    let packet = WitnessKey::new(&[8; 32], "demo")
        .encode_request(&sample_request())
        .expect("valid");
    assert_eq!(decode_request(&KEY, &packet), Err(WireError::Tag));
    // Signed with the key of another cluster name than the one it carries.
    let packet = WitnessKey::new(&KEY, "other")
        .encode_request(&sample_request())
        .expect("valid");
    assert_eq!(decode_request(&KEY, &packet), Err(WireError::Tag));
}

#[test]
fn responses_round_trip_and_must_echo_the_nonce() {
    let key = WitnessKey::new(&KEY, "demo");
    for verdict in sample_verdicts() {
        let packet = key.encode_response(99, &verdict);
        assert_eq!(key.decode_response(99, &packet), Ok(verdict.clone()));
        assert_eq!(key.decode_response(98, &packet), Err(WireError::Nonce));
        assert_eq!(
            WitnessKey::new(&[8; 32], "demo").decode_response(99, &packet),
            Err(WireError::Tag)
        );
        assert_eq!(
            WitnessKey::new(&KEY, "other").decode_response(99, &packet),
            Err(WireError::Tag)
        );
        for length in 0..packet.len() {
            assert!(
                key.decode_response(99, &packet[..length]).is_err(),
                "{length}"
            );
        }
        for index in 0..packet.len() {
            for bit in 0..8 {
                let mut changed = packet.clone();
                changed[index] ^= 1 << bit;
                assert!(
                    key.decode_response(99, &changed).is_err(),
                    "{verdict:?} byte {index} bit {bit}"
                );
            }
        }
    }
}

#[test]
fn a_request_is_not_taken_for_a_response_nor_the_reverse() {
    let key = WitnessKey::new(&KEY, "demo");
    let request = key.encode_request(&sample_request()).expect("valid");
    let nonce = sample_request().nonce;
    assert!(key.decode_response(nonce, &request).is_err());
    let response = key.encode_response(nonce, &granted(1, 1000));
    assert!(decode_request(&KEY, &response).is_err());
}

#[test]
fn random_datagrams_are_refused_without_panicking() {
    let key = WitnessKey::new(&KEY, "demo");
    let request = key.encode_request(&sample_request()).expect("valid");
    let response = key.encode_response(7, &sample_verdicts()[1]);
    let mut prng = Prng::from_seed(11);
    for round in 0..20_000 {
        let length = match round % 3 {
            0 => request.len(),
            1 => response.len(),
            _ => prng.below(260) as usize,
        };
        let mut packet: Vec<u8> = (0..length).map(|_| prng.next_u64() as u8).collect();
        // Often keep a valid header so that the decoders go past the first checks.
        if round % 4 == 0 && length >= 8 {
            let template = if round % 8 == 0 { &request } else { &response };
            packet[..8].copy_from_slice(&template[..8]);
        }
        assert!(decode_request(&KEY, &packet).is_err());
        assert!(key.decode_response(7, &packet).is_err());
    }
}
