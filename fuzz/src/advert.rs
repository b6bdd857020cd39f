//! Target `advert`: the advert carried in every heartbeat (`manager::cluster::advert`).
//!
//! Decoding never panics; a decoded advert has at most `GROUPS_MAX` groups and re-encodes to
//! exactly the input (the layout has no slack: every byte is a field, and unknown flags and
//! codes are refused).

use manager::cluster::advert::{Advert, GROUPS_MAX, GroupAdvert, Intent, Phase};

/// The target body.
pub fn advert(data: &[u8]) {
    match Advert::decode(data) {
        Ok(advert) => {
            assert!(advert.groups.len() <= GROUPS_MAX);
            assert_eq!(advert.encode(), data, "an advert re-encodes to other bytes");
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
}

/// Adverts for seeds, here and in the `beat` target.
pub fn sample_adverts() -> Vec<Advert> {
    let running = GroupAdvert {
        intent: Intent {
            seq: 3,
            enabled: true,
            target: Some(1),
            force: true,
        },
        phase: Phase::Running,
        ready: true,
        blocked: false,
    };
    let failed = GroupAdvert {
        phase: Phase::StopFailed,
        blocked: true,
        ..GroupAdvert::default()
    };
    vec![
        Advert::default(),
        Advert {
            config: 0xdead_beef,
            sees_peer: true,
            maintenance: (7, true),
            fenced: false,
            peer_behind: true,
            generation: 0xfeed_f00d,
            groups: vec![running, failed, GroupAdvert::default()],
        },
        Advert {
            config: 1,
            fenced: true,
            groups: vec![running; GROUPS_MAX],
            ..Advert::default()
        },
    ]
}

/// Seeds: the sample adverts, encoded.
pub fn seeds() -> Vec<Vec<u8>> {
    sample_adverts().iter().map(Advert::encode).collect()
}
