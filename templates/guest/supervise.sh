#!/bin/sh
# vmctl service helper inside a guest (busybox sh). Uploaded by vmctl/guest_container.py to
# /run/vmctl/supervise.sh over SSH at `up`; not part of the guest image. Every argument is a
# validated name (service `[a-z0-9-]`, disk serial `img-HEX`, 9p tag `vol-HEX`) and is only ever used quoted.
#
#   prepare NAME SERIAL [TAG ro|rw]...
#                         mount the image disk with <serial>SERIAL</serial> read-only (once per guest),
#                         mount each 9p volume TAG at /run/vmctl/volumes/TAG (once per guest; config.json
#                         binds it into the container), overlay the image with a writable tmpfs layer at
#                         /run/vmctl/svc/NAME/rootfs, and unpack the bundle (config.json, etc/) that comes
#                         as a tar on stdin
#   start NAME RESTART    run `supervise` detached; returns once the supervisor has written its pid. Also
#                         starts a halted (or exited) service again, from the same bundle and overlay
#   attach NAME [TOKEN]   `crun run` of a prepared container on this command's own stdin and output (the
#                         SSH channel of `vmctl run`, a terminal when it has one), no log, no restart;
#                         exits with crun's exit code. TOKEN: on a terminal, whose size `resize` sets
#   on-tty TOKEN exec ARGS...  `crun exec ARGS...` on a terminal, whose size `resize` sets
#   resize TOKEN ROWS COLS  the size of the terminal crun made for the process of `attach` or `on-tty` TOKEN
#                         (crun does not pass on a SIGWINCH of its own terminal, the SSH channel's pty)
#   supervise NAME RESTART  `crun run` in the foreground, output appended to container.log (and, with
#                         times, to container.log.t), the exit code recorded; RESTART is compose's
#                         policy: no, always, unless-stopped (both restart after any exit), on-failure
#                         or on-failure:N (after a non-zero exit, at most N times)
#   sysctl KEY VALUE...   set net.* sysctls of the guest (the network stack its one container shares)
#   wait-output NAME SECONDS  return once the container has written to its log (exit 1 after SECONDS):
#                         compare's "first output", one call instead of a poll per SSH round trip
#   status NAME           key=value lines: state, exit_code, restarts, started (guest uptime)
#   logs NAME raw|t LINES|all f|-  the container's log (`t`: with times), rotated files included; `f`: follow
#   halt NAME GRACE [SIGNAL]  SIGNAL (TERM), SIGKILL after GRACE seconds, the supervisor ended without a
#                         restart; the folder stays (state `exited`), so `start` runs it again (`vmctl stop`);
#                         prints exit_code=N when the container had ended with one
#   stop NAME GRACE [SIGNAL]  halt, then delete, unmount and remove the folder (`vmctl down`)
#
# Per service, /run/vmctl/svc/NAME/ holds: bundle/ (config.json, etc/, a `stdin_open` marker), rootfs/
# (the overlay), rw/ (tmpfs: upper, work), stdin (a FIFO, for `stdin_open`), container.log(.t) (and
# .1, .2... rotated, with `log_rotation` in bundle/: "MAX_BYTES KEEP"), state
# (starting|running|restarting|exited), exit_code, restarts, started, supervisor.pid, and `stopping`
# while a stop is in progress.

SELF=/run/vmctl/supervise.sh
STAMP=/run/vmctl/stamp.awk  # templates/logs/stamp.awk, uploaded beside this script
SVC_ROOT=/run/vmctl/svc
IMG_ROOT=/run/vmctl/images
VOL_ROOT=/run/vmctl/volumes
TTY_ROOT=/run/vmctl/tty  # TOKEN.pid: the process on a terminal of crun's, for `resize`
MAX_LOG_FILES=20  # vmctl/compose_values.py's: the most rotated log files there can be

TICK=/run/vmctl/tick  # a FIFO no one writes: `pause` reads it with a timeout

die() {
    echo "supervise: $*" >&2
    exit 1
}

# pause SECONDS: a wait without an exec. busybox's usleep is a program, and under TCG each exec costs
# ~4 ms of the guest's vCPU, taken from the container a wait loop is waiting for; `read -t` on a FIFO
# opened read-write is a builtin that just sleeps (no writer, no EOF).
pause() {
    [ -p "$TICK" ] || mkfifo -m 0600 "$TICK" 2> /dev/null || [ -p "$TICK" ] || { sleep 1; return 0; }
    read -r -t "$1" _ <> "$TICK"
    return 0
}

is_mounted() {
    grep -q "^[^ ]* $1 " /proc/mounts
}

# /sys/block/vdX/serial holds the libvirt <serial> of each virtio disk.
find_disk() {
    local block serial
    for block in /sys/block/vd*; do
        [ -r "$block/serial" ] || continue
        read -r serial < "$block/serial"
        if [ "$serial" = "$1" ]; then
            echo "/dev/${block##*/}"
            return 0
        fi
    done
    return 1
}

mount_image() {
    local img dev
    img="$IMG_ROOT/$1"
    is_mounted "$img" && return 0
    dev="$(find_disk "$1")" || die "no disk with serial $1 is attached (was the machine booted before this image was used? \`vmctl down\` and \`up\`)"
    mkdir -p "$img" || die "cannot create $img"
    mount -t ext4 -o ro,noload "$dev" "$img" || die "cannot mount $dev (serial $1) read-only"
}

# The host folder shared as virtio-9p device TAG (libvirt <filesystem>, <target dir="TAG"/>), read-only
# when every service of the machine mounts it read-only. 9p may be built in or a module the init loaded.
mount_volume() {
    local dir
    case "$1" in vol-*[!0-9a-f]*|vol-) die "invalid volume tag $1" ;; vol-*) ;; *) die "invalid volume tag $1" ;; esac
    case "$2" in ro|rw) ;; *) die "invalid volume mode $2" ;; esac
    dir="$VOL_ROOT/$1"
    is_mounted "$dir" && return 0
    grep -qw 9p /proc/filesystems || die "this guest's kernel has no 9p file system (volumes need CONFIG_9P_FS and CONFIG_NET_9P_VIRTIO)"
    mkdir -p "$dir" || die "cannot create $dir"
    mount -t 9p -o "trans=virtio,version=9p2000.L,$2" "$1" "$dir" \
        || die "cannot mount volume $1 ($2) (was the machine booted before this volume was added? \`vmctl down\` and \`up\`)"
}

prepare() {
    local dir name serial
    name="$1"
    serial="$2"
    shift 2
    dir="$SVC_ROOT/$name"
    [ ! -e "$dir" ] || stop "$name" 0
    mount_image "$serial"
    while [ $# -ge 2 ]; do
        mount_volume "$1" "$2"
        shift 2
    done
    set -- "$name" "$serial"
    mkdir -p "$dir/rw" "$dir/rootfs" "$dir/bundle" || die "cannot create $dir"
    mount -t tmpfs -o mode=0755 tmpfs "$dir/rw" || die "cannot mount the writable layer of $1"
    mkdir -p "$dir/rw/upper" "$dir/rw/work"
    mount -t overlay overlay -o "lowerdir=$IMG_ROOT/$2,upperdir=$dir/rw/upper,workdir=$dir/rw/work" "$dir/rootfs" \
        || die "cannot mount the overlay root of $1"
    tar -x -f - -C "$dir/bundle" || die "cannot unpack the bundle of $1"
    : > "$dir/container.log"
    : > "$dir/container.log.t"
    echo starting > "$dir/state"
}

start() {
    local dir tries
    dir="$SVC_ROOT/$1"
    [ -f "$dir/bundle/config.json" ] || die "service $1 is not prepared"
    # `state`, not the supervisor's pid: a pid of a run that ended may have been reused since
    case "$(cat "$dir/state" 2> /dev/null)" in starting|exited) ;; *) die "service $1 is running" ;; esac
    rm -f "$dir/stopping" "$dir/supervisor.pid"
    setsid sh "$SELF" supervise "$1" "$2" < /dev/null > /dev/null 2>&1 &
    tries=0
    until [ -s "$dir/supervisor.pid" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 500 ] || die "the supervisor of $1 did not start"
        pause 0.01
    done
}

# run_container NAME DIR: `crun run` in the foreground. With `tty`, crun hands the container a terminal
# only when its own stdin is one (tcgetattr fails on a FIFO), so util-linux's script runs it on a new pty
# and copies what that shows to our stdout (-e: crun's exit code; crun makes that outer pty raw, so only
# the container's own terminal turns \n into \r\n). The words of -c are a validated name and the path
# made of it.
run_container() {
    if [ ! -e "$2/bundle/tty" ]; then
        crun run --bundle "$2/bundle" "$1"
        return
    fi
    if ! command -v script > /dev/null; then
        echo "supervise: \`tty\` needs util-linux's \`script\` in the guest image, and this one has none"
        return 127
    fi
    script -q -e -c "exec crun run --bundle $2/bundle $1" /dev/null
}

attach() {
    local dir code
    dir="$SVC_ROOT/$1"
    [ -f "$dir/bundle/config.json" ] || die "service $1 is not prepared"
    echo running > "$dir/state"
    if [ -n "$2" ]; then
        on_tty "$2" run --bundle "$dir/bundle" "$1"
    else
        crun run --bundle "$dir/bundle" "$1"
    fi
    code=$?
    crun delete -f "$1" > /dev/null 2>&1
    echo "$code" > "$dir/exit_code"
    echo exited > "$dir/state"
    exit "$code"
}

# crun SUBCOMMAND (run or exec) with its process's pid in TTY_ROOT/TOKEN.pid while it runs
on_tty() {
    local pid_file code sub
    pid_file="$TTY_ROOT/$1.pid"
    mkdir -p "$TTY_ROOT" || die "cannot create $TTY_ROOT"
    shift
    sub="$1"
    shift
    crun "$sub" --pid-file "$pid_file" "$@"
    code=$?
    rm -f "$pid_file"
    return "$code"
}

# The terminal's slave end is the process's stdin; opened through /proc, so from outside its devpts
resize() {
    local pid
    pid="$(cat "$TTY_ROOT/$1.pid" 2> /dev/null)" || return 0  # not started yet, or ended: nothing to size
    stty -F "/proc/$pid/fd/0" rows "$2" cols "$3" 2> /dev/null || true
}

supervise() {
    local dir restarts code up _rest stdin max keep
    dir="$SVC_ROOT/$1"
    echo $$ > "$dir/supervisor.pid"
    max=0 keep=1
    [ ! -e "$dir/bundle/log_rotation" ] || read -r max keep < "$dir/bundle/log_rotation"
    case "$max$keep" in ''|*[!0-9]*) die "invalid log rotation of $1: $max $keep" ;; esac
    restarts=0
    echo 0 > "$dir/restarts"
    # `stopping` is checked before each run too: a halt during the restart delay must not be outrun
    while [ ! -e "$dir/stopping" ]; do
        read -r up _rest < /proc/uptime
        echo "$up" > "$dir/started"
        echo running > "$dir/state"
        # `stdin_open`: a FIFO opened read-write is a stdin that never reaches EOF (no writer ever closes it);
        # a terminal's input does not end either (`tty` without `stdin_open`: a shell waits, as under docker)
        stdin=/dev/null
        if [ -e "$dir/bundle/stdin_open" ] || [ -e "$dir/bundle/tty" ]; then
            [ -p "$dir/stdin" ] || mkfifo -m 600 "$dir/stdin" || die "cannot create the stdin of $1"
            stdin="$dir/stdin"
        fi
        # the output through stamp.awk (container.log as written, container.log.t with times: `logs -t`;
        # rotated as bundle/log_rotation says); the group records crun's exit code, which the pipeline's
        # own status would hide
        { run_container "$1" "$dir" 0<> "$stdin" 2>&1; echo $? > "$dir/exit_code"; } \
            | awk -v raw="$dir/container.log" -v stamped="$dir/container.log.t" -v max="$max" -v keep="$keep" \
                -f "$STAMP"
        read -r code < "$dir/exit_code" || code=255
        crun delete -f "$1" > /dev/null 2>&1
        [ ! -e "$dir/stopping" ] || break
        should_restart "$2" "$code" "$restarts" || break
        restarts=$((restarts + 1))
        echo "$restarts" > "$dir/restarts"
        echo restarting > "$dir/state"
        sleep 1
    done
    echo exited > "$dir/state"
}

set_sysctls() {
    while [ $# -ge 2 ]; do
        case "$1" in net.*) ;; *) die "only net.* sysctls are set on the guest: $1" ;; esac
        case "$1" in *[!a-z0-9_.-]*|*..*) die "invalid sysctl name $1" ;; esac
        case "$2" in *[!A-Za-z0-9\ ._-]*) die "invalid sysctl value for $1" ;; esac
        echo "$2" > "/proc/sys/$(echo "$1" | tr . /)" || die "cannot set sysctl $1"
        shift 2
    done
}

# should_restart POLICY EXIT_CODE RESTARTS_SO_FAR
should_restart() {
    case "$1" in
        always|unless-stopped) return 0 ;;
        on-failure) [ "$2" -ne 0 ] ;;
        on-failure:*) [ "$2" -ne 0 ] && [ "$3" -lt "${1#on-failure:}" ] ;;
        *) return 1 ;;
    esac
}

wait_output() {
    local log ticks
    log="$SVC_ROOT/$1/container.log"
    [ -e "$log" ] || die "service $1 is not prepared"
    ticks=0
    until [ -s "$log" ]; do
        ticks=$((ticks + 1))
        [ "$ticks" -le $(($2 * 200)) ] || die "service $1 wrote nothing within $2 s"
        pause 0.005
    done
}

# show_log NAME raw|t LINES|all f|-: the container's log (`t`: the stamped one), its rotated files
# first, oldest first; only the last LINES lines; `f`: then what is written, across rotations (busybox
# tail -F reopens a replaced file; one rotated twice within its 1 s poll loses the lines between)
show_log() {
    local log lines follow have i
    log="$SVC_ROOT/$1/container.log"
    [ "$2" != t ] || log="$log.t"
    [ -e "$log" ] || die "service $1 is not prepared"
    lines=$3 follow=$4
    set --
    i=$MAX_LOG_FILES
    while [ "$i" -ge 1 ]; do
        [ ! -e "$log.$i" ] || set -- "$@" "$log.$i"
        i=$((i - 1))
    done
    if [ "$lines" = all ]; then
        [ $# -eq 0 ] || cat "$@"
        [ "$follow" != f ] || exec tail -F -n +1 "$log" 2> /dev/null
        exec cat "$log"
    fi
    have=$(wc -l < "$log")
    [ $# -eq 0 ] || [ "$have" -ge "$lines" ] || cat "$@" | tail -n $((lines - have))
    [ "$follow" != f ] || exec tail -F -n "$lines" "$log" 2> /dev/null
    exec tail -n "$lines" "$log"
}

status() {
    local dir key
    dir="$SVC_ROOT/$1"
    if [ ! -d "$dir" ]; then
        echo state=absent
        return 0
    fi
    for key in state exit_code restarts started; do
        [ ! -r "$dir/$key" ] || echo "$key=$(cat "$dir/$key")"
    done
}

halt() {
    local dir ticks pid
    dir="$SVC_ROOT/$1"
    touch "$dir/stopping"
    crun kill "$1" "${3:-TERM}" > /dev/null 2>&1
    ticks=0
    while [ "$(cat "$dir/state" 2> /dev/null)" = running ] && [ "$ticks" -lt $(($2 * 10)) ]; do
        pause 0.1
        ticks=$((ticks + 1))
    done
    crun kill "$1" KILL > /dev/null 2>&1
    # the supervisor records the exit code and ends by itself once `crun run` returns (it sees
    # `stopping`); one that does not within 3 s is killed
    if read -r pid < "$dir/supervisor.pid" 2> /dev/null; then
        ticks=0
        while kill -0 "$pid" 2> /dev/null && [ "$ticks" -lt 30 ]; do
            pause 0.1
            ticks=$((ticks + 1))
        done
        kill "$pid" 2> /dev/null
    fi
    rm -f "$dir/supervisor.pid"
    crun delete -f "$1" > /dev/null 2>&1
    echo exited > "$dir/state"
    [ ! -r "$dir/exit_code" ] || echo "exit_code=$(cat "$dir/exit_code")"
}

stop() {
    local dir m
    dir="$SVC_ROOT/$1"
    [ -d "$dir" ] || return 0
    halt "$1" "$2" "$3"
    for m in "$dir/rootfs" "$dir/rw"; do
        ! is_mounted "$m" || umount "$m" || die "cannot unmount $m"
    done
    rm -rf "$dir"
}

case "$1" in
    prepare) [ $# -ge 3 ] && [ $((($# - 3) % 2)) -eq 0 ] || die "usage: prepare NAME SERIAL [TAG ro|rw]..."
        shift; prepare "$@" ;;
    start) [ $# -eq 3 ] || die "usage: start NAME RESTART"
        case "$3" in no|always|unless-stopped|on-failure|on-failure:[0-9]*) ;; *) die "invalid restart policy $3" ;; esac
        start "$2" "$3" ;;
    attach) [ $# -eq 2 ] || [ $# -eq 3 ] || die "usage: attach NAME [TOKEN]"
        case "${3:-0}" in *[!0-9a-f]*) die "invalid token $3" ;; esac
        attach "$2" "$3" ;;
    on-tty) [ $# -ge 4 ] && [ "$3" = exec ] || die "usage: on-tty TOKEN exec ARGS..."
        case "$2" in ''|*[!0-9a-f]*) die "invalid token $2" ;; esac
        shift; on_tty "$@"; exit $? ;;
    resize) [ $# -eq 4 ] || die "usage: resize TOKEN ROWS COLS"
        case "$2" in ''|*[!0-9a-f]*) die "invalid token $2" ;; esac
        case "$3$4" in *[!0-9]*) die "invalid size $3 $4" ;; esac
        resize "$2" "$3" "$4" ;;
    supervise) supervise "$2" "$3" ;;
    status) [ $# -eq 2 ] || die "usage: status NAME"; status "$2" ;;
    logs) [ $# -eq 5 ] || die "usage: logs NAME raw|t LINES|all f|-"
        case "$4" in all) ;; ''|*[!0-9]*) die "invalid line count $4" ;; esac
        show_log "$2" "$3" "$4" "$5" ;;
    wait-output) [ $# -eq 3 ] || die "usage: wait-output NAME SECONDS"
        case "$3" in ''|*[!0-9]*) die "invalid seconds $3" ;; esac
        wait_output "$2" "$3" ;;
    sysctl) [ $# -ge 3 ] && [ $((($# - 1) % 2)) -eq 0 ] || die "usage: sysctl KEY VALUE..."
        shift; set_sysctls "$@" ;;
    stop|halt) [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: $1 NAME GRACE [SIGNAL]"
        case "${4:-TERM}" in HUP|INT|QUIT|KILL|USR1|USR2|TERM|STOP|WINCH|PWR) ;; *) die "invalid signal $4" ;; esac
        case "$3" in ''|*[!0-9]*) die "invalid grace period $3" ;; esac
        [ "$1" = stop ] || [ -d "$SVC_ROOT/$2" ] || die "service $2 is not prepared"
        "$1" "$2" "$3" "${4:-TERM}" ;;
    *) die "unknown command: $1" ;;
esac
