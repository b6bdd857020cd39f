#!/usr/bin/env bash
# Runs kernel-path scenarios (ublk, the kernel NBD client) in a qemu guest, one boot per
# scenario. This machine's kernel has neither ublk nor nbd, and KVM cannot boot the guest
# kernel here, so the guest runs under TCG: a Debian 6.12 cloud kernel and a busybox
# initramfs (scripts/vm/build-guest.sh makes both, and is run first).
#
#   scripts/vm/run.sh kernel-nbd                 one scenario (scripts/vm/scenarios/NAME.sh)
#   scripts/vm/run.sh kernel-nbd ublk-restart    several, one guest each
#   scripts/vm/run.sh all                        every scenario but the manual ones
#
# Each scenario runs as the guest's /test.sh with two empty scratch disks (/dev/vda and
# /dev/vdb) and prints `RESULT PASS NAME` or `RESULT FAIL NAME: reason` on the guest's second
# serial port. A scenario passes only with that PASS line; on failure the guest console is
# printed. Exit status 0 only if every scenario passed.
#
# Scenario headers (comment lines in the scenario):
#   # vm-timeout: SECONDS     the guest's watchdog (default 300); the host kills qemu 60 s later
#   # vm-disk-size: SIZE      size of each scratch disk (default 256M)
#   # vm-tools: TOOL...       host commands (with their libraries) this scenario needs in the
#                             guest, in /usr/local/bin: an extra initramfs layer for this
#                             scenario only (build-guest.sh --layer, cached in target/vm/guest)
#   # vm-modules: NAME...     guest kernel modules beyond virtio_blk, nbd and ublk_drv, in the
#                             same layer (/lib/modules/vmtest/NAME.ko, for load_module)
#   # vm-manual: yes          a measurement, run only when named: `all` leaves it out
#
# Lines the scenario writes to the second serial port other than its RESULT line (a
# measurement's table, say) are printed after the scenario and kept, with the RESULT line, in
# target/vm/logs/NAME.results.txt.
#
# Environment:
#   TANDEM_VM_DIR=DIR         cache and logs (default <repo>/target/vm; logs/NAME.console.log
#                             keeps the last console of each scenario)
#   TANDEM_VM_VERBOSE=1       stream the guest console while it runs
#   TANDEM_VM_KEEP=1          keep each run's temporary directory (disks, initramfs, logs)
#   TANDEM_VM_NO_BUILD=1      do not run build-guest.sh (use what target/vm holds)
#   TANDEM_VM_TANDEM=FILE     put this tandem binary in the guest (see build-guest.sh)
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export TANDEM_VM_DIR=${TANDEM_VM_DIR:-$ROOT/target/vm}
VM_DIR=$TANDEM_VM_DIR
SCENARIO_DIR=$HERE/scenarios

# The guest: software emulation on every core we have (two here), 1 GiB, nothing but what is
# given explicitly (-nodefaults: no network card, no monitor), gone at power-off or panic.
# shellcheck disable=SC2054 # the commas belong to qemu's option syntax
QEMU_ARGS=(
    -accel tcg,thread=multi -cpu max -smp 2 -m 1024
    -nodefaults -no-user-config -display none -no-reboot
)
KERNEL_ARGS="console=ttyS0 panic=-1 quiet"
HOST_SLACK=60 # boot and power-off beyond the guest's own watchdog

RUN_DIR=""     # the current scenario's temporary directory
QEMU_PID=""    # the `timeout qemu` pipeline of the current scenario
TAIL_PID=""    # streams the console with TANDEM_VM_VERBOSE=1

log() { printf 'vm: %s\n' "$*"; }
die() {
    printf 'vm: error: %s\n' "$*" >&2
    exit 2
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Stops what this script started for the current scenario and removes its temporary directory.
cleanup_run() {
    if alive "$QEMU_PID"; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true # timeout passes it on to qemu
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    QEMU_PID=""
    if alive "$TAIL_PID"; then
        kill "$TAIL_PID" 2>/dev/null || true
        wait "$TAIL_PID" 2>/dev/null || true
    fi
    TAIL_PID=""
    if [ -n "$RUN_DIR" ] && [ -d "$RUN_DIR" ]; then
        if [ "${TANDEM_VM_KEEP:-0}" = 1 ]; then
            log "kept $RUN_DIR"
        else
            rm -rf --one-file-system "$RUN_DIR"
        fi
    fi
    RUN_DIR=""
}

trap 'cleanup_run' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

usage() {
    printf 'usage: %s SCENARIO... | all\nscenarios:' "$0" >&2
    for file in "$SCENARIO_DIR"/*.sh; do printf ' %s' "$(basename "$file" .sh)" >&2; done
    printf '\n' >&2
    exit 2
}

# scenario_file NAME|PATH
scenario_file() {
    if [ -f "$1" ]; then
        readlink -f "$1"
    elif [ -f "$SCENARIO_DIR/$1.sh" ]; then
        echo "$SCENARIO_DIR/$1.sh"
    else
        die "no scenario $1 (looked for $SCENARIO_DIR/$1.sh)"
    fi
}

# header FILE KEY DEFAULT: the value of a `# KEY: value` line of the scenario.
header() {
    local value
    value=$(sed -n "s/^# $2: *\\([^ ]*\\).*/\\1/p" "$1" | head -n 1)
    echo "${value:-$3}"
}

# header_words FILE KEY: every word of a `# KEY: word...` line of the scenario.
header_words() {
    sed -n "s/^# $2: *//p" "$1" | head -n 1
}

# layer_items FILE: what the scenario's extra layer holds (tools, then NAME.ko), or nothing.
layer_items() {
    local tools modules module
    tools=$(header_words "$1" vm-tools)
    modules=$(header_words "$1" vm-modules)
    printf '%s' "$tools"
    for module in $modules; do printf ' %s.ko' "${module%.ko}"; done
}

# prepare_layer NAME ITEM...: builds (or, with TANDEM_VM_NO_BUILD=1, finds) the extra layer
# and prints its path.
prepare_layer() {
    local name=$1 layer
    shift
    layer=$VM_DIR/guest/layer-$(printf '%s\n' "$@" | LC_ALL=C sort -u | paste -sd- -).cpio
    if [ "${TANDEM_VM_NO_BUILD:-0}" != 1 ]; then
        "$HERE/build-guest.sh" --layer "$layer" "$@" >&2 || die "$name: building the layer $layer failed"
    fi
    [ -f "$layer" ] || die "$name: no layer $layer (run scripts/vm/build-guest.sh --layer $layer $*)"
    echo "$layer"
}

# The initramfs for one scenario: the base image with a second archive appended (the kernel
# unpacks both, the later one on top) holding /test.sh, the helpers and the settings; for a
# scenario with `# vm-tools:` or `# vm-modules:`, its extra layer goes between the two.
make_initrd() {
    local file=$1 name=$2 guest_timeout=$3 layer=${4:-} overlay=$RUN_DIR/overlay
    mkdir -p "$overlay/lib/vmtest" "$overlay/etc"
    install -m 755 "$file" "$overlay/test.sh"
    install -m 644 "$HERE/guest-lib.sh" "$overlay/lib/vmtest/lib.sh"
    printf 'SCENARIO=%s\nGUEST_TIMEOUT=%s\n' "$name" "$guest_timeout" >"$overlay/etc/vmtest.conf"
    (cd "$overlay" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
        >"$RUN_DIR/overlay.cpio"
    cat "$VM_DIR/guest/base.cpio" ${layer:+"$layer"} "$RUN_DIR/overlay.cpio" >"$RUN_DIR/initrd.cpio"
}

# run_scenario FILE: boots one guest; returns 0 if the scenario passed.
run_scenario() {
    local file=$1 name guest_timeout disk_size host_timeout started elapsed status=0
    local layer="" items
    name=$(basename "$file" .sh)
    guest_timeout=$(header "$file" vm-timeout 300)
    disk_size=$(header "$file" vm-disk-size 256M)
    host_timeout=$((guest_timeout + HOST_SLACK))
    items=$(layer_items "$file")
    if [ -n "${items// /}" ]; then
        # shellcheck disable=SC2086 # the items are words
        layer=$(prepare_layer "$name" $items) || exit 2 # prepare_layer said why
    fi

    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tandem-vm.$name.XXXXXX")
    make_initrd "$file" "$name" "$guest_timeout" "$layer"
    truncate -s "$disk_size" "$RUN_DIR/disk-alpha.img" "$RUN_DIR/disk-beta.img"
    : >"$RUN_DIR/console.log"
    : >"$RUN_DIR/results.txt"

    log "$name: booting (guest watchdog ${guest_timeout}s, qemu killed after ${host_timeout}s)"
    if [ "${TANDEM_VM_VERBOSE:-0}" = 1 ]; then
        tail -n +1 -F "$RUN_DIR/console.log" 2>/dev/null &
        TAIL_PID=$!
    fi
    started=$SECONDS
    # The console goes to a file (printed on failure); ttyS1 carries only the RESULT lines.
    timeout --kill-after=10 "$host_timeout" qemu-system-x86_64 "${QEMU_ARGS[@]}" \
        -kernel "$VM_DIR/kernel/vmlinuz" -initrd "$RUN_DIR/initrd.cpio" -append "$KERNEL_ARGS" \
        -chardev "file,id=console,path=$RUN_DIR/console.log" -serial chardev:console \
        -chardev "file,id=results,path=$RUN_DIR/results.txt" -serial chardev:results \
        -drive "file=$RUN_DIR/disk-alpha.img,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$RUN_DIR/disk-beta.img,format=raw,if=virtio,cache=unsafe" \
        </dev/null >"$RUN_DIR/qemu.log" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID" || status=$?
    QEMU_PID=""
    elapsed=$((SECONDS - started))
    if alive "$TAIL_PID"; then
        sleep 0.5 # let tail print the last lines
        kill "$TAIL_PID" 2>/dev/null || true
        wait "$TAIL_PID" 2>/dev/null || true
        TAIL_PID=""
    fi

    mkdir -p "$VM_DIR/logs"
    tr -d '\r' <"$RUN_DIR/console.log" >"$VM_DIR/logs/$name.console.log"
    local results first_fail outcome=0 report
    results=$(tr -d '\r' <"$RUN_DIR/results.txt")
    printf '%s\n' "$results" >"$VM_DIR/logs/$name.results.txt"
    report=$(printf '%s\n' "$results" | grep -v '^RESULT ' | grep -v '^$' || true)
    if [ -n "$report" ]; then
        printf '%s\n' "$report" | sed "s/^/vm: $name: /"
    fi
    first_fail=$(printf '%s\n' "$results" | grep -m 1 '^RESULT FAIL' || true)
    if printf '%s\n' "$results" | grep -qx "RESULT PASS $name" && [ -z "$first_fail" ]; then
        log "$name: PASS in ${elapsed}s"
    else
        outcome=1
        local reason=${first_fail#RESULT FAIL }
        if [ -z "$reason" ]; then
            case $status in
                124 | 137) reason="no result: qemu killed after ${host_timeout}s" ;;
                *) reason="no result from the guest (qemu exit status $status)" ;;
            esac
        fi
        if [ "${TANDEM_VM_VERBOSE:-0}" != 1 ]; then
            printf '\n----- guest console (%s)\n' "$name"
            cat "$VM_DIR/logs/$name.console.log"
            printf '\n----- end of guest console\n'
        fi
        if [ -s "$RUN_DIR/qemu.log" ]; then
            printf '\n----- qemu\n'
            cat "$RUN_DIR/qemu.log"
        fi
        log "$name: FAIL in ${elapsed}s: $reason"
    fi
    cleanup_run
    return "$outcome"
}

main() {
    [ "$#" -gt 0 ] || usage
    local -a files=()
    local arg file
    for arg in "$@"; do
        case $arg in
            -h | --help) usage ;;
            all) for file in "$SCENARIO_DIR"/*.sh; do
                [ "$(header "$file" vm-manual no)" = yes ] || files+=("$file")
            done ;;
            *) files+=("$(scenario_file "$arg")") ;;
        esac
    done
    [ "$(id -u)" = 0 ] || [ "${TANDEM_VM_NO_BUILD:-0}" = 1 ] \
        || die "run as root (build-guest.sh installs what is missing with apt-get)"

    local started=$SECONDS
    if [ "${TANDEM_VM_NO_BUILD:-0}" != 1 ]; then
        "$HERE/build-guest.sh" || die "building the guest failed"
    fi
    if [ ! -f "$VM_DIR/guest/base.cpio" ] || [ ! -f "$VM_DIR/kernel/vmlinuz" ]; then
        die "no guest in $VM_DIR: run scripts/vm/build-guest.sh"
    fi
    log "guest built in $((SECONDS - started))s"

    local -a failed=()
    for file in "${files[@]}"; do
        run_scenario "$file" || failed+=("$(basename "$file" .sh)")
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        log "${#failed[@]} of ${#files[@]} scenarios failed: ${failed[*]} (total $((SECONDS - started))s)"
        exit 1
    fi
    log "all ${#files[@]} scenarios passed (total $((SECONDS - started))s)"
}

main "$@"
