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
# 127.0.0.2 over /dev/vdb (the two scratch disks run.sh attaches), one volume r0. A scenario
# with two guests (`# vm-guests: alpha beta`) runs in both, each guest knowing its name
# (GUEST) and its peer (PEER); see "Two guests" below.

set -euo pipefail
set -o errtrace

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# run.sh's settings: SCENARIO, GUEST_TIMEOUT, VM_GUESTS (the guests' names, empty with one
# guest) and the host's PERF_* variables.
# shellcheck disable=SC1091 # made by run.sh
[ ! -f /etc/vmtest.conf ] || . /etc/vmtest.conf
SCENARIO=${SCENARIO:-$(basename "$0" .sh)}
VM_GUESTS=${VM_GUESTS:-}
# This guest's name in a two-guest scenario (vmtest.guest=NAME on the kernel command line), and
# the other guest's.
GUEST=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^vmtest\.guest=//p' | head -n 1)
PEER=""
if [ -n "$GUEST" ]; then
    for name in $VM_GUESTS; do [ "$name" = "$GUEST" ] || PEER=$name; done
    unset name
fi

VOLUME=r0
WORK=/tmp/tandem
CONF=$WORK/tandem.toml
REPL_PORT=7789
NBD_PORT=10809
NODES=(alpha beta)
declare -A ADDRESS=([alpha]=127.0.0.1 [beta]=127.0.0.2)
declare -A BACKING=([alpha]=/dev/vda [beta]=/dev/vdb)
declare -A DAEMON_PID=()
COMPRESSION=lz4

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
    # A scenario may add its own (drbd-perf: /proc/drbd).
    if declare -F scenario_diagnostics >/dev/null; then
        scenario_diagnostics
    fi
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

# load_module NAME: insmod NAME and, first, the modules it needs (NAME.deps, in load order,
# written by build-guest.sh), each once.
load_module() {
    local module=${1//-/_} dep
    local -a deps=()
    grep -q "^$module " /proc/modules && return 0
    if [ -s "/lib/modules/vmtest/$module.deps" ]; then
        read -r -a deps <"/lib/modules/vmtest/$module.deps"
        for dep in "${deps[@]}"; do
            load_module "$dep"
        done
    fi
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

# write_config FRONTEND [EXTRA-VOLUME-LINE...]: the cluster key (unless $WORK/cluster.key is
# there already: the other guest's, in a two-guest scenario) and the configuration, each node
# at ${ADDRESS[node]} over ${BACKING[node]}, the link compressed with $COMPRESSION; checked
# with `tandem config check`.
write_config() {
    local frontend=$1 node
    shift
    mkdir -p "$WORK"
    for node in "${NODES[@]}"; do
        mkdir -p "$WORK/$node/state"
    done
    # 127.0.0.0/8 is local once lo is up; the explicit address makes beta's visible in `ip addr`.
    ip addr add 127.0.0.2/8 dev lo 2>/dev/null || true
    [ -s "$WORK/cluster.key" ] || tandem keygen >"$WORK/cluster.key"
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
compression = "$COMPRESSION"
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

# ---------------------------------------------------------------------------------------------
# fio's numbers and CPU counters (the measurements)

# promote_for_measurement FIRST: alpha primary for a measurement. FIRST=yes (fresh metadata):
# forced; otherwise a plain promotion, forced if refused (a measurement, not a test of
# promotions).
promote_for_measurement() {
    local refusal
    if [ "$1" = yes ]; then
        run tandem_on alpha volume primary "$VOLUME" --force
    elif refusal=$(tandem_on alpha volume primary "$VOLUME" 2>&1); then
        info "\$ tandem_on alpha volume primary $VOLUME: done"
    else
        info "plain promotion refused ($refusal): forcing it"
        run tandem_on alpha volume primary "$VOLUME" --force
    fi
}

# fio_result NAME DEVICE ID STATUS: checks fio's exit STATUS and its report $OUT/ID.json
# (flattened to $OUT/ID.flat) and fails the scenario on any problem; else sets FIO_IO_BYTES,
# FIO_BW (bytes/s), FIO_IOPS, FIO_P50 and FIO_P99 (ns) of the job's writes.
fio_result() {
    local name=$1 device=$2 id=$3 status=$4 error value
    local json=$OUT/$3.json flat=$OUT/$3.flat
    if [ "$status" != 0 ]; then
        sed 's/^/      /' "$OUT/$id.stderr"
        [ "$status" != 124 ] || fail "fio $name on $device did not finish in $((RAMP + RUNTIME + 90))s"
        fail "fio $name on $device failed with status $status: $(tail -n 1 "$OUT/$id.stderr")"
    fi
    json_flatten <"$json" >"$flat"
    error=$(job_value "$flat" error)
    FIO_IO_BYTES=$(job_value "$flat" write.io_bytes)
    FIO_BW=$(job_value "$flat" write.bw_bytes)
    FIO_IOPS=$(job_value "$flat" write.iops)
    FIO_P50=$(job_value "$flat" write.clat_ns.percentile.50.000000)
    FIO_P99=$(job_value "$flat" write.clat_ns.percentile.99.000000)
    [ "$error" = 0 ] || fail "fio $name on $device reports error ${error:-(none found in its JSON)}"
    for value in "$FIO_IO_BYTES" "$FIO_BW" "$FIO_IOPS" "$FIO_P50" "$FIO_P99"; do
        is_number "$value" || fail "fio $name on $device: cannot read its JSON (got '$value'; see $json)"
    done
    [ "$FIO_IO_BYTES" -gt 0 ] || fail "fio $name on $device wrote nothing"
}

# fio_job_args DEVICE NAME RW BS DEPTH JSON: the arguments of one measured fio job into the
# array FIO_ARGS: libaio with O_DIRECT over the first $SPAN bytes of DEVICE, $RAMP seconds of
# ramp then $RUNTIME counted, its JSON report to JSON.
fio_job_args() {
    # shellcheck disable=SC2034 # the scenarios run fio "${FIO_ARGS[@]}"
    FIO_ARGS=(
        --name="$2" --filename="$1" --ioengine=libaio --direct=1
        --rw="$3" --bs="$4" --iodepth="$5" --numjobs=1
        --offset=0 --size="$SPAN" --norandommap --randrepeat=1
        --time_based --ramp_time="$RAMP" --runtime="$RUNTIME"
        --clocksource=clock_gettime --output-format=json --output="$6"
    )
}

# json_flatten: fio's pretty-printed JSON (one member a line) as PATH=VALUE lines, with `#` for
# an anonymous object: `#.jobs.#.write.iops=123.4`. Enough for fio's output, not for any JSON.
json_flatten() {
    awk '
    function path(   i, p) { p = ""; for (i = 1; i <= depth; i++) p = p stack[i] "."; return p }
    {
        line = $0
        sub(/^[ \t]+/, "", line); sub(/[ \t\r]+$/, "", line)
        if (line ~ /^[]}],?$/) { if (depth > 0) depth--; next }
        if (line == "{" || line == "[") { stack[++depth] = "#"; next }
        if (match(line, /^"[^"]*" *: */)) {
            key = substr(line, 2, index(substr(line, 2), "\"") - 1)
            value = substr(line, RSTART + RLENGTH)
            sub(/,$/, "", value)
            if (value == "{" || value == "[") { stack[++depth] = key; next }
            gsub(/^"|"$/, "", value)
            print path() key "=" value
        }
    }'
}

# job_value FLAT KEY: the value of the (only) job's KEY, e.g. write.iops.
job_value() {
    sed -n "s/^#\\.jobs\\.#\\.$2=//p" "$1" | head -n 1
}

is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

# Busy and total CPU ticks of the guest, all CPUs (/proc/stat: idle and iowait are not busy).
cpu_ticks() { awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }

# Writes the block device completed (/sys/block/NAME/stat).
device_writes() { awk '{ print $5 }' "/sys/block/$(basename "$1")/stat"; }

# Sectors (512 bytes) written to the block device (/sys/block/NAME/stat).
device_sectors_written() { awk '{ print $7 }' "/sys/block/$(basename "$1")/stat"; }

# ---------------------------------------------------------------------------------------------
# Two guests
#
# run.sh joins the two guests of a `# vm-guests: A B` scenario by one virtio-net link. guest_up
# gives the i-th guest of VM_GUESTS the address 10.99.0.i on eth0 and serves the guest's
# /run/peer over HTTP (busybox httpd, port 8000, on the link only): a file there is a signal
# the other guest can wait for, or a small file it can fetch (a key); /cgi-bin/counters
# answers with the guest's CPU and disk counters at that moment (peer_counters). Every wait is
# bounded.

PEER_PORT=8000
PEER_DIR=/run/peer

# guest_address NAME: the link address of guest NAME.
guest_address() {
    local name index=0
    for name in $VM_GUESTS; do
        index=$((index + 1))
        [ "$name" != "$1" ] || {
            echo "10.99.0.$index"
            return 0
        }
    done
    fail "no guest $1 in VM_GUESTS ($VM_GUESTS)"
}

# shellcheck disable=SC2317 # called through wait_for
peer_pings() { ping -c 1 -W 1 "$(guest_address "$PEER")" >/dev/null 2>&1; }

# guest_up: the link up with this guest's address, the hostname set to the guest's name, the
# signal directory served, and the peer reachable.
guest_up() {
    if [ -z "$GUEST" ] || [ -z "$PEER" ]; then
        fail "guest_up: not a two-guest scenario (vmtest.guest=$GUEST, VM_GUESTS=$VM_GUESTS)"
    fi
    load_module virtio_net
    wait_for 10 "eth0 after insmod virtio_net" test -e /sys/class/net/eth0
    run hostname "$GUEST"
    run ip addr add "$(guest_address "$GUEST")/24" dev eth0
    run ip link set eth0 up
    mkdir -p "$PEER_DIR/cgi-bin"
    cat >"$PEER_DIR/cgi-bin/counters" <<'EOF'
#!/bin/sh
# This guest's counters now: `cpu BUSY TOTAL` (ticks, all CPUs; idle and iowait are not busy)
# and, for each virtio disk, `NAME SECTORS-WRITTEN`.
export PATH=/usr/bin:/bin
printf 'Content-Type: text/plain\r\n\r\n'
awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print "cpu", t - $5 - $6, t; exit }' /proc/stat
for disk in /sys/block/vd*; do
    [ -e "$disk/stat" ] && printf '%s %s\n' "${disk##*/}" "$(awk '{ print $7 }' "$disk/stat")"
done
EOF
    chmod 755 "$PEER_DIR/cgi-bin/counters"
    # It runs until the guest powers off.
    httpd -f -p "$(guest_address "$GUEST"):$PEER_PORT" -h "$PEER_DIR" &
    wait_for 60 "the peer guest $PEER ($(guest_address "$PEER")) to answer a ping" peer_pings
    info "$GUEST is $(guest_address "$GUEST"); $PEER answers at $(guest_address "$PEER")"
}

# signal NAME [FILE]: tells the peer NAME (with FILE's content, if given).
signal() {
    if [ -n "${2:-}" ]; then
        cp "$2" "$PEER_DIR/$1.new"
    else
        echo "$GUEST" >"$PEER_DIR/$1.new"
    fi
    mv "$PEER_DIR/$1.new" "$PEER_DIR/$1"
}

# peer_has NAME DEST: the peer has signalled NAME; its content is in DEST. (busybox wget's own
# -T timeout crashes it, in Debian 12's busybox-static: GNU timeout bounds it instead.)
peer_has() { timeout 10 wget -q -O "$2" "http://$(guest_address "$PEER"):$PEER_PORT/$1" 2>/dev/null; }

# wait_peer SECONDS NAME [DEST]: waits until the peer signalled NAME; its content goes to DEST.
# It asks once a second: the peer may be measuring meanwhile, and this guest's CPU counts.
wait_peer() {
    local seconds=$1 what=$2 dest=${3:-/dev/null} tries=0
    local deadline=$((SECONDS + seconds))
    until peer_has "$what" "$dest"; do
        tries=$((tries + 1))
        if ((SECONDS >= deadline || tries > seconds)); then
            fail "timed out after ${seconds}s ($tries tries) waiting for $PEER to signal $what"
        fi
        sleep 1
    done
}

# peer_counters: the peer's counters now (see guest_up), e.g. `cpu 1234 56789` and `vda 2048`.
peer_counters() {
    timeout 10 wget -q -O - "http://$(guest_address "$PEER"):$PEER_PORT/cgi-bin/counters" \
        || fail "cannot read $PEER's counters (http://$(guest_address "$PEER"):$PEER_PORT/cgi-bin/counters)"
}

# barrier SECONDS NAME: signals NAME and waits until the peer did too.
barrier() {
    signal "$2"
    wait_peer "$1" "$2"
}

