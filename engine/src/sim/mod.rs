//! The deterministic simulator (feature `sim`; also compiled for the engine's own tests).
//!
//! One seed drives everything: the parameters (a different fault and workload mix per seed,
//! "swarm" testing), the simulated disk's latencies, reorderings, crash outcomes and errors, and
//! the workload. A failing seed replays exactly:
//! `cargo run -p engine --release --features sim --bin sim -- --seed S`.
//!
//! Checkers, run as the workload goes:
//! - a read returns the newest completed write, or a write in flight at the same time;
//! - after a crash every sector holds its durable content or a later write's (S3);
//! - recovery succeeds, or reports the damage the simulator injected on purpose;
//! - every granule written since the last sync with the peer is set in the dirty bitmap;
//! - a journal that claims to be complete holds exactly the writes since the sync, with their
//!   data, overlapping writes in submission order;
//! - no request stalls with nothing scheduled (liveness).
//!
//! The two-node scenario ([`cluster`]) adds a network with delays, disconnects, partitions and
//! slow links, a second replica, failovers and crashes of either or both nodes, and checkers for
//! S1 (no completed write lost on a failover), S3 and S4 (connected up-to-date replicas are
//! identical), and convergence after the faults heal.

pub mod cluster;
pub mod disk;
pub mod harness;
pub mod model;
pub mod network;
pub mod prefix;

pub use cluster::driven::{PairReport, VolumePair};
pub use cluster::{ClusterReport, run_cluster_seed};
pub use harness::{SeedReport, SimOptions, run_seed};
