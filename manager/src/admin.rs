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
    },
    /// `volume invalidate VOL`.
    Invalidate {
        /// The volume.
        volume: String,
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
}

impl Response {
    /// Success without data.
    pub fn done() -> Self {
        Self {
            ok: true,
            error: None,
            status: None,
        }
    }

    /// A refusal.
    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            status: None,
        }
    }
}

/// Largest request or response accepted on the socket.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;
