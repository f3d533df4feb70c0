"""The accelerator of a declared host (`hosts:`), found there by a real probe, as vmctl/accel.py finds this
machine's: whether a KVM guest runs on *that* host says nothing about this one, and the other way round.

Through the host's libvirt: first its domain capabilities (no KVM offered: TCG, no boot), then the guest
image's kernel and initramfs, sent into vmctl's pool there as `up` sends them, booted once as a transient
KVM domain with `vmctl.probe=1` (templates/domain/probe.xml.j2); only the init's `VMCTL-PROBE-OK` on its
console (read through libvirt) counts. The answer is cached for a day per host identity (libvirt's host
UUID, libvirt's and QEMU's versions there) and boot files: a host's KVM seldom changes, and a probe that
fails costs its whole timeout (12 s on a host whose KVM cannot run the guest).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import libvirt

from vmctl import host_files, render
from vmctl.accel import PROBE_TIMEOUT, AccelReport
from vmctl.guest_image import GuestImage
from vmctl.hostspec import HostSpec
from vmctl.hypervisor import Hypervisor
from vmctl.paths import cache_root
from vmctl.progress import Progress
from vmctl.spec import MachineSpec
from vmctl.state import write_atomic

CACHE_SECONDS = 24 * 3600
PROBE_LINE = b"VMCTL-PROBE-OK"
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ProbeView:
    """What templates/domain/probe.xml.j2 fills in: paths on the host, the name and the command line."""

    name: str
    kernel: str
    initrd: str
    cmdline: str
    console: str


def reports(machines: Sequence[tuple[HostSpec, MachineSpec]], images: Mapping[str, GuestImage],
            progress: Progress) -> list[tuple[HostSpec, AccelReport, list[MachineSpec]]]:
    """Each host's answer, with the machines placed there; the hosts in parallel (a failing probe costs its
    whole timeout). A host's probe boots the image of its first machine."""
    by_host: dict[str, tuple[HostSpec, list[MachineSpec]]] = {}
    for host, m in machines:
        by_host.setdefault(host.name, (host, []))[1].append(m)

    def one(name: str) -> tuple[HostSpec, AccelReport, list[MachineSpec]]:
        host, on_it = by_host[name]
        image = images[on_it[0].image]
        progress.working(f"accel {name}", "probing KVM on the host")
        with Hypervisor(host.connection_uri) as hv:
            found = report(hv.conn, host, image.kernel, image.initrd)
        progress.done(f"accel {name}", "kvm" if found.kvm_usable else "tcg")
        return host, found, on_it

    with ThreadPoolExecutor(max_workers=max(1, len(by_host))) as pool:
        return list(pool.map(one, sorted(by_host)))


def report(conn: Any, host: HostSpec, kernel: Path, initrd: Path) -> AccelReport:
    """The probe's answer for `host`, from the cache when it is there and younger than a day."""
    key = _key(conn, host, kernel, initrd)
    cache = cache_root() / "accel-hosts.json"
    entries = _entries(cache)
    hit = entries.get(key)
    if hit is not None and time.time() - hit["at"] < CACHE_SECONDS:
        with contextlib.suppress(TypeError):  # written by a vmctl whose report had other fields
            return AccelReport(**hit["report"])
    found = probe(conn, host, kernel, initrd, key)
    fresh = {k: e for k, e in entries.items() if time.time() - e["at"] < CACHE_SECONDS}
    fresh[key] = {"at": time.time(), "report": asdict(found)}
    write_atomic(cache, json.dumps(fresh).encode(), mode=0o644)
    return found


def probe(conn: Any, host: HostSpec, kernel: Path, initrd: Path, key: str = "") -> AccelReport:
    where = f"host `{host.name}`"
    try:
        conn.getDomainCapabilities(None, "x86_64", "q35", "kvm", 0)
    except libvirt.libvirtError as e:
        return AccelReport(False, f"libvirt on {where} offers no KVM ({e.get_error_message()})", None, None, key)
    pool = host_files.ensure_pool(conn)
    name = f"vmctl-probe-{secrets.token_hex(4)}"
    view = ProbeView(name, host_files.send(conn, pool, kernel, "kernel").path,
                     host_files.send(conn, pool, initrd, "initrd").path,
                     render.kernel_cmdline("probe", "AAAA", probe=True), host_files.console_path(name))
    start = time.monotonic()
    try:
        dom = conn.createXML(render.render_template("domain/probe.xml.j2", probe=view), 0)
    except libvirt.libvirtError as e:
        return AccelReport(False, f"{where} could not start a KVM guest ({e.get_error_message()[-120:]})", None,
                           time.monotonic() - start, key)
    try:
        return _watch(conn, pool, dom, name, where, start, key)
    finally:
        _destroy(dom)
        host_files.remove_console(pool, name)


def _watch(conn: Any, pool: Any, dom: Any, name: str, where: str, start: float, key: str) -> AccelReport:
    console = host_files.console_name(name)
    while (seconds := time.monotonic() - start) < PROBE_TIMEOUT:
        running = _active(dom)  # first: once it has powered off, the console read next is complete
        if PROBE_LINE in host_files.read_from(conn, pool, console, 0):
            return AccelReport(True, f"a probe guest booted under KVM on {where} in {seconds:.2f} s", None,
                               seconds, key)
        if not running:
            return AccelReport(False, f"the KVM probe guest on {where} stopped before its init ran", None,
                               seconds, key)
        time.sleep(POLL_SECONDS)
    return AccelReport(False, f"a probe guest under KVM on {where} did not reach its init within "
                              f"{PROBE_TIMEOUT:.0f} s", None, time.monotonic() - start, key)


def _key(conn: Any, host: HostSpec, kernel: Path, initrd: Path) -> str:
    uuid = ET.fromstring(conn.getCapabilities()).findtext("host/uuid") or ""
    return "|".join([host.name, uuid, str(conn.getLibVersion()), str(conn.getVersion()),
                     host_files.content_name(kernel, "kernel"), host_files.content_name(initrd, "initrd")])


def _entries(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = json.loads(cache.read_text())
        return {k: v for k, v in raw.items() if isinstance(v, dict) and {"at", "report"} <= v.keys()}
    except (OSError, ValueError, AttributeError):
        return {}


def _active(dom: Any) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain that powered off is gone


def _destroy(dom: Any) -> None:
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
