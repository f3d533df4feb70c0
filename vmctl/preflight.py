"""Checks `up` makes before it creates anything: the host can hold the machines, and what they need is free.

The environment file is valid on any host; whether *this* host has the memory, the CPUs, the free ports and a
reachable libvirt is a runtime question (exit code 1). Each failure still names the file, line and key that asks
for too much, and says how to fix it. Nothing here changes the host: a failing `up` leaves no trace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmctl import guest_image, ports, remote
from vmctl.errors import HostError, UsageError, Where
from vmctl.hostspec import HostSpec
from vmctl.hypervisor import Hypervisor, is_embedded
from vmctl.spec import Environment, MachineSpec, PortSpec
from vmctl.state import EnvState

if TYPE_CHECKING:
    from vmctl.lifecycle import Project

MEMINFO = Path("/proc/meminfo")
OVERHEAD_MIB = 64  # QEMU's own memory per VM, on top of the guest's RAM


@dataclass(frozen=True)
class HostResources:
    cpus: int
    mem_total_mib: int
    mem_available_mib: int


def host_resources(meminfo: Path = MEMINFO) -> HostResources:
    fields: dict[str, int] = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) // 1024  # kB -> MiB
    total = fields.get("MemTotal", 0)
    return HostResources(cpus=len(os.sched_getaffinity(0)) or os.cpu_count() or 1, mem_total_mib=total,
                         mem_available_mib=fields.get("MemAvailable", total))


def is_local(uri: str) -> bool:
    """Does this URI run QEMU on this host? (`qemu:///...`, `qemu+unix:///...`, `test:///...`.)"""
    scheme, _, rest = uri.partition("://")
    return is_embedded(uri) or (rest.startswith("/") and scheme.split("+")[-1] in ("unix", scheme))


def check(project: Project, machines: Sequence[MachineSpec], state: EnvState) -> None:
    """Everything `up` can know before it creates anything. Call it inside the lock, before images and libvirt."""
    env = project.env
    to_start = [m for m in machines if not _recorded(state, m)]
    local = [m for m in to_start if is_local(project.uri_for(m))]
    check_resources(env, local, host_resources())
    fixed = [m for m in to_start if any(p.host_port is not None for p in m.ports)]
    for host, on_it in _by_ssh_host(project, fixed).items():
        with remote.port_check(host) as is_free:  # where each machine's ports will bind
            check_ports(env, on_it, state, is_free, on=host.name if host else "")
    check_boot_files(env, to_start)
    check_volumes(env, to_start)
    check_external_volumes(env)
    remote.check(env, [(m, h) for m in to_start if (h := project.host_of(m)) is not None])
    check_uris({project.uri_for(m) for m in to_start if project.host_of(m) is None})  # hosts: asked by placement


def _recorded(state: EnvState, m: MachineSpec) -> bool:
    """Recorded as booted by an earlier `up`: `up` re-checks it against libvirt, and its ports are its own."""
    ms = state.machines.get(m.name)
    return ms is not None and ms.hostkey is not None


def where(env: Environment, m: MachineSpec, key: str) -> Where:
    """The line that sets `key` for this machine: its own, its service's `vm`, or `defaults`, else the machine."""
    base = ("services", m.dedicated_to, "vm") if m.dedicated_to else ("machines", m.name)
    candidates = [(*base, key), ("defaults", key), base]
    if m.dedicated_to:
        candidates.append(("services", m.dedicated_to))
    for path in candidates:
        dotted = ".".join(str(p) for p in path)
        if (place := env.place(dotted)) is not None:
            return place
    return Where(str(env.file), None, ".".join(str(p) for p in candidates[0]))


def check_resources(env: Environment, machines: Sequence[MachineSpec], host: HostResources) -> None:
    for m in machines:
        if m.vcpus > host.cpus:
            raise HostError(f"machine `{m.name}` asks for {m.vcpus} vCPUs, but this host has {host.cpus} CPUs",
                            hint=f"lower `vcpus` to at most {host.cpus}", where=where(env, m, "vcpus"))
        if m.memory_mib > host.mem_total_mib:
            raise HostError(f"machine `{m.name}` asks for {m.memory_mib} MiB of memory, but this host has "
                            f"{host.mem_total_mib} MiB in all", hint="lower `memory`", where=where(env, m, "memory"))
    need = sum(m.memory_mib + OVERHEAD_MIB for m in machines)
    if machines and need > host.mem_available_mib:
        biggest = max(machines, key=lambda m: m.memory_mib)
        raise HostError(f"the machines to start need {need} MiB of memory (with QEMU's own), but only "
                        f"{host.mem_available_mib} MiB are available on this host",
                        hint="lower `memory`, start fewer machines (`vmctl up NAME`), or stop other VMs",
                        where=where(env, biggest, "memory"))


def _by_ssh_host(project: Project, machines: Sequence[MachineSpec]) -> dict[HostSpec | None, list[MachineSpec]]:
    """Machines by the SSH host their forwards bind on (None: this machine, also for a local daemon's URI)."""
    groups: dict[HostSpec | None, list[MachineSpec]] = {}
    for m in machines:
        host = project.host_of(m)
        groups.setdefault(host if host is not None and host.address else None, []).append(m)
    return groups


def check_ports(env: Environment, machines: Sequence[MachineSpec], state: EnvState,
                is_free: ports.PortCheck = ports.port_is_free, *, on: str = "") -> None:
    ours = {(f.host_ip, f.host_port, f.proto) for ms in state.machines.values() for f in ms.forwards}
    for m in machines:
        for p in m.ports:
            if p.host_port is None or (p.host_ip, p.host_port, p.proto) in ours:
                continue
            if not is_free(p.host_ip, p.host_port, p.proto):
                error = ports.in_use(m.name, p.host_ip, p.host_port, p.proto, on)
                error.where = _port_where(env, m, p)
                raise error


def _port_where(env: Environment, m: MachineSpec, port: PortSpec) -> Where:
    """Ports of services in a VM are merged into the machine's list: point at the entry that declared this one."""
    declared = [(("machines", m.name, "ports"), m.ports)]
    declared += [(("services", s.name, "ports"), s.ports) for s in env.services if s.machine == m.name]
    for base, entries in declared:
        for i, p in enumerate(entries):
            dotted = f"{'.'.join(base)}[{i}]"
            if p == port and (place := env.place(dotted)) is not None:
                return place
    return where(env, m, "ports")


def check_boot_files(env: Environment, machines: Sequence[MachineSpec]) -> None:
    """Kernel, initrd and disk images named in the file: still there, and readable (they were at parse time)."""
    for m in machines:
        files: Mapping[str, Path | None] = {"kernel": m.kernel, "initrd": m.initrd}
        for key, path in files.items():
            if path is not None and not os.access(path, os.R_OK):
                raise HostError(f"machine `{m.name}`: cannot read {key} `{path}`",
                                hint="check that the file exists and is readable", where=where(env, m, key))
        for disk in m.disks:
            if disk.path is not None and not os.access(disk.path, os.R_OK if disk.readonly else os.R_OK | os.W_OK):
                raise HostError(f"machine `{m.name}`: cannot open disk `{disk.path}`",
                                hint="check that the image exists and is readable (and writable unless `readonly`)",
                                where=where(env, m, "disks"))


def check_volumes(env: Environment, machines: Sequence[MachineSpec]) -> None:
    """Services' `volumes` in a machine are virtio-9p mounts: its guest image's kernel must have 9p.
    A machine booting its own `kernel` is not checked here (the guest says so when it cannot mount)."""
    for m in machines:
        users = [s for s in env.services_on(m.name) if s.volumes]
        if not users or m.kernel is not None or guest_image.has_9p(m.image):
            continue
        svc = users[0]
        dotted = f"services.{svc.name}.volumes"
        raise UsageError(
            f"service `{svc.name}`: `volumes` in machine `{m.name}` need 9p in the guest kernel, and the kernel of "
            f"guest image `{m.image}` has none",
            hint=f"give it {'`vm: {image: minimal}`' if m.dedicated_to else '`image: minimal`'} (that kernel has "
                 "virtio-9p built in), or use `isolation: container`",
            where=env.place(dotted) or Where(str(env.file), None, dotted))


def check_external_volumes(env: Environment) -> None:
    """An `external: true` volume is the user's to make: missing, it fails before anything is created."""
    used = {v.volume for s in env.services for v in s.volumes}
    for vol in env.volumes:
        if vol.external and vol.key in used and not vol.path.is_dir():
            dotted = f"volumes.{vol.key}"
            raise UsageError(f"external volume `{vol.name}` does not exist (no folder `{vol.path}`)",
                             hint=f"create it (`mkdir -p {vol.path}`), or drop `external: true`",
                             where=env.place(dotted) or Where(str(env.file), None, dotted))


def check_uris(uris: Iterable[str]) -> None:
    """A libvirt that cannot be reached fails here, before anything is created (the embedded one always can)."""
    for uri in sorted(uris):
        if not is_embedded(uri):
            with Hypervisor(uri):
                pass
