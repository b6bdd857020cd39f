//! tandem's cluster manager (its sans-IO core arrives with the cluster-manager issue) and the
//! configuration every part of the `tandem` binary reads.

pub mod admin;
pub mod config;
pub mod discard;
pub mod key;
pub mod runtime;
pub mod size;
pub mod status;
