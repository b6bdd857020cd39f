//! The states of a volume on one node, named after DRBD's (DESIGN §3).
//!
//! JSON and the CLI spell them in snake_case (`up_to_date`). Disk states are ordered: the code
//! relies on `Inconsistent < Outdated < Consistent < UpToDate` when it asks "at least consistent?".

use std::fmt;

use serde::{Deserialize, Serialize};

/// Whether this node serves the volume to clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Serves client I/O; its writes are replicated to the peer.
    Primary,
    /// Receives the primary's writes; serves no client I/O.
    #[default]
    Secondary,
}

/// How far this node's copy of the data can be trusted. Ordered from worst to best among the
/// states that describe data (`Inconsistent` up to `UpToDate`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    /// No backing store attached.
    #[default]
    Diskless,
    /// Reading the metadata and recovering.
    Attaching,
    /// The backing store returned an I/O error; nothing is served from it.
    Failed,
    /// Attached, deciding with the peer which copy is good.
    Negotiating,
    /// The data is a mix of old and new blocks (a resync target before it ends); never promoted
    /// without force.
    Inconsistent,
    /// Consistent but known to be older than the peer's.
    Outdated,
    /// The peer's disk state, when not connected.
    Unknown,
    /// Consistent, but whether it is the newest copy is not known.
    Consistent,
    /// Consistent and the newest copy.
    UpToDate,
}

impl DiskState {
    /// Whether the data on this disk is crash-consistent (a state that describes usable data).
    pub fn is_consistent(self) -> bool {
        matches!(self, Self::Outdated | Self::Consistent | Self::UpToDate)
    }

    /// The code stored in the superblock for a persisted disk state.
    pub(crate) fn to_code(self) -> u8 {
        match self {
            Self::Inconsistent => 0,
            Self::Outdated => 1,
            Self::Consistent => 2,
            Self::UpToDate => 3,
            // Transient states persist as the data they describe: nothing trusted.
            Self::Diskless | Self::Attaching | Self::Failed | Self::Negotiating | Self::Unknown => {
                0
            }
        }
    }

    /// The persisted disk state for a superblock code.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Inconsistent),
            1 => Some(Self::Outdated),
            2 => Some(Self::Consistent),
            3 => Some(Self::UpToDate),
            _ => None,
        }
    }
}

/// The state of the replication connection to the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Not trying to connect (administratively, or after a split brain or a refusal).
    #[default]
    StandAlone,
    /// Configured to connect, not connected.
    Unconnected,
    /// A connection attempt or handshake is under way.
    Connecting,
    /// Connected to the peer.
    Connected,
}

/// What the replication connection is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplState {
    /// No connection.
    #[default]
    Off,
    /// Connected, replicating writes, nothing to resync.
    Established,
    /// Sending out-of-sync blocks to the peer.
    SyncSource,
    /// Receiving out-of-sync blocks from the peer.
    SyncTarget,
    /// Comparing blocks with the peer, as the side that drives the comparison.
    VerifySource,
    /// Comparing blocks with the peer, as the side that answers.
    VerifyTarget,
    /// A resync is paused.
    PausedSync,
}

macro_rules! display_snake_case {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let text = serde_json_free_name(&format!("{self:?}"));
                f.write_str(&text)
            }
        }
    )*};
}

display_snake_case!(Role, DiskState, ConnState, ReplState);

/// `UpToDate` → `up_to_date`: the spelling the CLI and JSON use.
fn serde_json_free_name(debug_name: &str) -> String {
    let mut out = String::with_capacity(debug_name.len() + 4);
    for (i, c) in debug_name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case_and_disk_states_are_ordered() {
        assert_eq!(DiskState::UpToDate.to_string(), "up_to_date");
        assert_eq!(ConnState::StandAlone.to_string(), "stand_alone");
        assert_eq!(ReplState::SyncTarget.to_string(), "sync_target");
        assert!(DiskState::Inconsistent < DiskState::Outdated);
        assert!(DiskState::Consistent < DiskState::UpToDate);
        for state in [
            DiskState::Inconsistent,
            DiskState::Outdated,
            DiskState::Consistent,
            DiskState::UpToDate,
        ] {
            assert_eq!(DiskState::from_code(state.to_code()), Some(state));
        }
    }
}
