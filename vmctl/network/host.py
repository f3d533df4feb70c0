"""The host side of one environment's network (docs/design.md, "The environment network").

Everything of it lives in one network namespace of its own, bound to a file under
`runtime_root()/net/ID/` (not /run/netns: the folder is the environment's, and a test run's leak audit
sees what it leaves): one bridge per segment (`br0`, `br1`...) holding its resolver addresses, and one
dnsmasq per resolver (a set of networks its members are on) answering for the names there. The host's
own namespace gets no address, route or listening socket of it, so nothing outside the host reaches it,
two environments never share a bridge, and the host's firewall never sees its traffic.

- a microVM's NIC is a tap made in the host namespace (`vt...`, so libvirt can open it by name), moved
  into the environment's namespace and onto its bridge once QEMU holds it;
- a host container's NIC is a veth pair: one end on the bridge, the other (`eth0`...) in the
  container's own network namespace, made between `runc create` and `runc start`.

Removing the namespace removes every bridge, tap and veth in it; dnsmasq is ended by its pid file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from vmctl import namespaces
from vmctl.errors import HostError
from vmctl.network import tunnel
from vmctl.network.plan import Member, NetworkPlan, Segment
from vmctl.paths import private_dir, runtime_root
from vmctl.runner import run, which

TAP_PREFIX = "vt"
VETH_PREFIX = "vc"
DNS_STOP_SECONDS = 2.0


class EnvNetwork:
    """The network namespace, bridges and resolvers of one environment, named by a stable `key`
    (the environment's state folder: two environments, or two test runs, never share one)."""

    def __init__(self, key: str) -> None:
        self.id = hashlib.sha256(key.encode()).hexdigest()[:10]
        self.dir = runtime_root() / "net" / self.id
        self.ns = self.dir / "netns"

    # ------------------------------------------------------------ the namespace and its segments

    @property
    def exists(self) -> bool:
        return namespaces.is_mountpoint(self.ns)

    def create(self, plan: NetworkPlan) -> None:
        """Make the namespace and every segment's bridge that is missing (idempotent), then the resolvers."""
        private_dir(self.dir)
        if not self.exists:
            self.ns.touch(mode=0o600)
            run([which("unshare", package="util-linux"), f"--net={self.ns}", "true"], timeout=30)
            self._ip_batch(["link set lo up"])
        have = self._links()
        self._ip_batch([cmd for seg in plan.segments if seg.bridge not in have for cmd in _bridge_commands(seg)])
        self.set_records(plan)

    def destroy(self) -> None:
        """End the resolvers, drop the namespace (and with it every bridge, tap, veth and tunnel end), and
        remove taps and tunnel ends a killed `up` left in the host namespace before it could move them."""
        self._end_resolvers()
        for pid in namespaces.processes_in(self.ns):
            _end(pid)
        if self.exists:
            run([which("umount", package="mount"), self.ns], timeout=30)
        for name in [*host_links(f"{TAP_PREFIX}{self.id[:6]}"), *host_links(tunnel.Names(self.id).vxlan_prefix)]:
            run([_ip(), "link", "delete", name], check=False, timeout=30)
        if self.dir.exists():
            for f in self.dir.iterdir():
                f.unlink()
            self.dir.rmdir()

    # ------------------------------------------------------------ resolvers

    def set_records(self, plan: NetworkPlan) -> None:
        """(Re)start each resolver's dnsmasq with the names it answers. dnsmasq reads its configuration
        as root and then runs as nobody; a restart (milliseconds) is how it learns new names."""
        dnsmasq = which("dnsmasq", package="dnsmasq-base")
        have = {line.split()[3].split("/")[0] for line in self._ip_lines("-4", "addr", "show") if " inet " in line}
        self._ip_batch([f"addr add {address}/{seg.subnet.split('/')[1]} dev {seg.bridge}"
                        for seg in plan.segments for address in plan.addresses_on(seg.name) if address not in have])
        self._end_resolvers()
        for r in plan.resolvers:
            conf, pid_file = self.dir / f"dns-{r.index}.conf", self.dir / f"dns-{r.index}.pid"
            conf.write_text(dnsmasq_conf(r.address, plan.records(r), pid_file, self.dir / f"dns-{r.index}.log"))
            self._run_inside([dnsmasq, f"--conf-file={conf}"])

    # ------------------------------------------------------------ microVMs: taps

    def tap_name(self, member: str, network: str) -> str:
        return self._nic_name(TAP_PREFIX, member, network)

    def _nic_name(self, prefix: str, member: str, network: str) -> str:
        """15 bytes at most (IFNAMSIZ): the prefix + this environment's id + the NIC's."""
        return prefix + self.id[:6] + hashlib.sha256(f"{member}/{network}".encode()).hexdigest()[:6]

    def make_tap(self, name: str) -> None:
        """A tap in the host namespace, for libvirt to open by name (`<target dev managed="no">`)."""
        run([_ip(), "link", "delete", name], check=False, timeout=30)
        run([_ip(), "tuntap", "add", "dev", name, "mode", "tap"], timeout=30)

    def join_tap(self, name: str, segment: Segment) -> None:
        """Move a tap QEMU holds open into the namespace, onto the segment's bridge: QEMU's file
        descriptor stays valid across the move."""
        run([_ip(), "link", "set", name, "netns", self.ns], timeout=30)
        self._ip_batch([f"link set {name} master {segment.bridge}", f"link set {name} up"])

    def remove_taps(self, names: Sequence[str]) -> None:
        """Taps of a machine that is going away, wherever they are now (host or namespace)."""
        for name in names:
            run([_ip(), "link", "delete", name], check=False, timeout=30)
            if self.exists:
                self._run_inside([_ip(), "link", "delete", name], check=False)

    # ------------------------------------------------------------ across hosts: VXLAN ends

    def join_vxlan(self, name: str, vni: int, port: int, segment: Segment, peers: Sequence[str]) -> None:
        """This machine's tunnel end of a segment (vmctl/network/tunnel.py): made here, so that its UDP
        socket stays in this namespace, where the hosts are reachable; moved onto the segment's bridge;
        flooding towards each of `peers` (addresses) it does not flood to yet."""
        if name not in self._links():
            run([_ip(), "link", "delete", name], check=False, timeout=30)  # a killed `up`'s, never moved
            run([_ip(), "link", "add", name, "type", "vxlan", "id", str(vni), "dstport", str(port)], timeout=30)
            run([_ip(), "link", "set", name, "netns", self.ns], timeout=30)
            self._ip_batch([f"link set {name} master {segment.bridge}", f"link set {name} up"])
        nsenter, bridge = which("nsenter", package="util-linux"), which("bridge", package="iproute2")
        shown = run([nsenter, f"--net={self.ns}", bridge, "fdb", "show", "dev", name], timeout=30)
        commands = tunnel.fdb_commands(name, peers, tunnel.flood_peers(shown.stdout.decode()))
        if commands:
            run([nsenter, f"--net={self.ns}", bridge, "-batch", "-"], input=("\n".join(commands) + "\n").encode(),
                timeout=30)

    # ------------------------------------------------------------ host containers: veth pairs

    def join_container(self, pid: int, member: Member, plan: NetworkPlan) -> None:
        """One veth pair per segment of `member`: `ethI` in the container's namespace with its address
        and MAC, the other end on the bridge. Made before the container's process starts."""
        target = f"/proc/{pid}/ns/net"
        inside: list[str] = []
        for i, nic in enumerate(member.nics):
            seg = plan.segment(nic.network)
            end = self._nic_name(VETH_PREFIX, member.name, nic.network)
            self._run_inside([_ip(), "link", "delete", end], check=False)
            run([_ip(), "link", "add", end, "netns", self.ns, "type", "veth", "peer", "name", f"eth{i}",
                 "netns", target], timeout=30)
            self._ip_batch([f"link set {end} master {seg.bridge}", f"link set {end} up"])
            inside += [f"link set eth{i} address {nic.mac}", f"addr add {nic.cidr} dev eth{i}", f"link set eth{i} up"]
        if member.internal_only:
            # No way out: user-mode networking stays only for published ports (answers go back
            # on-link), and its DNS forwarder is unreachable.
            inside += ["route del default", "route add prohibit 10.0.2.3/32"]
        _ip_batch_in(["--net=" + target], inside)

    # ------------------------------------------------------------ helpers

    def _run_inside(self, argv: Sequence[str | os.PathLike[str]], *, check: bool = True) -> None:
        run([which("nsenter", package="util-linux"), f"--net={self.ns}", *argv], check=check, timeout=30)

    def _ip_batch(self, commands: Sequence[str]) -> None:
        _ip_batch_in([f"--net={self.ns}"], commands)

    def _ip_lines(self, *args: str) -> list[str]:
        """`ip -o ARGS` inside the namespace: one line per link or address."""
        proc = run([which("nsenter", package="util-linux"), f"--net={self.ns}", _ip(), "-o", *args], timeout=30)
        return proc.stdout.decode().splitlines()

    def _links(self) -> set[str]:
        return {line.split(": ")[1].split("@")[0] for line in self._ip_lines("link", "show") if ": " in line}

    def _end_resolvers(self) -> None:
        for pid_file in self.dir.glob("dns-*.pid"):
            _end_pid_file(pid_file)


def dnsmasq_conf(address: str, records: Sequence[tuple[str, str]], pid_file: Path, log_file: Path) -> str:
    """One resolver: only its own address, only the names of its networks, nothing upstream.

    `local=/NAME/` makes it answer for each name it knows (an AAAA question gets an empty answer, not
    REFUSED); any other name is REFUSED, so a client's next nameserver (user-mode networking's, on
    networks that are not internal) resolves names outside the environment."""
    lines = ["no-resolv", "no-hosts", "no-poll", "bind-interfaces", f"listen-address={address}",
             "except-interface=lo", "local-ttl=0", f"pid-file={pid_file}", f"log-facility={log_file}"]
    for name, address in records:
        lines.append(f"host-record={name},{address}")
    lines += [f"local=/{name}/" for name in dict.fromkeys(name for name, _ in records)]
    return "\n".join(lines) + "\n"


def _bridge_commands(seg: Segment) -> list[str]:
    """The bridge only: `set_records` gives it the resolver addresses."""
    return [f"link add {seg.bridge} type bridge", f"link set {seg.bridge} up"]


def _ip() -> str:
    return which("ip", package="iproute2")


def _ip_batch_in(ns_args: Sequence[str], commands: Sequence[str]) -> None:
    """Several `ip` commands in one process inside a namespace (each `ip` costs a fork and exec)."""
    if commands:
        run([which("nsenter", package="util-linux"), *ns_args, _ip(), "-batch", "-"],
            input=("\n".join(commands) + "\n").encode(), timeout=30)


def host_links(prefix: str) -> list[str]:
    """Links in the host's namespace whose names start with `prefix`."""
    with contextlib.suppress(OSError):
        return sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(prefix))
    return []


def _end_pid_file(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        _end(int(pid_file.read_text().strip()), expect="dnsmasq")
    pid_file.unlink(missing_ok=True)


def _end(pid: int, *, expect: str | None = None) -> None:
    if not namespaces.end(pid, grace=DNS_STOP_SECONDS, expect=expect):
        raise HostError(f"process {pid} did not end")
