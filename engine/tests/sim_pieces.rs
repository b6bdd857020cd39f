//! The two-node simulator exercises client writes cut into pieces (protocols B and C while
//! replicating, shallow queues): some seeds must cut some, and every one of them must pass.
#![cfg(feature = "sim")]

use engine::sim::{SimOptions, run_cluster_seed};

#[test]
fn pieced_writes_are_simulated_and_pass_every_checker() {
    let mut pieced = 0;
    for seed in 0..20 {
        let options = SimOptions {
            seed,
            planted_bug: None,
        };
        let report = run_cluster_seed(&options).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        pieced += report.pieced_writes;
    }
    assert!(pieced > 0, "no seed cut a client write into pieces");
}
