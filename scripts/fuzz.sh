#!/usr/bin/env bash
# Fuzzes one target (or `all`, one after the other) for SECONDS each.
#
#   scripts/fuzz.sh TARGET SECONDS      targets: scripts/fuzz.sh list
#
# With a nightly toolchain and cargo-fuzz installed, runs libFuzzer (coverage-guided) through
# the harness in fuzz/cargo-fuzz/; new inputs go to fuzz/cargo-fuzz/corpus/TARGET/, the committed
# corpus fuzz/corpus/TARGET/ is read as well. Otherwise falls back to fuzz-run on stable Rust
# (mutations of the corpus and random bytes, no coverage guidance) and says so. Either way a
# crashing input is saved as fuzz/corpus/TARGET/crash-<hash>, and the exit status is non-zero.
# SEED=N fixes fuzz-run's seed (default: random, printed).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/fuzz.sh TARGET|all SECONDS   (scripts/fuzz.sh list: the targets)" >&2
    exit 2
}

targets() {
    sed -n 's/^\[\[bin\]\]$//; s/^name = "\(.*\)"$/\1/p' fuzz/cargo-fuzz/Cargo.toml \
        | grep -v '^tandem-cargo-fuzz$'
}

if [ "${1:-}" = list ]; then
    targets
    exit 0
fi
[ $# -eq 2 ] || usage
target=$1
seconds=$2
[[ $seconds =~ ^[0-9]+$ ]] || usage
if [ "$target" = all ]; then
    for each in $(targets); do
        "$0" "$each" "$seconds"
    done
    exit 0
fi
targets | grep -qx "$target" || { echo "unknown target $target" >&2; usage; }

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    missing="no nightly toolchain"
elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    missing="no cargo-fuzz (cargo install cargo-fuzz)"
else
    missing=""
fi
if [ -z "$missing" ]; then
    echo "fuzz.sh: $target for ${seconds}s with cargo-fuzz (libFuzzer, nightly)"
    mkdir -p "fuzz/cargo-fuzz/corpus/$target"
    exec nice -n 10 cargo +nightly fuzz run --fuzz-dir fuzz/cargo-fuzz "$target" \
        "$PWD/fuzz/cargo-fuzz/corpus/$target" "$PWD/fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -artifact_prefix="$PWD/fuzz/corpus/$target/crash-"
fi

seed=${SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "fuzz.sh: $missing here, so not libFuzzer; falling back to fuzz-run" \
    "(stable, no coverage guidance): $target for ${seconds}s, seed $seed"
exec nice -n 10 cargo run --release -q -p fuzz --bin fuzz-run -- "$target" "${seconds}s" "$seed"
