//! Every fuzz target over its committed corpus, then over seeded pseudo-random inputs made from
//! it. A failure names the target, the seed and the input's index; `fuzz-run TARGET COUNT SEED`
//! replays the same inputs and saves the one that fails.

use fuzz::driver::{Generator, load_corpus};
use fuzz::target;

/// The seed of the generated inputs (fixed: the test is deterministic).
const SEED: u64 = 0x7a_4d_3e_f0;

fn run(name: &str, generated: usize) {
    let target = target(name).expect("a target");
    let corpus = load_corpus(name);
    assert!(!corpus.is_empty(), "fuzz/corpus/{name}/ is empty");
    for (path, bytes) in &corpus {
        eprintln!("{name}: {}", path.display());
        (target.run)(bytes);
    }
    let pool: Vec<Vec<u8>> = corpus.into_iter().map(|(_, bytes)| bytes).collect();
    let mut generator = Generator::new(SEED, pool, target.max_len);
    for index in 0..generated {
        let input = generator.next_input();
        let outcome = std::panic::catch_unwind(|| (target.run)(&input));
        assert!(
            outcome.is_ok(),
            "{name}: generated input {index} (seed {SEED:#x}) failed: {input:02x?}"
        );
    }
}

#[test]
fn quorum() {
    run("quorum", 5000);
}

#[test]
fn frame() {
    run("frame", 3000);
}

#[test]
fn peer_message() {
    run("peer_message", 5000);
}

#[test]
fn handshake() {
    run("handshake", 5000);
}

#[test]
fn nbd() {
    run("nbd", 2000);
}

#[test]
fn journal() {
    run("journal", 2000);
}

#[test]
fn metadata() {
    run("metadata", 1000);
}

#[test]
fn bitmap() {
    run("bitmap", 2000);
}

#[test]
fn config() {
    run("config", 3000);
}

#[test]
fn generation() {
    run("generation", 5000);
}

#[test]
fn beat() {
    run("beat", 3000);
}

#[test]
fn advert() {
    run("advert", 5000);
}

#[test]
fn witness() {
    run("witness", 3000);
}

#[test]
fn every_target_has_a_test_and_seeds_that_pass() {
    let source = include_str!("targets.rs");
    for target in fuzz::TARGETS {
        assert!(
            source.contains(&format!("fn {}() {{", target.name)),
            "no test runs target {}",
            target.name
        );
        for seed in (target.seeds)() {
            (target.run)(&seed);
        }
    }
}
