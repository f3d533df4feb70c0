"""The environment network on the file's hosts: the tunnel ends (vmctl/network/tunnel.py) made and
removed over SSH to each host, and this machine's ends in the environment's namespace.

Every host is reached the way SSH to its guests is (`ssh.Jump`: its key checked against the file's
known-hosts file); the connection also says which addresses the tunnel uses: the host's is the
connection's peer, this machine's (as that host sees it) the connection's own end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import paramiko

from vmctl.errors import HostError
from vmctl.hostspec import HostSpec
from vmctl.network import tunnel
from vmctl.network.host import EnvNetwork
from vmctl.network.plan import NetworkPlan
from vmctl.ssh import Jump, run_on_host


@dataclass(frozen=True)
class Node:
    """A host in the mesh, with the addresses its tunnel end is reached at and reaches us at."""

    host: HostSpec
    address: str
    sees_us_as: str


def extend(net: EnvNetwork, plan: NetworkPlan, hosts: Sequence[HostSpec]) -> None:
    """Every segment of `plan` on every host in `hosts`, meshed with this machine and with each other
    (idempotent: what a host has is kept, missing devices and peers are added)."""
    if not hosts:
        return
    names = tunnel.Names(net.id)
    segments = [s.index for s in plan.segments]
    with contextlib.ExitStack() as stack:
        sessions = [(h, stack.enter_context(_session(h))) for h in hosts]
        nodes = [_node(h, client) for h, client in sessions]
        for (h, client), node in zip(sessions, nodes, strict=True):
            peers = [node.sees_us_as, *(o.address for o in nodes if o is not node)]
            _ensure(client, h, names, segments, peers)
    for seg in plan.segments:
        net.join_vxlan(names.vxlan(seg.index), names.vni(seg.index), tunnel.PORT, seg, [n.address for n in nodes])


def withdraw(net_id: str, hosts: Sequence[HostSpec]) -> list[HostSpec]:
    """Remove the environment's bridges and VXLAN devices from each host; the hosts that did not
    answer (what they hold stays recorded, for a later `down`)."""
    names, left = tunnel.Names(net_id), []
    for h in hosts:
        try:
            with _session(h) as client:
                have = tunnel.link_names(_run(client, h, ["ip", "-o", "link", "show"]))
                _batch(client, h, "ip", tunnel.remove_commands(names, have))
        except HostError:
            left.append(h)
    return left


def _ensure(client: paramiko.SSHClient, h: HostSpec, names: tunnel.Names, segments: Sequence[int],
            peers: Sequence[str]) -> None:
    have = tunnel.link_names(_run(client, h, ["ip", "-o", "link", "show"]))
    _batch(client, h, "ip", tunnel.host_end_commands(names, segments, have))
    fdb = []
    for k in segments:
        shown = _run(client, h, ["bridge", "fdb", "show", "dev", names.vxlan(k)])
        fdb += tunnel.fdb_commands(names.vxlan(k), peers, tunnel.flood_peers(shown))
    _batch(client, h, "bridge", fdb)


def _node(h: HostSpec, client: paramiko.SSHClient) -> Node:
    transport = client.get_transport()
    assert transport is not None
    ours = transport.sock.getsockname()  # type: ignore[union-attr]
    return Node(h, tunnel.address(transport.getpeername()[0]), tunnel.address(ours[0]))


@contextlib.contextmanager
def _session(h: HostSpec) -> Iterator[paramiko.SSHClient]:
    client = Jump(h).open()
    try:
        yield client
    finally:
        client.close()


def _batch(client: paramiko.SSHClient, h: HostSpec, program: str, commands: Sequence[str]) -> None:
    """Several `ip`/`bridge` commands in one remote process, on its stdin: no value reaches a shell."""
    if commands:
        _run(client, h, [program, "-batch", "-"], stdin=("\n".join(commands) + "\n").encode())


def _run(client: paramiko.SSHClient, h: HostSpec, argv: Sequence[str], stdin: bytes | None = None) -> str:
    try:
        code, out, err = run_on_host(client, argv, stdin=stdin)
    except (TimeoutError, paramiko.SSHException, OSError) as e:
        raise HostError(f"host `{h.name}` ({h.uri}): `{' '.join(argv)}` did not complete: {e}") from None
    if code != 0:
        raise HostError(f"host `{h.name}` ({h.uri}): `{' '.join(argv)}` failed: {err.decode(errors='replace').strip()}",
                        hint="vmctl makes the environment network's bridge and VXLAN devices there: it needs root "
                             "(CAP_NET_ADMIN) on the host, and UDP port 4789 open between the hosts")
    return out.decode(errors="replace")
