//! The simulator catches planted bugs: each must make some seed among the first 200 fail, and
//! that same seed must pass without the bug (so it is the bug that is caught, not noise).
#![cfg(feature = "sim")]

use engine::replica::PlantedBug;
use engine::sim::{SimOptions, run_seed};

fn first_failing_seed(bug: PlantedBug) -> Option<(u64, String)> {
    (0..200).find_map(|seed| {
        run_seed(&SimOptions {
            seed,
            planted_bug: Some(bug),
        })
        .err()
        .map(|message| (seed, message))
    })
}

fn assert_caught(bug: PlantedBug, expected: &str) {
    let (seed, message) =
        first_failing_seed(bug).expect("the planted bug is caught within 200 seeds");
    assert!(
        message.contains(expected),
        "seed {seed} failed for another reason: {message}"
    );
    let clean = run_seed(&SimOptions {
        seed,
        planted_bug: None,
    });
    assert!(
        clean.is_ok(),
        "seed {seed} fails without the bug too: {clean:?}"
    );
}

#[test]
fn acknowledging_a_flush_before_the_storage_flush_is_caught() {
    assert_caught(PlantedBug::AcknowledgeFlushEarly, "S3");
}

#[test]
fn evicting_an_extent_before_its_bitmap_page_is_durable_is_caught() {
    assert_caught(PlantedBug::SkipBitmapFlushOnEviction, "clear in the bitmap");
}
