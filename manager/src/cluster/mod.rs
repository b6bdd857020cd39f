//! The cluster manager's sans-IO core (DESIGN §3–§5): heartbeats on every link, and (in later
//! parts) arbitration and resource groups. The daemon's runtime drives it with time and
//! packets; the simulator can drive it with a model clock.

pub mod advert;
pub mod beat;
pub mod core;
pub mod group;
pub mod heartbeat;
pub mod sim;

pub use self::core::Cluster;
pub mod witness;
