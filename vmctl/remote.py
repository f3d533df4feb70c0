"""What differs for a machine on one of the file's `hosts:`: its files are sent into the host's vmctl
pool (vmctl/host_files.py), its console is read through libvirt, and SSH to it goes through the host."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmctl import host_files
from vmctl.errors import UsageError, Where
from vmctl.hostspec import HostSpec
from vmctl.progress import Progress
from vmctl.spec import Environment, MachineSpec
from vmctl.ssh import Jump


def send_files(conn: Any, files: Sequence[tuple[Path, str]], progress: Progress, machine: str,
               host: HostSpec) -> list[str]:
    """Each (local file, kind) as a volume on the host; the paths there, in order. Sends only what the
    host does not have yet."""
    pool = host_files.ensure_pool(conn)
    sent = [host_files.send(conn, pool, path, kind) for path, kind in files]
    size = sum(s.size for s in sent if s.uploaded)
    if size:
        progress.info(machine, f"sent {size / 2**20:.1f} MiB to host `{host.name}`")
    return [s.path for s in sent]


def console_reader(conn: Any, domain: str) -> Callable[[int], bytes]:
    """The remote console from an offset, as `console.wait_ready` reads a local file."""
    pool = host_files.ensure_pool(conn)
    name = host_files.console_name(domain)
    return lambda offset: host_files.read_from(conn, pool, name, offset)


def forget_consoles(conn: Any, domains: Sequence[str]) -> None:
    pool = host_files.ensure_pool(conn)
    for domain in domains:
        host_files.remove_console(pool, domain)


def jump(host: HostSpec | None) -> Jump | None:
    """How SSH reaches a guest on `host`: through its sshd (None: the guest's port is on this machine)."""
    return Jump(host) if host is not None and host.address else None


def check(env: Environment, machines: Sequence[tuple[MachineSpec, HostSpec]]) -> None:
    """What a machine cannot have on another host yet: host folders (9p) and disks of its own."""
    for m, host in machines:
        base = f"services.{m.dedicated_to}" if m.dedicated_to else f"machines.{m.name}"
        uses_volumes = any(s.volumes for s in env.services_on(m.name))
        if m.disks or uses_volumes:
            what, key = ("`disks`", f"{base}.disks") if m.disks else ("`volumes`", f"{base}.volumes")
            raise UsageError(f"machine `{m.name}` runs on host `{host.name}`, and {what} of a machine on another "
                             "host are not supported yet (they are files of this machine)",
                             hint="run it here (remove `hosts:`), or drop them",
                             where=env.place(key) or Where(str(env.file), None, key))
