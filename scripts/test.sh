#!/usr/bin/env bash
# The one test entry point: what CI runs (through .ci/run) and what the README tells you to run.
# It installs what the tests need when it is missing, so it works on a fresh Debian machine
# (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS=${SIM_SEEDS:-2000}

step() { printf '\n==> %s\n' "$*"; }

# Tools the real-process tests drive, and the Debian package of each.
install_missing_tools() {
    local -a missing=()
    local tool package
    while read -r tool package; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
    done <<'TOOLS'
qemu-io qemu-utils
nbdinfo libnbd-bin
nbdfuse libnbd-bin
fusermount3 fuse3
mkfs.ext4 e2fsprogs
losetup mount
nsenter util-linux
ip iproute2
sha256sum coreutils
sysctl procps
findmnt util-linux
python3 python3
TOOLS
    # libublk's bindings are generated with libclang when the workspace builds.
    dpkg-query -W -f '${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed' \
        || missing+=(libclang-dev)
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "all test tools present"
        return
    fi
    local -a unique
    mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
    echo "installing: ${unique[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${unique[@]}"
}

step "test tools"
install_missing_tools
# FUSE and loop devices back the NBD mount tests; load them if the kernel has them as modules.
modprobe fuse 2>/dev/null || true
modprobe loop 2>/dev/null || true

step "format check"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "unit, scenario, simulation and real-process tests"
cargo test --workspace --all-features

step "guest for kernel-path tests: qemu, Debian cloud kernel (cached in target/vm), initramfs"
scripts/vm/build-guest.sh

step "kernel paths in a qemu guest (TCG): kernel NBD client, ublk switchover, ublk restart"
# run.sh builds the per-scenario layers (blkdiscard for ublk-switchover); the base guest is up
# to date from the step above.
scripts/vm/run.sh kernel-nbd ublk-switchover ublk-restart

step "simulator: $SIM_SEEDS seeds"
cargo run -p engine --release --features sim --bin sim -- --seeds "$SIM_SEEDS"

step "cluster simulator: $SIM_SEEDS seeds with modelled volumes, $SIM_SEEDS with the engine's replicas"
TANDEM_SIM_SEEDS="$SIM_SEEDS" cargo test --release -p manager --lib random_faults -- --nocapture

step "all tests passed"
