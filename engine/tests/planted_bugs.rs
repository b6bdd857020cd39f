//! The simulator catches planted bugs: each must make some seed among the first 200 fail, and
//! that same seed must pass without the bug (so it is the bug that is caught, not noise).
#![cfg(feature = "sim")]

use engine::replica::PlantedBug;
use engine::sim::{SimOptions, run_cluster_seed, run_seed};

/// Which scenario a bug shows in.
#[derive(Clone, Copy)]
enum Scenario {
    Single,
    Cluster,
}

fn run(scenario: Scenario, seed: u64, planted_bug: Option<PlantedBug>) -> Result<(), String> {
    let options = SimOptions { seed, planted_bug };
    match scenario {
        Scenario::Single => run_seed(&options).map(|_| ()),
        Scenario::Cluster => run_cluster_seed(&options).map(|_| ()),
    }
}

fn assert_caught(scenario: Scenario, bug: PlantedBug, expected: &str) {
    let (seed, message) = (0..200)
        .find_map(|seed| run(scenario, seed, Some(bug)).err().map(|e| (seed, e)))
        .expect("the planted bug is caught within 200 seeds");
    assert!(
        message.contains(expected),
        "seed {seed} failed for another reason: {message}"
    );
    let clean = run(scenario, seed, None);
    assert!(
        clean.is_ok(),
        "seed {seed} fails without the bug too: {clean:?}"
    );
}

#[test]
fn acknowledging_a_flush_before_the_storage_flush_is_caught() {
    assert_caught(Scenario::Single, PlantedBug::AcknowledgeFlushEarly, "S3");
}

#[test]
fn evicting_an_extent_before_its_bitmap_page_is_durable_is_caught() {
    assert_caught(
        Scenario::Single,
        PlantedBug::SkipBitmapFlushOnEviction,
        "clear in the bitmap",
    );
}

#[test]
fn a_verify_that_reads_out_of_write_order_is_caught() {
    assert_caught(Scenario::Cluster, PlantedBug::DigestReadUnordered, "verify");
}

#[test]
fn a_catch_up_applied_out_of_order_is_caught() {
    assert_caught(Scenario::Cluster, PlantedBug::CatchUpUnordered, "S2");
}

#[test]
fn replicated_writes_applied_out_of_order_are_caught() {
    assert_caught(Scenario::Cluster, PlantedBug::PeerWriteUnordered, "S2");
}
