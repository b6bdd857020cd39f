#!/usr/bin/env bash
# The demo: two tandem nodes keep one disk, on this one machine.
#
# alpha (127.0.0.1) and beta (127.0.0.2) each run a tandem daemon over a 512 MiB file. alpha is
# made primary and the volume is fully synced to beta; alpha then mounts the volume through NBD
# (nbdfuse + a loop device), makes an ext4 file system and writes files. After a switchover
# (alpha secondary, beta primary) beta mounts its own copy and checks every file.
#
# Run it as root on Debian or Ubuntu: what is missing is installed with apt-get. Everything it
# makes (daemons, FUSE mounts, loop devices, the scratch directory) is removed however it exits.
#
# Environment:
#   TANDEM_DEMO_DIR=DIR               scratch directory; must not exist or be empty
#                                     (default: a new /tmp/tandem-demo.XXXXXX)
#   TANDEM_DEMO_KEEP=1                keep the scratch directory (configuration, logs, disks)
#   TANDEM_DEMO_SYNC_TIMEOUT=SECONDS  how long the first full sync may take (default 300)
#   TANDEM_DEMO_IO_TIMEOUT=SECONDS    how long a volume may stay mounted on one node (default 300)
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
set -o errtrace

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VOLUME=r0
DISK_SIZE=512M
SYNC_TIMEOUT=${TANDEM_DEMO_SYNC_TIMEOUT:-300}
IO_TIMEOUT=${TANDEM_DEMO_IO_TIMEOUT:-300}
declare -A ADDRESS=([alpha]=127.0.0.1 [beta]=127.0.0.2)
NODES=(alpha beta)

# State that the cleanup reads; each item is set as soon as the thing exists.
DIR=""               # the scratch directory, once this script made it
DIR_EXISTED=0        # TANDEM_DEMO_DIR was an existing empty directory: empty it, keep it
SCRATCH_MADE=0
CONF=""              # the configuration file
TANDEM=""            # the tandem binary
declare -A DAEMON_PID=()
declare -A DAEMON_STATUS=() # exit status of each daemon, once stopped
NBDFUSE_PID=""       # the running nbdfuse
FUSE_DIR=""          # its mount point
LOOP_DEV=""          # the loop device over the NBD file
LOOP_FILE=""         # that file
MNT_DIR=""           # where the file system is mounted
WATCHDOG_PID=""      # bounds the time the volume stays mounted (see start_watchdog)
CURRENT_STEP="starting"
FAILED_COMMAND=""
DIED=0
STARTED=$SECONDS

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:$HOME/.cargo/bin"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

# ---------------------------------------------------------------------------------------------
# Output and waiting

step() {
    CURRENT_STEP=$*
    printf '\n==> %s\n' "$*"
}

info() { printf '    %s\n' "$*"; }

warn() { printf 'demo: warning: %s\n' "$*" >&2; }

die() {
    DIED=1
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

# Prints a command the way a user would type it, then runs it with its output indented.
run() {
    show_and_run "$*" "$@"
}

# `tandem --node NODE ARGS...` against the demo configuration, shown then run. A daemon that
# stopped answering cannot hang the demo: the command gets 60 s.
tandem_on() {
    local node=$1
    shift
    show_and_run "tandem --node $node $*" \
        timeout --foreground 60 "$TANDEM" --config "$CONF" --node "$node" "$@"
}

# `tandem --node NODE volume wait VOLUME CONDITION --timeout SECONDS`, bounded from outside too.
tandem_wait() {
    local node=$1 condition=$2 seconds=$3
    show_and_run "tandem --node $node volume wait $VOLUME $condition --timeout $seconds" \
        timeout --foreground $((seconds + 30)) "$TANDEM" --config "$CONF" --node "$node" \
        volume wait "$VOLUME" "$condition" --timeout "$seconds"
}

show_and_run() {
    local shown=$1 status=0
    shift
    printf '    $ %s\n' "$shown"
    { "$@" 2>&1 | sed 's/^/      /'; status=${PIPESTATUS[0]}; } || true
    case $status in
        0) ;;
        124) die "\`$shown\` did not finish in time (the daemon does not answer?)" ;;
        *) die "\`$shown\` failed (exit status $status)" ;;
    esac
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds; dies after SECONDS.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            die "timed out after ${seconds}s waiting for $what"
        fi
        sleep 0.1
    done
}

# Like wait_for, but returns 1 instead of dying (for the cleanup).
wait_quietly() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
gone() { ! alive "$1"; }

# ---------------------------------------------------------------------------------------------
# Cleanup: runs on every exit, in the reverse order of setup, and only touches what this
# script made.

# From the mount table: mountpoint(1) cannot stat a FUSE mount whose server died.
mounted() {
    [ -n "$1" ] && awk -v dir="$1" '$2 == dir { found = 1 } END { exit !found }' /proc/self/mounts
}

# The loop device still maps our file (it may already be detached, or reused by someone else).
loop_is_ours() {
    local backing="/sys/block/${LOOP_DEV#/dev/}/loop/backing_file"
    [ -n "$LOOP_DEV" ] && [ -r "$backing" ] && [ "$(cat "$backing" 2>/dev/null)" = "$LOOP_FILE" ]
}
loop_released() { ! loop_is_ours; }

fuse_released() { gone "$NBDFUSE_PID" && ! mounted "$FUSE_DIR"; }

# Aborting the FUSE connection makes every request still waiting on the NBD server fail, so
# nothing above it (loop device, ext4, umount) can stay blocked.
abort_fuse() {
    if alive "$NBDFUSE_PID"; then
        warn "$1; aborting the FUSE connection (nbdfuse pid $NBDFUSE_PID)"
        kill -KILL "$NBDFUSE_PID" 2>/dev/null || true
    fi
}

# Unmounts the file system. umount runs in the background: a daemon that stopped answering
# would block it for ever, until the FUSE connection under it is aborted.
unmount_fs() {
    local pid
    if mounted "$MNT_DIR"; then
        umount "$MNT_DIR" 2>/dev/null &
        pid=$!
        if ! wait_quietly 15 gone "$pid"; then
            abort_fuse "unmounting $MNT_DIR hangs"
            wait_quietly 15 gone "$pid" || warn "umount $MNT_DIR still hangs"
        fi
        gone "$pid" && { wait "$pid" 2>/dev/null || true; }
        if mounted "$MNT_DIR"; then
            warn "cannot unmount $MNT_DIR; detaching it lazily"
            umount -l "$MNT_DIR" || true
        fi
    fi
    MNT_DIR=""
}

detach_loop() {
    if loop_is_ours; then
        losetup -d "$LOOP_DEV" || true
        # The kernel releases the file when the last opener (udev, blkid...) closes it.
        wait_quietly 15 loop_released || warn "$LOOP_DEV still maps $LOOP_FILE"
    fi
    LOOP_DEV=""
    LOOP_FILE=""
}

# While a volume is mounted, every command on it (mkfs, cp, sync, sha256sum, umount) waits on
# the daemon through NBD and FUSE, in the kernel, where no timeout reaches. The watchdog bounds
# that: after IO_TIMEOUT seconds it stops the demo (SIGUSR1) and aborts the FUSE connection,
# which fails the blocked requests. detach_volume stops it.
start_watchdog() {
    local target=$1 main=$$
    (
        trap - ERR EXIT INT TERM HUP USR1
        set +e
        deadline=$((SECONDS + IO_TIMEOUT))
        while kill -0 "$target" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                [ "$(cat "/proc/$target/comm" 2>/dev/null)" = nbdfuse ] || exit 0
                printf '\ndemo: the mounted volume did not finish its work in %ds; aborting\n' \
                    "$IO_TIMEOUT" >&2
                kill -USR1 "$main"
                kill -KILL "$target"
                exit 0
            fi
            sleep 0.2
        done
    ) &
    WATCHDOG_PID=$!
}

stop_watchdog() {
    if [ -n "$WATCHDOG_PID" ]; then
        kill "$WATCHDOG_PID" 2>/dev/null || true
        wait "$WATCHDOG_PID" 2>/dev/null || true
    fi
    WATCHDOG_PID=""
}

# Unmounts the FUSE file system (again, if nbdfuse mounted it only now) until nbdfuse exits.
nbdfuse_stopped() {
    if mounted "$FUSE_DIR"; then
        fusermount3 -u "$FUSE_DIR" 2>/dev/null || umount "$FUSE_DIR" 2>/dev/null || true
    fi
    gone "$NBDFUSE_PID" && ! mounted "$FUSE_DIR"
}

stop_nbdfuse() {
    if [ -n "$NBDFUSE_PID" ] && ! wait_quietly 10 nbdfuse_stopped; then
        warn "nbdfuse (pid $NBDFUSE_PID) did not exit after the unmount; terminating it"
        kill -TERM "$NBDFUSE_PID" 2>/dev/null || true
        wait_quietly 5 gone "$NBDFUSE_PID" || kill -KILL "$NBDFUSE_PID" 2>/dev/null || true
    fi
    [ -z "$NBDFUSE_PID" ] || wait "$NBDFUSE_PID" 2>/dev/null || true
    if mounted "$FUSE_DIR"; then
        warn "$FUSE_DIR is still mounted; detaching it lazily"
        umount -l "$FUSE_DIR" || true
    fi
    NBDFUSE_PID=""
    FUSE_DIR=""
}

stop_daemons() {
    local node pid
    for node in "${!DAEMON_PID[@]}"; do
        kill -TERM "${DAEMON_PID[$node]}" 2>/dev/null || true
        kill -CONT "${DAEMON_PID[$node]}" 2>/dev/null || true # in case someone stopped it
    done
    for node in "${!DAEMON_PID[@]}"; do
        pid=${DAEMON_PID[$node]}
        if ! wait_quietly 30 gone "$pid"; then
            warn "the $node daemon (pid $pid) did not stop within 30s after SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            wait_quietly 5 gone "$pid" || warn "the $node daemon (pid $pid) survives SIGKILL"
        fi
        DAEMON_STATUS[$node]=unknown
        if gone "$pid"; then
            DAEMON_STATUS[$node]=0
            wait "$pid" 2>/dev/null || DAEMON_STATUS[$node]=$?
        fi
        unset "DAEMON_PID[$node]"
    done
}

# Any mount left below the scratch directory (then it must not be removed).
mounts_below() {
    awk -v dir="$1/" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts
}

remove_scratch_dir() {
    [ -n "$DIR" ] && [ -d "$DIR" ] || return 0
    if [ "${TANDEM_DEMO_KEEP:-0}" = 1 ]; then
        info "kept $DIR (TANDEM_DEMO_KEEP=1)"
    elif [ -n "$(mounts_below "$DIR")" ]; then
        warn "not removing $DIR: something is still mounted below it"
    elif [ "$DIR_EXISTED" = 1 ]; then
        find "$DIR" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
    else
        rm -rf --one-file-system "$DIR"
    fi
    DIR=""
}

cleanup() {
    set +e
    stop_watchdog
    unmount_fs
    detach_loop
    stop_nbdfuse
    stop_daemons
    remove_scratch_dir
}

show_logs() {
    local node log
    for node in "${NODES[@]}"; do
        log=${DIR:+$DIR/$node/daemon.log}
        if [ -n "$log" ] && [ -s "$log" ]; then
            printf '\n--- last lines of the %s daemon log (%s)\n' "$node" "$log" >&2
            tail -n 25 "$log" >&2
        fi
        log=${DIR:+$DIR/$node/nbdfuse.log}
        if [ -n "$log" ] && [ -s "$log" ]; then
            printf '\n--- nbdfuse log on %s (%s)\n' "$node" "$log" >&2
            tail -n 10 "$log" >&2
        fi
    done
}

# Says which daemon is no longer running, and how it ended.
report_dead_daemons() {
    local node pid status
    for node in "${!DAEMON_PID[@]}"; do
        pid=${DAEMON_PID[$node]}
        alive "$pid" && continue
        status=0
        wait "$pid" 2>/dev/null || status=$?
        if ((status > 128)); then
            printf 'demo: the %s daemon (pid %s) had died: killed by signal %d\n' \
                "$node" "$pid" $((status - 128)) >&2
        else
            printf 'demo: the %s daemon (pid %s) had exited with status %d\n' \
                "$node" "$pid" "$status" >&2
        fi
        unset "DAEMON_PID[$node]"
    done
}

on_exit() {
    local status=$?
    set +e
    trap - ERR
    trap '' INT TERM HUP USR1 # the cleanup is bounded; let it finish
    if [ "$status" -ne 0 ]; then
        case $status in
            129 | 130 | 143) printf '\ndemo: INTERRUPTED in step "%s"\n' "$CURRENT_STEP" >&2 ;;
            124) printf '\ndemo: TIMED OUT in step "%s"\n' "$CURRENT_STEP" >&2 ;;
            *) printf '\ndemo: FAILED in step "%s" (exit status %d)\n' "$CURRENT_STEP" "$status" >&2 ;;
        esac
        if [ "$DIED" = 0 ] && [ -n "$FAILED_COMMAND" ]; then
            printf 'demo: the command that failed: %s\n' "$FAILED_COMMAND" >&2
        fi
        report_dead_daemons
        show_logs
        printf '\n==> cleaning up after the failure\n' >&2
    fi
    cleanup
    if [ "$status" -ne 0 ] && [ "$SCRATCH_MADE" = 1 ] && [ "${TANDEM_DEMO_KEEP:-0}" != 1 ]; then
        printf 'demo: set TANDEM_DEMO_KEEP=1 to keep the scratch directory and its logs\n' >&2
    fi
    exit "$status"
}

trap 'FAILED_COMMAND="$BASH_COMMAND (line $LINENO)"' ERR
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'DIED=1; exit 124' USR1 # from the watchdog, which said why

# ---------------------------------------------------------------------------------------------
# The steps

check_machine() {
    [ "$(id -u)" = 0 ] || die "run the demo as root (it mounts file systems and loop devices)"
    [ "$(uname -s)" = Linux ] || die "the demo needs Linux"
    [ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
    [ -c /dev/fuse ] || die "no /dev/fuse: this kernel has no FUSE, which nbdfuse needs"
    [ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
    [ -e /dev/loop-control ] || die "no /dev/loop-control: this kernel has no loop devices"
}

make_scratch_dir() {
    if [ -n "${TANDEM_DEMO_DIR:-}" ]; then
        case $TANDEM_DEMO_DIR in
            /*) ;;
            *) TANDEM_DEMO_DIR=$PWD/$TANDEM_DEMO_DIR ;;
        esac
        [[ $TANDEM_DEMO_DIR != *[[:space:]]* ]] || die "TANDEM_DEMO_DIR must not contain spaces"
        if [ -e "$TANDEM_DEMO_DIR" ] && [ -n "$(ls -A "$TANDEM_DEMO_DIR")" ]; then
            die "TANDEM_DEMO_DIR=$TANDEM_DEMO_DIR is not empty (a kept run?); remove it first"
        fi
        [ -e "$TANDEM_DEMO_DIR" ] && DIR_EXISTED=1
        mkdir -p "$TANDEM_DEMO_DIR"
        DIR=$TANDEM_DEMO_DIR
    else
        DIR=$(mktemp -d /tmp/tandem-demo.XXXXXX)
    fi
    DIR=$(cd "$DIR" && pwd -P) # the kernel reports the loop device's file by its real path
    SCRATCH_MADE=1
    chmod 700 "$DIR"
    info "scratch directory $DIR"
}

# command:package pairs, for Debian 12 (losetup, mount and umount are in the `mount` package).
REQUIRED_TOOLS=(
    nbdfuse:libnbd-bin
    nbdinfo:libnbd-bin
    fusermount3:fuse3
    mkfs.ext4:e2fsprogs
    losetup:mount
    mount:mount
    umount:mount
    mountpoint:util-linux
    setsid:util-linux
    python3:python3
    sha256sum:coreutils
    truncate:coreutils
)

# Build-time packages without a command to look for: libublk's bindings are generated with
# libclang when tandem is built.
REQUIRED_PACKAGES=(libclang-dev)

has_candidate() {
    apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}

package_installed() {
    dpkg-query -W -f '${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_missing() {
    local pair tool package missing=() packages=()
    for pair in "${REQUIRED_TOOLS[@]}"; do
        tool=${pair%%:*}
        package=${pair#*:}
        if ! command -v "$tool" >/dev/null; then
            missing+=("$tool")
            [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
        fi
    done
    for package in "${REQUIRED_PACKAGES[@]}"; do
        package_installed "$package" || { missing+=("$package"); packages+=("$package"); }
    done
    if [ ${#missing[@]} -eq 0 ]; then
        info "nothing to install: every tool the demo uses is present"
        return
    fi
    info "missing: ${missing[*]}"
    command -v apt-get >/dev/null \
        || die "no apt-get here; install the packages that provide: ${missing[*]}"
    local log=$DIR/apt.log
    info "apt-get update (log: $log)"
    apt-get update >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed"; }
    # Newer Debian and Ubuntu ship nbdfuse in a package of its own.
    if [[ " ${packages[*]} " == *" libnbd-bin "* ]] && has_candidate nbdfuse; then
        packages+=(nbdfuse)
    fi
    for package in "${packages[@]}"; do
        if package_installed "$package"; then
            info "$package is already installed"
            continue
        fi
        if ! apt-get install -y --no-install-recommends "$package" >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            die "apt-get install $package failed"
        fi
        info "installed $package"
    done
    for tool in "${missing[@]}"; do
        [[ " ${REQUIRED_PACKAGES[*]} " == *" $tool "* ]] && continue
        command -v "$tool" >/dev/null || die "$tool is still missing after installing ${packages[*]}"
    done
}

build_tandem() {
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
    printf '    $ cargo build --release -p manager --bin tandem\n'
    # Cargo reports where it put the binary (target/release/tandem unless CARGO_TARGET_DIR or a
    # cargo configuration says otherwise); its progress and diagnostics go to stderr as usual.
    TANDEM=$(cd "$ROOT" && cargo build --release -p manager --bin tandem \
        --message-format=json-render-diagnostics \
        | python3 -c '
import json, sys
path = ""
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") == "compiler-artifact" and message.get("executable") \
            and message["target"]["name"] == "tandem":
        path = message["executable"]
print(path)')
    if [ -z "$TANDEM" ] || [ ! -x "$TANDEM" ]; then
        die "cargo reported no tandem binary"
    fi
    info "built $TANDEM"
}

# The first port from $1 that is free on both loopback addresses, and not $2.
free_port() {
    python3 - "$1" "${2:-0}" "${ADDRESS[@]}" <<'EOF'
import socket, sys
start, taken, addresses = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def free(port):
    for address in addresses:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True
for port in range(start, start + 500):
    if port != taken and free(port):
        print(port)
        sys.exit(0)
sys.exit(f"no free port in {start}..{start + 499} on {' and '.join(addresses)} "
         "(127.0.0.2 must be usable: ip addr add 127.0.0.2/8 dev lo)")
EOF
}

write_configuration() {
    local node
    REPL_PORT=$(free_port 7789)
    NBD_PORT=$(free_port 10809 "$REPL_PORT")
    for node in "${NODES[@]}"; do
        mkdir -p "$DIR/$node/state" "$DIR/$node/fuse" "$DIR/$node/mnt"
        truncate -s "$DISK_SIZE" "$DIR/$node/disk.img"
    done
    info "backing stores: $DISK_SIZE files $DIR/alpha/disk.img and $DIR/beta/disk.img"
    "$TANDEM" keygen >"$DIR/cluster.key"
    chmod 600 "$DIR/cluster.key"
    info "cluster key $DIR/cluster.key (tandem keygen, mode 600)"
    CONF=$DIR/tandem.toml
    cat >"$CONF" <<EOF
# Written by scripts/demo.sh: two nodes on this machine, on two loopback addresses.
[cluster]
name = "demo"
key_file = "$DIR/cluster.key"

[[node]]
name = "alpha"
address = "${ADDRESS[alpha]}"
state_dir = "$DIR/alpha/state"

[[node]]
name = "beta"
address = "${ADDRESS[beta]}"
state_dir = "$DIR/beta/state"

[[volume]]
name = "$VOLUME"
port = $REPL_PORT
protocol = "C"
compression = "lz4"
frontend = "nbd"
nbd_port = $NBD_PORT
[volume.backing]
alpha = "$DIR/alpha/disk.img"
beta = "$DIR/beta/disk.img"
EOF
    info "configuration $CONF:"
    sed 's/^/      /' "$CONF"
    show_and_run "tandem config check" "$TANDEM" --config "$CONF" config check
}

create_metadata() {
    local node
    for node in "${NODES[@]}"; do
        tandem_on "$node" create-md "$VOLUME"
    done
}

daemon_answers() {
    local node=$1
    alive "${DAEMON_PID[$node]}" || die "the $node daemon exited during start-up"
    timeout 5 "$TANDEM" --config "$CONF" --node "$node" status >/dev/null 2>&1
}

start_daemons() {
    local node
    for node in "${NODES[@]}"; do
        printf '    $ tandem --node %s daemon >%s 2>&1 &\n' "$node" "$DIR/$node/daemon.log"
        # A session of its own, so that a ^C reaches only this script, which then stops
        # everything in order.
        setsid "$TANDEM" --config "$CONF" --node "$node" daemon \
            >"$DIR/$node/daemon.log" 2>&1 </dev/null &
        DAEMON_PID[$node]=$!
        info "$node daemon: pid ${DAEMON_PID[$node]}"
    done
    for node in "${NODES[@]}"; do
        wait_for 30 "the $node daemon's admin socket" daemon_answers "$node"
    done
    info "both daemons answer on their admin sockets"
    tandem_wait alpha connected 30
}

# Human-readable replication traffic of NODE, from `tandem status --json`.
show_traffic() {
    local node=$1
    timeout --foreground 60 "$TANDEM" --config "$CONF" --node "$node" status --json | python3 -c '
import json, sys
def mib(n):
    return f"{n / 1048576:.1f} MiB"
report = json.load(sys.stdin)
for v in report["volumes"]:
    if v["name"] == sys.argv[1]:
        node = report["node"]
        sent, received = mib(v["wire_bytes_sent"]), mib(v["wire_bytes_received"])
        behind = mib(v["out_of_sync_bytes"])
        print(f"    {node}: replication link sent {sent}, received {received} "
              f"(compressed, encrypted); out of sync {behind}")
' "$VOLUME"
}

promote_and_sync() {
    tandem_on alpha volume primary "$VOLUME" --force
    tandem_on alpha status
    tandem_wait alpha synced "$SYNC_TIMEOUT"
    tandem_on alpha status
    tandem_on beta status
}

nbdfuse_ready() {
    alive "$NBDFUSE_PID" || die "nbdfuse exited (see $1)"
    mounted "$FUSE_DIR" && [ -e "$FUSE_DIR/$VOLUME" ]
}

# Mounts NODE's volume: NBD -> nbdfuse file -> loop device -> ext4 (made when $2 = mkfs).
attach_volume() {
    local node=$1 mkfs=${2:-}
    local uri="nbd://${ADDRESS[$node]}:$NBD_PORT/$VOLUME" log=$DIR/$node/nbdfuse.log
    FUSE_DIR=$DIR/$node/fuse
    printf '    $ nbdfuse %s %s &\n' "$FUSE_DIR/$VOLUME" "$uri"
    setsid nbdfuse "$FUSE_DIR/$VOLUME" "$uri" >"$log" 2>&1 </dev/null &
    NBDFUSE_PID=$!
    start_watchdog "$NBDFUSE_PID"
    wait_for 30 "nbdfuse to show $FUSE_DIR/$VOLUME" nbdfuse_ready "$log"
    info "$FUSE_DIR/$VOLUME: $(stat -c %s "$FUSE_DIR/$VOLUME") bytes, served by the $node daemon"

    printf '    $ losetup -f --show %s\n' "$FUSE_DIR/$VOLUME"
    LOOP_FILE=$FUSE_DIR/$VOLUME
    LOOP_DEV=$(losetup -f --show "$LOOP_FILE")
    info "$LOOP_DEV"
    if [ "$mkfs" = mkfs ]; then
        run mkfs.ext4 -q -L tandem-demo "$LOOP_DEV"
    fi
    MNT_DIR=$DIR/$node/mnt
    run mount "$LOOP_DEV" "$MNT_DIR"
}

detach_volume() {
    printf '    $ umount %s\n' "$MNT_DIR"
    umount "$MNT_DIR"
    MNT_DIR=""
    printf '    $ losetup -d %s\n' "$LOOP_DEV"
    losetup -d "$LOOP_DEV"
    wait_for 15 "$LOOP_DEV to release $LOOP_FILE" loop_released
    LOOP_DEV=""
    LOOP_FILE=""
    printf '    $ fusermount3 -u %s\n' "$FUSE_DIR"
    fusermount3 -u "$FUSE_DIR"
    wait_for 15 "nbdfuse to exit" fuse_released
    stop_watchdog
    local status=0
    wait "$NBDFUSE_PID" || status=$?
    [ "$status" = 0 ] || warn "nbdfuse exited with status $status"
    NBDFUSE_PID=""
    FUSE_DIR=""
}

write_files() {
    info "writing files on alpha's file system:"
    mkdir -p "$MNT_DIR/docs"
    head -c 16M /dev/urandom >"$MNT_DIR/random-16MiB.bin"
    head -c 300K /dev/urandom >"$MNT_DIR/docs/small.bin"
    cp "$ROOT/README.md" "$MNT_DIR/docs/README.md"
    cat >"$MNT_DIR/hello.txt" <<EOF
Hello from alpha.
This file was written on $(date -u '+%Y-%m-%d %H:%M:%S UTC') through nbd://${ADDRESS[alpha]}:$NBD_PORT/$VOLUME,
replicated to beta with protocol C, and read back on beta after a switchover.
EOF
    # syncfs reports a write that failed anywhere below (loop device, FUSE, NBD); sync(2) does not.
    run sync -f "$MNT_DIR"
    (cd "$MNT_DIR" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum) \
        >"$DIR/checksums"
    sed 's/^/      /' "$DIR/checksums"
    info "$(df -h --output=used "$MNT_DIR" | tail -n 1 | tr -d ' ') used on $LOOP_DEV"
}

verify_files() {
    info "checking every file against the checksums recorded on alpha:"
    if ! (cd "$MNT_DIR" && sha256sum -c "$DIR/checksums") | sed 's/^/      /'; then
        die "the files read on beta differ from those written on alpha"
    fi
    run ls -lR "$MNT_DIR"
    run cat "$MNT_DIR/hello.txt"
}

switchover() {
    tandem_wait alpha synced 60
    tandem_on alpha volume secondary "$VOLUME"
    tandem_on beta volume primary "$VOLUME"
    tandem_wait beta primary 30
    tandem_on alpha status
    tandem_on beta status
}

stop_everything() {
    local node
    info "SIGTERM to both daemons (pids ${DAEMON_PID[*]}); they close the volume cleanly"
    stop_daemons
    for node in "${NODES[@]}"; do
        [ "${DAEMON_STATUS[$node]:-}" = 0 ] \
            || die "the $node daemon exited with status ${DAEMON_STATUS[$node]:-unknown}"
        if grep -q "closed cleanly volume=$VOLUME" "$DIR/$node/daemon.log"; then
            info "$node: daemon exited 0; its log says: closed cleanly volume=$VOLUME"
        else
            warn "the $node daemon exited 0 but its log does not say that $VOLUME closed cleanly"
        fi
    done
    remove_scratch_dir
}

main() {
    step "checking the machine"
    check_machine
    make_scratch_dir

    step "installing what is missing"
    install_missing

    step "building tandem"
    build_tandem

    step "configuration, cluster key and metadata for two nodes on this machine"
    write_configuration
    create_metadata

    step "starting the two daemons"
    start_daemons

    step "alpha becomes primary (forced: the metadata is fresh); full sync to beta"
    promote_and_sync

    step "mounting the volume on alpha through NBD and writing files"
    attach_volume alpha mkfs
    write_files
    tandem_on alpha status
    show_traffic alpha
    show_traffic beta
    detach_volume

    step "switchover: alpha secondary, beta primary"
    switchover

    step "mounting the volume on beta and reading the files back"
    attach_volume beta
    verify_files
    detach_volume

    step "stopping the daemons and cleaning up"
    stop_everything

    printf '\n    done in %d s\n' "$((SECONDS - STARTED))"
    echo "demo: the files written on alpha were read back on beta after a switchover"
}

main "$@"
