"""`vmctl migrate MACHINE --to HOST`: move a running machine to another of the file's hosts by libvirt
live migration.

The machine's read-only, content-named files (kernel, initramfs, image disks) are copied into the
target's pool first, under the same names, so the domain's XML is valid there unchanged; its scratch
disks get an empty volume of the same name and size there, which QEMU fills during the move (libvirt's
storage migration: NBD, mirrored until the switch-over). Then libvirt migrates it live (QEMU to QEMU
over TCP to the target's address), persistent on the target and undefined on the source. Its name, its
guest key, its forwards and its addresses on the environment network stay (the target gets the
network's bridges and tunnel ends first; QEMU's announcement after the move teaches the mesh where its
MACs are now): its SSH and published ports are now on the target host. The environment's lock must be
free: `migrate` never waits for an `up`.
"""

from __future__ import annotations

import contextlib
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import libvirt

from vmctl import host_files, remote
from vmctl.errors import HostError, UsageError, VmctlError
from vmctl.hostspec import HostSpec
from vmctl.hypervisor import Hypervisor
from vmctl.network import plan as netplan
from vmctl.network import span

if TYPE_CHECKING:
    from vmctl.lifecycle import Project
    from vmctl.state import EnvState

# A migration that moves no byte for this long, or whose target connection died (keepalive), is aborted:
# the source's QEMU would otherwise wait on a dead TCP stream for as long as TCP retries (many minutes).
STALL_SECONDS = 10.0


@dataclass(frozen=True)
class Moved:
    machine: str
    source: str
    target: str
    seconds: float  # the migration call, start to end
    downtime_ms: int | None  # as QEMU measured it (the guest paused), from libvirt's completed job
    copied: tuple[str, ...]  # volumes the target did not have yet
    copied_bytes: int  # their size: what this move sent besides the machine's memory
    memory_bytes: int | None  # what QEMU sent (RAM, with every page sent again after the guest dirtied it)
    image_bytes: int  # every read-only pool file the machine uses: what a cold move to a new host needs
    disk_bytes: int = 0  # what the disks the guest writes to (scratch disks) held on the source: the storage copy


def pool_files(xml: str) -> list[str]:
    """The read-only files of vmctl's pool a domain uses (kernel, initramfs, image disks): not its console
    (the target makes its own), nor the disks it writes to (`written_disks`)."""
    root = ET.fromstring(xml)
    paths = [e.text or "" for e in root.iter() if e.tag in ("kernel", "initrd")]
    for disk in root.iter("disk"):
        source = disk.find("source")
        if disk.find("readonly") is not None and source is not None and source.get("file"):
            paths.append(source.get("file", ""))
    return [p for p in paths if p.startswith(host_files.POOL_DIR + "/")]


def written_disks(xml: str) -> list[tuple[str, str]]:
    """(target device, path) of each disk file the domain writes to: its scratch disks, which the
    migration copies while the guest runs (libvirt's NBD storage migration)."""
    out = []
    for disk in ET.fromstring(xml).iter("disk"):
        source, target = disk.find("source"), disk.find("target")
        if disk.find("readonly") is None and source is not None and target is not None and source.get("file"):
            out.append((target.get("dev", ""), source.get("file", "")))
    return out


def migrate(project: Project, name: str, target: str, *, bandwidth_mib: int = 0) -> Moved:
    """`bandwidth_mib`: QEMU's limit for the move, MiB/s (0: none)."""
    env = project.env
    if env.machine(name) is None:
        raise UsageError(f"unknown machine `{name}`", hint=f"machines: {', '.join(m.name for m in env.machines)}")
    dst = env.host(target)
    if dst is None:
        raise UsageError(f"unknown host `{target}`", hint=f"hosts: {', '.join(h.name for h in env.hosts) or 'none'}")
    with project.envdir.lock(wait=0):
        state = project.envdir.load(str(env.file))
        ms = state.machines.get(name)
        if ms is None or ms.hostkey is None or ms.host is None:
            raise VmctlError(f"machine `{name}` is not running on one of the file's hosts",
                             hint="start it with `vmctl up` (in a file with `hosts:`)")
        if ms.host == target:
            raise UsageError(f"machine `{name}` already runs on host `{target}`")
        src = env.host(ms.host)
        assert src is not None, f"state names host `{ms.host}`, which the file does not declare"
        with Hypervisor(src.connection_uri) as shv, Hypervisor(dst.connection_uri) as dhv:
            dom = shv.lookup(ms.domain)
            if dom is None or not dom.isActive():
                raise VmctlError(f"machine `{name}` is not running on host `{src.name}`")
            xml = dom.XMLDesc(0)
            files = {p: host_files.volume_size(shv.conn, p) for p in pool_files(xml)}
            copied = tuple(p for p in files if host_files.copy_between(shv.conn, dhv.conn, p))
            written = written_disks(xml)
            sizes = {path: host_files.volume_sizes(shv.conn, path) for _, path in written}  # (capacity, allocated)
            for path, (capacity, _) in sizes.items():  # empty on the target, same name and size: QEMU mirrors into it
                host_files.ensure_scratch(dhv.conn, PurePath(path).name, capacity)
            _network_to(project, state, dst)
            seconds, moved = _move(dom, dhv, dst.address, name, dst.name, bandwidth_mib, src.name,
                                   [dev for dev, _ in written])
            job = _completed_job(moved)
            remote.forget_consoles(shv.conn, [ms.domain])
            host_files.remove_scratch(shv.conn, env.name, only={path for _, path in written})
        ms.host, ms.uri = dst.name, dst.connection_uri
        project.envdir.save(state)
    return Moved(name, src.name, dst.name, round(seconds, 3), _int(job.get("downtime")), copied,
                 sum(files[p] for p in copied), _int(job.get("data_processed")), sum(files.values()),
                 sum(allocated for _, allocated in sizes.values()))


def _network_to(project: Project, state: EnvState, dst: HostSpec) -> None:
    """The target gets the environment network's bridges (libvirt puts the machine's NICs there on
    arrival) and joins the mesh; recorded first, so `down` removes them whatever happens next."""
    if not state.network:
        return
    names = sorted({*state.tunnel_hosts, *(ms.host for ms in state.machines.values() if ms.host), dst.name})
    state.tunnel_hosts = names
    project.envdir.save(state)
    hosts = [h for n in names if (h := project.env.host(n)) is not None]
    span.extend(project.network_host, netplan.plan(project.env, state.network), hosts)


def _move(dom: Any, dhv: Hypervisor, address: str | None, name: str, target: str, bandwidth_mib: int,
          source: str, disks: list[str]) -> tuple[float, Any]:
    """`disks`: the target devices to copy with the memory (NBD to the target's QEMU, then mirrored
    until the switch-over, so the guest's writes during the move are not lost)."""
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    params: dict[str, Any] = {}
    if address:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{address}"
    if bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
    if disks:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = disks
    watch = _Watch(dom, dhv.conn)
    watch.start()
    t0 = time.monotonic()
    try:
        moved = dom.migrate3(dhv.conn, params, flags)
    except libvirt.libvirtError as e:
        why = watch.reason or e.get_error_message()
        where = f"it still runs on host `{source}`" if _running(dom) else "`vmctl status` says where it runs now"
        raise HostError(f"cannot migrate `{name}` to host `{target}`: {why}", hint=where) from None
    finally:
        watch.stop()
    return time.monotonic() - t0, moved


class _Watch(threading.Thread):
    """Aborts the source's migration job when it stalls (see STALL_SECONDS); `reason` says why."""

    def __init__(self, dom: Any, dconn: Any) -> None:
        super().__init__(name="migrate-watch", daemon=True)
        self.dom, self.dconn = dom, dconn
        self.reason: str | None = None
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)

    def run(self) -> None:
        last, since = -1, time.monotonic()
        while not self._done.wait(1.0):
            with contextlib.suppress(libvirt.libvirtError):
                stats = self.dom.jobStats()  # memory, and the disks' copy that comes first
                processed = int(stats.get("data_processed", 0)) + int(stats.get("disk_processed", 0))
                if processed != last:
                    last, since = processed, time.monotonic()
            if not self.dconn.isAlive():
                self.reason = "the connection to the target host was lost"
            elif time.monotonic() - since > STALL_SECONDS:
                self.reason = f"nothing moved for {STALL_SECONDS:.0f} s (is the target host reachable?)"
            else:
                continue
            with contextlib.suppress(libvirt.libvirtError):
                self.dom.abortJob()
            return


def _running(dom: Any) -> bool:
    try:
        return bool(dom.isActive()) and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:
        return False


def _completed_job(dom: Any) -> dict[str, Any]:
    """libvirt's statistics of the finished migration, as the target keeps them (empty if it kept none)."""
    try:
        return dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except libvirt.libvirtError:
        return {}


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None
