#!/bin/bash
# drbd-perf: a measurement, run by hand (`scripts/vm/run.sh drbd-perf`), not part of
# scripts/test.sh. tandem against DRBD 8.4 (the guest kernel's own drbd.ko), both replicating
# with protocol C between the same two guests over the same disks, and the ratio of the two.
#
# Two guests, alpha (10.99.0.1) and beta (10.99.0.2), joined by a virtio-net link (run.sh:
# qemu -netdev stream), each with one disk /dev/vda split in two equal partitions: /dev/vda1
# holds tandem's volume r0 (frontend ublk, one daemon per guest), /dev/vda2 DRBD's resource r0
# (internal metadata, /dev/drbd0). Both sides run with their defaults but for the link:
# tandem's compression is off (PERF_COMPRESSION changes it), as DRBD has none and fio's data
# does not compress. alpha is the primary of both and runs fio (libaio, O_DIRECT, a ramp and
# then PERF_RUNTIME seconds counted, over the same span from offset 0: tandem's data area, the
# smaller one) on /dev/ublkbN and on /dev/drbd0: 1 MiB sequential writes at depth 8, 4 KiB
# random writes at depth 32 and at depth 1. Before each job both are connected and in sync
# (tandem: a full sync after the forced first promotion; DRBD: `new-current-uuid
# --clear-bitmap` on fresh metadata, both partitions being zeros), and after it they still are.
# Only one of the two runs at a time (the other's daemons stopped, its resource down), in the
# order tandem, DRBD, DRBD, tandem, so that the host getting slower or faster weighs on both.
#
# It passes when every job ran on both and its numbers were read; the ratio has no threshold.
# Under TCG absolute numbers mean little: the ratios tandem/DRBD are the result. alpha prints a
# markdown table (run.sh prints it as it is) and one JSON line, which run.sh writes to
# target/vm/logs/drbd-perf.json. beta only serves its halves and follows alpha's steps.
#
# vm-timeout: 1800
# vm-disk-size: 1G
# vm-guests: alpha beta
# vm-smp: 1
# vm-tools: fio sfdisk drbdmeta /usr/lib/drbd/drbdadm-84 /usr/lib/drbd/drbdsetup-84
# vm-modules: virtio_net drbd
# vm-report: verbatim
# vm-manual: yes
# shellcheck disable=SC2317 # most functions are called through run, wait_for or "${kind}_up"
# shellcheck source-path=SCRIPTDIR source=../guest-lib.sh
. /lib/vmtest/lib.sh

RUNTIME=${PERF_RUNTIME:-20} # seconds counted per job
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || fail "PERF_RUNTIME=$RUNTIME: whole seconds, at least 1"
if [ "$RUNTIME" -ge 10 ]; then RAMP=5; else RAMP=2; fi
RAMP=${PERF_RAMP:-$RAMP}    # seconds of each job before fio starts counting
[[ $RAMP =~ ^[0-9]+$ ]] || fail "PERF_RAMP=$RAMP: whole seconds"
COMPRESSION=${PERF_COMPRESSION:-none}
OUT=/tmp/perf
# NAME RW BS IODEPTH
JOBS=(
    "write-1M-qd8 write 1M 8"
    "randwrite-4k-qd32 randwrite 4k 32"
    "randwrite-4k-qd1 randwrite 4k 1"
)
PASSES=2
# How long beta waits for alpha to measure one system: the full sync and every job, bounded.
MEASURE_SECONDS=$((600 + ${#JOBS[@]} * (RAMP + RUNTIME + 150)))

DISK=/dev/vda
TANDEM_PART=${DISK}1
DRBD_PART=${DISK}2
DRBD_DEVICE=/dev/drbd0
DRBD_PORT=7790
DRBD_CONF=/etc/drbd.conf

ADDRESS=([alpha]=10.99.0.1 [beta]=10.99.0.2)
BACKING=([alpha]=$TANDEM_PART [beta]=$TANDEM_PART)

# ---------------------------------------------------------------------------------------------
# DRBD

# What the console shows after a failure, besides guest-lib's diagnostics (called by fail).
scenario_diagnostics() {
    printf '\n--- /proc/drbd\n'
    cat /proc/drbd 2>/dev/null
    printf '\n--- the link\n'
    ip addr show eth0 2>/dev/null
}

# drbd ARGS...: the 8.4 userland (drbd-utils ships it as /usr/lib/drbd/drbdadm-84; the layer
# puts it in /usr/local/bin with drbdsetup-84 and drbdmeta, which it is told to use).
drbd() {
    timeout 60 drbdadm-84 -c "$DRBD_CONF" -s /usr/local/bin/drbdsetup-84 -m /usr/local/bin/drbdmeta "$@"
}

write_drbd_config() {
    mkdir -p /var/lock /var/run/drbd /var/lib/drbd
    cat >"$DRBD_CONF" <<EOF
global { usage-count no; }
resource r0 {
  net { protocol C; }
  device $DRBD_DEVICE;
  disk $DRBD_PART;
  meta-disk internal;
  on alpha { address ${ADDRESS[alpha]}:$DRBD_PORT; }
  on beta { address ${ADDRESS[beta]}:$DRBD_PORT; }
}
EOF
    sed 's/^/      /' "$DRBD_CONF"
}

# drbd_state: minor 0's line of /proc/drbd (` 0: cs:Connected ro:Primary/Secondary ...`).
drbd_state() { sed -n 's/^ *0: //p' /proc/drbd; }

# shellcheck disable=SC2317 # called through wait_for
drbd_shows() { drbd_state | grep -q -- "$1"; }

# drbd_oos: minor 0's out-of-sync KiB (the oos: field of /proc/drbd).
drbd_oos() { sed -n 's/.*oos:\([0-9]*\).*/\1/p' /proc/drbd | head -n 1; }

# drbd_in_sync: connected, both up to date, nothing out of sync; fails the scenario otherwise.
drbd_in_sync() {
    local state oos
    state=$(drbd_state)
    oos=$(drbd_oos)
    case $state in
        *cs:Connected*ds:UpToDate/UpToDate*) ;;
        *) fail "DRBD is not connected and up to date on both sides: $state" ;;
    esac
    [ "$oos" = 0 ] || fail "DRBD has $oos KiB out of sync: $state"
}

# drbd_up: both guests attach and connect; alpha waits for the connection, skips the initial
# sync the first time (fresh metadata on two partitions of zeros), becomes primary.
drbd_up() {
    run drbd up r0
    barrier 120 "drbd-$PASS-up"
    [ "$GUEST" = alpha ] || return 0
    wait_for 120 "DRBD to connect" drbd_shows 'cs:Connected'
    if [ -z "${DRBD_SYNCED:-}" ]; then
        wait_for 30 "DRBD to see fresh metadata on both sides" drbd_shows 'ds:Inconsistent/Inconsistent'
        run drbd new-current-uuid --clear-bitmap r0
        wait_for 60 "DRBD to be up to date on both sides" drbd_shows 'ds:UpToDate/UpToDate'
        DRBD_SYNCED=1
    fi
    wait_for 60 "DRBD to be up to date on both sides" drbd_shows 'ds:UpToDate/UpToDate'
    run drbd primary r0
    wait_for 30 "DRBD primary here, secondary there" drbd_shows 'ro:Primary/Secondary'
    wait_for 30 "$DRBD_DEVICE" test -b "$DRBD_DEVICE"
    drbd_in_sync
    local size
    size=$(blockdev --getsize64 "$DRBD_DEVICE")
    [ "$size" -ge "$SPAN" ] || fail "$DRBD_DEVICE has $size bytes, less than tandem's data area ($SPAN)"
    info "alpha: $DRBD_DEVICE primary, $size bytes; $(drbd_state)"
}

# drbd_down: alpha demotes and goes down first, then beta.
drbd_down() {
    if [ "$GUEST" = alpha ]; then
        run drbd secondary r0
        run drbd down r0
        signal "drbd-$PASS-alpha-down"
        wait_peer 120 "drbd-$PASS-down"
    else
        wait_peer "$MEASURE_SECONDS" "drbd-$PASS-alpha-down"
        run drbd down r0
        signal "drbd-$PASS-down"
    fi
    wait_for 30 "$DRBD_DEVICE to go away" test ! -e "/sys/block/drbd0"
}

# ---------------------------------------------------------------------------------------------
# tandem

# tandem_in_sync: alpha connected to beta, both up to date, nothing out of sync.
tandem_in_sync() {
    local oos
    tandem_wait alpha synced 5
    oos=$(volume_field alpha out_of_sync_bytes)
    [ "$oos" = 0 ] || fail "tandem has $oos bytes out of sync"
}

# tandem_up: each guest starts its node's daemon; alpha waits for the connection, becomes
# primary (forced the first time: fresh metadata, then a full sync to beta) and serves
# /dev/ublkbN in UBLK_DEVICE.
tandem_up() {
    start_daemon "$GUEST"
    barrier 120 "tandem-$PASS-up"
    [ "$GUEST" = alpha ] || return 0
    tandem_wait alpha connected 120
    local started=$SECONDS first=no
    [ -n "${SPAN:-}" ] || first=yes
    promote_for_measurement "$first"
    tandem_wait alpha synced 600
    info "alpha primary; connected and in sync after $((SECONDS - started)) s"
    DATA_BYTES=$(volume_field alpha size_bytes)
    is_number "$DATA_BYTES" || fail "no size_bytes in alpha's status: $DATA_BYTES"
    SPAN=${SPAN:-$((DATA_BYTES >> 20 << 20))} # fio's range on both: whole MiB
    UBLK_DEVICE=$(ublk_device alpha)
    tandem_in_sync
    local sys
    sys=/sys/block/$(basename "$UBLK_DEVICE")
    local -a queue_dirs=("$sys/mq/"*)
    UBLK_QUEUES=${#queue_dirs[@]}
    UBLK_DEPTH=$(cat "$sys/queue/nr_requests")
    info "alpha serves $UBLK_DEVICE: $(blockdev --getsize64 "$UBLK_DEVICE") bytes, $UBLK_QUEUES queue(s), nr_requests $UBLK_DEPTH"
}

# tandem_down: alpha's daemon stops first (its device goes away), then beta's.
tandem_down() {
    if [ "$GUEST" = alpha ]; then
        stop_daemon alpha
        wait_for 30 "$UBLK_DEVICE to go away after alpha's daemon stopped" test ! -e "$UBLK_DEVICE"
        signal "tandem-$PASS-alpha-down"
        wait_peer 120 "tandem-$PASS-down"
    else
        wait_peer "$MEASURE_SECONDS" "tandem-$PASS-alpha-down"
        stop_daemon beta
        signal "tandem-$PASS-down"
    fi
}

# ---------------------------------------------------------------------------------------------
# fio

# bytes SIZE: 4k, 1M as bytes.
bytes() {
    case $1 in
        *[kK]) echo $((${1%?} << 10)) ;;
        *M) echo $((${1%?} << 20)) ;;
        *) echo "$1" ;;
    esac
}

# run_job DEVICE KIND SPEC: one fio job of pass $PASS. Its numbers go to $OUT/KIND.NAME.PASS:
# MB/s, IOPS, p50 and p99 (us), and over the whole job (ramp included), for the primary (this
# guest) and the secondary (beta, through peer_counters): busy CPU in percent of the guest's
# vCPUs and CPU time per write of fio's size; then the MB written to the device and to beta's
# disk.
run_job() {
    local device=$1 kind=$2 name rw bs depth status=0
    read -r name rw bs depth <<<"$3"
    local id=$kind.$name.$PASS json=$OUT/$kind.$name.$PASS.json
    fio_job_args "$device" "$name" "$rw" "$bs" "$depth" "$json"
    info "\$ fio ${FIO_ARGS[*]}"
    local busy0 total0 busy1 total1 sectors0 sectors1 peer0 peer1
    peer0=$(peer_counters)
    sectors0=$(device_sectors_written "$device")
    read -r busy0 total0 < <(cpu_ticks)
    timeout $((RAMP + RUNTIME + 90)) fio "${FIO_ARGS[@]}" >"$OUT/$id.stderr" 2>&1 || status=$?
    read -r busy1 total1 < <(cpu_ticks)
    sectors1=$(device_sectors_written "$device")
    peer1=$(peer_counters)
    local bw iops p50 p99
    fio_result "$name" "$device" "$id" "$status"
    bw=$FIO_BW iops=$FIO_IOPS p50=$FIO_P50 p99=$FIO_P99
    [ $((sectors1 - sectors0)) -gt 0 ] || fail "$device completed no writes during fio $name"
    local peer_busy0 peer_total0 peer_busy1 peer_total1 peer_sectors0 peer_sectors1
    read -r peer_busy0 peer_total0 < <(printf '%s\n' "$peer0" | awk '$1 == "cpu" { print $2, $3 }')
    read -r peer_busy1 peer_total1 < <(printf '%s\n' "$peer1" | awk '$1 == "cpu" { print $2, $3 }')
    peer_sectors0=$(printf '%s\n' "$peer0" | awk -v d="$(basename "$DISK")" '$1 == d { print $2 }')
    peer_sectors1=$(printf '%s\n' "$peer1" | awk -v d="$(basename "$DISK")" '$1 == d { print $2 }')
    for value in "$peer_busy0" "$peer_total0" "$peer_busy1" "$peer_total1" "$peer_sectors0" "$peer_sectors1"; do
        is_number "$value" || fail "cannot read $PEER's counters: '$peer0' / '$peer1'"
    done
    # CLK_TCK is 100: a tick is 10 000 us.
    awk -v bw="$bw" -v iops="$iops" -v p50="$p50" -v p99="$p99" -v bs="$(bytes "$bs")" \
        -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v s=$((sectors1 - sectors0)) \
        -v pb=$((peer_busy1 - peer_busy0)) -v pt=$((peer_total1 - peer_total0)) \
        -v ps=$((peer_sectors1 - peer_sectors0)) 'BEGIN {
            writes = s * 512 / bs
            printf "%.3f %.1f %.1f %.1f %.0f %.0f %.0f %.0f %.1f %.1f\n", bw / 1e6, iops,
                p50 / 1000, p99 / 1000, (t > 0 ? 100 * b / t : 0), b * 10000 / writes,
                (pt > 0 ? 100 * pb / pt : 0), pb * 10000 / writes, s * 512 / 1e6, ps * 512 / 1e6
        }' >"$OUT/$id"
    local mbps cpu per_write peer_cpu peer_per_write written peer_written
    read -r mbps _ _ _ cpu per_write peer_cpu peer_per_write written peer_written <"$OUT/$id"
    info "$kind $name: $mbps MB/s, $iops IOPS, clat p50 $((p50 / 1000)) us, p99 $((p99 / 1000)) us"
    info "CPU per $bs write: primary $per_write us (busy $cpu%), secondary $peer_per_write us (busy $peer_cpu%); $written MB written to $device, $peer_written MB to $PEER's $DISK"
}

# run_jobs KIND DEVICE: every job, each checked to start and end with both nodes in sync.
run_jobs() {
    local kind=$1 device=$2 spec
    for spec in "${JOBS[@]}"; do
        step "pass $PASS: fio on $kind ($device): ${spec%% *}"
        "${kind}_in_sync"
        run_job "$device" "$kind" "$spec"
        "${kind}_in_sync"
    done
}

# measure KIND: one pass of one system: up, the jobs on alpha (beta waits), down.
measure() {
    local kind=$1
    step "pass $PASS: $kind up"
    "${kind}_up"
    if [ "$GUEST" = alpha ]; then
        if [ "$kind" = tandem ]; then
            run_jobs tandem "$UBLK_DEVICE"
        else
            run_jobs drbd "$DRBD_DEVICE"
        fi
    else
        step "pass $PASS: $kind: alpha measures"
    fi
    step "pass $PASS: $kind down"
    "${kind}_down"
}

# ---------------------------------------------------------------------------------------------
# The results

# mean_of FILE...: the mean of each column of one-line files.
mean_of() {
    awk '{ for (i = 1; i <= NF; i++) { sum[i] += $i; n[i]++ }; if (NF > nf) nf = NF }
        END { for (i = 1; i <= nf; i++) printf "%s%.6g", (i > 1 ? " " : ""), sum[i] / n[i]; print "" }' "$@"
}

# ratios NAME: tandem/DRBD of MB/s for each pass, space-separated.
ratios() {
    local pass
    for pass in $(seq 1 "$PASSES"); do
        awk 'NR == 1 { t = $1 } NR == 2 { d = $1 } END { printf "%.3f\n", (d > 0 ? t / d : 0) }' \
            "$OUT/tandem.$1.$pass" "$OUT/drbd.$1.$pass"
    done | paste -sd' ' -
}

# The markdown tables: the means of the passes, the ratio, the ratio of each pass; then CPU.
table() {
    local spec name
    printf '### drbd-perf: tandem against DRBD %s, protocol C, two guests\n\n' "$DRBD_VERSION"
    printf 'fio libaio O_DIRECT on alpha (the primary of both), %s s counted after a %s s ramp, over the first %s MiB of /dev/ublkbN and of /dev/drbd0; %s passes in the order tandem, DRBD, DRBD, tandem (the tables show their means). Two TCG guests of %s vCPU, kernel %s, joined by virtio-net (qemu -netdev stream); each node on half of its guest'"'"'s disk. tandem: %s, %s queue(s), depth %s, compression %s.\n\n' \
        "$RUNTIME" "$RAMP" $((SPAN >> 20)) "$PASSES" "$(nproc)" "$(uname -r)" \
        "$UBLK_DEVICE" "$UBLK_QUEUES" "$UBLK_DEPTH" "$COMPRESSION"
    printf '| workload | tandem MB/s | tandem IOPS | tandem p50 / p99 µs | DRBD MB/s | DRBD IOPS | DRBD p50 / p99 µs | tandem / DRBD | by pass |\n'
    printf '|---|---|---|---|---|---|---|---|---|\n'
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        { mean_of "$OUT/tandem.$name".?; mean_of "$OUT/drbd.$name".?; } \
            | awk -v name="$name" -v passes="$(ratios "$name" | sed 's/ /, /g')" '
            NR == 1 { split($0, t) }
            NR == 2 { split($0, d) }
            END {
                printf "| %s | %.1f | %.0f | %.0f / %.0f | %.1f | %.0f | %.0f / %.0f | %.2f | %s |\n",
                    name, t[1], t[2], t[3], t[4], d[1], d[2], d[3], d[4],
                    (d[1] > 0 ? t[1] / d[1] : 0), passes
            }'
    done
    printf '\nGuest CPU time per write of the job'"'"'s size (µs) and busy CPU (%% of the guest'"'"'s vCPUs) over each job, ramp included, on the primary (alpha) and the secondary (beta):\n\n'
    printf '| workload | tandem primary | tandem secondary | DRBD primary | DRBD secondary |\n'
    printf '|---|---|---|---|---|\n'
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        { mean_of "$OUT/tandem.$name".?; mean_of "$OUT/drbd.$name".?; } \
            | awk -v name="$name" '
            NR == 1 { split($0, t) }
            NR == 2 { split($0, d) }
            END {
                printf "| %s | %.0f µs, %.0f%% | %.0f µs, %.0f%% | %.0f µs, %.0f%% | %.0f µs, %.0f%% |\n",
                    name, t[6], t[5], t[8], t[7], d[6], d[5], d[8], d[7]
            }'
    done
}

# json_numbers FILE: one system's numbers of one job (a line written by run_job, or a mean).
json_numbers() {
    awk '{
        printf "{\"mbps\":%.3f,\"iops\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,", $1, $2, $3, $4
        printf "\"primary_cpu_percent\":%.0f,\"primary_cpu_us_per_write\":%.0f,", $5, $6
        printf "\"secondary_cpu_percent\":%.0f,\"secondary_cpu_us_per_write\":%.0f,", $7, $8
        printf "\"written_mb\":%.1f,\"secondary_disk_written_mb\":%.1f}", $9, $10
    }' "$1"
}

# One line of JSON: the means, the ratios, each pass's raw numbers.
json_report() {
    local spec name pass first=1 ratio
    printf '{"topology":"two-guests","protocol":"C","drbd_version":"%s","kernel":"%s",' \
        "$DRBD_VERSION" "$(uname -r)"
    printf '"guest_vcpus":%s,"runtime_s":%s,"ramp_s":%s,"span_bytes":%s,"passes":%s,"order":"tandem,drbd,drbd,tandem",' \
        "$(nproc)" "$RUNTIME" "$RAMP" "$SPAN" "$PASSES"
    printf '"tandem":{"device":"%s","ublk_queues":%s,"ublk_depth":%s,"compression":"%s"},"jobs":[' \
        "$UBLK_DEVICE" "$UBLK_QUEUES" "$UBLK_DEPTH" "$COMPRESSION"
    for spec in "${JOBS[@]}"; do
        name=${spec%% *}
        [ "$first" = 1 ] || printf ','
        first=0
        mean_of "$OUT/tandem.$name".? >"$OUT/tandem.$name.mean"
        mean_of "$OUT/drbd.$name".? >"$OUT/drbd.$name.mean"
        ratio=$(awk 'NR == 1 { t = $1 } NR == 2 { d = $1 } END { printf "%.3f", (d > 0 ? t / d : 0) }' \
            "$OUT/tandem.$name.mean" "$OUT/drbd.$name.mean")
        printf '{"name":"%s","tandem":%s,"drbd":%s,"ratio_mbps":%s,"ratio_mbps_by_pass":[%s],"by_pass":[' \
            "$name" "$(json_numbers "$OUT/tandem.$name.mean")" "$(json_numbers "$OUT/drbd.$name.mean")" \
            "$ratio" "$(ratios "$name" | sed 's/ /,/g')"
        for pass in $(seq 1 "$PASSES"); do
            [ "$pass" = 1 ] || printf ','
            printf '{"pass":%s,"tandem":%s,"drbd":%s}' "$pass" \
                "$(json_numbers "$OUT/tandem.$name.$pass")" "$(json_numbers "$OUT/drbd.$name.$pass")"
        done
        printf ']}'
    done
    printf '],"notes":"%s"}\n' "$NOTES"
}

# ---------------------------------------------------------------------------------------------

mkdir -p "$OUT"

step "$GUEST: modules, the link to $PEER"
load_module virtio_blk
load_ublk
load_module drbd
wait_for 10 "the scratch disk $DISK" test -b "$DISK"
wait_for 10 "/proc/drbd after insmod drbd" test -r /proc/drbd
DRBD_VERSION=$(sed -n 's/^version: \([^ ]*\).*/\1/p' /proc/drbd)
info "$(head -n 1 /proc/drbd); $(fio --version)"
guest_up

step "$GUEST: $DISK in two partitions: $TANDEM_PART for tandem, $DRBD_PART for DRBD"
sectors=$(cat "/sys/block/$(basename "$DISK")/size")
half=$(((sectors - 2048) / 2 / 2048 * 2048))
printf 'label: dos\nstart=2048, size=%s, type=83\nstart=%s, size=%s, type=83\n' \
    "$half" $((2048 + half)) "$half" >/tmp/partitions
run sfdisk -q "$DISK" </tmp/partitions
wait_for 10 "$TANDEM_PART and $DRBD_PART" test -b "$DRBD_PART" -a -b "$TANDEM_PART"
info "$TANDEM_PART: $(blockdev --getsize64 "$TANDEM_PART") bytes, $DRBD_PART: $(blockdev --getsize64 "$DRBD_PART") bytes"

step "$GUEST: tandem's configuration (the cluster key made on alpha), metadata on $TANDEM_PART"
mkdir -p "$WORK"
if [ "$GUEST" = alpha ]; then
    tandem keygen >"$WORK/cluster.key"
    signal cluster.key "$WORK/cluster.key"
else
    wait_peer 120 cluster.key "$WORK/cluster.key"
fi
write_config ublk
run tandem_on "$GUEST" create-md "$VOLUME"

step "$GUEST: DRBD's configuration, metadata on $DRBD_PART"
write_drbd_config
run drbd -- --force create-md r0
barrier 120 metadata

# The order tandem, DRBD, DRBD, tandem: a drift of the host's speed during the run (another job
# starting or ending) weighs on both alike.
PASS=1
measure tandem
measure drbd
PASS=2
measure drbd
measure tandem

kernel_log_clean
if [ "$GUEST" = alpha ]; then
    step "results"
    NOTES="Ratios are tandem/DRBD of MB/s (means of $PASSES passes; each pass ran both). The guests run under TCG on a shared 2-core host: absolute numbers mean little. Both protocol C with their defaults, tandem's link compression $COMPRESSION; both connected and in sync before and after every job; DRBD's initial sync skipped with new-current-uuid --clear-bitmap on fresh metadata over zeros, tandem fully synced. CPU: each guest's busy ticks over the job, ramp included, per write of the job's size and in percent of its vCPUs; the secondary's include answering two counter requests."
    table >"$OUT/table.md"
    json_report >"$OUT/result.json"
    cat "$OUT/table.md"
    # To the host: run.sh prints the table and writes the JSON line to logs/drbd-perf.json.
    {
        cat "$OUT/table.md"
        printf 'JSON %s\n' "$(cat "$OUT/result.json")"
    } >/dev/ttyS1
fi
barrier 120 finished
pass
