//! Fuzz target bodies for every decoder of tandem. Each target is a plain function
//! `TARGET(data: &[u8])` that panics only on a bug: a decoder that panics, an encoding that
//! does not round-trip, a model that disagrees. `cargo test -p fuzz` runs every target over its
//! committed corpus (`fuzz/corpus/TARGET/`) and over seeded pseudo-random mutations of it;
//! `fuzz-run` runs them for as long as asked; the cargo-fuzz harness in `fuzz/cargo-fuzz/`
//! hands libFuzzer's inputs to the same functions. See `fuzz/README.md`.

pub mod advert;
pub mod beat;
pub mod bitmap;
pub mod config;
pub mod driver;
pub mod frame;
pub mod generation;
pub mod handshake;
pub mod input;
pub mod journal;
pub mod metadata;
pub mod nbd;
pub mod peer_message;
pub mod quorum;
pub mod witness;

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its name: the module, the function, the corpus directory.
    pub name: &'static str,
    /// The body.
    pub run: fn(&[u8]),
    /// Hand-made valid inputs, written to the corpus by `fuzz-run seed-corpus`.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// The longest input worth generating from scratch.
    pub max_len: usize,
}

/// Every target.
pub const TARGETS: [Target; 13] = [
    Target {
        name: "frame",
        run: frame::frame,
        seeds: frame::seeds,
        max_len: 2048,
    },
    Target {
        name: "peer_message",
        run: peer_message::peer_message,
        seeds: peer_message::seeds,
        max_len: 512,
    },
    Target {
        name: "handshake",
        run: handshake::handshake,
        seeds: handshake::seeds,
        max_len: 1024,
    },
    Target {
        name: "nbd",
        run: nbd::nbd,
        seeds: nbd::seeds,
        max_len: 4096,
    },
    Target {
        name: "journal",
        run: journal::journal,
        seeds: journal::seeds,
        max_len: 8192,
    },
    Target {
        name: "metadata",
        run: metadata::metadata,
        seeds: metadata::seeds,
        max_len: 256,
    },
    Target {
        name: "bitmap",
        run: bitmap::bitmap,
        seeds: bitmap::seeds,
        max_len: 512,
    },
    Target {
        name: "config",
        run: config::config,
        seeds: config::seeds,
        max_len: 4096,
    },
    Target {
        name: "generation",
        run: generation::generation,
        seeds: generation::seeds,
        max_len: 64,
    },
    Target {
        name: "beat",
        run: beat::beat,
        seeds: beat::seeds,
        max_len: 512,
    },
    Target {
        name: "advert",
        run: advert::advert,
        seeds: advert::seeds,
        max_len: 512,
    },
    Target {
        name: "witness",
        run: witness::witness,
        seeds: witness::seeds,
        max_len: 1024,
    },
    Target {
        name: "quorum",
        run: quorum::quorum,
        seeds: quorum::seeds,
        max_len: 512,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|target| target.name == name)
}
