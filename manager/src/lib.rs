//! tandem's cluster manager (its sans-IO core is [`cluster`]) and the configuration every part
//! of the `tandem` binary reads.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod discard;
pub mod key;
pub mod runtime;
pub mod size;
pub mod status;

pub use cluster::Cluster;
