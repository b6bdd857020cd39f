#!/bin/bash
# ublk-perf: a measurement, run by hand (`scripts/vm/run.sh ublk-perf`), not part of
# scripts/test.sh. fio on /dev/ublkbN of a local-only volume against the kernel loop device
# (direct I/O) over the same backing file, and the ratio of the two.
#
# The backing store is a 1 GiB file, written once, on ext4 on /dev/vda. Only alpha's daemon
# runs (beta is configured, never started); alpha is forced primary and serves r0 with
# frontend = "ublk" and the default queues and depth. fio (libaio, O_DIRECT) runs each job on
# /dev/ublkbN for a ramp plus a fixed time over the whole data area; then the daemon stops (the
# device goes away), `losetup --direct-io=on --sizelimit DATA_BYTES` puts /dev/loopN over the
# same file's data area, and the same jobs run there. That is done twice, in the order ublk,
# loop, loop, ublk (the daemon started and promoted again for the second ublk pass), so that
# the host getting slower or faster during the run weighs on both devices alike; the table
# shows the mean of the two passes and the ratio of each. Under TCG absolute numbers mean
# little: the ratio ublk/loop is the result (the aim is 0.9). It passes when every job ran
# without an error and its numbers were read; the ratio has no threshold. The table goes to
# the console and to the host (printed by run.sh, kept in target/vm/logs/ublk-perf.results.txt).
#
# vm-timeout: 900
# vm-disk-size: 2G
# vm-tools: fio losetup
# vm-modules: loop
# vm-manual: yes
# shellcheck source-path=SCRIPTDIR source=../guest-lib.sh
. /lib/vmtest/lib.sh

STORE=/mnt/store             # ext4 on /dev/vda
BACKING_FILE=$STORE/r0.img
FILE_MIB=1024
RAMP=5                       # seconds of each job before fio starts counting
RUNTIME=${PERF_RUNTIME:-20}  # seconds counted
AIM=0.9
OUT=/tmp/perf                # fio's JSON output and the parsed numbers
# NAME RW BS IODEPTH
JOBS=(
    "randwrite-4k-qd32 randwrite 4k 32"
    "write-1M-qd8 write 1M 8"
)

# ---------------------------------------------------------------------------------------------
# fio and its numbers (json_flatten, job_value, is_number, cpu_ticks and device_writes are in
# guest-lib.sh)

# user + system ticks of a process (0 if none).
proc_ticks() {
    if [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ]; then
        sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
    else
        echo 0
    fi
}

# journal_state: the journal and dirty-bitmap counters in alpha's status, on one line. With the
# peer away, writes are journaled (memory, then the on-disk ring) until the journal overflows
# and is dropped; the dirty bitmap alone goes on from there.
journal_state() {
    tandem_on alpha status --json 2>/dev/null \
        | grep -E '"(active|records|memory_bytes|ring_used_bytes|out_of_sync_bytes)":' \
        | sed 's/^ *"//; s/": /=/; s/,$//' | paste -sd' ' -
}

# "MINOR-FAULTS CONTEXT-SWITCHES" of a process, all its threads (0 0 if none).
proc_events() {
    if [ -n "${1:-}" ] && [ -d "/proc/$1/task" ]; then
        local faults
        faults=$(sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $8 }')
        printf '%s %s\n' "$faults" "$(cat /proc/"$1"/task/*/status 2>/dev/null \
            | awk '/ctxt_switches:/ { n += $2 } END { print n + 0 }')"
    else
        echo 0 0
    fi
}

# thread_ticks PID: "TID NAME USER SYSTEM" (ticks) for each thread of PID.
thread_ticks() {
    [ -n "${1:-}" ] && [ -d "/proc/$1/task" ] || return 0
    awk '{
        lp = index($0, "("); rp = index($0, ") ")
        name = substr($0, lp + 1, rp - lp - 1); gsub(/ /, "_", name)
        sub(/-?[0-9]+$/, "", name) # a pool: tandem-io-0..31, iou-wrk-NNN
        split(substr($0, rp + 2), f, " ")
        print $1, name, f[12], f[13]
    }' /proc/"$1"/task/*/stat 2>/dev/null || true
}

# busiest_threads BEFORE AFTER SECONDS: the daemon's threads by CPU over the job, summed by
# thread name: "name xN P% (usr U sys S), ..." (in percent of one CPU).
busiest_threads() {
    awk -v s="$3" '
        NR == FNR { u0[$1] = $3; k0[$1] = $4; next }
        { u[$2] += $3 - u0[$1]; k[$2] += $4 - k0[$1]; count[$2]++ }
        END {
            for (n in u) printf "%d %s x%d %.0f%% (usr %.0f sys %.0f)\n", u[n] + k[n], n, count[n],
                (u[n] + k[n]) / s, u[n] / s, k[n] / s
        }' "$1" "$2" \
        | sort -rn | head -n 5 | cut -d' ' -f2- | paste -sd, - | sed 's/,/, /g'
}

# run_job DEVICE KIND SPEC: one fio job of pass $PASS; its numbers go to $OUT/KIND.NAME.PASS.
run_job() {
    local device=$1 kind=$2 name rw bs depth json status=0
    read -r name rw bs depth <<<"$3"
    local id=$kind.$name.$PASS
    json=$OUT/$id.json
    fio_job_args "$device" "$name" "$rw" "$bs" "$depth" "$json"
    info "\$ fio ${FIO_ARGS[*]}"
    sync
    local busy0 total0 busy1 total1 daemon0 daemon1 writes0 writes1 faults0 faults1 switches0 switches1
    writes0=$(device_writes "$device")
    read -r faults0 switches0 < <(proc_events "${DAEMON_PID[alpha]:-}")
    read -r busy0 total0 < <(cpu_ticks)
    daemon0=$(proc_ticks "${DAEMON_PID[alpha]:-}")
    thread_ticks "${DAEMON_PID[alpha]:-}" >"$OUT/$id.threads0"
    [ "$kind" != ublk ] || info "before: $(journal_state)"
    timeout $((RAMP + RUNTIME + 90)) fio "${FIO_ARGS[@]}" >"$OUT/$id.stderr" 2>&1 || status=$?
    read -r busy1 total1 < <(cpu_ticks)
    daemon1=$(proc_ticks "${DAEMON_PID[alpha]:-}")
    read -r faults1 switches1 < <(proc_events "${DAEMON_PID[alpha]:-}")
    writes1=$(device_writes "$device")
    thread_ticks "${DAEMON_PID[alpha]:-}" >"$OUT/$id.threads1"
    if [ "$kind" = ublk ]; then
        journal_state >"$OUT/$id.journal"
        info "after: $(cat "$OUT/$id.journal")"
    fi
    local flat=$OUT/$id.flat io_bytes bw iops p50 p99 usr sys value
    fio_result "$name" "$device" "$id" "$status"
    io_bytes=$FIO_IO_BYTES bw=$FIO_BW iops=$FIO_IOPS p50=$FIO_P50 p99=$FIO_P99
    usr=$(job_value "$flat" usr_cpu)
    sys=$(job_value "$flat" sys_cpu)
    for value in "$usr" "$sys"; do
        is_number "$value" || fail "fio $name on $device: cannot read its CPU use (got '$value'; see $json)"
    done
    # The CPU figures are in percent of one CPU over the whole job (ramp included); CLK_TCK is 100.
    local seconds=$((RAMP + RUNTIME)) guest_cpu daemon_cpu
    guest_cpu=$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v n="$(nproc)" \
        'BEGIN { printf "%.0f", (t > 0 ? 100 * n * b / t : 0) }')
    if [ "$kind" = ublk ]; then
        daemon_cpu=$(awk -v d=$((daemon1 - daemon0)) -v s="$seconds" 'BEGIN { printf "%.0f", d / s }')
        busiest_threads "$OUT/$id.threads0" "$OUT/$id.threads1" "$seconds" \
            >"$OUT/$id.busiest"
    else
        daemon_cpu=-
    fi
    # Per write the device completed over the whole job: guest CPU time (ticks of 10 ms) and,
    # for ublk, the daemon's minor page faults and context switches.
    local writes=$((writes1 - writes0)) cpu_per_io faults_per_io switches_per_io
    [ "$writes" -gt 0 ] || fail "$device completed no writes during fio $name"
    cpu_per_io=$(awk -v b=$((busy1 - busy0)) -v w="$writes" 'BEGIN { printf "%.0f", b * 10000 / w }')
    if [ "$kind" = ublk ]; then
        faults_per_io=$(awk -v f=$((faults1 - faults0)) -v w="$writes" 'BEGIN { printf "%.1f", f / w }')
        switches_per_io=$(awk -v c=$((switches1 - switches0)) -v w="$writes" 'BEGIN { printf "%.1f", c / w }')
    else
        faults_per_io=- switches_per_io=-
    fi
    printf '%s %s %s %s %s %s %s %s %s %s %s %s %s\n' "$bw" "$iops" "$p50" "$p99" "$usr" "$sys" \
        "$guest_cpu" "$daemon_cpu" "$io_bytes" "$writes" "$cpu_per_io" "$faults_per_io" \
        "$switches_per_io" >"$OUT/$id"
    info "$writes writes on $device in the job; guest CPU $cpu_per_io us per write; daemon: $faults_per_io minor faults, $switches_per_io context switches per write"
    [ ! -s "$OUT/$id.busiest" ] || info "daemon threads: $(cat "$OUT/$id.busiest")"
    info "$kind $name: $(awk -v b="$bw" 'BEGIN { printf "%.1f", b / 1048576 }') MiB/s, $iops IOPS, clat p50 $((p50 / 1000)) us, p99 $((p99 / 1000)) us; fio CPU usr $usr% sys $sys%, guest CPU $guest_cpu% (of $(nproc)00%), daemon CPU $daemon_cpu%"
}

run_jobs() {
    local device=$1 kind=$2 spec
    for spec in "${JOBS[@]}"; do
        step "pass $PASS: fio on $kind ($device): ${spec%% *}"
        run_job "$device" "$kind" "$spec"
    done
}

# ---------------------------------------------------------------------------------------------
# The two devices

# ublk_up: alpha's daemon alone (beta never starts), alpha primary, /dev/ublkbN in UBLK_DEVICE.
# The first time the metadata is fresh and the promotion forced; after a clean stop a plain
# one should do (forced if refused: this is a measurement, not a test of promotions).
ublk_up() {
    local first=no
    start_daemon alpha
    [ -n "${DATA_BYTES:-}" ] || first=yes
    promote_for_measurement "$first"
    DATA_BYTES=$(volume_field alpha size_bytes)
    is_number "$DATA_BYTES" || fail "no size_bytes in alpha's status: $DATA_BYTES"
    SPAN=$((DATA_BYTES >> 20 << 20)) # fio's range: the data area, whole MiB
    UBLK_DEVICE=$(ublk_device alpha)
    local sys size
    sys=/sys/block/$(basename "$UBLK_DEVICE")
    size=$(blockdev --getsize64 "$UBLK_DEVICE")
    [ "$size" = "$DATA_BYTES" ] || fail "$UBLK_DEVICE has $size bytes; the data area is $DATA_BYTES"
    local -a queue_dirs=("$sys/mq/"*)
    UBLK_QUEUES=${#queue_dirs[@]}
    UBLK_DEPTH=$(cat "$sys/queue/nr_requests")
    info "alpha serves $UBLK_DEVICE: $size bytes, $UBLK_QUEUES queue(s), nr_requests $UBLK_DEPTH, max_sectors_kb $(cat "$sys/queue/max_sectors_kb"), role $(volume_field alpha role), disk $(volume_field alpha disk)"
}

ublk_down() {
    stop_daemon alpha
    wait_for 30 "$UBLK_DEVICE to go away after alpha's daemon stopped" test ! -e "$UBLK_DEVICE"
}

# loop_up: /dev/loopN in LOOP, direct I/O, over the file's data area (the first DATA_BYTES).
loop_up() {
    printf '    $ losetup --find --show --direct-io=on --sizelimit %s %s\n' "$DATA_BYTES" "$BACKING_FILE"
    LOOP=$(timeout 30 losetup --find --show --direct-io=on --sizelimit "$DATA_BYTES" "$BACKING_FILE" 2>&1) \
        || fail "losetup failed: $LOOP"
    case $LOOP in /dev/loop[0-9]*) ;; *) fail "losetup printed no device: $LOOP" ;; esac
    local sys size
    sys=/sys/block/$(basename "$LOOP")
    [ "$(cat "$sys/loop/dio")" = 1 ] || fail "$LOOP does not use direct I/O (loop/dio is $(cat "$sys/loop/dio"))"
    size=$(blockdev --getsize64 "$LOOP")
    [ "$size" = "$DATA_BYTES" ] || fail "$LOOP has $size bytes; the data area is $DATA_BYTES"
    info "$LOOP: $size bytes, direct I/O, nr_requests $(cat "$sys/queue/nr_requests"), max_sectors_kb $(cat "$sys/queue/max_sectors_kb")"
}

# shellcheck disable=SC2317 # called through wait_for
loop_detached() { [ ! -e "/sys/block/$(basename "$LOOP")/loop" ]; }

loop_down() {
    run timeout 30 losetup -d "$LOOP"
    wait_for 30 "$LOOP to be detached" loop_detached
}

# ---------------------------------------------------------------------------------------------
# The table

# mean_of FILE...: the mean of each column of one-line files (words, as written by run_job).
mean_of() {
    awk '{ for (i = 1; i <= NF; i++) { sum[i] += $i; n[i]++ }; if (NF > nf) nf = NF }
        END { for (i = 1; i <= nf; i++) printf "%s%.6g", (i > 1 ? " " : ""), sum[i] / n[i]; print "" }' "$@"
}

table() {
    local spec name pass
    printf 'ublk-perf: fio libaio O_DIRECT, %ss after a %ss ramp, over %s MiB; loop = losetup --direct-io=on over the same file\n' \
        "$RUNTIME" "$RAMP" $((SPAN >> 20))
    printf 'ublk: %s, %s queue(s), depth %s; guest: %s CPUs (TCG), kernel %s\n' \
        "$UBLK_DEVICE" "$UBLK_QUEUES" "$UBLK_DEPTH" "$(nproc)" "$(uname -r)"
    printf '%s passes in the order ublk, loop, loop, ublk; the mean of the passes:\n' "$PASSES"
    printf '%-18s | %9s %8s %15s | %9s %8s %15s | %9s %s\n' workload "loop MB/s" IOPS "p50/p99 us" \
        "ublk MB/s" IOPS "p50/p99 us" ublk/loop "aim $AIM of loop"
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        { mean_of "$OUT/loop.$name".?; mean_of "$OUT/ublk.$name".?; } | awk -v name="$name" -v aim="$AIM" '
            NR == 1 { lbw = $1; liops = $2; lp50 = $3; lp99 = $4 }
            NR == 2 { ubw = $1; uiops = $2; up50 = $3; up99 = $4 }
            END {
                ratio = (lbw > 0 ? ubw / lbw : 0)
                printf "%-18s | %9.1f %8.0f %15s | %9.1f %8.0f %15s | %9.2f %s\n", name,
                    lbw / 1e6, liops, sprintf("%d/%d", lp50 / 1000, lp99 / 1000),
                    ubw / 1e6, uiops, sprintf("%d/%d", up50 / 1000, up99 / 1000),
                    ratio, (ratio >= aim ? "met" : "missed")
            }'
    done
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        printf 'ublk/loop by pass, %s:' "$name"
        for pass in $(seq 1 "$PASSES"); do
            awk 'NR == 1 { l = $1 } NR == 2 { u = $1 } END { printf " %.2f", (l > 0 ? u / l : 0) }' \
                "$OUT/loop.$name.$pass" "$OUT/ublk.$name.$pass"
        done
        printf '\n'
    done
    printf '%-18s | %33s | %33s | %s\n' "CPU" "loop: fio / guest %, us/write" \
        "ublk: fio / guest / daemon %" "ublk: us/write; daemon per write"
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        { mean_of "$OUT/loop.$name".?; mean_of "$OUT/ublk.$name".?; } | awk -v name="$name" '
            NR == 1 { l = sprintf("%.0f / %.0f, %.0f", $5 + $6, $7, $11) }
            NR == 2 {
                u = sprintf("%.0f / %.0f / %.0f", $5 + $6, $7, $8)
                d = sprintf("%.0f; %.1f faults, %.1f ctx switches", $11, $12, $13)
            }
            END { printf "%-18s | %33s | %33s | %s\n", name, l, u, d }'
    done
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        for pass in $(seq 1 "$PASSES"); do
            [ ! -s "$OUT/ublk.$name.$pass.busiest" ] \
                || printf 'daemon threads, %s, pass %s: %s\n' "$name" "$pass" "$(cat "$OUT/ublk.$name.$pass.busiest")"
        done
        [ ! -s "$OUT/ublk.$name.$PASSES.journal" ] \
            || printf 'after %s on ublk: %s\n' "$name" "$(cat "$OUT/ublk.$name.$PASSES.journal")"
    done
}

# ---------------------------------------------------------------------------------------------

mkdir -p "$OUT"

step "loading virtio_blk, ublk_drv and loop"
load_module virtio_blk
load_ublk
load_module loop
wait_for 10 "the scratch disk /dev/vda" test -b /dev/vda
wait_for 10 "/dev/loop-control after insmod loop" test -c /dev/loop-control
info "$(fio --version), $(losetup --version)"

step "ext4 on /dev/vda; the backing file, $FILE_MIB MiB, written once"
# No lazy initialisation: ext4lazyinit would write inode tables in the background, under fio.
run mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 -L tandem-store /dev/vda
mkdir -p "$STORE"
run mount -t ext4 /dev/vda "$STORE"
# Written, not fallocated: unwritten extents would make the first writes to each block slower
# for whichever device comes first.
run dd if=/dev/zero of="$BACKING_FILE" bs=1M count="$FILE_MIB" conv=fsync
info "$(ls -l "$BACKING_FILE")"

step "configuration (frontend ublk, alpha over the file), metadata on alpha only"
BACKING[alpha]=$BACKING_FILE
write_config ublk
run tandem_on alpha create-md "$VOLUME"

# Two passes in the order ublk, loop, loop, ublk: a drift of the host's speed during the run
# (another job starting or ending) weighs on both devices alike.
PASSES=2

PASS=1
step "pass 1: alpha's daemon alone (beta never starts); alpha primary (forced: fresh metadata)"
ublk_up
run_jobs "$UBLK_DEVICE" ublk
step "pass 1: stopping alpha's daemon; a loop device over the same file's data area"
ublk_down
loop_up
run_jobs "$LOOP" loop

PASS=2
run_jobs "$LOOP" loop
step "pass 2: detaching $LOOP; alpha's daemon again, primary"
loop_down
ublk_up
run_jobs "$UBLK_DEVICE" ublk
step "pass 2: stopping alpha's daemon"
ublk_down
kernel_log_clean

step "results"
table >"$OUT/table.txt"
sed 's/^/    /' "$OUT/table.txt"
# To the host: run.sh prints these lines and keeps them in target/vm/logs/ublk-perf.results.txt.
cat "$OUT/table.txt" >/dev/ttyS1
run umount "$STORE"

pass
