#!/bin/sh
# vmctl compare: isolation probes, run inside every sandbox (busybox sh; nothing else assumed).
#
#   isolation.sh probe MARKER_HEAD MARKER_TAIL BLOCK_MAJ:MIN
#   isolation.sh hog MIB               allocate and touch MIB MiB (stress-ng), report how it ended
#   isolation.sh forks MAX             start at most MAX sleepers (a bounded, linear "fork bomb")
#
# Every output line is `key=value`, the value on one line. The host compares what a sandbox sees
# with what the host itself sees (vmctl/compare/isolation.py): this script only looks, it changes
# nothing on a kernel (the sysctl write puts back the value it read; the insmod gets a non-module).

export PATH=/usr/sbin:/usr/bin:/sbin:/bin

emit() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n' '|' | cut -c1-600)"; }

probe() {
    # The marker comes in two halves so that this script's own argv never contains it whole.
    marker="$1$2"
    emit kernel.release "$(uname -r)"
    emit kernel.boot_id "$(cat /proc/sys/kernel/random/boot_id 2>&1)"

    count=0
    seen=no
    for d in /proc/[0-9]*; do
        [ -r "$d/cmdline" ] || continue
        count=$((count + 1))
        line="$(tr '\0' ' ' < "$d/cmdline" 2> /dev/null)"
        case "$line" in *"$marker"*) seen=yes ;; esac
    done
    emit procs.count "$count"
    emit procs.marker_seen "$seen"

    emit block.partitions "$(awk 'NR > 2 && NF == 4 { printf "%s ", $4 }' /proc/partitions 2>&1)"
    rm -f /dev/.vmctl-blk
    if out="$(mknod /dev/.vmctl-blk b "${3%%:*}" "${3##*:}" 2>&1)"; then
        if sum="$(head -c 4096 /dev/.vmctl-blk 2>&1 | md5sum 2>&1)" && \
                [ "$(head -c 4096 /dev/.vmctl-blk 2> /dev/null | wc -c)" -gt 0 ]; then
            emit block.md5 "${sum%% *}"
        else
            emit block.error "read: $(head -c 1 /dev/.vmctl-blk 2>&1 > /dev/null)"
        fi
    else
        emit block.error "mknod: $out"
    fi
    rm -f /dev/.vmctl-blk

    if out="$(dmesg 2>&1)"; then
        emit dmesg.head "$(printf '%s\n' "$out" | head -n 2 | cut -c1-160)"
    else
        emit dmesg.error "$out"
    fi

    printf 'this is not a kernel module\n' > /tmp/.vmctl-mod.ko
    emit modules.insmod "$(insmod /tmp/.vmctl-mod.ko 2>&1; echo " (exit $?)")"
    rm -f /tmp/.vmctl-mod.ko
    emit modules.count "$(wc -l < /proc/modules 2>&1)"

    emit kallsyms.first "$(head -n 1 /proc/kallsyms 2>&1)"

    if value="$(cat /proc/sys/vm/overcommit_ratio 2>&1)"; then
        if out="$( (echo "$value" > /proc/sys/vm/overcommit_ratio) 2>&1)"; then
            emit sysctl.write "ok: vm.overcommit_ratio=$value written back"
        else
            emit sysctl.write "refused: $out"
        fi
    else
        emit sysctl.write "unreadable: $value"
    fi

    read -r up _rest < /proc/uptime
    emit clock.uptime "$up"

    emit net.ns "$(readlink /proc/self/ns/net 2>&1)"
    emit net.interfaces "$(awk -F: 'NR > 2 { gsub(/ /, "", $1); printf "%s ", $1 }' /proc/net/dev 2>&1)"
    emit caps.effective "$(awk '/^CapEff/ { print $2 }' /proc/self/status)"
    emit done yes
}

pids_max() {
    for f in /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max; do
        [ -r "$f" ] && { cat "$f"; return; }
    done
    echo unknown
}

# OOM kills charged to this sandbox's memory cgroup (v2 memory.events, v1 memory.oom_control),
# and by its kernel as a whole (/proc/vmstat: the host's for a container, the guest's for a VM).
oom_kills() {
    cg=""
    for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
        [ -r "$f" ] && cg=$(awk '/^oom_kill / { print $2 }' "$f") && break
    done
    vm=$(awk '/^oom_kill / { print $2 }' /proc/vmstat 2> /dev/null)
    echo "cgroup:${cg:-?} kernel:${vm:-?}"
}

hog() {
    emit hog.mib "$1"
    cd /tmp || return 1
    emit hog.limit "$(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2> /dev/null | head -n 1)"
    emit hog.oom_before "$(oom_kills)"
    out="$(stress-ng --vm 1 --vm-bytes "$1M" --vm-keep --vm-populate --oomable --timeout 8s -v 2>&1)"
    emit hog.exit "$?"
    emit hog.oom_after "$(oom_kills)"
    emit hog.output "$(printf '%s\n' "$out" | grep -iE 'oom|killed|signal|fail|successful' | cut -d']' -f2- | head -n 4)"
    emit done yes
}

forks() {
    emit forks.pids_max "$(pids_max)"
    # The loop runs in a subshell: busybox sh gives up (exits) when fork fails, and the parent must
    # still report and clean up. Each started PID goes to a file with a builtin (no fork needed).
    list=/tmp/.vmctl-forks
    : > "$list"
    (
        i=0
        while [ "$i" -lt "$1" ]; do
            sleep 20 < /dev/null > /dev/null 2>&1 &
            echo "$!" >> "$list"
            i=$((i + 1))
        done
    ) 2> /dev/null
    started=0
    pids=""
    while read -r p; do
        started=$((started + 1))
        pids="$pids $p"
    done < "$list"
    set -- /proc/[0-9]*
    visible=$#
    [ -z "$pids" ] || kill $pids 2> /dev/null
    rm -f "$list"
    # Builtins only from here on: at the limit, even $(...) cannot fork.
    printf 'forks.started=%s\nforks.visible=%s\n' "$started" "$visible"
    printf 'done=yes\n'
}

case "$1" in
    probe) shift; probe "$@" ;;
    hog) hog "$2" ;;
    forks) forks "$2" ;;
    *) echo "usage: $0 probe|hog|forks ..." >&2; exit 2 ;;
esac
