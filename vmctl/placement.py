"""Which host each machine runs on, when the environment file declares `hosts:`.

Before `up` creates anything, every host it needs is asked, through libvirt itself, what it has
(`getInfo`: CPUs and memory; `getFreeMemory`; the domains running there and the memory they were
given). A machine with `host: NAME` goes there; any other goes to the host with the most free memory
that still fits it and its vCPUs, biggest machines first. A host that does not answer, or a machine
that fits nowhere, fails here, naming the host, its URI and what it lacked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vmctl.errors import HostError, Where
from vmctl.hostspec import HostSpec
from vmctl.hypervisor import Hypervisor
from vmctl.spec import Environment, MachineSpec

OVERHEAD_MIB = 64  # QEMU's own memory per VM, as preflight counts it
MIB = 1024 * 1024


@dataclass(frozen=True)
class HostLoad:
    """One host as libvirt reports it (capacity overrides applied), or why it did not answer."""

    name: str
    uri: str
    answers: bool
    error: str | None = None
    cpus: int = 0
    memory_mib: int = 0  # what vmctl may fill: the host's memory, or `capacity.memory`
    free_mib: int = 0  # what is left of it now
    running: tuple[str, ...] = ()  # domains running there (any environment's)
    running_mib: int = 0  # the memory those were given
    versions: Mapping[str, str] = field(default_factory=dict)

    def fits(self, m: MachineSpec) -> bool:
        return self.answers and m.vcpus <= self.cpus and need_mib(m) <= self.free_mib

    def lack(self, m: MachineSpec) -> str:
        """What this host lacks for `m`, in words."""
        if not self.answers:
            return f"`{self.name}` does not answer"
        if m.vcpus > self.cpus:
            return f"`{self.name}` has {self.cpus} CPU{'s' if self.cpus != 1 else ''}"
        return f"`{self.name}` has {self.free_mib} MiB free"


def need_mib(m: MachineSpec) -> int:
    return m.memory_mib + OVERHEAD_MIB


def read_load(host: HostSpec, hv: Any) -> HostLoad:
    """What `host` offers, from libvirt: CPUs, memory, free memory, and what runs there."""
    conn = hv.conn
    _model, memory_mib, cpus, *_ = conn.getInfo()
    domains = conn.listAllDomains(1)  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
    running_mib = sum(d.info()[1] // 1024 for d in domains)  # KiB given to each
    free_mib = conn.getFreeMemory() // MIB
    if host.capacity.memory_mib is not None:
        memory_mib = host.capacity.memory_mib
        free_mib = min(free_mib, memory_mib - running_mib - OVERHEAD_MIB * len(domains))
    return HostLoad(name=host.name, uri=host.uri, answers=True, cpus=host.capacity.vcpus or cpus,
                    memory_mib=memory_mib, free_mib=max(0, free_mib), running=tuple(sorted(d.name() for d in domains)),
                    running_mib=running_mib, versions=hv.versions())


def survey(hosts: Iterable[HostSpec],
           connect: Callable[[str], Hypervisor] = Hypervisor) -> list[HostLoad]:
    """Each host's load, or why it did not answer (for `vmctl hosts`: never raises for one host)."""
    out = []
    for host in hosts:
        try:
            with connect(host.connection_uri) as hv:
                out.append(read_load(host, hv))
        except HostError as e:
            out.append(HostLoad(name=host.name, uri=host.uri, answers=False, error=_reason(e)))
    return out


def _reason(e: HostError) -> str:
    return e.message.partition(": ")[2] or e.message


def require_answers(env: Environment, loads: Sequence[HostLoad]) -> None:
    """Fail before anything is created when a host `up` needs does not answer."""
    for load in loads:
        if not load.answers:
            host = env.host(load.name)
            assert host is not None
            hint = "check that the host is up and its libvirtd runs"
            if load.error and "host key" in load.error.lower():
                hint = (f"vmctl never accepts an unknown host key: check the key (`{host.fingerprint_command()}`), "
                        f"then add it to {host.known_hosts or '~/.ssh/known_hosts'}")
            raise HostError(f"host `{load.name}` ({load.uri}) does not answer: {load.error}", hint=hint,
                            where=_where(env, ("hosts", load.name)))


def place(env: Environment, machines: Sequence[MachineSpec], loads: Sequence[HostLoad],
          placed: Mapping[str, str] | None = None) -> dict[str, str]:
    """Machine name -> host name for `machines`: their own `host`, else the host with the most free
    memory that fits, biggest machines first. `placed`: machines already running somewhere (kept)."""
    left = {load.name: load for load in loads}
    out = dict(placed or {})
    for m in sorted(machines, key=lambda m: (m.host is None, -need_mib(m), m.name)):
        if m.name in out:
            continue
        name = m.host or _roomiest(m, left.values())
        load = left.get(name) if name else None
        if load is None or not load.fits(m):
            raise _fits_nowhere(env, m, [left[m.host]] if m.host in left else list(left.values()))
        out[m.name] = load.name
        left[load.name] = replace(load, free_mib=load.free_mib - need_mib(m))
    return out


def _roomiest(m: MachineSpec, loads: Iterable[HostLoad]) -> str | None:
    fitting = [load for load in loads if load.fits(m)]
    return max(fitting, key=lambda load: (load.free_mib, load.cpus, load.name)).name if fitting else None


def _fits_nowhere(env: Environment, m: MachineSpec, loads: Sequence[HostLoad]) -> HostError:
    what = f"{m.memory_mib} MiB (+{OVERHEAD_MIB} MiB for QEMU) and {m.vcpus} vCPU{'s' if m.vcpus > 1 else ''}"
    where = f"host `{m.host}`" if m.host else "any host"
    lacks = "; ".join(load.lack(m) for load in loads) or "no host declared"
    base = ("services", m.dedicated_to) if m.dedicated_to else ("machines", m.name)
    return HostError(f"machine `{m.name}` needs {what}, which does not fit on {where}: {lacks}",
                     hint="lower `memory`/`vcpus`, stop other VMs there, or add a host to `hosts:`",
                     where=_where(env, base))


def _where(env: Environment, path: tuple[str, ...]) -> Where:
    dotted = ".".join(path)
    return env.place(dotted) or Where(str(env.file), None, dotted)
