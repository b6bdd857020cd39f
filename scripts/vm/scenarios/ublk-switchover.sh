#!/bin/bash
# ublk-switchover: the volume as /dev/ublkbN on its primary, moved to the other node.
#
# Two daemons in the guest (alpha 127.0.0.1 over /dev/vda, beta 127.0.0.2 over /dev/vdb) serve
# r0 with frontend = "ublk". alpha is made primary and synced; its status shows /dev/ublkbN;
# ext4 is made there and files written with checksums. alpha is demoted (its device goes
# away), beta promoted; beta's own /dev/ublkbN mounts with every file intact and e2fsck finds
# nothing. Then the nodes are compared online and, after a clean stop, byte for byte.
#
# vm-timeout: 480
# vm-disk-size: 256M
# vm-tools: blkdiscard
# shellcheck source-path=SCRIPTDIR source=../guest-lib.sh
. /lib/vmtest/lib.sh

MNT=/mnt/volume
SUMS=/tmp/checksums
# Extra [[volume]] lines: ublk-restart tests the defaults, this one a non-default shape.
UBLK_OPTIONS=('ublk_queues = 2' 'ublk_depth = 64' 'logical_block_size = 4096')

step "loading virtio_blk and ublk_drv"
load_module virtio_blk
load_ublk
wait_for 10 "the scratch disks /dev/vda and /dev/vdb" test -b /dev/vdb

synced_pair ublk "${UBLK_OPTIONS[@]}"

step "alpha's ublk device: mkfs.ext4, mount, write files"
alpha_device=$(ublk_device alpha)
size=$(blockdev --getsize64 "$alpha_device")
[ "$size" = "$DATA_BYTES" ] || fail "$alpha_device has $size bytes; the data area is $DATA_BYTES"
info "alpha serves $alpha_device ($size bytes)"
lbs=$(blockdev --getss "$alpha_device")
[ "$lbs" = 4096 ] || fail "$alpha_device has logical block size $lbs, configured 4096"
queue_dirs=("/sys/block/$(basename "$alpha_device")/mq/"*)
queues=${#queue_dirs[@]}
[ "$queues" = 2 ] || fail "$alpha_device has $queues hardware queues, configured 2"
run mkfs.ext4 -q -F -L tandem-vm "$alpha_device"
mkdir -p "$MNT"
run mount "$alpha_device" "$MNT"
write_files "$MNT" "$SUMS"
# A demotion while the device is mounted is refused and changes nothing.
if refusal=$(tandem_on alpha volume secondary "$VOLUME" 2>&1); then
    fail "alpha was demoted with $alpha_device mounted"
fi
case $refusal in
*"in use"*) info "demotion refused while mounted: $refusal" ;;
*) fail "demotion refused for another reason: $refusal" ;;
esac
[ "$(volume_field alpha role)" = primary ] || fail "alpha is no longer primary after the refusal"
test -b "$alpha_device" || fail "$alpha_device went away after the refused demotion"
run umount "$MNT"

step "switchover: alpha secondary, beta primary"
tandem_wait alpha synced 120
run tandem_on alpha volume secondary "$VOLUME"
wait_for 30 "$alpha_device to go away after alpha's demotion" test ! -e "$alpha_device"
wait_for 30 "alpha's status to show no device after its demotion" shows_no_device alpha
run tandem_on beta volume primary "$VOLUME"
tandem_wait beta primary 30

step "beta's ublk device: mount, verify every file, e2fsck"
beta_device=$(ublk_device beta)
info "beta serves $beta_device"
run mount "$beta_device" "$MNT"
verify_files "$MNT" "$SUMS"
run umount "$MNT"
fsck_clean "$beta_device"
kernel_log_clean

# The file system is checked: its last MiB may be overwritten now.
step "discard and write-zeroes pass through to the volume"
queue=/sys/block/$(basename "$beta_device")/queue
[ "$(cat "$queue/discard_max_bytes")" -gt 0 ] || fail "$beta_device does not take discards"
[ "$(cat "$queue/write_zeroes_max_bytes")" -gt 0 ] || fail "$beta_device does not take write-zeroes"
mib=$((DATA_BYTES / 1048576 - 1))
for op in discard zeroout; do
    head -c 1048576 /dev/urandom >/tmp/pattern
    run dd if=/tmp/pattern of="$beta_device" bs=1M seek="$mib" count=1 oflag=direct conv=fsync
    if [ "$op" = discard ]; then
        run blkdiscard -f -o $((mib * 1048576)) -l 1048576 "$beta_device"
    else
        run blkdiscard -f -z -o $((mib * 1048576)) -l 1048576 "$beta_device"
    fi
    dd if="$beta_device" of=/tmp/readback bs=1M skip="$mib" count=1 iflag=direct 2>/dev/null
    cmp -n 1048576 /tmp/readback /dev/zero >/dev/null || fail "$op: the range did not read back as zeros"
    info "$op of 1 MiB at MiB $mib reads back as zeros"
done

step "comparing the two nodes"
tandem_wait beta synced 120
verify_online beta

step "stopping both daemons; comparing the backing stores"
stop_daemon beta
wait_for 30 "$beta_device to go away after beta's daemon stopped" test ! -e "$beta_device"
stop_daemon alpha
compare_backing_stores "$DATA_BYTES"

pass
