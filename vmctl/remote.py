"""What differs for a machine on one of the file's `hosts:`: its files are sent into the host's vmctl
pool (vmctl/host_files.py), its console is read through libvirt, and SSH to it goes through the host."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import paramiko

from vmctl import host_files, ports
from vmctl.errors import HostError, UsageError, Where
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


def forget(conn: Any, environment: str, domains: Sequence[str]) -> None:
    """What `down` leaves of the environment on a host but its cache: the consoles, the scratch disks."""
    forget_consoles(conn, domains)
    host_files.remove_scratch(conn, environment)


def forget_consoles(conn: Any, domains: Sequence[str]) -> None:
    pool = host_files.ensure_pool(conn)
    for domain in domains:
        host_files.remove_console(pool, domain)


def jump(host: HostSpec | None) -> Jump | None:
    """How SSH reaches a guest on `host`: through its sshd (None: the guest's port is on this machine)."""
    return Jump(host) if host is not None and host.address else None


@contextlib.contextmanager
def port_check(host: HostSpec | None) -> Iterator[ports.PortCheck]:
    """Whether a port is free where a machine's forwards will bind (its QEMU's `hostfwd`): on this
    machine, or on `host`, asked over one SSH connection to it."""
    j = jump(host)
    if j is None:
        yield ports.port_is_free
        return
    client = j.open()
    try:
        yield functools.partial(_free_on_host, client, j.host.name)
    finally:
        client.close()


class PortChecks(contextlib.AbstractContextManager["PortChecks"]):
    """`port_check` for every host one `up` defines machines on, each host's connection opened once
    (not once per machine) and closed at the end."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._checks: dict[str, ports.PortCheck] = {}

    def on(self, host: HostSpec | None) -> ports.PortCheck:
        key = host.name if host else ""
        if key not in self._checks:
            self._checks[key] = ports.claiming(self._stack.enter_context(port_check(host)))
        return self._checks[key]

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _free_on_host(client: paramiko.SSHClient, host: str, address: str, port: int, proto: str) -> bool:
    """TCP: no answer to a connection made by the host's own sshd (a `direct-tcpip` channel: nothing runs
    there). UDP cannot be asked that way: taken as free, and a port that is not makes QEMU fail to start,
    which `up` reports and rolls back."""
    if proto != "tcp":
        return True
    transport = client.get_transport()
    assert transport is not None
    target = "127.0.0.1" if address in ("0.0.0.0", "") else address
    try:
        transport.open_channel("direct-tcpip", (target, port), ("127.0.0.1", 0), timeout=10).close()
    except paramiko.ChannelException as e:
        if e.code == paramiko.common.OPEN_FAILED_CONNECT_FAILED:  # refused: nothing listens there
            return True
        raise HostError(f"cannot ask host `{host}` whether port {port} is free: its sshd said {e.text!r}",
                        hint="its sshd must allow TCP forwarding (`AllowTcpForwarding yes`): vmctl reaches "
                             "guests that way too") from None
    except (paramiko.SSHException, OSError) as e:  # no answer in time, or the connection went away
        raise HostError(f"cannot ask host `{host}` whether port {port} is free: {e}") from None
    return False


def check(env: Environment, machines: Sequence[tuple[MachineSpec, HostSpec]]) -> None:
    """What a machine cannot have on another host yet: host folders (9p), and disk files of this machine
    it writes to (its writes would stay on the host). Read-only image files are sent into the host's pool
    like the kernel, and a scratch disk (`size:`) is made there empty (`send_disks`)."""
    for m, host in machines:
        base = f"services.{m.dedicated_to}" if m.dedicated_to else f"machines.{m.name}"
        uses_volumes = any(s.volumes for s in env.services_on(m.name))
        writable = [d for d in m.disks if d.path is not None and not d.readonly]
        if writable or uses_volumes:
            what, key = (f"the writable disk file `{writable[0].name}`", f"{base}.disks") if writable else (
                "`volumes`", f"{base}.volumes")
            raise UsageError(f"machine `{m.name}` runs on host `{host.name}`, and {what} of a machine on another "
                             "host is not supported yet (a file of this machine, written there)",
                             hint="run it here (remove `hosts:`), make the disk `readonly: true` or a scratch disk "
                                  "(`size:` instead of `path:`), or drop it",
                             where=env.place(key) or Where(str(env.file), None, key))


def send_disks(conn: Any, environment: str, m: MachineSpec, progress: Progress, host: HostSpec) -> MachineSpec:
    """The machine with its disks as volumes on the host: its read-only files (`check`) content-named,
    its scratch disks made empty the first time."""
    there = iter(send_files(conn, [(d.path, "disk") for d in m.disks if d.path is not None], progress, m.name, host))
    disks = []
    for d in m.disks:
        if d.path is not None:
            path = next(there)
        else:
            path = host_files.ensure_scratch(conn, host_files.scratch_name(environment, m.name, d.name),
                                             (d.size_mib or 1) << 20)
        disks.append(dataclasses.replace(d, path=Path(path)))
    return dataclasses.replace(m, disks=tuple(disks))
