//! The witness (arbitration node, 仲裁节点): a lease per cluster that at most one node holds at
//! a time, granted over UDP to nodes that hold the cluster key. Sans-IO: [`Witness::handle`]
//! takes a datagram and the witness's monotonic time in milliseconds and returns the answer
//! to send; `runtime::witness` does the sockets. The datagrams are in [`wire`].
//!
//! Lease: a holder, an epoch and an expiry. An acquire is granted if the lease is free,
//! expired, or held by the asker (a renewal, which never shortens it); otherwise refused,
//! naming the holder and the time left. The epoch increases with every grant that is not the
//! renewal of a live lease by its holder: the same epoch means the same node held the lease
//! without a gap.
//!
//! Bounds: at most [`Limits::max_clusters`] clusters and [`Limits::max_nodes`] nodes per
//! cluster are remembered; a request beyond them is rejected, not stored. A lease length
//! outside `min_lease_ms..=max_lease_ms` is rejected.
//!
//! Outdated data: an acquire says whether the asker has writes its peer lacks, and the
//! generation of its data (a hash of its volumes' current generations). A grant with that
//! claim, or a forced one (the operator chose that node's data), records the asker and its
//! generation as the current data: every other node is refused ([`Verdict::Outdated`]), even
//! once the lease is free, unless it has that generation too (a resync gave it the data), asks
//! in sync with its peer (connected, both `up_to_date`), or is forced; a grant in sync or with
//! that generation clears the record (the asker's own writes are newer). A node that missed writes must not take over from a node that made them
//! (DRBD's fence-peer, through the witness).
//!
//! Restart: the witness keeps nothing on disk, so for [`Limits::restart_grace_ms`] (by
//! default the longest lease) after it starts it grants nothing ([`Verdict::Restarting`]):
//! any lease granted before the restart has run out before another node can get one.
//!
//! Replays (S9): the witness remembers per (cluster, node) the newest (boot id, sequence)
//! it took, and drops a request with the same boot and a sequence not newer, or an older
//! boot. Clients take their boot id from the wall clock at start (microseconds since the
//! epoch), so a restarted node's boot id is larger and its old boot's recorded requests are
//! refused from its first request on. Residuals, by design:
//! - a witness restart forgets every (boot, seq): a request recorded earlier can be replayed
//!   until the node it names sends again. A replayed acquire can then hold the lease for a
//!   node that is gone (availability, not safety: the other node is refused, not both
//!   granted); a replayed release frees nothing the node took since, as its newer boot or
//!   sequence is then on record;
//! - a node whose clock was set back between two starts has its requests dropped as stale
//!   until its clock passes the old boot id or the witness restarts (it then loses
//!   arbitration: safe, and the witness log names it).

pub mod wire;

use std::collections::BTreeMap;

pub use wire::{Kind, Request, WireError, WitnessKey, decode_request};

/// The witness's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Clusters remembered at most.
    pub max_clusters: usize,
    /// Nodes remembered at most per cluster.
    pub max_nodes: usize,
    /// The shortest lease granted.
    pub min_lease_ms: u64,
    /// The longest lease granted.
    pub max_lease_ms: u64,
    /// How long after its start the witness grants nothing.
    pub restart_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clusters: 64,
            max_nodes: 8,
            min_lease_ms: 100,
            max_lease_ms: 60_000,
            restart_grace_ms: 60_000,
        }
    }
}

/// Why the witness would not consider a request at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The lease asked for is outside what the witness grants.
    LeaseOutOfRange {
        /// The shortest lease granted.
        min_ms: u64,
        /// The longest lease granted.
        max_ms: u64,
    },
    /// The witness remembers as many clusters as it will.
    TooManyClusters {
        /// That many.
        max: u64,
    },
    /// The cluster has as many nodes as the witness remembers per cluster.
    TooManyNodes {
        /// That many.
        max: u64,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LeaseOutOfRange { min_ms, max_ms } => {
                write!(f, "lease outside {min_ms}..={max_ms} ms")
            }
            Self::TooManyClusters { max } => {
                write!(f, "the witness already serves {max} clusters")
            }
            Self::TooManyNodes { max } => {
                write!(f, "the cluster already has {max} nodes at the witness")
            }
        }
    }
}

/// What an acquire claims besides the lease length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The asker runs with its peer behind: the peer's data is outdated.
    pub peer_behind: bool,
    /// The asker's volumes are connected to the peer's and both `up_to_date`.
    pub in_sync: bool,
    /// The generation of the asker's data (0: no volumes).
    pub generation: u64,
    /// The operator forced this node's data: grant even if it is outdated.
    pub force: bool,
}

/// The witness's answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The asker holds the lease for `lease_ms` from when the witness took the request.
    Granted {
        /// The lease's epoch (the same as before for a renewal without a gap).
        epoch: u64,
        /// The lease granted.
        lease_ms: u64,
    },
    /// Another node holds the lease.
    Refused {
        /// That node.
        holder: String,
        /// The lease's epoch.
        epoch: u64,
        /// Time left on its lease.
        remaining_ms: u64,
    },
    /// The asker holds no lease now (an answer to a release).
    Released {
        /// The epoch of the last lease of the cluster (0: none yet).
        epoch: u64,
    },
    /// The asker's data is outdated: `current` ran without it.
    Outdated {
        /// The node with the current data.
        current: String,
        /// The lease's epoch.
        epoch: u64,
    },
    /// The witness started recently and grants nothing for `remaining_ms`.
    Restarting {
        /// Time left before it grants.
        remaining_ms: u64,
    },
    /// The request was not considered.
    Rejected(Rejection),
}

/// Why a request was dropped without an answer: it is not newer than one already taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Same boot, sequence not newer (a replay or a late duplicate).
    Sequence,
    /// An older boot than one already seen from that node (a replay, or a clock set back).
    Boot,
}

/// A live lease, as [`LeaseTable::lease`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The node holding it.
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// When it runs out, in the witness's milliseconds.
    pub expires_at_ms: u64,
}

#[derive(Debug, Default)]
struct ClusterState {
    holder: Option<String>,
    epoch: u64,
    expires_at_ms: u64,
    /// The node with the current data and that data's generation, if its peer is behind.
    current: Option<(String, u64)>,
    /// Per node, the newest (boot, seq) taken.
    clients: BTreeMap<String, (u64, u64)>,
}

/// The leases of every cluster the witness serves, and the replay state of their nodes.
#[derive(Debug)]
pub struct LeaseTable {
    limits: Limits,
    clusters: BTreeMap<String, ClusterState>,
    grace_until_ms: u64,
}

impl LeaseTable {
    /// An empty table of a witness that starts at `now_ms`.
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Self {
            limits,
            clusters: BTreeMap::new(),
            grace_until_ms: now_ms.saturating_add(limits.restart_grace_ms),
        }
    }

    /// `node` of `cluster` asks for the lease for `lease_ms`.
    pub fn acquire(
        &mut self,
        cluster: &str,
        node: &str,
        lease_ms: u64,
        claims: Claims,
        now_ms: u64,
    ) -> Verdict {
        let limits = self.limits;
        if !(limits.min_lease_ms..=limits.max_lease_ms).contains(&lease_ms) {
            return Verdict::Rejected(Rejection::LeaseOutOfRange {
                min_ms: limits.min_lease_ms,
                max_ms: limits.max_lease_ms,
            });
        }
        let grace_until = self.grace_until_ms;
        let state = match self.slot(cluster) {
            Ok(state) => state,
            Err(rejection) => return Verdict::Rejected(rejection),
        };
        if now_ms < grace_until {
            return Verdict::Restarting {
                remaining_ms: grace_until - now_ms,
            };
        }
        if let Some((current, generation)) = &state.current
            && current != node
            && *generation != claims.generation
            && !claims.force
            && !claims.in_sync
        {
            return Verdict::Outdated {
                current: current.clone(),
                epoch: state.epoch,
            };
        }
        let live = now_ms < state.expires_at_ms;
        match &state.holder {
            Some(holder) if live && holder == node => {
                state.expires_at_ms = state.expires_at_ms.max(now_ms.saturating_add(lease_ms));
            }
            Some(holder) if live => {
                return Verdict::Refused {
                    holder: holder.clone(),
                    epoch: state.epoch,
                    remaining_ms: state.expires_at_ms - now_ms,
                };
            }
            _ => {
                state.epoch += 1;
                state.holder = Some(node.to_string());
                state.expires_at_ms = now_ms.saturating_add(lease_ms);
            }
        }
        let has_current = state
            .current
            .as_ref()
            .is_some_and(|(_, generation)| *generation == claims.generation);
        if claims.peer_behind || claims.force {
            state.current = Some((node.to_string(), claims.generation));
        } else if claims.in_sync || has_current {
            // The asker has the current data: what it writes from now on is newer still.
            state.current = None;
        }
        Verdict::Granted {
            epoch: state.epoch,
            lease_ms,
        }
    }

    /// `node` of `cluster` gives the lease back; it is freed if `node` holds it.
    pub fn release(&mut self, cluster: &str, node: &str, _now_ms: u64) -> Verdict {
        let Some(state) = self.clusters.get_mut(cluster) else {
            return Verdict::Released { epoch: 0 };
        };
        if state.holder.as_deref() == Some(node) {
            state.holder = None;
            state.expires_at_ms = 0;
        }
        Verdict::Released { epoch: state.epoch }
    }

    /// Takes `request` unless it is stale (then drops it: `Err`), and answers it.
    pub fn handle(&mut self, request: &Request, now_ms: u64) -> Result<Verdict, Stale> {
        let limits = self.limits;
        if request.kind == Kind::Acquire
            && !(limits.min_lease_ms..=limits.max_lease_ms).contains(&request.lease_ms)
        {
            return Ok(self.acquire(
                &request.cluster,
                &request.node,
                request.lease_ms,
                request.claims,
                now_ms,
            ));
        }
        if request.kind == Kind::Release && !self.clusters.contains_key(&request.cluster) {
            return Ok(Verdict::Released { epoch: 0 });
        }
        let state = match self.slot(&request.cluster) {
            Ok(state) => state,
            Err(rejection) => return Ok(Verdict::Rejected(rejection)),
        };
        let known = state.clients.len();
        match state.clients.get_mut(&request.node) {
            Some((boot, _)) if request.boot < *boot => return Err(Stale::Boot),
            Some((boot, seq)) if request.boot == *boot && request.seq <= *seq => {
                return Err(Stale::Sequence);
            }
            Some(newest) => *newest = (request.boot, request.seq),
            None if known >= limits.max_nodes => {
                return Ok(Verdict::Rejected(Rejection::TooManyNodes {
                    max: limits.max_nodes as u64,
                }));
            }
            None => {
                state
                    .clients
                    .insert(request.node.clone(), (request.boot, request.seq));
            }
        }
        Ok(match request.kind {
            Kind::Acquire => self.acquire(
                &request.cluster,
                &request.node,
                request.lease_ms,
                request.claims,
                now_ms,
            ),
            Kind::Release => self.release(&request.cluster, &request.node, now_ms),
        })
    }

    /// The live lease of `cluster` at `now_ms`, if any.
    pub fn lease(&self, cluster: &str, now_ms: u64) -> Option<Lease> {
        let state = self.clusters.get(cluster)?;
        let holder = state.holder.as_ref()?;
        (now_ms < state.expires_at_ms).then(|| Lease {
            holder: holder.clone(),
            epoch: state.epoch,
            expires_at_ms: state.expires_at_ms,
        })
    }

    /// The only node of `cluster` with current data, if the witness was told so.
    pub fn current(&self, cluster: &str) -> Option<&str> {
        let (node, _) = self.clusters.get(cluster)?.current.as_ref()?;
        Some(node)
    }

    /// The epoch of `cluster`'s lease (0: never granted).
    pub fn epoch(&self, cluster: &str) -> u64 {
        self.clusters.get(cluster).map_or(0, |state| state.epoch)
    }

    /// The state of `cluster`, made if there is room.
    fn slot(&mut self, cluster: &str) -> Result<&mut ClusterState, Rejection> {
        if !self.clusters.contains_key(cluster) && self.clusters.len() >= self.limits.max_clusters {
            return Err(Rejection::TooManyClusters {
                max: self.limits.max_clusters as u64,
            });
        }
        Ok(self.clusters.entry(cluster.to_string()).or_default())
    }
}

/// A datagram the witness answered.
#[derive(Debug)]
pub struct Answer {
    /// The request.
    pub request: Request,
    /// What the witness decided.
    pub verdict: Verdict,
    /// The grant started a new epoch (the lease changed hands or had lapsed).
    pub new_epoch: bool,
    /// The release freed a lease the asker held.
    pub released: bool,
    /// The datagram to send back.
    pub reply: Vec<u8>,
}

/// Why a datagram got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// It is not an authentic request of a cluster with this witness's key.
    Wire(WireError),
    /// An authentic request, but not newer than one already taken from that node.
    Stale {
        /// Which check.
        stale: Stale,
        /// The cluster named.
        cluster: String,
        /// The node named.
        node: String,
    },
}

/// The witness: the lease table behind the cluster key it serves.
#[derive(Debug)]
pub struct Witness {
    cluster_key: [u8; 32],
    table: LeaseTable,
}

impl Witness {
    /// A witness for every cluster whose key is `cluster_key`, started at `now_ms`.
    pub fn new(cluster_key: [u8; 32], limits: Limits, now_ms: u64) -> Self {
        Self {
            cluster_key,
            table: LeaseTable::new(limits, now_ms),
        }
    }

    /// Answers the datagram `packet`, or says why it gets no answer.
    pub fn handle(&mut self, packet: &[u8], now_ms: u64) -> Result<Answer, Dropped> {
        let request = decode_request(&self.cluster_key, packet).map_err(Dropped::Wire)?;
        let before = self.table.epoch(&request.cluster);
        let held = request.kind == Kind::Release
            && self
                .table
                .clusters
                .get(&request.cluster)
                .and_then(|state| state.holder.as_deref())
                == Some(request.node.as_str());
        let verdict = self
            .table
            .handle(&request, now_ms)
            .map_err(|stale| Dropped::Stale {
                stale,
                cluster: request.cluster.clone(),
                node: request.node.clone(),
            })?;
        let new_epoch = matches!(verdict, Verdict::Granted { epoch, .. } if epoch != before);
        let reply = WitnessKey::new(&self.cluster_key, &request.cluster)
            .encode_response(request.nonce, &verdict);
        Ok(Answer {
            request,
            verdict,
            new_epoch,
            released: held,
            reply,
        })
    }

    /// The lease table.
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }
}

#[cfg(test)]
mod tests;
