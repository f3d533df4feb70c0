#!/bin/sh
# vmctl: join a guest to its environment networks. Run by the host over SSH once the guest is READY
# (vmctl/network/guest.py; docs/design.md, "The environment network"), and again after a restore.
#
#   sh -s -- NAMESERVERS MAC=ADDRESS/PREFIX[@FROM]...
#
# NAMESERVERS: comma-separated IPv4 addresses for /etc/resolv.conf, in order ("-" for none). Each
# MAC=CIDR configures the NIC with that MAC (found in /sys/class/net, whatever the kernel named it).
# A clone of a template still has the template's MACs: `@FROM` names the NIC by that MAC, and it
# takes MAC as its own first (virtio-net's control queue tells QEMU).
# Every value is checked against a strict character set before use; nothing is evaluated.
set -eu

fail() { echo "network.sh: $*" >&2; exit 2; }

is_ipv4() {
    case "$1" in ""|*[!0-9.]*) return 1 ;; esac
    IFS=. ; set -- $1 ; IFS=' '
    [ "$#" -eq 4 ] || return 1
    for octet in "$@"; do
        [ -n "$octet" ] && [ "$octet" -le 255 ] || return 1
    done
}

is_mac() {
    case "$1" in
        [0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]) return 0 ;;
    esac
    return 1
}

device_with_mac() {
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address")" = "$1" ] && { echo "${dev##*/}"; return 0; }
    done
    return 1
}

configure_nic() {
    mac="${1%%=*}"
    cidr="${1#*=}"
    from=""
    case "$cidr" in *@*) from="${cidr#*@}"; cidr="${cidr%%@*}" ;; esac
    is_mac "$mac" || fail "invalid MAC address"
    is_ipv4 "${cidr%/*}" || fail "invalid address"
    case "${cidr#*/}" in 1[6-9]|2[0-8]) ;; *) fail "invalid prefix" ;; esac  # vmctl/fixed_nics.py: /16 to /28
    if [ -n "$from" ] && ! device_with_mac "$mac" > /dev/null; then
        is_mac "$from" || fail "invalid MAC address"
        dev="$(device_with_mac "$from")" || fail "no interface with MAC $from"
        # ifconfig's ioctl needs only an AF_INET socket; busybox's `ip link set address` wants AF_PACKET,
        # which the `minimal` kernel is built without.
        ifconfig "$dev" hw ether "$mac"
    fi
    dev="$(device_with_mac "$mac")" || fail "no interface with MAC $mac"
    ip addr flush dev "$dev"
    ip addr add "$cidr" dev "$dev"
    ip link set "$dev" up
}

write_resolv_conf() {
    : > /etc/resolv.conf.new
    [ "$1" = - ] || {
        IFS=, ; set -f ; set -- $1 ; set +f ; IFS=' '
        for server in "$@"; do
            is_ipv4 "$server" || fail "invalid nameserver"
            echo "nameserver $server" >> /etc/resolv.conf.new
        done
    }
    mv /etc/resolv.conf.new /etc/resolv.conf
}

[ "$#" -ge 1 ] || fail "usage: network.sh NAMESERVERS MAC=CIDR..."
servers="$1"
shift
for nic in "$@"; do
    configure_nic "$nic"
done
write_resolv_conf "$servers"
