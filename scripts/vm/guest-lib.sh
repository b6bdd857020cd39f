# shellcheck shell=bash
# Helpers for the scenarios, inside the guest (bash). run.sh puts this file at
# /lib/vmtest/lib.sh and the scenario at /test.sh; the guest's /init runs the scenario under a
# watchdog and powers off when it exits.
#
# A scenario ends with `pass`, or with `fail REASON`; both write one RESULT line to the console
# and to the second serial port, which the host reads. Any command that fails unexpectedly
# fails the scenario with the command and its line, and every wait is bounded: on a timeout the
# reason says what was waited for.
#
# The cluster: two tandem daemons in this guest, alpha on 127.0.0.1 over /dev/vda and beta on
# 127.0.0.2 over /dev/vdb (the two scratch disks run.sh attaches), one volume r0.

set -euo pipefail
set -o errtrace

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SCENARIO=${SCENARIO:-$(basename "$0" .sh)}

VOLUME=r0
WORK=/tmp/tandem
CONF=$WORK/tandem.toml
REPL_PORT=7789
NBD_PORT=10809
NODES=(alpha beta)
declare -A ADDRESS=([alpha]=127.0.0.1 [beta]=127.0.0.2)
declare -A BACKING=([alpha]=/dev/vda [beta]=/dev/vdb)
declare -A DAEMON_PID=()

STEP=starting

# ---------------------------------------------------------------------------------------------
# Output and results

uptime_s() { cut -d' ' -f1 /proc/uptime; }

step() {
    STEP=$*
    echo "$STEP" >/run/vmtest-step
    printf '\n==> [%7s s] %s\n' "$(uptime_s)" "$*"
}

info() { printf '    %s\n' "$*"; }

# One line to the console, to the host (second serial port), and to the file /init checks.
report() {
    echo "$1"
    echo "$1" >>/run/vmtest-result
    echo "$1" >/dev/ttyS1
}

pass() {
    report "RESULT PASS $SCENARIO"
    exit 0
}

# What the console shows after a failure: enough to find the cause without a rerun.
diagnostics() {
    local node pid
    set +e
    for node in "${NODES[@]}"; do
        if [ -s "$WORK/$node/daemon.log" ]; then
            printf '\n--- last lines of the %s daemon log\n' "$node"
            tail -n 40 "$WORK/$node/daemon.log"
        fi
        pid=${DAEMON_PID[$node]:-}
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            printf '\n--- tandem --node %s status\n' "$node"
            timeout 5 tandem --config "$CONF" --node "$node" status 2>&1
        fi
    done
    printf '\n--- kernel log (last 40 lines)\n'
    dmesg | tail -n 40
    printf '\n--- mounts\n'
    grep -E 'nbd|ublk|/mnt' /proc/mounts
}

# Only the first failure is reported: a failure inside $(...) ends that subshell, and then the
# command around it fails too.
fail() {
    trap - ERR
    set +e
    if [ ! -s /run/vmtest-result ]; then
        report "RESULT FAIL $SCENARIO: $* (step: $STEP)"
        diagnostics
    fi
    exit 1
}

trap 'fail "\`$BASH_COMMAND\` failed with status $? (${BASH_SOURCE[0]##*/} line $LINENO)"' ERR

# ---------------------------------------------------------------------------------------------
# Running and waiting

# run CMD...: shows the command, runs it with its output indented; a failure fails the
# scenario with the command's last line of output as the reason.
run() {
    local output status=0
    printf '    $ %s\n' "$*"
    output=$("$@" 2>&1) || status=$?
    [ -z "$output" ] || printf '%s\n' "$output" | sed 's/^/      /'
    if [ "$status" != 0 ]; then
        [ "$status" != 124 ] || fail "\`$*\` did not finish in time"
        fail "\`$*\` failed with status $status: $(printf '%s\n' "$output" | tail -n 1)"
    fi
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds; fails the
# scenario after SECONDS (and at most 5 tries a second, should the command itself be slow).
wait_for() {
    local seconds=$1 what=$2 tries=0
    shift 2
    local deadline=$((SECONDS + seconds)) max_tries=$((seconds * 5 + 1))
    until "$@"; do
        tries=$((tries + 1))
        if ((SECONDS >= deadline || tries >= max_tries)); then
            fail "timed out after ${seconds}s ($tries tries) waiting for $what"
        fi
        sleep 0.2
    done
}

# wait_pid SECONDS WHAT PID: waits until PID exits; returns its exit status.
wait_pid() {
    local seconds=$1 what=$2 pid=$3 status=0
    wait_for "$seconds" "$what" pid_gone "$pid"
    wait "$pid" 2>/dev/null || status=$?
    return "$status"
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

load_module() {
    local module=$1
    grep -q "^$module " /proc/modules && return 0
    run insmod "/lib/modules/vmtest/$module.ko"
}

# ---------------------------------------------------------------------------------------------
# The two tandem nodes

# `tandem --node NODE ARGS...`; a daemon that stopped answering cannot hang the scenario.
tandem_on() {
    local node=$1
    shift
    timeout 60 tandem --config "$CONF" --node "$node" "$@"
}

# setup_cluster FRONTEND [EXTRA-VOLUME-LINE...]: key, configuration, metadata on both disks.
setup_cluster() {
    local node
    for node in "${NODES[@]}"; do
        [ -b "${BACKING[$node]}" ] || fail "no ${BACKING[$node]} for $node (run.sh attaches two disks)"
    done
    write_config "$@"
    for node in "${NODES[@]}"; do
        run tandem_on "$node" create-md "$VOLUME"
    done
}

# write_config FRONTEND [EXTRA-VOLUME-LINE...]: the cluster key and the configuration, each
# node over ${BACKING[node]}; checked with `tandem config check`.
write_config() {
    local frontend=$1 node
    shift
    mkdir -p "$WORK"
    for node in "${NODES[@]}"; do
        mkdir -p "$WORK/$node/state"
    done
    # 127.0.0.0/8 is local once lo is up; the explicit address makes beta's visible in `ip addr`.
    ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
    tandem keygen >"$WORK/cluster.key"
    chmod 600 "$WORK/cluster.key"
    {
        cat <<EOF
[cluster]
name = "vmtest"
key_file = "$WORK/cluster.key"

[[node]]
name = "alpha"
address = "${ADDRESS[alpha]}"
state_dir = "$WORK/alpha/state"

[[node]]
name = "beta"
address = "${ADDRESS[beta]}"
state_dir = "$WORK/beta/state"

[[volume]]
name = "$VOLUME"
port = $REPL_PORT
protocol = "C"
compression = "lz4"
frontend = "$frontend"
EOF
        [ "$frontend" != nbd ] || echo "nbd_port = $NBD_PORT"
        local line
        for line in "$@"; do
            echo "$line"
        done
        cat <<EOF
[volume.backing]
alpha = "${BACKING[alpha]}"
beta = "${BACKING[beta]}"
EOF
    } >"$CONF"
    sed 's/^/      /' "$CONF"
    run tandem --config "$CONF" config check
}

# synced_pair FRONTEND [EXTRA-VOLUME-LINE...]: the cluster configured, both daemons running,
# alpha primary (forced: fresh metadata) and fully synced to beta; sets DATA_BYTES.
synced_pair() {
    step "configuration (frontend $1), cluster key and metadata"
    setup_cluster "$@"
    step "starting both daemons"
    start_daemon alpha
    start_daemon beta
    tandem_wait alpha connected 60
    step "alpha primary (forced: fresh metadata), full sync to beta"
    run tandem_on alpha volume primary "$VOLUME" --force
    local started=$SECONDS
    tandem_wait alpha synced 300
    info "full sync done in $((SECONDS - started)) s"
    # shellcheck disable=SC2034 # read by the scenarios
    DATA_BYTES=$(volume_field alpha size_bytes)
}

daemon_answers() {
    local node=$1 pid=${DAEMON_PID[$1]}
    if pid_gone "$pid"; then
        fail "the $node daemon exited during start-up: $(tail -n 1 "$WORK/$node/daemon.log")"
    fi
    timeout 5 tandem --config "$CONF" --node "$node" status >/dev/null 2>&1
}

# Starts NODE's daemon in the background; a restart after a kill is this same command line.
start_daemon() {
    local node=$1
    info "\$ tandem --config $CONF --node $node daemon >>$WORK/$node/daemon.log 2>&1 &"
    tandem --config "$CONF" --node "$node" daemon >>"$WORK/$node/daemon.log" 2>&1 </dev/null &
    DAEMON_PID[$node]=$!
    wait_for 30 "the $node daemon's admin socket" daemon_answers "$node"
    info "$node daemon: pid ${DAEMON_PID[$node]}"
}

# SIGTERM closes every volume cleanly; the daemon must exit 0 and say so.
stop_daemon() {
    local node=$1 pid=${DAEMON_PID[$1]} status=0
    kill -TERM "$pid"
    wait_pid 60 "the $node daemon (pid $pid) to exit after SIGTERM" "$pid" || status=$?
    unset "DAEMON_PID[$node]"
    [ "$status" = 0 ] || fail "the $node daemon exited with status $status after SIGTERM"
    grep -q "closed cleanly" "$WORK/$node/daemon.log" \
        || fail "the $node daemon's log does not say that $VOLUME closed cleanly"
    info "$node daemon exited 0; $VOLUME closed cleanly"
}

kill_daemon() {
    local node=$1 pid=${DAEMON_PID[$1]}
    kill -KILL "$pid"
    wait_pid 30 "the $node daemon (pid $pid) to die after SIGKILL" "$pid" || true
    unset "DAEMON_PID[$node]"
    info "$node daemon (pid $pid) killed"
}

# tandem_wait NODE CONDITION SECONDS: `tandem volume wait`, bounded inside and outside.
tandem_wait() {
    local node=$1 condition=$2 seconds=$3 output status=0
    info "\$ tandem --node $node volume wait $VOLUME $condition --timeout $seconds"
    output=$(timeout $((seconds + 30)) tandem --config "$CONF" --node "$node" \
        volume wait "$VOLUME" "$condition" --timeout "$seconds" 2>&1) || status=$?
    case $status in
        0) ;;
        124) fail "\`tandem volume wait $condition\` on $node did not return in $((seconds + 30))s" ;;
        *) fail "waiting for $VOLUME to be $condition on $node: $(printf '%s\n' "$output" | tail -n 1)" ;;
    esac
}

# volume_field NODE FIELD: one scalar field of the volume in `tandem status --json` (strings
# unquoted, null as "null"). The report holds one volume, and the fields read here are unique
# names in it.
volume_field() {
    local node=$1 field=$2 json
    json=$(tandem_on "$node" status --json) || fail "tandem --node $node status --json failed"
    printf '%s\n' "$json" | sed -n "s/^ *\"$field\": \(.*\)$/\1/p" | head -n 1 \
        | sed 's/,$//; s/^"\(.*\)"$/\1/; s/\\"/"/g'
}

# ---------------------------------------------------------------------------------------------
# The ublk frontend

# ublk_device NODE [SECONDS]: waits until NODE's status shows its /dev/ublkbN and that block
# device exists, then prints it. A frontend error in the status fails at once, with its text.
ublk_device() {
    local node=$1 seconds=${2:-60} device error tries=0
    local deadline=$((SECONDS + seconds)) max_tries=$((seconds * 5 + 1))
    while :; do
        device=$(volume_field "$node" device)
        case $device in
            /dev/ublkb*) if [ -b "$device" ]; then
                echo "$device"
                return 0
            fi ;;
        esac
        error=$(volume_field "$node" frontend_error)
        if [ -n "$error" ] && [ "$error" != null ]; then
            fail "no ublk device on $node: $error"
        fi
        tries=$((tries + 1))
        if ((SECONDS >= deadline || tries >= max_tries)); then
            fail "timed out after ${seconds}s waiting for $node's status to show a /dev/ublkbN that exists (device: $device)"
        fi
        sleep 0.2
    done
}

# shellcheck disable=SC2317 # called through wait_for
shows_device() { [ "$(volume_field "$1" device)" = "$2" ]; }

# shellcheck disable=SC2317 # called through wait_for
shows_no_device() { [ "$(volume_field "$1" device)" = null ]; }

load_ublk() {
    load_module ublk_drv
    wait_for 10 "/dev/ublk-control after insmod ublk_drv" test -c /dev/ublk-control
}

# ---------------------------------------------------------------------------------------------
# Files with checksums

# write_files DIR SUMS: a mix of sizes from /dev/urandom, synced; SUMS lists their checksums
# (paths relative to DIR).
write_files() {
    local dir=$1 sums=$2 i size
    mkdir -p "$dir/small" "$dir/docs"
    # busybox's head takes no size suffixes
    head -c $((16 << 20)) /dev/urandom >"$dir/random-16MiB.bin"
    head -c $((1 << 20)) /dev/urandom >"$dir/random-1MiB.bin"
    for i in $(seq 1 48); do
        size=$(((i * 7919) % 131072 + 1))
        head -c "$size" /dev/urandom >"$dir/small/file-$i.bin"
    done
    printf 'written by %s at uptime %s\n' "$SCENARIO" "$(uptime_s)" >"$dir/docs/hello.txt"
    # syncfs reports a write that failed anywhere below; a plain sync(2) does not.
    sync -f "$dir"
    (cd "$dir" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) >"$sums"
    info "$(wc -l <"$sums") files written, $(du -sh "$dir" | cut -f1) on $dir"
}

verify_files() {
    local dir=$1 sums=$2 output
    output=$(cd "$dir" && sha256sum -c "$sums" 2>&1) \
        || fail "checksums differ on $dir: $(printf '%s\n' "$output" | grep -v ': OK$' | head -n 3 | tr '\n' ' ')"
    info "$(wc -l <"$sums") files read back, every checksum matches"
}

# fsck_clean DEVICE: e2fsck -fn finds nothing to fix.
fsck_clean() {
    local device=$1 output
    output=$(e2fsck -fn "$device" 2>&1) \
        || fail "e2fsck -fn $device is not clean: $(printf '%s\n' "$output" | tail -n 3 | tr '\n' ' ')"
    info "e2fsck -fn $device: clean ($(printf '%s\n' "$output" | tail -n 1))"
}

# No block-layer or ext4 error in the kernel log: a write that failed during writeback reaches
# no process, only the log.
kernel_log_clean() {
    local errors
    errors=$(dmesg | grep -E 'I/O error|EXT4-fs (error|warning)|Aborting journal|Remounting filesystem read-only' || true)
    [ -z "$errors" ] || fail "the kernel logged: $(printf '%s\n' "$errors" | head -n 2 | tr '\n' ' ')"
    info "kernel log: no I/O or ext4 error"
}

# ---------------------------------------------------------------------------------------------
# Comparing the nodes

# An online verify on the primary: it must compare the whole volume and find nothing.
verify_online() {
    local node=$1 output state mismatched
    info "\$ tandem --node $node volume verify $VOLUME --json"
    output=$(timeout 300 tandem --config "$CONF" --node "$node" volume verify "$VOLUME" --json 2>&1) \
        || fail "tandem volume verify on $node failed: $(printf '%s\n' "$output" | tail -n 1)"
    state=$(printf '%s\n' "$output" | sed -n 's/^ *"state": "\(.*\)",\{0,1\}$/\1/p')
    mismatched=$(printf '%s\n' "$output" | sed -n 's/^ *"mismatched_bytes": \([0-9]*\),\{0,1\}$/\1/p')
    [ "$state" = finished ] || fail "the verify on $node ended $state, not finished"
    [ "$mismatched" = 0 ] || fail "the verify on $node found $mismatched bytes that differ"
    info "verify: finished, 0 bytes differ"
}

# With both daemons stopped: the data areas of the two backing stores are byte-identical.
compare_backing_stores() {
    local size=$1
    cmp -n "$size" "${BACKING[alpha]}" "${BACKING[beta]}" >/dev/null 2>&1 \
        || fail "the data areas of ${BACKING[alpha]} and ${BACKING[beta]} differ: $(cmp -n "$size" "${BACKING[alpha]}" "${BACKING[beta]}" 2>&1 | head -n 1)"
    info "the first $size bytes of ${BACKING[alpha]} and ${BACKING[beta]} are identical"
}
