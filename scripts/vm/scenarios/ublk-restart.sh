#!/bin/bash
# ublk-restart: the primary's daemon is SIGKILLed under writes and restarted; the ublk device
# and the file system on it stay, and no write is lost or fails.
#
# Two daemons in the guest (alpha 127.0.0.1 over /dev/vda, beta 127.0.0.2 over /dev/vdb), r0
# with frontend = "ublk", alpha primary and synced. ext4 on alpha's /dev/ublkbN, mounted; a
# writer writes 200 files of 256 KiB, each fsynced, recording their checksums. Mid-way alpha's
# daemon is SIGKILLed and started again with the same command line. The writer must finish
# without an I/O error; after a remount every file matches, e2fsck finds nothing, and the
# nodes end in sync and identical.
#
# vm-timeout: 540
# vm-disk-size: 256M
# shellcheck source-path=SCRIPTDIR source=../guest-lib.sh
. /lib/vmtest/lib.sh

MNT=/mnt/volume
W=/tmp/writer       # the writer's scratch: source block, checksums, error
FILES=200
KILL_AFTER=60       # files written before the kill
# Extra [[volume]] lines, e.g. ('ublk_queues = 2' 'ublk_depth = 64'); the defaults are tested.
UBLK_OPTIONS=()

# The writer, in the background: each file comes from a block in tmpfs whose checksum is
# recorded only once dd (with fsync) succeeded. The first failure is written to $W/error.
writer() {
    trap - ERR
    set +e
    local i sum
    for i in $(seq 1 "$FILES"); do
        head -c 262144 /dev/urandom >"$W/block"
        sum=$(sha256sum <"$W/block" | cut -d' ' -f1)
        if ! dd if="$W/block" of="$MNT/data/f$i" bs=256k conv=fsync 2>"$W/dd.err"; then
            echo "writing f$i: $(tail -n 1 "$W/dd.err")" >"$W/error"
            exit 1
        fi
        echo "$sum  data/f$i" >>"$W/sums"
    done
    exit 0
}

# shellcheck disable=SC2317 # called through wait_for
written_at_least() {
    [ -s "$W/error" ] && fail "the writer failed before the kill: $(cat "$W/error")"
    [ "$(wc -l <"$W/sums")" -ge "$1" ]
}

# shellcheck disable=SC2317 # called through wait_for
mounted() { grep -q " $MNT " /proc/mounts; }

step "loading virtio_blk and ublk_drv"
load_module virtio_blk
load_ublk
wait_for 10 "the scratch disks /dev/vda and /dev/vdb" test -b /dev/vdb

synced_pair ublk "${UBLK_OPTIONS[@]}"

step "alpha's ublk device: mkfs.ext4, mount"
device=$(ublk_device alpha)
info "alpha serves $device"
run mkfs.ext4 -q -F -L tandem-vm "$device"
mkdir -p "$MNT"
run mount "$device" "$MNT"
mkdir -p "$MNT/data" "$W"
: >"$W/sums"

step "writer: $FILES files of 256 KiB, each fsynced"
writer &
writer_pid=$!
wait_for 180 "the writer to finish $KILL_AFTER files" written_at_least "$KILL_AFTER"

step "SIGKILL alpha's daemon under writes, start it again"
kill_daemon alpha
info "$(wc -l <"$W/sums") files written at the kill"
start_daemon alpha
[ -b "$device" ] || fail "$device is gone after alpha's daemon was restarted"
mounted || fail "$MNT is no longer mounted after alpha's daemon was restarted"
wait_for 60 "alpha's status to show $device again after the restart" shows_device alpha "$device"

step "the writer finishes"
status=0
wait_pid 300 "the writer to finish $FILES files after the restart" "$writer_pid" || status=$?
[ "$status" = 0 ] || fail "the writer failed after the restart: $(cat "$W/error" 2>/dev/null || echo "status $status")"
count=$(wc -l <"$W/sums")
[ "$count" = "$FILES" ] || fail "the writer finished with $count files, not $FILES"
info "$count files written"

step "remount, verify every file, e2fsck"
run umount "$MNT"
echo 3 >/proc/sys/vm/drop_caches
run mount "$device" "$MNT"
verify_files "$MNT" "$W/sums"
run umount "$MNT"
fsck_clean "$device"
kernel_log_clean

step "the nodes converge after the restart"
tandem_wait alpha synced 180
verify_online alpha

step "stopping both daemons; comparing the backing stores"
stop_daemon alpha
wait_for 30 "$device to go away after alpha's daemon stopped" test ! -e "$device"
stop_daemon beta
compare_backing_stores "$DATA_BYTES"

pass
