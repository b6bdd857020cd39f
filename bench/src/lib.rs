//! The benchmark harness (`tandem-bench`). Every measurement runs the physical limit and tandem
//! in the same run and reports their ratio: absolute numbers on a shared machine are noise.

pub mod ceiling;
pub mod data;
pub mod delay;
pub mod drbd;
pub mod failover;
pub mod limits;
pub mod linkonly;
pub mod load;
pub mod local;
pub mod nbd;
pub mod pair;
pub mod plot;
pub mod progress;
pub mod qemu;
pub mod replicated;
pub mod report;
pub mod results;
pub mod resync;
pub mod stages;
pub mod stats;
pub mod suite;
pub mod write;
