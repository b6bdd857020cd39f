#!/usr/bin/env bash
# Builds what a tandem test guest boots: a Debian cloud kernel (which has ublk_drv and nbd as
# modules, unlike many host kernels) and a busybox initramfs holding the tandem binary and the
# few tools the scenarios drive (bash, mke2fs, e2fsck, nbd-client, GNU timeout and cmp).
# scripts/vm/run.sh calls it before every run; it only redoes what changed.
#
# It installs what is missing with apt-get (run it as root on Debian 12). Everything it makes
# lives under target/vm/ (gitignored):
#   target/vm/cache/    the kernel .deb, downloaded once and re-used
#   target/vm/kernel/   vmlinuz, the modules the guest loads, the kernel config
#   target/vm/guest/    base.cpio (the initramfs without a scenario) and its stamp
#
# Environment:
#   TANDEM_VM_DIR=DIR          where to keep all this (default: <repo>/target/vm)
#   TANDEM_VM_KERNEL_DEB=FILE  use this linux-image .deb instead of downloading one
#   TANDEM_VM_TANDEM=FILE      put this tandem binary in the guest instead of building one
#
# `build-guest.sh --layer FILE ITEM...` instead makes an extra initramfs layer for one scenario
# (host tools with their libraries, kernel modules with the modules they depend on): see
# "Extra layers" below.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_DIR=${TANDEM_VM_DIR:-$ROOT/target/vm}
CACHE_DIR=$VM_DIR/cache
KERNEL_DIR=$VM_DIR/kernel
GUEST_DIR=$VM_DIR/guest

# Modules the guest loads with insmod. None of them depends on another module (modinfo -F
# depends is empty for each in the 6.12 cloud kernel), so there is no modules.dep to carry.
MODULES=(virtio_blk nbd ublk_drv)

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

STAGING=""      # the initramfs tree being assembled; removed on exit
PACKAGE_TREE="" # the kernel package unpacked to take modules from; removed on exit
cleanup() {
    local dir
    for dir in "$STAGING" "$PACKAGE_TREE"; do
        if [ -n "$dir" ] && [ -d "$dir" ]; then
            rm -rf --one-file-system "$dir"
        fi
    done
}
trap cleanup EXIT
# set -e alone would end the script silently; say which command failed.
trap 'printf "build-guest: error: line %s: \`%s\` failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

log() { printf 'build-guest: %s\n' "$*"; }
die() {
    printf 'build-guest: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Host packages

# The Debian release; the guest kernel and a qemu that matches the preinstalled qemu-utils come
# from its backports suite on bookworm.
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
BACKPORTS=${CODENAME:+$CODENAME-backports}

# command:package pairs. qemu-system-x86 comes from backports (see install_packages).
HOST_TOOLS=(
    qemu-system-x86_64:qemu-system-x86
    xz:xz-utils
    cpio:cpio
    mke2fs:e2fsprogs
    e2fsck:e2fsprogs
    nbd-client:nbd-client
    dpkg-deb:dpkg
    ldd:libc-bin
    objcopy:binutils
    timeout:coreutils
)

APT_UPDATED=0

backports_configured() {
    [ -n "$BACKPORTS" ] || return 0
    grep -Eqs "^[^#]*\\b$BACKPORTS\\b" /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
}

# Adds the backports suite in deb822 format, on the same mirror as the machine's own Debian
# source. Only when no source names it yet.
add_backports_source() {
    [ "$CODENAME" = bookworm ] || return 0 # newer releases carry qemu and a 6.12+ kernel
    backports_configured && return 0
    local uri
    uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $2 ~ /^http/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
    fi
    uri=${uri:-http://deb.debian.org/debian}
    log "adding the apt source $BACKPORTS ($uri)"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$BACKPORTS" /usr/share/keyrings/debian-archive-keyring.gpg \
        >/etc/apt/sources.list.d/"$BACKPORTS".sources
    APT_UPDATED=0
}

apt_update() {
    [ "$APT_UPDATED" = 1 ] && return 0
    command -v apt-get >/dev/null || die "no apt-get here: install qemu-system-x86, busybox-static, xz-utils, cpio, e2fsprogs, nbd-client by hand"
    [ "$(id -u)" = 0 ] || die "installing packages needs root"
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
}

# `-t SUITE` when the suite is configured, so that qemu matches qemu-utils from backports
# (installing bookworm's qemu 7.2 next to backports' qemu-utils 10 fails).
suite_args() {
    if [ "$CODENAME" = bookworm ] && backports_configured; then
        echo "-t $BACKPORTS"
    fi
}

install_packages() {
    local pair tool package
    local -a packages=()
    for pair in "${HOST_TOOLS[@]}"; do
        tool=${pair%%:*}
        package=${pair#*:}
        command -v "$tool" >/dev/null 2>&1 && continue
        [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
    done
    # busybox-static conflicts with the dynamic busybox package; either one gives /bin/busybox,
    # and a dynamic one is copied with its libraries like any other binary.
    [ -x /bin/busybox ] || packages+=(busybox-static)
    if [ "${#packages[@]}" -eq 0 ]; then
        return 0
    fi
    add_backports_source
    apt_update
    # Only qemu is taken from backports; -t for everything would upgrade unrelated packages.
    local -a plain=()
    for package in "${packages[@]}"; do
        [ "$package" = qemu-system-x86 ] || plain+=("$package")
    done
    if [[ " ${packages[*]} " == *" qemu-system-x86 "* ]]; then
        log "installing qemu-system-x86 $(suite_args)"
        # shellcheck disable=SC2046 # suite_args is empty or two words on purpose
        apt-get install -y -qq --no-install-recommends $(suite_args) qemu-system-x86 \
            || die "apt-get install qemu-system-x86 failed"
    fi
    if [ "${#plain[@]}" -gt 0 ]; then
        log "installing ${plain[*]}"
        apt-get install -y -qq --no-install-recommends "${plain[@]}" \
            || die "apt-get install ${plain[*]} failed"
    fi
    for pair in "${HOST_TOOLS[@]}"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || die "${pair%%:*} is still missing"
    done
    [ -x /bin/busybox ] || die "/bin/busybox is still missing"
}

# ---------------------------------------------------------------------------------------------
# The guest kernel

# The newest cached kernel package, if any.
cached_kernel_deb() {
    find "$CACHE_DIR" -maxdepth 1 -name 'linux-image-*-cloud-amd64*.deb' 2>/dev/null \
        | sort -V | tail -n 1 || true
}

# The package the cloud kernel meta-package points at (its name rolls forward with backports).
resolve_kernel_package() {
    # shellcheck disable=SC2046
    apt-cache depends $(suite_args) linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

download_kernel() {
    add_backports_source
    local package
    package=$(resolve_kernel_package)
    if [ -z "$package" ]; then
        apt_update
        package=$(resolve_kernel_package)
    fi
    [ -n "$package" ] || die "apt-cache cannot resolve linux-image-cloud-amd64 (is $BACKPORTS configured?)"
    mkdir -p "$CACHE_DIR"
    local tmp
    tmp=$(mktemp -d "$CACHE_DIR/download.XXXXXX")
    log "downloading $package"
    # apt-get download writes into the current directory; -unsigned is the same kernel without
    # the Secure Boot signature, a fallback if only that one is offered.
    if ! (cd "$tmp" && apt-get download -qq "$package" >/dev/null 2>&1) \
        && ! (cd "$tmp" && apt-get download -qq "$package-unsigned" >/dev/null 2>&1); then
        apt_update
        (cd "$tmp" && apt-get download -qq "$package") || {
            rm -rf "$tmp"
            die "apt-get download $package failed"
        }
    fi
    mv "$tmp"/*.deb "$CACHE_DIR"/
    rm -rf "$tmp"
}

decompress_module() {
    local source=$1 target=$2
    case $source in
        *.ko.xz) xz -dc "$source" >"$target" ;;
        *.ko.zst) zstd -qdc "$source" >"$target" ;;
        *.ko.gz) gzip -dc "$source" >"$target" ;;
        *.ko) cp "$source" "$target" ;;
    esac
}

# Extracts vmlinuz and the modules from the .deb into target/vm/kernel (once per .deb).
prepare_kernel() {
    local deb=${TANDEM_VM_KERNEL_DEB:-}
    if [ -z "$deb" ]; then
        deb=$(cached_kernel_deb)
        if [ -z "$deb" ]; then
            download_kernel
            deb=$(cached_kernel_deb)
        fi
    fi
    [ -f "$deb" ] || die "no kernel package: $deb"
    if [ -f "$KERNEL_DIR/source" ] && [ "$(cat "$KERNEL_DIR/source")" = "$(basename "$deb")" ] \
        && [ -f "$KERNEL_DIR/vmlinuz" ]; then
        return 0
    fi
    log "extracting $(basename "$deb")"
    local tmp version module found
    tmp=$(mktemp -d "$VM_DIR/extract.XXXXXX")
    dpkg-deb -x "$deb" "$tmp"
    rm -rf "$KERNEL_DIR"
    mkdir -p "$KERNEL_DIR/modules"
    version=$(find "$tmp/boot" -name 'vmlinuz-*' -printf '%f\n' | head -n 1 || true)
    version=${version#vmlinuz-}
    [ -n "$version" ] || die "no vmlinuz in $deb"
    cp "$tmp/boot/vmlinuz-$version" "$KERNEL_DIR/vmlinuz"
    cp "$tmp/boot/config-$version" "$KERNEL_DIR/config" 2>/dev/null || true
    for module in "${MODULES[@]}"; do
        # Merged-/usr packages put the modules under usr/lib.
        found=$(find "$tmp/lib/modules/$version" "$tmp/usr/lib/modules/$version" \
            -name "$module.ko*" 2>/dev/null | head -n 1 || true)
        [ -n "$found" ] || die "$deb has no module $module"
        decompress_module "$found" "$KERNEL_DIR/modules/$module.ko"
    done
    echo "$version" >"$KERNEL_DIR/version"
    basename "$deb" >"$KERNEL_DIR/source"
    rm -rf "$tmp"
}

# ---------------------------------------------------------------------------------------------
# The tandem binary

build_tandem() {
    if [ -n "${TANDEM_VM_TANDEM:-}" ]; then
        TANDEM=$(readlink -f "$TANDEM_VM_TANDEM")
        [ -x "$TANDEM" ] || die "TANDEM_VM_TANDEM=$TANDEM_VM_TANDEM is not an executable"
        log "using $TANDEM (TANDEM_VM_TANDEM)"
        return 0
    fi
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain"
    log "cargo build --release -p manager --bin tandem"
    local messages
    # Cargo says where it put the binary (CARGO_TARGET_DIR may move it); diagnostics go to
    # stderr as usual.
    messages=$(cd "$ROOT" && cargo build --release -p manager --bin tandem \
        --message-format=json-render-diagnostics) || die "cargo build failed"
    TANDEM=$(printf '%s\n' "$messages" \
        | grep '"reason":"compiler-artifact"' \
        | grep '"name":"tandem"' \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
    if [ -z "$TANDEM" ] || [ ! -x "$TANDEM" ]; then
        die "cargo reported no tandem binary"
    fi
}

# ---------------------------------------------------------------------------------------------
# The initramfs

# Tools copied from the host with their libraries, and where they go in the guest. They sit
# in /usr/local/bin, ahead of busybox's applets of the same name on the guest's PATH (busybox
# has a mke2fs without ext4, a timeout that does not exit 124 when time runs out, and a cmp
# that compares byte by byte: 21 s for 192 MiB under TCG).
guest_tools() {
    printf '%s %s\n' \
        "$(command -v bash)" /bin/bash \
        "$(command -v mke2fs)" /usr/local/bin/mke2fs \
        "$(command -v e2fsck)" /usr/local/bin/e2fsck \
        "$(command -v nbd-client)" /usr/local/bin/nbd-client \
        "$(command -v timeout)" /usr/local/bin/timeout \
        "$(command -v cmp)" /usr/local/bin/cmp
}

# What the base initramfs is made of; a change of any of it rebuilds the image.
inputs_fingerprint() {
    {
        sha256sum "${BASH_SOURCE[0]}" "$KERNEL_DIR"/modules/*.ko /bin/busybox "$TANDEM"
        cat "$KERNEL_DIR/version"
        local source target
        while read -r source target; do
            stat -L -c '%n %s %Y' "$source"
        done < <(guest_tools)
    } | sha256sum | cut -d' ' -f1
}

# Copies FILE to DEST inside the staging tree. An existing entry is removed first: the busybox
# applet links point at /bin/busybox, and writing through one from the host would overwrite the
# host's own busybox.
put_file() {
    local file=$1 dest=$STAGING$2
    mkdir -p "$(dirname "$dest")"
    rm -f "$dest"
    cp -L "$file" "$dest"
}

# Copies a dynamic binary and every library ldd resolves for it, at the same paths (the
# dynamic loader's built-in search path covers the multiarch directories).
put_binary() {
    local binary=$1 dest=$2 library
    put_file "$binary" "$dest"
    while read -r library; do
        [ -e "$STAGING$library" ] || put_file "$library" "$library"
    done < <(ldd "$binary" 2>/dev/null | grep -oE '/[^ ]+' || true)
}

write_init() {
    # The guest's PID 1. It mounts the usual file systems, runs /test.sh (put there by run.sh)
    # under a watchdog, makes sure a RESULT line reaches the host, and powers off. With
    # panic=-1 and qemu's -no-reboot, anything that kills PID 1 ends qemu too.
    cat >"$STAGING/init" <<'INIT'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
ln -sf /proc/self/fd /dev/fd
hostname guest
ip link set lo up
echo "VM-INIT kernel $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s"

SCENARIO=unknown
GUEST_TIMEOUT=300
[ -f /etc/vmtest.conf ] && . /etc/vmtest.conf
export SCENARIO

# The host reads results from the second serial port; keep a copy to know one was written.
report() {
    echo "$1"
    echo "$1" >>/run/vmtest-result
    echo "$1" >/dev/ttyS1
}

finish() {
    sync
    # Let the UARTs drain before the machine goes away.
    sleep 1
    poweroff -f
}

if [ ! -x /test.sh ]; then
    report "RESULT FAIL $SCENARIO: no /test.sh in the initramfs"
    finish
fi

/test.sh </dev/null &
test_pid=$!
(
    sleep "$GUEST_TIMEOUT"
    step=$(cat /run/vmtest-step 2>/dev/null || echo unknown)
    report "RESULT FAIL $SCENARIO: guest watchdog: no result after ${GUEST_TIMEOUT}s (step: $step)"
    echo "--- processes"; ps
    echo "--- kernel log (last 40 lines)"; dmesg | tail -n 40
    finish
) &
wait "$test_pid"
status=$?
echo "VM-TEST-EXIT status $status, uptime $(cut -d' ' -f1 /proc/uptime) s"
if [ ! -s /run/vmtest-result ]; then
    report "RESULT FAIL $SCENARIO: the test exited with status $status without a result"
fi
finish
INIT
    chmod 755 "$STAGING/init"
}

build_initramfs() {
    local stamp=$GUEST_DIR/base.stamp fingerprint
    fingerprint=$(inputs_fingerprint)
    if [ -f "$GUEST_DIR/base.cpio" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$fingerprint" ]; then
        log "initramfs up to date ($GUEST_DIR/base.cpio)"
        return 0
    fi
    log "assembling the initramfs"
    mkdir -p "$GUEST_DIR"
    STAGING=$(mktemp -d "$GUEST_DIR/staging.XXXXXX")
    mkdir -p "$STAGING"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,lib/modules/vmtest,etc,proc,sys,dev,tmp,run,mnt,root,var/lib}

    # Real binaries first, busybox's applet links last and only where nothing is yet.
    put_binary /bin/busybox /bin/busybox
    local source target
    while read -r source target; do
        [ -n "$source" ] || die "a guest tool is missing on the host"
        put_binary "$source" "$target"
    done < <(guest_tools)
    # mke2fs makes ext4 when called as mkfs.ext4.
    ln -s mke2fs "$STAGING/usr/local/bin/mkfs.ext4"
    [ -f /etc/mke2fs.conf ] && put_file /etc/mke2fs.conf /etc/mke2fs.conf

    # The debug info (release builds keep line tables) would triple the image; symbols stay,
    # so a panic's backtrace still names functions.
    put_binary "$TANDEM" /usr/local/bin/tandem
    objcopy --strip-debug "$STAGING/usr/local/bin/tandem"

    local module
    for module in "${MODULES[@]}"; do
        put_file "$KERNEL_DIR/modules/$module.ko" "/lib/modules/vmtest/$module.ko"
    done

    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGING/etc/passwd"
    printf 'root:x:0:\n' >"$STAGING/etc/group"
    printf '127.0.0.1 localhost\n' >"$STAGING/etc/hosts"
    write_init

    # Relative links, so that nothing in the tree points outside it.
    local applet
    while read -r applet; do
        [ -e "$STAGING/$applet" ] || [ -L "$STAGING/$applet" ] && continue
        mkdir -p "$(dirname "$STAGING/$applet")"
        ln -sr "$STAGING/bin/busybox" "$STAGING/$applet"
    done < <(/bin/busybox --list-full | grep -v '^bin/busybox$')

    # Uncompressed: under TCG the kernel unpacks a plain cpio faster than it inflates gzip.
    (cd "$STAGING" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
        >"$GUEST_DIR/base.cpio.new"
    mv "$GUEST_DIR/base.cpio.new" "$GUEST_DIR/base.cpio"
    echo "$fingerprint" >"$stamp"
    log "initramfs $GUEST_DIR/base.cpio ($(du -h "$GUEST_DIR/base.cpio" | cut -f1))"
}

# ---------------------------------------------------------------------------------------------
# Extra layers: tools and modules for one scenario only
#
# `build-guest.sh --layer FILE ITEM...` (run.sh calls it for a scenario with a `# vm-tools:` or
# `# vm-modules:` header) writes FILE, a cpio archive that run.sh appends to the base
# initramfs for that scenario only, so that a large tool does not slow every other boot. An
# ITEM is one of:
#   - a host command (looked up on PATH), or the absolute path of a host program that is not
#     on PATH (/usr/lib/drbd/drbdadm-84): put in the guest's /usr/local/bin under its own name,
#     ahead of busybox, with its libraries;
#   - NAME.ko, a module of the guest kernel: put in /lib/modules/vmtest with every module it
#     depends on (modinfo's depends=, and a soft pre-dependency where the package has a module
#     of that name), and NAME.deps listing those to load first, in order, for load_module.
# FILE is rebuilt only when one of its inputs changes (FILE.stamp).

# command:package pairs for the tools a scenario may ask for; a command the host already has
# needs no entry. losetup comes from util-linux (busybox's has no --direct-io), sfdisk from
# fdisk; drbd-utils puts the DRBD 8.4 userland (the guest kernel's drbd.ko is 8.4) in
# /usr/lib/drbd, off PATH.
LAYER_TOOLS=(
    fio:fio
    losetup:mount
    blkdiscard:util-linux
    sfdisk:fdisk
    drbdmeta:drbd-utils
    /usr/lib/drbd/drbdadm-84:drbd-utils
    /usr/lib/drbd/drbdsetup-84:drbd-utils
)

layer_package() {
    local pair
    for pair in "${LAYER_TOOLS[@]}"; do
        [ "${pair%:*}" = "$1" ] && echo "${pair##*:}" && return 0
    done
    return 0
}

# tool_path ITEM: the host file a tool item names, or nothing if there is none (yet).
tool_path() {
    case $1 in
        /*) [ -x "$1" ] && echo "$1" ;;
        *) command -v "$1" 2>/dev/null ;;
    esac
    return 0
}

install_layer_tools() {
    local item package
    local -a packages=()
    for item in "$@"; do
        case $item in *.ko) continue ;; esac
        [ -n "$(tool_path "$item")" ] && continue
        package=$(layer_package "$item")
        [ -n "$package" ] || die "no $item on this host, and LAYER_TOOLS names no package for it"
        [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
    done
    [ "${#packages[@]}" -gt 0 ] || return 0
    apt_update
    log "installing ${packages[*]}"
    apt-get install -y -qq --no-install-recommends "${packages[@]}" \
        || die "apt-get install ${packages[*]} failed"
    for item in "$@"; do
        case $item in *.ko) continue ;; esac
        [ -n "$(tool_path "$item")" ] || die "$item is still missing"
    done
}

# The kernel package target/vm/kernel was extracted from.
kernel_deb() {
    if [ -n "${TANDEM_VM_KERNEL_DEB:-}" ]; then
        echo "$TANDEM_VM_KERNEL_DEB"
    else
        echo "$CACHE_DIR/$(cat "$KERNEL_DIR/source")"
    fi
}

# package_module NAME: the module file NAME in the kernel package ('-' and '_' are the same in
# module names), or nothing. The package is unpacked once per run, on the first call.
package_module() {
    local module=$1 deb version
    if [ -z "$PACKAGE_TREE" ]; then
        deb=$(kernel_deb)
        [ -f "$deb" ] || die "no kernel package $deb to take $module.ko from"
        PACKAGE_TREE=$(mktemp -d "$VM_DIR/extract.XXXXXX")
        dpkg-deb -x "$deb" "$PACKAGE_TREE"
    fi
    version=$(cat "$KERNEL_DIR/version")
    find "$PACKAGE_TREE/lib/modules/$version" "$PACKAGE_TREE/usr/lib/modules/$version" \
        -name "$(printf '%s' "$module" | sed 's/[-_]/[-_]/g').ko*" 2>/dev/null | head -n 1 || true
}

# modinfo_field FILE FIELD: a field of a module's .modinfo (several values, one a line).
modinfo_field() {
    objcopy -O binary --only-section=.modinfo "$1" /dev/stdout | tr '\0' '\n' \
        | sed -n "s/^$2=//p"
}

# extract_module NAME: target/vm/kernel/modules/NAME.ko from the kernel package, and NAME.deps,
# the modules to load before it (one line, in load order; each of them extracted the same
# way). The guest has no modprobe and no modules.dep: load_module reads NAME.deps.
extract_module() {
    local module=${1//-/_} found depends soft dep
    local -a before=()
    [ -f "$KERNEL_DIR/modules/$module.ko" ] && [ -f "$KERNEL_DIR/modules/$module.deps" ] && return 0
    found=$(package_module "$module")
    [ -n "$found" ] || die "$(basename "$(kernel_deb)") has no module $module"
    decompress_module "$found" "$KERNEL_DIR/modules/$module.ko.new"
    depends=$(modinfo_field "$KERNEL_DIR/modules/$module.ko.new" depends | tr ',' ' ')
    # `softdep=pre: a b post: c`: the pre modules are loaded first where they are modules; a
    # name the package has no module for is built in or an alias of a built-in one (libcrc32c
    # asks for crc32c, which this kernel has built in: CONFIG_CRYPTO_CRC32C=y).
    soft=$(modinfo_field "$KERNEL_DIR/modules/$module.ko.new" softdep \
        | sed -n 's/.*pre:\(.*\)/\1/p' | sed 's/post:.*//')
    for dep in $soft; do
        if [ -n "$(package_module "$dep")" ]; then
            before+=("${dep//-/_}")
        else
            log "$module.ko: soft dependency $dep is no module in the package (built in or an alias): not loaded"
        fi
    done
    for dep in $depends; do before+=("${dep//-/_}"); done
    for dep in "${before[@]}"; do
        [ "$dep" != "$module" ] || die "$module.ko depends on itself"
        extract_module "$dep"
    done
    mv "$KERNEL_DIR/modules/$module.ko.new" "$KERNEL_DIR/modules/$module.ko"
    echo "${before[*]}" >"$KERNEL_DIR/modules/$module.deps"
    log "extracted $module.ko${before[*]:+ (loaded after ${before[*]})}"
}

# module_closure NAME...: each module and everything it loads after, once each.
module_closure() {
    local module
    for module in "$@"; do
        module=${module//-/_}
        # shellcheck disable=SC2046 # a .deps file is words
        module_closure $(cat "$KERNEL_DIR/modules/$module.deps")
        echo "$module"
    done | awk '!seen[$0]++'
}

layer_fingerprint() {
    local item library path
    {
        sha256sum "${BASH_SOURCE[0]}"
        cat "$KERNEL_DIR/version"
        for item in "$@"; do
            case $item in
                *.ko) sha256sum "$KERNEL_DIR/modules/$item" "$KERNEL_DIR/modules/${item%.ko}.deps" ;;
                *)
                    path=$(tool_path "$item")
                    stat -L -c '%n %s %Y' "$path"
                    while read -r library; do
                        stat -L -c '%n %s %Y' "$library"
                    done < <(ldd "$path" 2>/dev/null | grep -oE '/[^ ]+' || true)
                    ;;
            esac
        done
    } | sha256sum | cut -d' ' -f1
}

build_layer() {
    local out=$1 item fingerprint module
    shift
    [ "$#" -gt 0 ] || die "--layer FILE needs at least one tool or NAME.ko"
    [ -f "$KERNEL_DIR/version" ] || die "no guest kernel in $KERNEL_DIR: run build-guest.sh first"
    install_layer_tools "$@"
    local -a tools=() modules=()
    for item in "$@"; do
        case $item in
            *.ko)
                extract_module "${item%.ko}"
                modules+=("${item%.ko}")
                ;;
            *) tools+=("$item") ;;
        esac
    done
    # The modules named and those they load after.
    local -a items=("${tools[@]}")
    if [ "${#modules[@]}" -gt 0 ]; then
        while read -r module; do items+=("$module.ko"); done < <(module_closure "${modules[@]}")
    fi
    fingerprint=$(layer_fingerprint "${items[@]}")
    if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$fingerprint" ]; then
        log "layer up to date ($out)"
        return 0
    fi
    log "assembling the layer $(basename "$out"): ${items[*]}"
    mkdir -p "$(dirname "$out")"
    STAGING=$(mktemp -d "$(dirname "$out")/staging.XXXXXX")
    for item in "${items[@]}"; do
        case $item in
            *.ko)
                put_file "$KERNEL_DIR/modules/$item" "/lib/modules/vmtest/$item"
                put_file "$KERNEL_DIR/modules/${item%.ko}.deps" "/lib/modules/vmtest/${item%.ko}.deps"
                ;;
            *) put_binary "$(tool_path "$item")" "/usr/local/bin/$(basename "$item")" ;;
        esac
    done
    (cd "$STAGING" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
        >"$out.new"
    mv "$out.new" "$out"
    echo "$fingerprint" >"$out.stamp"
    log "layer $out ($(du -h "$out" | cut -f1))"
}

main() {
    if [ "${1:-}" = --layer ]; then
        [ "$#" -ge 3 ] || die "usage: build-guest.sh --layer FILE TOOL|NAME.ko..."
        shift
        build_layer "$@"
        return 0
    fi
    install_packages
    mkdir -p "$VM_DIR"
    prepare_kernel
    build_tandem
    build_initramfs
    log "guest ready: kernel $(cat "$KERNEL_DIR/version"), tandem from $TANDEM"
}

main "$@"
