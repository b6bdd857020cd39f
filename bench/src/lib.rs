//! The benchmark harness (`tandem-bench`). Every measurement runs the physical limit and tandem
//! in the same run and reports their ratio: absolute numbers on a shared machine are noise.

pub mod local;
pub mod stats;
