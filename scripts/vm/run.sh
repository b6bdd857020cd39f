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
#                             same layer (/lib/modules/vmtest/NAME.ko, for load_module), with
#                             the modules they depend on
#   # vm-manual: yes          a measurement, run only when named: `all` leaves it out
#   # vm-guests: NAME NAME    two guests instead of one, joined by a virtio-net link (qemu
#                             -netdev stream over a unix socket: nothing leaves the two qemu
#                             processes); each has one scratch disk, /dev/vda, and runs the
#                             scenario with vmtest.guest=NAME on its kernel command line. The
#                             scenario passes only if both guests print PASS; when one guest
#                             ends without it, the other is stopped at once.
#   # vm-smp: N               virtual CPUs per guest (default 2)
#   # vm-report: verbatim     print the scenario's report lines as they are (a markdown
#                             table), not prefixed with "vm: NAME: "
#
# Lines the scenario writes to the second serial port other than its RESULT line (a
# measurement's table, say) are printed after the scenario and kept, with the RESULT line, in
# target/vm/logs/NAME.results.txt. A line `JSON {...}` is not printed: it goes, without the
# prefix, to target/vm/logs/NAME.json (removed when the scenario starts).
#
# Environment:
#   TANDEM_VM_DIR=DIR         cache and logs (default <repo>/target/vm; logs/NAME.console.log
#                             keeps the last console of each scenario)
#   TANDEM_VM_VERBOSE=1       stream the guest console while it runs
#   TANDEM_VM_KEEP=1          keep each run's temporary directory (disks, initramfs, logs)
#   TANDEM_VM_NO_BUILD=1      do not run build-guest.sh (use what target/vm holds)
#   TANDEM_VM_TANDEM=FILE     put this tandem binary in the guest (see build-guest.sh)
#   PERF_*                    passed on to the scenario in the guest (/etc/vmtest.conf, read by
#                             guest-lib.sh): PERF_RUNTIME=SECONDS for the measurements, say
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export TANDEM_VM_DIR=${TANDEM_VM_DIR:-$ROOT/target/vm}
VM_DIR=$TANDEM_VM_DIR
SCENARIO_DIR=$HERE/scenarios

# The guest: software emulation on every core we have (two here; `# vm-smp:` changes it), 1 GiB,
# nothing but what is given explicitly (-nodefaults: no network card, no monitor, but the link
# of a two-guest scenario), gone at power-off or panic.
# shellcheck disable=SC2054 # the commas belong to qemu's option syntax
QEMU_ARGS=(
    -accel tcg,thread=multi -cpu max -m 1024
    -nodefaults -no-user-config -display none -no-reboot
)
KERNEL_ARGS="console=ttyS0 panic=-1 quiet"
HOST_SLACK=60 # boot and power-off beyond the guest's own watchdog

RUN_DIR=""     # the current scenario's temporary directory
QEMU_PIDS=()   # the `timeout qemu` pipeline of each guest of the current scenario
TAIL_PID=""    # streams the console with TANDEM_VM_VERBOSE=1

log() { printf 'vm: %s\n' "$*"; }
die() {
    printf 'vm: error: %s\n' "$*" >&2
    exit 2
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Stops what this script started for the current scenario and removes its temporary directory.
cleanup_run() {
    local pid
    for pid in "${QEMU_PIDS[@]}"; do
        if alive "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true # timeout passes it on to qemu
            wait "$pid" 2>/dev/null || true
        fi
    done
    QEMU_PIDS=()
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
    # A tool given as a path (/usr/lib/drbd/drbdadm-84) is named by its file name.
    layer=$VM_DIR/guest/layer-$(printf '%s\n' "${@##*/}" | LC_ALL=C sort -u | paste -sd- -).cpio
    if [ "${TANDEM_VM_NO_BUILD:-0}" != 1 ]; then
        "$HERE/build-guest.sh" --layer "$layer" "$@" >&2 || die "$name: building the layer $layer failed"
    fi
    [ -f "$layer" ] || die "$name: no layer $layer (run scripts/vm/build-guest.sh --layer $layer $*)"
    echo "$layer"
}

# The initramfs for one scenario: the base image with a second archive appended (the kernel
# unpacks both, the later one on top) holding /test.sh, the helpers and the settings; for a
# scenario with `# vm-tools:` or `# vm-modules:`, its extra layer goes between the two. The
# settings (/etc/vmtest.conf): the scenario's name, the watchdog, the guests' names of a
# two-guest scenario, and every PERF_* variable of this environment.
make_initrd() {
    local file=$1 name=$2 guest_timeout=$3 layer=${4:-} guests=${5:-} overlay=$RUN_DIR/overlay
    local variable
    mkdir -p "$overlay/lib/vmtest" "$overlay/etc"
    install -m 755 "$file" "$overlay/test.sh"
    install -m 644 "$HERE/guest-lib.sh" "$overlay/lib/vmtest/lib.sh"
    {
        printf 'SCENARIO=%q\nGUEST_TIMEOUT=%q\nVM_GUESTS=%q\n' "$name" "$guest_timeout" "$guests"
        while read -r variable; do
            printf '%s=%q\n' "$variable" "${!variable}"
        done < <(compgen -e | grep -E '^PERF_[A-Za-z0-9_]+$' || true)
    } >"$overlay/etc/vmtest.conf"
    (cd "$overlay" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
        >"$RUN_DIR/overlay.cpio"
    cat "$VM_DIR/guest/base.cpio" ${layer:+"$layer"} "$RUN_DIR/overlay.cpio" >"$RUN_DIR/initrd.cpio"
}

# start_guest LABEL TIMEOUT SMP APPEND QEMU-ARG...: boots one guest in the background; its
# console goes to $RUN_DIR/LABEL.console.log, its second serial port (RESULT lines) to
# $RUN_DIR/LABEL.results.txt. Adds the pid to QEMU_PIDS.
start_guest() {
    local label=$1 host_timeout=$2 smp=$3 append=$4
    shift 4
    : >"$RUN_DIR/$label.console.log"
    : >"$RUN_DIR/$label.results.txt"
    timeout --kill-after=10 "$host_timeout" qemu-system-x86_64 "${QEMU_ARGS[@]}" -smp "$smp" \
        -kernel "$VM_DIR/kernel/vmlinuz" -initrd "$RUN_DIR/initrd.cpio" \
        -append "$KERNEL_ARGS${append:+ $append}" \
        -chardev "file,id=console,path=$RUN_DIR/$label.console.log" -serial chardev:console \
        -chardev "file,id=results,path=$RUN_DIR/$label.results.txt" -serial chardev:results \
        "$@" </dev/null >"$RUN_DIR/$label.qemu.log" 2>&1 &
    QEMU_PIDS+=("$!")
}

# passed LABEL NAME: the guest printed its PASS line and no FAIL line.
passed() {
    grep -qx "RESULT PASS $2" <(tr -d '\r' <"$RUN_DIR/$1.results.txt") \
        && ! grep -q '^RESULT FAIL' <(tr -d '\r' <"$RUN_DIR/$1.results.txt")
}

# run_scenario FILE: boots the scenario's guest (or guests); returns 0 if the scenario passed.
run_scenario() {
    local file=$1 name guest_timeout disk_size host_timeout started elapsed smp verbatim
    local layer="" items label
    local -a guests labels
    name=$(basename "$file" .sh)
    guest_timeout=$(header "$file" vm-timeout 300)
    disk_size=$(header "$file" vm-disk-size 256M)
    smp=$(header "$file" vm-smp 2)
    verbatim=$(header "$file" vm-report prefixed)
    read -r -a guests <<<"$(header_words "$file" vm-guests)"
    case ${#guests[@]} in
        0) labels=(guest) ;;
        2) labels=("${guests[@]}") ;;
        *) die "$name: vm-guests names two guests (one link joins exactly two), not ${#guests[@]}" ;;
    esac
    host_timeout=$((guest_timeout + HOST_SLACK))
    items=$(layer_items "$file")
    if [ -n "${items// /}" ]; then
        # shellcheck disable=SC2086 # the items are words
        layer=$(prepare_layer "$name" $items) || exit 2 # prepare_layer said why
    fi

    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tandem-vm.$name.XXXXXX")
    make_initrd "$file" "$name" "$guest_timeout" "$layer" "${guests[*]}"
    mkdir -p "$VM_DIR/logs"
    rm -f "$VM_DIR/logs/$name.json"

    log "$name: booting ${#labels[@]} guest(s) of $smp vCPUs (guest watchdog ${guest_timeout}s, qemu killed after ${host_timeout}s)"
    if [ "${TANDEM_VM_VERBOSE:-0}" = 1 ]; then
        local -a consoles=()
        for label in "${labels[@]}"; do
            : >"$RUN_DIR/$label.console.log"
            consoles+=("$RUN_DIR/$label.console.log")
        done
        tail -n +1 -F "${consoles[@]}" 2>/dev/null &
        TAIL_PID=$!
    fi
    started=$SECONDS
    # The console goes to a file (printed on failure); ttyS1 carries only the RESULT lines.
    if [ "${#guests[@]}" = 0 ]; then
        truncate -s "$disk_size" "$RUN_DIR/disk-alpha.img" "$RUN_DIR/disk-beta.img"
        start_guest guest "$host_timeout" "$smp" "" \
            -drive "file=$RUN_DIR/disk-alpha.img,format=raw,if=virtio,cache=unsafe" \
            -drive "file=$RUN_DIR/disk-beta.img,format=raw,if=virtio,cache=unsafe"
    else
        # The link: the first guest's qemu listens on a unix socket, the second's connects once
        # the socket exists. Each guest has one disk of its own.
        local socket=$RUN_DIR/link.sock index=0 tries=0
        local -a link
        for label in "${labels[@]}"; do
            index=$((index + 1))
            truncate -s "$disk_size" "$RUN_DIR/disk-$label.img"
            if [ "$index" = 1 ]; then
                link=("-netdev" "stream,id=link,server=on,addr.type=unix,addr.path=$socket")
            else
                until [ -S "$socket" ]; do
                    tries=$((tries + 1))
                    alive "${QEMU_PIDS[0]}" || break
                    [ "$tries" -le 300 ] || break
                    sleep 0.1
                done
                [ -S "$socket" ] || {
                    cat "$RUN_DIR/${labels[0]}.qemu.log" >&2
                    die "$name: the ${labels[0]} guest's qemu made no link socket in 30 s"
                }
                link=("-netdev" "stream,id=link,server=off,addr.type=unix,addr.path=$socket")
            fi
            start_guest "$label" "$host_timeout" "$smp" "vmtest.guest=$label" \
                -drive "file=$RUN_DIR/disk-$label.img,format=raw,if=virtio,cache=unsafe" \
                "${link[@]}" -device "virtio-net-pci,netdev=link,mac=52:54:00:12:34:0$index"
        done
    fi

    # Wait for every guest; once one ends without its PASS line, the others are stopped (they
    # would only wait for it until their watchdog).
    local -A status=()
    local pid done_pid code i
    local -a pending=("${QEMU_PIDS[@]}")
    while [ "${#pending[@]}" -gt 0 ]; do
        code=0
        wait -n -p done_pid "${pending[@]}" || code=$?
        [ -n "${done_pid:-}" ] || break
        for i in "${!QEMU_PIDS[@]}"; do
            [ "${QEMU_PIDS[$i]}" = "$done_pid" ] || continue
            status[${labels[$i]}]=$code
            if ! passed "${labels[$i]}" "$name"; then
                for pid in "${pending[@]}"; do
                    [ "$pid" = "$done_pid" ] || kill -TERM "$pid" 2>/dev/null || true
                done
            fi
        done
        local -a still=()
        for pid in "${pending[@]}"; do [ "$pid" = "$done_pid" ] || still+=("$pid"); done
        pending=("${still[@]}")
        done_pid=""
    done
    QEMU_PIDS=()
    elapsed=$((SECONDS - started))
    if alive "$TAIL_PID"; then
        sleep 0.5 # let tail print the last lines
        kill "$TAIL_PID" 2>/dev/null || true
        wait "$TAIL_PID" 2>/dev/null || true
        TAIL_PID=""
    fi

    local results first_fail="" outcome=0 report log_name reason=""
    : >"$VM_DIR/logs/$name.results.txt"
    for label in "${labels[@]}"; do
        if [ "${#guests[@]}" = 0 ]; then log_name=$name; else log_name=$name.$label; fi
        tr -d '\r' <"$RUN_DIR/$label.console.log" >"$VM_DIR/logs/$log_name.console.log"
        results=$(tr -d '\r' <"$RUN_DIR/$label.results.txt")
        [ "${#guests[@]}" = 0 ] || printf '# guest %s\n' "$label" >>"$VM_DIR/logs/$name.results.txt"
        printf '%s\n' "$results" >>"$VM_DIR/logs/$name.results.txt"
        printf '%s\n' "$results" | sed -n 's/^JSON //p' | tail -n 1 | grep . >"$VM_DIR/logs/$name.json.new" || true
        if [ -s "$VM_DIR/logs/$name.json.new" ]; then
            mv "$VM_DIR/logs/$name.json.new" "$VM_DIR/logs/$name.json"
        else
            rm -f "$VM_DIR/logs/$name.json.new"
        fi
        report=$(printf '%s\n' "$results" | grep -v -e '^RESULT ' -e '^JSON ' || true)
        if [ -n "${report//$'\n'/}" ]; then
            if [ "$verbatim" = verbatim ]; then
                printf '%s\n' "$report" # blank lines included: a markdown table needs them
            else
                printf '%s\n' "$report" | grep -v '^$' | sed "s/^/vm: $name: /"
            fi
        fi
        if ! passed "$label" "$name"; then
            outcome=1
            first_fail=$(printf '%s\n' "$results" | grep -m 1 '^RESULT FAIL' || true)
            if [ -n "$first_fail" ]; then
                reason=${reason:-${first_fail#RESULT FAIL }${guests[0]:+ (guest $label)}}
            fi
        fi
    done
    if [ "$outcome" = 0 ]; then
        log "$name: PASS in ${elapsed}s"
    else
        if [ -z "$reason" ]; then
            for label in "${labels[@]}"; do
                passed "$label" "$name" && continue
                case ${status[$label]:-} in
                    124 | 137) reason="no result${guests[0]:+ from $label}: qemu killed after ${host_timeout}s" ;;
                    *) reason="no result from the guest${guests[0]:+ $label} (qemu exit status ${status[$label]:-unknown})" ;;
                esac
                break
            done
        fi
        for label in "${labels[@]}"; do
            if [ "${#guests[@]}" = 0 ]; then log_name=$name; else log_name=$name.$label; fi
            if [ "${TANDEM_VM_VERBOSE:-0}" != 1 ]; then
                printf '\n----- guest console (%s)\n' "$log_name"
                cat "$VM_DIR/logs/$log_name.console.log"
                printf '\n----- end of guest console\n'
            fi
            if [ -s "$RUN_DIR/$label.qemu.log" ]; then
                printf '\n----- qemu (%s)\n' "$log_name"
                cat "$RUN_DIR/$label.qemu.log"
            fi
        done
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
