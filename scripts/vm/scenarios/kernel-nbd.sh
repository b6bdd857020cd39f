#!/bin/bash
# kernel-nbd: the volume through the kernel's own NBD client, which the host kernel lacks.
#
# Two daemons in the guest (alpha 127.0.0.1 over /dev/vda, beta 127.0.0.2 over /dev/vdb), alpha
# primary and fully synced to beta. nbd-client attaches alpha's export to /dev/nbd0; ext4 is
# made and files written with checksums; after a disconnect and a reconnect every file reads
# back, e2fsck finds nothing, an online verify finds no difference between the nodes, and once
# both daemons stopped cleanly the two backing stores hold the same data area.
#
# vm-timeout: 480
# vm-disk-size: 256M
# shellcheck source-path=SCRIPTDIR source=../guest-lib.sh
. /lib/vmtest/lib.sh

NBD=/dev/nbd0
MNT=/mnt/volume
SUMS=/tmp/checksums

# shellcheck disable=SC2317 # called through wait_for
nbd_attached() { [ "$(cat /sys/block/nbd0/size 2>/dev/null || echo 0)" != 0 ]; }
# shellcheck disable=SC2317 # called through wait_for
nbd_detached() { ! nbd_attached && [ ! -e /sys/block/nbd0/pid ]; }

# The kernel client, in netlink mode (nbd-client 3.24's default): it negotiates, hands the
# socket to the kernel and exits.
nbd_attach() {
    run timeout 60 nbd-client -N "$VOLUME" "${ADDRESS[alpha]}" "$NBD_PORT" "$NBD"
    wait_for 30 "$NBD to get a size after nbd-client" nbd_attached
    local size
    size=$(blockdev --getsize64 "$NBD")
    [ "$size" = "$DATA_BYTES" ] || fail "$NBD has $size bytes; the volume's data area is $DATA_BYTES"
    info "$NBD: $size bytes"
}

nbd_detach() {
    run timeout 60 nbd-client -d "$NBD"
    wait_for 30 "$NBD to be disconnected" nbd_detached
}

step "loading virtio_blk and nbd"
load_module virtio_blk
load_module nbd
wait_for 10 "the scratch disks /dev/vda and /dev/vdb" test -b /dev/vdb
wait_for 10 "$NBD" test -b "$NBD"

synced_pair nbd
device=$(volume_field alpha device)
[ "$device" = "nbd://${ADDRESS[alpha]}:$NBD_PORT/$VOLUME" ] \
    || fail "alpha's status shows device $device, not nbd://${ADDRESS[alpha]}:$NBD_PORT/$VOLUME"
info "alpha serves $device ($DATA_BYTES bytes)"

step "nbd-client: attach, mkfs.ext4, mount, write files"
nbd_attach
run mkfs.ext4 -q -F -L tandem-vm "$NBD"
mkdir -p "$MNT"
run mount "$NBD" "$MNT"
write_files "$MNT" "$SUMS"
run umount "$MNT"
nbd_detach

step "reconnect, mount again, verify every file"
nbd_attach
run mount "$NBD" "$MNT"
verify_files "$MNT" "$SUMS"
run umount "$MNT"
fsck_clean "$NBD"
kernel_log_clean
nbd_detach

step "comparing the two nodes"
tandem_wait alpha synced 120
verify_online alpha

step "stopping both daemons; comparing the backing stores"
stop_daemon alpha
stop_daemon beta
compare_backing_stores "$DATA_BYTES"
# beta's copy, read straight from its disk, is a clean file system too.
fsck_clean "${BACKING[beta]}"

pass
