//! The real runtime: a replica over a real backing store, driven by a thread.
//!
//! [`LocalVolume::open`] opens the backing store ([`backing::Backing`]), starts a pool of I/O
//! threads and the driver thread that owns the [`crate::replica::Replica`], and attaches it.
//! Frontends submit client requests through a [`VolumeHandle`]; completions come back as
//! callbacks on the driver thread. [`metadata`] creates and inspects metadata for the CLI.
//!
//! This module is the only part of the engine that reads clocks, spawns threads and asks the
//! operating system for randomness.

pub mod backing;
pub mod link;
pub mod metadata;
pub mod session;
mod volume;

pub use volume::{Completion, LocalVolume, PeerOutput, RuntimeOptions, VolumeHandle};

/// 64 random bits from the operating system, to seed a [`crate::prng::Prng`] or make an id.
pub fn os_random_u64() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_os.is_err() {
        // No /dev/urandom: fall back to the clock and the process id, still unique enough for
        // generation ids, which only need to differ from the ones this cluster has seen.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return nanos ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_le_bytes(bytes)
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
