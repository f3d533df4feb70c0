"""What a compose file fixes of a member's NIC on an environment network: its MAC (`mac_address`, per
service or per network) and its IPv4 address (`ipv4_address`, on a network whose `ipam` gives its subnet).

Parsed and checked here; `network.plan` uses them in place of what it derives. A fixed value belongs to
one NIC, so the service must be the member (its own microVM, or its host container: the services of a
declared machine share that machine's NICs), it must be one instance (`replicas` refuses several), and
no other NIC of that network may have it. A network's own subnet is private IPv4 outside user-mode
networking's 10.0.2.0/24; its first address is the network's resolver, as docker's gateway is.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

from vmctl.settings import Ctx, Setting, Support, p_only, parse_table, typename
from vmctl.yamlpos import KeyPath

if TYPE_CHECKING:
    from vmctl.spec import Environment

USER_NET = ipaddress.IPv4Network("10.0.2.0/24")  # every member's eth0 (QEMU's and slirp4netns's user-mode net)
USER_NET_MAC = "52:54:00:12:34:56"  # QEMU's default for the user-mode NIC (the only one without a MAC)
PREFIXES = range(16, 29)  # a network's own subnet: /16 to /28
FIXED = {"mac_address": "MAC address", "ipv4_address": "address"}  # the keys, and what their values are
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def p_mac(value: Any, path: KeyPath, ctx: Ctx) -> str:
    """A unicast Ethernet address, `02:42:ac:11:00:02` (compose's colon form), kept lower-case."""
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 12:34:56:12:34:56 in base 60
        ctx.fail(path, f"the MAC address was read as the number {value}", 'quote it: `"12:34:56:12:34:56"`')
    text = value.lower() if isinstance(value, str) else ""
    if not _MAC.match(text):
        ctx.fail(path, f"invalid MAC address {value!r}", "write six hex octets with colons, e.g. `02:42:ac:11:00:02`")
    if int(text[:2], 16) & 1 or text == "00:00:00:00:00:00":
        ctx.fail(path, f"`{text}` is not a unicast address (a NIC cannot have it)",
                 "clear the lowest bit of the first octet, e.g. `02:...` (locally administered)")
    if text == USER_NET_MAC:
        ctx.fail(path, f"`{text}` is the MAC of every member's user-mode NIC (QEMU's default)", "choose another one")
    return text


def p_ipv4_address(value: Any, path: KeyPath, ctx: Ctx) -> str:
    try:
        return str(ipaddress.IPv4Address(value if isinstance(value, str) else ""))
    except ValueError:
        ctx.fail(path, f"invalid IPv4 address {value!r}", "write e.g. `172.28.0.10`, in the network's `ipam` subnet")


def p_subnet(value: Any, path: KeyPath, ctx: Ctx) -> str:
    try:
        net = ipaddress.IPv4Network(value if isinstance(value, str) else "")
    except ValueError:
        ctx.fail(path, f"invalid subnet {value!r}", "write an IPv4 network with its prefix, e.g. `172.28.0.0/24` "
                 "(host bits zero)")
    if net.prefixlen not in PREFIXES or not net.is_private or net.overlaps(USER_NET):
        ctx.fail(path, f"subnet `{net}` cannot be an environment network's",
                 f"use a private IPv4 range from /{PREFIXES[0]} to /{PREFIXES[-1]} outside {USER_NET} (user-mode "
                 "networking's), e.g. `172.28.0.0/24`")
    return str(net)


_RESOLVER = "vmctl's resolver has the network's first address, where docker has its gateway"

IPAM_CONFIG_SETTINGS = (
    Setting("subnet", p_subnet, None, "string", "the network's own IPv4 subnet, instead of a /24 of 10.77.0.0/16; "
            "its first address is the network's resolver"),
    Setting("gateway", p_ipv4_address, None, "string", f"accepted when it is the subnet's first address ({_RESOLVER})"),
    Setting("ip_range", lambda v, p, c: None, None, "string", "addresses are handed out from the whole subnet",
            support=Support.REFUSED, hint="remove it (fix an address with a service's `ipv4_address`)"),
    Setting("aux_addresses", lambda v, p, c: None, None, "mapping", "addresses cannot be reserved for hosts "
            "outside the environment", support=Support.REFUSED, hint="remove it"),
)


def p_ipam_config(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    """compose's list of address pools: vmctl's networks have one."""
    if not isinstance(value, list) or len(value) != 1:
        ctx.fail(path, f"must be a list of one address pool, not {typename(value)}"
                 + (f" of {len(value)}" if isinstance(value, list) else ""),
                 "write `config: [{subnet: 172.28.0.0/24}]` (IPv4 only: one subnet)")
    pool = parse_table(IPAM_CONFIG_SETTINGS, value[0], (*path, 0), ctx)
    if pool["subnet"] is None:
        ctx.fail((*path, 0), "an address pool without `subnet`", "add `subnet: 172.28.0.0/24`")
    first = str(next(ipaddress.IPv4Network(pool["subnet"]).hosts()))
    if pool["gateway"] not in (None, first):
        ctx.fail((*path, 0, "gateway"), f"gateway `{pool['gateway']}` is not `{first}`, the first address of "
                 f"{pool['subnet']}", f"{_RESOLVER}: remove `gateway`, or write `{first}`")
    return pool


IPAM_SETTINGS = (
    Setting("driver", p_only("default", "IPAM driver", "vmctl hands out the addresses itself"), "default",
            "default", "the only driver"),
    Setting("config", p_ipam_config, None, "list", "one pool: `[{subnet: CIDR}]` (`gateway` only as its first "
            "address)"),
    Setting("options", lambda v, p, c: None, None, "mapping", "IPAM driver options do not apply",
            support=Support.REFUSED, hint="remove it"),
)


def p_ipam(value: Any, path: KeyPath, ctx: Ctx) -> str | None:
    """The network's own subnet, or None (vmctl picks one)."""
    v = parse_table(IPAM_SETTINGS, value, path, ctx)
    return v["config"]["subnet"] if v["config"] else None


def check(env: Environment, ctx: Ctx) -> None:
    """Across the environment: subnets apart, each fixed MAC or address on one NIC only, and inside its network."""
    seen: list[tuple[str, ipaddress.IPv4Network]] = []
    for n in env.networks:
        if n.subnet is not None:
            net = ipaddress.IPv4Network(n.subnet)
            if clash := next((other for other, o in seen if o.overlaps(net)), None):
                ctx.fail(("networks", n.name, "ipam"), f"subnet {net} overlaps network `{clash}`'s",
                         "give each network a subnet of its own")
            seen.append((n.name, net))
    owner: dict[tuple[str, str], str] = {}
    for s in env.services:
        for a in s.networks:
            for key, what in FIXED.items():
                if (value := getattr(a, key)) is None:
                    continue
                path = _path(s.replica_of or s.name, a.network, key, ctx)
                machine = env.machine(s.machine) if s.machine else None
                if machine is not None and machine.dedicated_to != s.name:
                    ctx.fail(path, f"`{s.name}` runs in machine `{machine.name}`, whose NICs its services share",
                             f"give the service its own microVM (remove `machine`), or remove `{key}`")
                if key == "ipv4_address":
                    _inside(value, a.network, env, path, ctx)
                if (other := owner.setdefault((a.network, value), s.name)) != s.name:
                    ctx.fail(path, f"`{value}` is `{other}`'s {what} on network `{a.network}` already",
                             f"give each service a {what} of its own")


def _inside(address: str, network: str, env: Environment, path: KeyPath, ctx: Ctx) -> None:
    subnet = next(n.subnet for n in env.networks if n.name == network)
    if subnet is None:
        ctx.fail(path, f"network `{network}` has no subnet of its own: vmctl picks its addresses",
                 f"give it one (`networks: {{{network}: {{ipam: {{config: [{{subnet: 172.28.0.0/24}}]}}}}}}`), "
                 "or remove `ipv4_address`")
    net = ipaddress.IPv4Network(subnet)
    resolver, last = net.network_address + 1, net.broadcast_address - 1  # hosts() would list a /16's 65,534
    if not resolver < ipaddress.IPv4Address(address) <= last:
        ctx.fail(path, f"`{address}` is not a member's address in {subnet}",
                 f"choose one from {resolver + 1} to {last} (the first, {resolver}, is the network's resolver)")


def _path(service: str, network: str, key: str, ctx: Ctx) -> KeyPath:
    """Where the file says it: in that network's settings, or the service's own key (`mac_address`)."""
    there: KeyPath = ("services", service, "networks", network, key)
    return there if there in ctx.doc.origins else ("services", service, key)
