"""`deploy.replicas` and `scale`: N instances of one service, each a member of its own.

A service with N > 1 instances becomes N services `NAME-1`..`NAME-N` (compose's numbering), each in its
own microVM (or its own host container), with the same settings; every one of them is also found by
`NAME` on its networks, so the resolver answers NAME with every replica's address (clients pick one, as
with compose's DNS round robin). A service that depends on NAME waits for all of its replicas, and
`exec NAME` / `logs NAME` address the first, as compose's `--index 1` does.

What cannot be told apart between instances is refused before anything runs: a fixed host port (all
would bind it), `container_name`, `hostname` (one name, N members), `mac_address` and `ipv4_address`
(one NIC's), and a declared `machine` (its services share one network stack, so the instances' ports and
names would clash).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vmctl.fixed_nics import FIXED
from vmctl.settings import NAME_RE, Ctx

if TYPE_CHECKING:
    from vmctl.spec import ServiceSpec


def count(scale: int | None, replicas: int | None, path: tuple[str, ...], ctx: Ctx) -> int:
    """How many instances: `scale` or `deploy.replicas` (compose lets both say it; they must agree)."""
    if scale is not None and replicas is not None and scale != replicas:
        ctx.fail((*path, "scale"), f"`scale: {scale}` and `deploy.replicas: {replicas}` disagree",
                 "keep one of them")
    return scale or replicas or 1


def expand(pairs: Sequence[tuple[ServiceSpec, Any]], counts: Mapping[str, int],
           ctx: Ctx) -> list[tuple[ServiceSpec, Any]]:
    """Each (service, its raw settings) as it is, or as its N instances; `depends_on` on a replicated
    service names all its instances."""
    instances = {svc.name: _names(svc, counts.get(svc.name, 1), ctx) for svc, _ in pairs}
    out = []
    for svc, raw in pairs:
        deps = tuple(replace(dep, service=n) for dep in svc.dependencies
                     for n in instances.get(dep.service, [dep.service]))
        svc = replace(svc, dependencies=deps)
        names = instances[svc.name]
        if names == [svc.name]:
            out.append((svc, raw))
            continue
        _check(svc, ctx)
        out += [(replace(svc, name=name, replica_of=svc.name), raw) for name in names]
    return out


def _names(svc: ServiceSpec, n: int, ctx: Ctx) -> list[str]:
    if n == 1:
        return [svc.name]
    names = [f"{svc.name}-{i}" for i in range(1, n + 1)]
    if not NAME_RE.match(names[-1]):
        ctx.fail(("services", svc.name), f"instance name `{names[-1]}` is too long",
                 "replicas are named NAME-1..NAME-N and names have at most 32 characters: shorten the service name")
    return names


def _check(svc: ServiceSpec, ctx: Ctx) -> None:
    path = ("services", svc.name)
    fixed = [p for p in svc.ports if p.host_port is not None]
    if fixed:
        ctx.fail((*path, "ports"), f"every instance would bind host port {fixed[0].host_port}",
                 f'publish the container port only (`"{fixed[0].target}"`: each instance gets a free host port), '
                 "or run one instance")
    for key, what in FIXED.items():
        if nic := next((a for a in svc.networks if getattr(a, key) is not None), None):
            ctx.fail((*path, key), f"every instance would have {what} {getattr(nic, key)} on network "
                     f"`{nic.network}`", f"remove `{key}` (each instance gets one of its own), or run one instance")
    for key, value in (("container_name", svc.container_name), ("hostname", svc.hostname), ("machine", svc.machine)):
        if value is not None:
            why = ("its services share one network stack: the instances' ports and names would clash"
                   if key == "machine" else "the instances would share one name")
            ctx.fail((*path, key), f"`{key}` cannot be used with several instances: {why}",
                     f"remove `{key}`, or run one instance")
