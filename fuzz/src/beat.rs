//! Target `beat`: the heartbeat datagram (`manager::cluster::beat`), with its advert.
//!
//! Input: a control byte, then a datagram. With control bit 0 set the target signs the datagram
//! with the cluster's heartbeat key first (so the fuzzer reaches what lies behind the tag);
//! otherwise it goes as it is and must be refused unless it carries a valid tag. Decoding never
//! panics, and a heartbeat that decodes re-encodes to the same datagram (byte 7, reserved,
//! aside: the decoder ignores it).

use std::sync::Once;

use manager::cluster::advert::Advert;
use manager::cluster::beat::{BeatError, BeatKey, PACKET_BYTES_MAX, Sender};
use manager::cluster::heartbeat::Beat;
use ring::hmac;

use crate::input::Input;

const CLUSTER_KEY: [u8; 32] = [7; 32];
const CLUSTER_NAME: &str = "demo";
const TAG_BYTES: usize = 32;
const RESERVED_BYTE: usize = 7;

/// Signs `body` as a heartbeat of the test cluster (the derivation of `BeatKey::new`).
fn sign(body: &[u8]) -> Vec<u8> {
    let derive = hmac::Key::new(hmac::HMAC_SHA256, &CLUSTER_KEY);
    let mut label = b"tandem heartbeat v1 ".to_vec();
    label.extend_from_slice(CLUSTER_NAME.as_bytes());
    let derived = hmac::sign(&derive, &label);
    let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
    let mut packet = body.to_vec();
    packet.extend_from_slice(hmac::sign(&key, body).as_ref());
    packet
}

/// The target body.
pub fn beat(data: &[u8]) {
    static SIGNER_MATCHES: Once = Once::new();
    let key = BeatKey::new(&CLUSTER_KEY, CLUSTER_NAME);
    SIGNER_MATCHES.call_once(|| {
        let packet = key.encode(
            Sender { node: 1, link: 0 },
            sample_beat(),
            &Advert::default(),
        );
        assert_eq!(
            sign(&packet[..packet.len() - TAG_BYTES]),
            packet,
            "the target's signer no longer matches BeatKey"
        );
    });
    let mut input = Input::new(data);
    let signed = input.bool();
    let body = input.rest();
    let packet = if signed { sign(body) } else { body.to_vec() };
    let decoded = key.decode(&packet);
    if !signed && packet.len() >= TAG_BYTES && decoded.is_ok() {
        // Only a datagram that carries its own valid tag may pass unsigned.
        let (head, _) = packet.split_at(packet.len() - TAG_BYTES);
        assert_eq!(sign(head), packet);
    }
    let (sender, beat, advert) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            if let BeatError::Length(length) = error {
                assert!(!(40 + TAG_BYTES..=PACKET_BYTES_MAX).contains(&length));
            }
            return;
        }
    };
    let encoded = key.encode(sender, beat, &advert);
    let mut expected = packet.clone();
    expected[RESERVED_BYTE] = 0;
    if packet[RESERVED_BYTE] == 0 {
        assert_eq!(encoded, packet, "a heartbeat re-encodes to other bytes");
    } else {
        let signed_bytes = packet.len() - TAG_BYTES;
        assert_eq!(encoded[..signed_bytes], expected[..signed_bytes]);
    }
}

fn sample_beat() -> Beat {
    Beat {
        boot: 0x1111,
        seq: 42,
        nonce: 0x2222_3333,
        echo: 0x4444,
    }
}

/// Seeds: signed and unsigned heartbeats with the sample adverts.
pub fn seeds() -> Vec<Vec<u8>> {
    let key = BeatKey::new(&CLUSTER_KEY, CLUSTER_NAME);
    let mut seeds = Vec::new();
    for (index, advert) in crate::advert::sample_adverts().iter().enumerate() {
        let sender = Sender {
            node: index as u8 % 2,
            link: index as u8,
        };
        let packet = key.encode(sender, sample_beat(), advert);
        // Unsigned: the datagram as sent, tag included.
        seeds.push([&[0][..], &packet].concat());
        // Signed by the target: the datagram without its tag.
        seeds.push([&[1][..], &packet[..packet.len() - TAG_BYTES]].concat());
    }
    seeds
}
