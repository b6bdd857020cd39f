//! The admin protocol between the `tandem` command line and the daemon.
//!
//! One JSON request per connection to the daemon's Unix socket (which only root can open), one
//! JSON response, then the connection closes. Requests name the volume; the daemon answers with
//! the result and, for `status`, the whole node's status.

use serde::{Deserialize, Serialize};

use crate::status::NodeReport;

/// What the command line asks the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The node's status.
    Status,
    /// `volume primary VOL [--force]`.
    Primary {
        /// The volume.
        volume: String,
        /// Accept this node's data even if it is not up to date.
        force: bool,
    },
    /// `volume secondary VOL`.
    Secondary {
        /// The volume.
        volume: String,
    },
    /// `volume connect VOL`.
    Connect {
        /// The volume.
        volume: String,
    },
    /// `volume disconnect VOL`.
    Disconnect {
        /// The volume.
        volume: String,
    },
    /// `volume resync VOL [--full]`.
    Resync {
        /// The volume.
        volume: String,
        /// Every block, not only those marked out of sync.
        full: bool,
        /// Every block, compared by digest first: only those that differ travel.
        #[serde(default)]
        checksum: bool,
    },
    /// `volume verify VOL [--mark]`.
    Verify {
        /// The volume.
        volume: String,
        /// Mark the mismatching blocks out of sync on this node.
        mark: bool,
    },
    /// `volume invalidate VOL`.
    Invalidate {
        /// The volume.
        volume: String,
    },
    /// `group start GROUP`.
    GroupStart {
        /// The group.
        group: String,
    },
    /// `group stop GROUP`.
    GroupStop {
        /// The group.
        group: String,
    },
    /// `group switch GROUP --to NODE [--force]`.
    GroupSwitch {
        /// The group.
        group: String,
        /// Where to run it.
        to: String,
        /// Even if that node's volumes are not `up_to_date`.
        #[serde(default)]
        force: bool,
    },
    /// `maintenance on|off`.
    Maintenance {
        /// On.
        on: bool,
    },
    /// `split-brain resolve VOL --keep NODE [--save-discarded DIR]`.
    SplitBrainResolve {
        /// The volume.
        volume: String,
        /// The node whose data is kept.
        keep: String,
        /// Where the discarded node saves its changed blocks first.
        save_discarded: Option<std::path::PathBuf>,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, in one line.
    pub error: Option<String>,
    /// For `status`.
    pub status: Option<NodeReport>,
    /// What was done, when there is more to say than "ok".
    #[serde(default)]
    pub message: Option<String>,
}

impl Response {
    /// Success without data.
    pub fn done() -> Self {
        Self {
            ok: true,
            error: None,
            status: None,
            message: None,
        }
    }

    /// A refusal.
    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            status: None,
            message: None,
        }
    }
}

/// Largest request or response accepted on the socket.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;
