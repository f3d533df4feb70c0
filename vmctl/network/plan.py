"""From the environment spec to the network as it will be built: pure, so it is unit-tested alone.

Each compose network is a segment: its own subnet (`ipam`), else a /24 out of `POOL`, with the resolver
at its first address. Each member (a machine, or a host container service) gets one NIC per segment it
joins: an address (the service's `ipv4_address`, else kept from the previous `up` when it still fits, so
running members keep theirs), a MAC (the service's `mac_address`, else derived from the names), and the
names it answers to there (service names, hostnames and aliases of everything it runs).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vmctl.fixed_nics import USER_NET_MAC
from vmctl.spec import Environment, Isolation

# Segments live only inside the environment's network namespace and its members: nothing on the host
# routes to them. 10.0.2.0/24 is user-mode networking's (every member's eth0/tap0), so it is outside.
POOL = ipaddress.IPv4Network("10.77.0.0/16")
PREFIX = 24
USER_NET_DNS = "10.0.2.3"  # user-mode networking's DNS forwarder (QEMU's and slirp4netns's)


class Kind(StrEnum):
    MACHINE = "machine"  # a microVM: a tap on the segment's bridge
    CONTAINER = "container"  # a host container: a veth pair into its network namespace


@dataclass(frozen=True)
class Segment:
    name: str
    index: int
    subnet: str  # "10.77.K.0/24", or the network's own
    internal: bool

    @property
    def prefix(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def resolver(self) -> str:
        """The DNS server of members on this network alone (dnsmasq), the first host address."""
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))

    @property
    def bridge(self) -> str:
        return f"br{self.index}"  # inside the environment's namespace: short names cannot clash


@dataclass(frozen=True)
class Nic:
    network: str
    address: str
    prefix: int
    mac: str
    names: tuple[str, ...]  # what this member is found by on this segment

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"


@dataclass(frozen=True)
class Member:
    name: str
    kind: Kind
    nics: tuple[Nic, ...]
    internal_only: bool  # every segment it is on is internal: it gets no way out of the host

    def nic(self, network: str) -> Nic | None:
        return next((n for n in self.nics if n.network == network), None)


@dataclass(frozen=True)
class Resolver:
    """The DNS server of the members on one set of networks: it answers every name on those networks,
    so a client that asks only its first nameserver (busybox's nslookup) finds them all. Members on one
    network share that network's `.1`; a set of several gets an address of its own on its first one."""

    index: int
    networks: tuple[str, ...]
    address: str

    @property
    def key(self) -> str:
        return ",".join(self.networks)


@dataclass(frozen=True)
class NetworkPlan:
    environment: str
    segments: tuple[Segment, ...]
    members: tuple[Member, ...]
    resolvers: tuple[Resolver, ...] = ()

    def segment(self, name: str) -> Segment:
        return next(s for s in self.segments if s.name == name)

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def resolver_of(self, member: Member) -> Resolver:
        networks = tuple(n.network for n in member.nics)
        return next(r for r in self.resolvers if r.networks == networks)

    def nameservers(self, member: Member) -> tuple[str, ...]:
        """resolv.conf's servers: the member's resolver, then user-mode networking's for names outside
        the environment (the resolvers refuse those), unless every network of the member is internal."""
        own = (self.resolver_of(member).address,) if member.nics else ()
        return (*own, *(() if member.internal_only else (USER_NET_DNS,)))

    def records(self, resolver: Resolver) -> list[tuple[str, str]]:
        """(name, address) of every name on the resolver's networks; a name on several of them gets the
        addresses on the first (the one the asker lists first). A name several members share (the
        instances of a replicated service) has a record for each."""
        found: dict[str, tuple[str, list[str]]] = {}
        for network in resolver.networks:
            for m in self.members:
                if nic := m.nic(network):
                    for name in nic.names:
                        first, addresses = found.setdefault(name, (network, []))
                        if first == network:
                            addresses.append(nic.address)
        return [(name, address) for name, (_, addresses) in found.items() for address in addresses]

    def addresses_on(self, segment: str) -> list[str]:
        """The resolver addresses the segment's bridge holds."""
        seg = self.segment(segment)
        return list(dict.fromkeys([seg.resolver, *(r.address for r in self.resolvers if r.networks[0] == segment)]))

    def remembered(self) -> dict[str, Any]:
        """Subnets, member -> network -> address and resolvers: what state keeps so the next `up` hands
        out the same (running members keep their addresses and nameservers)."""
        return {"subnets": {s.name: s.subnet for s in self.segments},
                "addresses": {m.name: {n.network: n.address for n in m.nics} for m in self.members},
                "resolvers": {r.key: r.address for r in self.resolvers}}


def plan(env: Environment, previous: Mapping[str, Any] | None = None) -> NetworkPlan:
    """The network of `env`. `previous` is what `NetworkPlan.remembered()` gave after the last `up`
    (state keeps it): subnets and addresses are kept where still valid, so running members keep theirs."""
    prev = previous or {}
    segments = _segments(env, prev.get("subnets") or {})
    by_name = {s.name: s for s in segments}
    wanted = _wanted(env)
    taken: dict[str, set[str]] = {s.name: {s.resolver} for s in segments}
    addresses: Mapping[str, Mapping[str, str]] = prev.get("addresses") or {}
    own_macs, chosen = _fixed(env, "mac_address"), _fixed(env, "ipv4_address")
    for (_member, net), address in chosen.items():
        taken[net].add(address)
    for member, nets in wanted.items():  # then keep what is still valid, so no one else takes it
        for net in nets:
            old = addresses.get(member, {}).get(net)
            if (member, net) not in chosen and old and _fits(old, by_name[net].subnet) and old not in taken[net]:
                chosen[(member, net)] = old
                taken[net].add(old)
    members = []
    macs = set(own_macs.values())  # a derived MAC never takes one a service chose
    for member, nets in wanted.items():
        nics = tuple(Nic(net, chosen.get((member, net)) or _next_free(by_name[net], taken[net]), by_name[net].prefix,
                         own_macs.get((member, net)) or _unique_mac(env.name, member, net, macs), names)
                     for net, names in nets.items())
        kind = Kind.MACHINE if env.machine(member) else Kind.CONTAINER
        members.append(Member(member, kind, nics, all(by_name[n].internal for n in nets)))
    resolvers = _resolvers(by_name, members, taken, prev.get("resolvers") or {})
    return NetworkPlan(env.name, segments, tuple(members), resolvers)


def _resolvers(segments: Mapping[str, Segment], members: list[Member], taken: dict[str, set[str]],
               previous: Mapping[str, str]) -> tuple[Resolver, ...]:
    """One per distinct network set of the members; several networks: an address from the top of the
    first one's subnet (members count up from the bottom), the previous `up`'s when still free."""
    sets = list(dict.fromkeys(tuple(n.network for n in m.nics) for m in members if m.nics))
    out = []
    for i, nets in enumerate(sets):
        seg = segments[nets[0]]
        if len(nets) == 1:
            address = seg.resolver
        elif (old := previous.get(",".join(nets))) and _fits(old, seg.subnet) and old not in taken[seg.name]:
            address = old
        else:
            address = next(str(h) for h in reversed(list(ipaddress.IPv4Network(seg.subnet).hosts()))
                           if str(h) not in taken[seg.name])
        taken[seg.name].add(address)
        out.append(Resolver(i, nets, address))
    return tuple(out)


def _segments(env: Environment, previous: Mapping[str, str]) -> tuple[Segment, ...]:
    """A network's own subnet, else the one of the previous `up`, else the first free /24 of `POOL` that
    overlaps none of the others."""
    own = [ipaddress.IPv4Network(n.subnet) for n in env.networks if n.subnet]
    pool = [str(s) for s in POOL.subnets(new_prefix=PREFIX) if not any(s.overlaps(o) for o in own)]
    used = {previous[n.name] for n in env.networks if not n.subnet and previous.get(n.name) in pool}
    free = [s for s in pool if s not in used]
    out = []
    for i, net in enumerate(env.networks):
        subnet = net.subnet or previous.get(net.name)
        if not net.subnet and subnet not in used:
            subnet = free.pop(0)
            used.add(subnet)
        out.append(Segment(net.name, i, str(subnet), net.internal))
    return tuple(out)


def _wanted(env: Environment) -> dict[str, dict[str, tuple[str, ...]]]:
    """member -> network -> names, members in declaration order (machines, then host containers)."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for m in env.machines:
        services = [s for s in env.services if s.machine == m.name]
        out[m.name] = {}
        for net in m.networks:
            names = [*([m.name] if m.dedicated_to is None else []), *(n for s in services for n in s.names_on(net))]
            out[m.name][net] = tuple(dict.fromkeys(names))
    for s in env.services:
        if s.isolation is Isolation.CONTAINER:
            out[s.name] = {a.network: s.names_on(a.network) for a in s.networks}
    return out


def _fixed(env: Environment, key: str) -> dict[tuple[str, str], str]:
    """(member, network) -> the `mac_address` or `ipv4_address` its service fixed (vmctl/fixed_nics.py allows
    it only where the service is the member: its own microVM, or its host container)."""
    return {(s.machine or s.name, a.network): value for s in env.services for a in s.networks
            if (value := getattr(a, key)) is not None}


def _fits(address: str, subnet: str) -> bool:
    try:
        net = ipaddress.IPv4Network(subnet)
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return ip in net and ip not in (net.network_address, net.broadcast_address)


def _next_free(segment: Segment, taken: set[str]) -> str:
    for host in ipaddress.IPv4Network(segment.subnet).hosts():
        if str(host) not in taken:
            taken.add(str(host))
            return str(host)
    raise ValueError(f"network `{segment.name}` ({segment.subnet}) has no free address left")


def mac_for(environment: str, member: str, network: str, attempt: int = 0) -> str:
    """A stable MAC under QEMU's 52:54:00 prefix for one NIC."""
    digest = hashlib.sha256(f"{environment}/{member}/{network}/{attempt}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _unique_mac(environment: str, member: str, network: str, taken: set[str]) -> str:
    attempt = 0
    while (mac := mac_for(environment, member, network, attempt)) in taken or mac == USER_NET_MAC:
        attempt += 1
    taken.add(mac)
    return mac
