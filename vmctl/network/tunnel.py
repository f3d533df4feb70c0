"""The environment network across hosts: a VXLAN mesh between the segments' bridges
(docs/design.md, "The environment network", "Across hosts").

Each node of the environment (this machine, and every declared host that runs one of its machines) has,
per segment, a VXLAN device of the segment's VNI joined to the segment's bridge, and a flooding entry
(`bridge fdb append 00:00:00:00:00:00 ... dst PEER`) towards every other node: broadcast and unknown
unicast go to all peers, known MACs are learned. A frame that came in through the tunnel never goes
out through it again (a bridge never forwards back out of the port a frame came in on), so the full
mesh needs no loop prevention.

- here: the VXLAN device is made in vmctl's own namespace, so its UDP socket lives there (where the
  hosts are reachable), then moved into the environment's namespace onto `brK`; the kernel keeps the
  socket in the namespace the device was made in. A killed `up` may leave it in vmctl's namespace:
  `remove_local_leftovers` finds it by name.
- on a host: a bridge `vbID K` and a VXLAN device `vxID K` in the host's own namespace, made over SSH
  (`ip -batch -` and `bridge -batch -` on stdin: every value is a name vmctl made, an integer or an
  address `ipaddress` parsed); libvirt puts the guest's tap on the bridge (`<interface type="bridge">`),
  and removes it with the domain, also when it migrates (the target gets the same bridge first).

Everything here is named from the environment's network id (`EnvNetwork.id`): two environments never
share a bridge or a VNI, and the kernel refuses a second device with the same VNI on one node.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PORT = 4789  # IANA's VXLAN port
FLOOD = "00:00:00:00:00:00"
BRIDGE_PREFIX = "vb"
VXLAN_PREFIX = "vx"


@dataclass(frozen=True)
class Names:
    """The device names and VNIs of one environment (`net_id`: `EnvNetwork.id`, 10 hex digits)."""

    net_id: str

    def bridge(self, index: int) -> str:
        """A host's bridge for segment `index`: 15 bytes at most (IFNAMSIZ) up to segment 999."""
        return f"{BRIDGE_PREFIX}{self.net_id}{index}"

    def vxlan(self, index: int) -> str:
        return f"{VXLAN_PREFIX}{self.net_id}{index}"

    @property
    def vxlan_prefix(self) -> str:
        return VXLAN_PREFIX + self.net_id

    def vni(self, index: int) -> int:
        """24 bits from the environment's id and the segment; never 0."""
        digest = hashlib.sha256(f"{self.net_id}/{index}".encode()).digest()
        return int.from_bytes(digest[:3], "big") or 1

    def ours(self, link: str) -> bool:
        return link.startswith((BRIDGE_PREFIX + self.net_id, self.vxlan_prefix))


def address(value: str) -> str:
    """An IPv4 address as `ipaddress` prints it: nothing else ever reaches an `ip` command line."""
    return str(ipaddress.IPv4Address(value))


def link_names(ip_o_link: str) -> set[str]:
    """Names from `ip -o link show` (`7: vx..@if2: <...>` -> `vx..`)."""
    return {line.split(": ")[1].split("@")[0] for line in ip_o_link.splitlines() if ": " in line}


def flood_peers(fdb_show: str) -> set[str]:
    """The peers a VXLAN device floods to, from `bridge fdb show dev DEV`."""
    out = set()
    for line in fdb_show.splitlines():
        words = line.split()
        if words[:1] == [FLOOD] and "dst" in words:
            out.add(words[words.index("dst") + 1])
    return out


def host_end_commands(names: Names, segments: Iterable[int], have: set[str]) -> list[str]:
    """`ip -batch` lines that give a host the bridge and VXLAN device of each segment it lacks."""
    out = []
    for k in segments:
        br, vx = names.bridge(k), names.vxlan(k)
        if br not in have:
            out += [f"link add {br} type bridge", f"link set {br} up"]
        if vx not in have:
            out += [f"link add {vx} type vxlan id {names.vni(k)} dstport {PORT}",
                    f"link set {vx} master {br}", f"link set {vx} up"]
    return out


def fdb_commands(device: str, peers: Sequence[str], have: set[str]) -> list[str]:
    """`bridge -batch` lines: a flooding entry towards each peer the device lacks."""
    return [f"fdb append {FLOOD} dev {device} dst {address(p)}" for p in peers if address(p) not in have]


def remove_commands(names: Names, have: Iterable[str]) -> list[str]:
    """`ip -batch` lines removing every device of the environment (VXLAN devices first)."""
    ours = sorted((n for n in have if names.ours(n)), key=lambda n: (not n.startswith(VXLAN_PREFIX), n))
    return [f"link delete {n}" for n in ours]
