//! Target `handshake`: the hello each end of a replication link sends inside the Noise
//! handshake (`engine::runtime::link`), and the negotiation of two hellos.
//!
//! Input: two hello messages, the first prefixed with its length (one byte). Decoding never
//! panics; a decoded hello is valid and re-encodes to a prefix of the input (bytes after the
//! last field are ignored, for later versions); negotiating two decoded hellos is symmetric:
//! both ends agree on the version and features, or both refuse for the same reason.

use engine::runtime::link::fuzzing::{
    decode_hello_message, encode_hello_message, negotiate_hellos,
};
use engine::runtime::link::{Hello, Incompatibility};

use crate::input::Input;

/// The target body.
pub fn handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let first_length = usize::from(input.u8());
    let first = input.bytes(first_length);
    let second = input.rest();
    let ours = check_decode(first);
    let theirs = check_decode(second);
    if let (Some(ours), Some(theirs)) = (ours, theirs) {
        let forward = negotiate_hellos(&ours, &theirs);
        let backward = negotiate_hellos(&theirs, &ours);
        match (&forward, &backward) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "the two ends agree on different terms");
                assert!(ours.protocol_version_min <= a.0 && a.0 <= ours.protocol_version_max);
                assert!(theirs.protocol_version_min <= a.0 && a.0 <= theirs.protocol_version_max);
                assert_eq!(a.1, ours.features & theirs.features);
            }
            (Err(a), Err(b)) => assert_eq!(mirror(a), *b, "the two ends refuse differently"),
            _ => panic!("one end accepts, the other refuses: {forward:?} / {backward:?}"),
        }
    }
}

fn check_decode(bytes: &[u8]) -> Option<Hello> {
    let (hello, frame_payload_bytes_max) = decode_hello_message(bytes)?;
    assert!(
        hello.validate().is_ok(),
        "a decoded hello is invalid: {hello:?}"
    );
    assert!(frame_payload_bytes_max > 0);
    let encoded = encode_hello_message(&hello, frame_payload_bytes_max);
    assert!(
        bytes.starts_with(&encoded),
        "a hello re-encodes to other bytes"
    );
    Some(hello)
}

/// The reason as the other end states it.
fn mirror(incompatibility: &Incompatibility) -> Incompatibility {
    match incompatibility.clone() {
        Incompatibility::ProtocolVersion { ours, theirs } => Incompatibility::ProtocolVersion {
            ours: theirs,
            theirs: ours,
        },
        Incompatibility::ClusterName { ours, theirs } => Incompatibility::ClusterName {
            ours: theirs,
            theirs: ours,
        },
        Incompatibility::VolumeName { ours, theirs } => Incompatibility::VolumeName {
            ours: theirs,
            theirs: ours,
        },
        same @ Incompatibility::SameNodeName(_) => same,
    }
}

/// Seeds: pairs of compatible and incompatible hellos.
pub fn seeds() -> Vec<Vec<u8>> {
    let alpha = Hello::new("demo", "alpha", "r0");
    let beta = Hello::new("demo", "beta", "r0");
    let newer = Hello {
        protocol_version_max: 3,
        features: 0b101,
        ..Hello::new("demo", "beta", "r0")
    };
    let elsewhere = Hello::new("other", "gamma", "r1");
    let pairs = [
        (&alpha, &beta),
        (&alpha, &newer),
        (&alpha, &elsewhere),
        (&alpha, &alpha),
    ];
    pairs
        .iter()
        .map(|(ours, theirs)| {
            let first = encode_hello_message(ours, 1 << 20);
            let mut seed = vec![first.len() as u8];
            seed.extend(first);
            seed.extend(encode_hello_message(theirs, 4096));
            seed
        })
        .collect()
}
