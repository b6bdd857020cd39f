//! The heartbeat packet: one UDP datagram per beat and link, authenticated with a key derived
//! from the cluster key, so a host without the key can neither fake a beat nor change one.
//! Freshness (no replays) is the heartbeat core's job ([`super::heartbeat`]); the advert it
//! carries is the cluster core's ([`super::advert`]).
//!
//! Layout (integers little-endian): `"TNHB"`, version 2, link index, sender node index, 0,
//! then boot, sequence, nonce and echo (u64 each), then the advert, then HMAC-SHA256 over
//! everything before it.

use ring::hmac;

use super::advert::{ADVERT_BYTES_MAX, Advert, AdvertError};
use super::heartbeat::Beat;

const MAGIC: &[u8; 4] = b"TNHB";
const VERSION: u8 = 2;
const BEAT_BYTES: usize = 40;
const TAG_BYTES: usize = 32;
/// Bytes of the largest heartbeat packet.
pub const PACKET_BYTES_MAX: usize = BEAT_BYTES + ADVERT_BYTES_MAX + TAG_BYTES;

/// What a packet says besides the beat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    /// The sender's index in the configuration's node list.
    pub node: u8,
    /// The link, in the configured order, the sender sent it on.
    pub link: u8,
}

/// Why a datagram is not a heartbeat of this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BeatError {
    /// Too short or too long for a heartbeat.
    #[error("{0} bytes, not a heartbeat")]
    Length(usize),
    /// No heartbeat magic.
    #[error("not a tandem heartbeat")]
    Magic,
    /// Another version of the packet.
    #[error("heartbeat version {0}, this node speaks {VERSION}")]
    Version(u8),
    /// The tag does not match: another cluster key, or a changed packet.
    #[error("heartbeat not signed with this cluster's key")]
    Tag,
    /// Signed, but its advert does not parse (a bug on the sender).
    #[error("heartbeat advert: {0}")]
    Advert(AdvertError),
}

/// Signs and checks heartbeats of one cluster.
#[derive(Debug)]
pub struct BeatKey(hmac::Key);

impl BeatKey {
    /// The heartbeat key of cluster `name` with key `cluster_key` (its own key, not the link's).
    pub fn new(cluster_key: &[u8; 32], name: &str) -> Self {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, cluster_key);
        let mut label = b"tandem heartbeat v1 ".to_vec();
        label.extend_from_slice(name.as_bytes());
        let derived = hmac::sign(&derive, &label);
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    /// The packet for `beat` and `advert` from `sender`.
    pub fn encode(&self, sender: Sender, beat: Beat, advert: &Advert) -> Vec<u8> {
        let mut packet = vec![0u8; BEAT_BYTES];
        packet[..4].copy_from_slice(MAGIC);
        packet[4] = VERSION;
        packet[5] = sender.link;
        packet[6] = sender.node;
        for (index, value) in [beat.boot, beat.seq, beat.nonce, beat.echo]
            .into_iter()
            .enumerate()
        {
            packet[8 + 8 * index..16 + 8 * index].copy_from_slice(&value.to_le_bytes());
        }
        packet.extend_from_slice(&advert.encode());
        let tag = hmac::sign(&self.0, &packet);
        packet.extend_from_slice(tag.as_ref());
        packet
    }

    /// The sender, beat and advert of `packet`, if it is an authentic heartbeat of this
    /// cluster.
    pub fn decode(&self, packet: &[u8]) -> Result<(Sender, Beat, Advert), BeatError> {
        if !(BEAT_BYTES + TAG_BYTES..=PACKET_BYTES_MAX).contains(&packet.len()) {
            return Err(BeatError::Length(packet.len()));
        }
        if &packet[..4] != MAGIC {
            return Err(BeatError::Magic);
        }
        if packet[4] != VERSION {
            return Err(BeatError::Version(packet[4]));
        }
        let signed = packet.len() - TAG_BYTES;
        hmac::verify(&self.0, &packet[..signed], &packet[signed..]).map_err(|_| BeatError::Tag)?;
        let word = |index: usize| {
            let bytes: [u8; 8] = packet[8 + 8 * index..16 + 8 * index]
                .try_into()
                .expect("8 bytes");
            u64::from_le_bytes(bytes)
        };
        let sender = Sender {
            link: packet[5],
            node: packet[6],
        };
        let beat = Beat {
            boot: word(0),
            seq: word(1),
            nonce: word(2),
            echo: word(3),
        };
        let advert = Advert::decode(&packet[BEAT_BYTES..signed]).map_err(BeatError::Advert)?;
        Ok((sender, beat, advert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::advert::GroupAdvert;
    use engine::prng::Prng;

    const BEAT: Beat = Beat {
        boot: 0x1111,
        seq: 42,
        nonce: 0x2222_3333,
        echo: 0x4444,
    };
    const SENDER: Sender = Sender { node: 1, link: 2 };

    #[test]
    fn a_beat_round_trips() {
        let key = BeatKey::new(&[7; 32], "demo");
        let advert = Advert {
            config: 5,
            groups: vec![GroupAdvert::default(); 2],
            ..Advert::default()
        };
        let packet = key.encode(SENDER, BEAT, &advert);
        assert_eq!(key.decode(&packet), Ok((SENDER, BEAT, advert)));
    }

    #[test]
    fn every_changed_byte_is_refused() {
        let key = BeatKey::new(&[7; 32], "demo");
        let packet = key.encode(SENDER, BEAT, &Advert::default());
        for index in 0..packet.len() {
            for bit in 0..8 {
                let mut changed = packet.clone();
                changed[index] ^= 1 << bit;
                assert!(key.decode(&changed).is_err(), "byte {index} bit {bit}");
            }
        }
    }

    #[test]
    fn another_key_or_cluster_is_refused() {
        let packet = BeatKey::new(&[7; 32], "demo").encode(SENDER, BEAT, &Advert::default());
        assert_eq!(
            BeatKey::new(&[8; 32], "demo").decode(&packet),
            Err(BeatError::Tag)
        );
        assert_eq!(
            BeatKey::new(&[7; 32], "other").decode(&packet),
            Err(BeatError::Tag)
        );
    }

    #[test]
    fn random_datagrams_are_refused_without_panicking() {
        let key = BeatKey::new(&[7; 32], "demo");
        let mut prng = Prng::from_seed(9);
        for round in 0..20_000 {
            let length = if round % 2 == 0 {
                BEAT_BYTES + TAG_BYTES + 10
            } else {
                (prng.next_u64() % 200) as usize
            };
            let mut packet: Vec<u8> = (0..length).map(|_| prng.next_u64() as u8).collect();
            if round % 4 == 0 && length >= 5 {
                packet[..4].copy_from_slice(MAGIC);
                packet[4] = VERSION;
            }
            assert!(key.decode(&packet).is_err());
        }
    }
}
