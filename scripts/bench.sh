#!/usr/bin/env bash
# Runs the benchmark suite: `scripts/bench.sh --quick` (under 10 minutes on a 2-core machine) or
# `scripts/bench.sh` (the sizes the targets name). Any other arguments go to `tandem-bench all`
# (see `tandem-bench all --help`: --skip drbd, --delay-ms, --rate-mbit, --out DIR...).
#
# It installs what the measurements drive when it is missing (fio with its nbd engine, qemu-nbd,
# python3; the guest part installs its own through scripts/vm/build-guest.sh), builds tandem and
# tandem-bench in release, and runs from the repository root. Results: target/bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

install_missing_tools() {
    local -a missing=()
    local tool package
    while read -r tool package; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
    done <<'TOOLS'
fio fio
qemu-nbd qemu-utils
python3 python3
TOOLS
    dpkg-query -W -f '${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed' \
        || missing+=(libclang-dev)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_missing_tools
cargo build --release -p manager --bin tandem -p bench --bin tandem-bench
exec target/release/tandem-bench all "$@"
