//! The cluster manager's sans-IO core (DESIGN §3–§5): heartbeats on every link, arbitration
//! and resource groups. The daemon's runtime drives it with time and packets; the simulator
//! (tests only) drives it with a model clock, and with the engine's replicas as the volumes.

pub mod advert;
pub mod beat;
pub mod core;
pub mod group;
pub mod heartbeat;
pub mod quorum;
#[cfg(test)]
pub mod sim;

pub use self::core::Cluster;
pub mod witness;
