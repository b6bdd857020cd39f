//! tandem's replication engine: one volume on one node as a sans-IO state machine.
//!
//! # The run-loop contract
//!
//! [`replica::Replica`] performs no I/O, reads no clock and draws no randomness of its own. A
//! driver (the real runtime in [`runtime`], or the simulator behind the `sim` feature) owns it and
//! loops:
//!
//! 1. wait for something to happen: a client request, a storage completion, an admin command, or
//!    the deadline the replica asked for;
//! 2. hand it to the replica once with [`replica::Replica::handle`], passing the current time;
//! 3. drain [`replica::Replica::poll_output`] until it returns `None`, carrying out each output:
//!    submit a storage operation, complete a client request, log an event;
//! 4. read [`replica::Replica::next_deadline`] and go back to 1.
//!
//! Storage operations may complete in any order and a storage write is durable only after a
//! later flush completes (or when it was submitted with FUA); the replica orders dependent
//! operations itself. Time comes in as [`types::Now`]; randomness from the [`prng::Prng`] the
//! driver seeds.
//!
//! # Modules
//!
//! On-disk formats: [`layout`], [`superblock`], [`activity_log`], [`bitmap`], [`journal`].
//! Decisions: [`generation`]. States: [`state`]. The state machine: [`replica`]. The real
//! runtime: [`runtime`]. The simulator: `sim` (feature `sim`).

pub mod activity_log;
pub mod bitmap;
pub mod buffer;
pub mod codec;
pub mod error;
pub mod format;
pub mod generation;
pub mod journal;
pub mod layout;
pub mod prng;
pub mod protocol;
pub mod replica;
pub mod runtime;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod state;
pub mod superblock;
pub mod types;

pub use error::{Error, Result};
