//! What a node tells its peer in every heartbeat: the operator's intents (with sequence
//! numbers, so the newest command wins on both nodes), and what runs here. The advert travels
//! inside the authenticated beat ([`super::beat`]) and is taken only from fresh beats, so a
//! replayed one says nothing.
//!
//! Layout (integers little-endian): configuration fingerprint u32, flags u8 (1 sees the peer
//! alive, 2 maintenance, 4 fenced, 8 the receiver misses writes), maintenance sequence u32,
//! group count u8, the generation of the sender's data u64, then per group 8 bytes: intent sequence u32, intent flags u8 (1 enabled, 2 forced), intent target u8
//! (0xff: none), phase u8, flags u8 (1 ready, 2 blocked).

/// At most this many groups (the configuration check refuses more).
pub const GROUPS_MAX: usize = 32;
const HEAD_BYTES: usize = 18;
const GROUP_BYTES: usize = 8;
/// Bytes of the largest advert.
pub const ADVERT_BYTES_MAX: usize = HEAD_BYTES + GROUPS_MAX * GROUP_BYTES;

/// What the operator last asked of a group, cluster-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    /// Increases with every command; the higher sequence wins on both nodes.
    pub seq: u32,
    /// Run the group at all.
    pub enabled: bool,
    /// Run it on this node (configuration index), if it can.
    pub target: Option<u8>,
    /// The target may start it although its volumes are not `up_to_date` (S7, forced).
    pub force: bool,
}

/// Where a group is on the advertising node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Nothing of it runs there.
    #[default]
    Stopped,
    /// Claimed or starting there.
    Starting,
    /// Running there.
    Running,
    /// Stopping there.
    Stopping,
    /// A stop failed there: some resources may still run, so nobody else may start it.
    StopFailed,
}

impl Phase {
    /// Whether some of the group may run there.
    pub fn holds(self) -> bool {
        self != Self::Stopped
    }

    fn code(self) -> u8 {
        match self {
            Self::Stopped => 0,
            Self::Starting => 1,
            Self::Running => 2,
            Self::Stopping => 3,
            Self::StopFailed => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Stopped,
            1 => Self::Starting,
            2 => Self::Running,
            3 => Self::Stopping,
            4 => Self::StopFailed,
            _ => return None,
        })
    }
}

/// One group in an advert.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupAdvert {
    /// The intent the sender holds.
    pub intent: Intent,
    /// The group's phase on the sender.
    pub phase: Phase,
    /// The sender's volumes of the group are `up_to_date`.
    pub ready: bool,
    /// The group failed on the sender and may not run there until the next command.
    pub blocked: bool,
}

/// A node's advert.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advert {
    /// Fingerprint of the groups' configuration: adverts of another configuration are not
    /// acted on.
    pub config: u32,
    /// The sender sees the receiver alive on some link.
    pub sees_peer: bool,
    /// Maintenance mode and its sequence (the higher wins).
    pub maintenance: (u32, bool),
    /// The sender lost arbitration and stopped its groups.
    pub fenced: bool,
    /// The sender's volumes hold writes the receiver's lack (DRBD's outdated peer): the
    /// receiver may not start them until a resync gave it [`Advert::generation`], unless
    /// forced.
    pub peer_behind: bool,
    /// The generation of the sender's data (see `core::Replication::generation`).
    pub generation: u64,
    /// Per configured group, in configuration order.
    pub groups: Vec<GroupAdvert>,
}

/// Why bytes are not an advert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    /// Shorter than its header or its groups say.
    #[error("advert truncated")]
    Truncated,
    /// Longer than its groups say, or more than [`GROUPS_MAX`] groups.
    #[error("advert malformed")]
    Malformed,
}

impl Advert {
    /// The encoded advert.
    pub fn encode(&self) -> Vec<u8> {
        let groups = &self.groups[..self.groups.len().min(GROUPS_MAX)];
        let mut out = Vec::with_capacity(HEAD_BYTES + groups.len() * GROUP_BYTES);
        out.extend_from_slice(&self.config.to_le_bytes());
        let flags = u8::from(self.sees_peer)
            | u8::from(self.maintenance.1) << 1
            | u8::from(self.fenced) << 2
            | u8::from(self.peer_behind) << 3;
        out.push(flags);
        out.extend_from_slice(&self.maintenance.0.to_le_bytes());
        out.push(u8::try_from(groups.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.generation.to_le_bytes());
        for group in groups {
            out.extend_from_slice(&group.intent.seq.to_le_bytes());
            out.push(u8::from(group.intent.enabled) | u8::from(group.intent.force) << 1);
            out.push(group.intent.target.unwrap_or(u8::MAX));
            out.push(group.phase.code());
            out.push(u8::from(group.ready) | u8::from(group.blocked) << 1);
        }
        out
    }

    /// The advert in `bytes` (exactly).
    pub fn decode(bytes: &[u8]) -> Result<Self, AdvertError> {
        let head = bytes.get(..HEAD_BYTES).ok_or(AdvertError::Truncated)?;
        let u32_at =
            |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"));
        let flags = head[4];
        if flags & !15 != 0 {
            return Err(AdvertError::Malformed);
        }
        let count = usize::from(head[9]);
        if count > GROUPS_MAX {
            return Err(AdvertError::Malformed);
        }
        let body = &bytes[HEAD_BYTES..];
        match body.len().cmp(&(count * GROUP_BYTES)) {
            std::cmp::Ordering::Less => return Err(AdvertError::Truncated),
            std::cmp::Ordering::Greater => return Err(AdvertError::Malformed),
            std::cmp::Ordering::Equal => {}
        }
        let mut groups = Vec::with_capacity(count);
        for chunk in body.chunks_exact(GROUP_BYTES) {
            let (intent_flags, target, phase, group_flags) =
                (chunk[4], chunk[5], chunk[6], chunk[7]);
            if intent_flags & !3 != 0 || group_flags & !3 != 0 {
                return Err(AdvertError::Malformed);
            }
            groups.push(GroupAdvert {
                intent: Intent {
                    seq: u32_at(chunk, 0),
                    enabled: intent_flags & 1 != 0,
                    force: intent_flags & 2 != 0,
                    target: (target != u8::MAX).then_some(target),
                },
                phase: Phase::from_code(phase).ok_or(AdvertError::Malformed)?,
                ready: group_flags & 1 != 0,
                blocked: group_flags & 2 != 0,
            });
        }
        Ok(Self {
            config: u32_at(head, 0),
            sees_peer: flags & 1 != 0,
            maintenance: (u32_at(head, 5), flags & 2 != 0),
            fenced: flags & 4 != 0,
            peer_behind: flags & 8 != 0,
            generation: u64::from_le_bytes(head[10..18].try_into().expect("eight bytes")),
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Advert {
        Advert {
            config: 0xdead_beef,
            sees_peer: true,
            maintenance: (7, true),
            fenced: false,
            peer_behind: true,
            generation: 0x0102_0304_0506_0708,
            groups: vec![
                GroupAdvert {
                    intent: Intent {
                        seq: 3,
                        enabled: true,
                        target: Some(1),
                        force: true,
                    },
                    phase: Phase::Running,
                    ready: true,
                    blocked: false,
                },
                GroupAdvert {
                    phase: Phase::StopFailed,
                    blocked: true,
                    ..GroupAdvert::default()
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let advert = sample();
        assert_eq!(Advert::decode(&advert.encode()), Ok(advert));
        assert_eq!(
            Advert::decode(&Advert::default().encode()),
            Ok(Advert::default())
        );
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert_eq!(Advert::decode(&bytes[..len]), Err(AdvertError::Truncated));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Advert::decode(&longer), Err(AdvertError::Malformed));
    }

    #[test]
    fn unknown_codes_are_refused() {
        let bytes = sample().encode();
        for (at, value) in [
            (4, 16),
            (9, 33),
            (HEAD_BYTES + 4, 4),
            (HEAD_BYTES + 6, 5),
            (HEAD_BYTES + 7, 4),
        ] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(
                Advert::decode(&bad).is_err(),
                "byte {at} = {value} accepted"
            );
        }
    }
}
