"""libvirt: one connection per command, the embedded driver by default, domains tagged by environment.

The embedded driver (`qemu:///embed?root=DIR`) runs libvirt's QEMU driver inside this process, so no
daemon is needed. QEMU outlives the process; the next `open` of the same root re-attaches to it.
Only one process may hold a root at a time, which the per-environment lock in `state` guarantees.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt  # vmctl/__init__.py has sent libvirt's log to a file before any import of it

from vmctl.errors import HostError
from vmctl.paths import runtime_root, state_root
from vmctl.render import XMLNS

_loop_started = False
_loop_lock = threading.Lock()

# A remote libvirt that answers no keepalive for INTERVAL * (COUNT + 1) seconds is taken for gone: its
# connection is closed and every call on it fails, rather than waiting on TCP.
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 3, 3

# Run QEMU as the invoking user, and log its stdio to a file: the embedded driver has no virtlogd.
# Without `user`, libvirt probes QEMU's capabilities as another user, sees /dev/kvm differently from
# this process and throws its capability cache away on every call (seconds each time).
# QEMU runs as us and reads our own files, so there is nothing to relabel: without relabelling, libvirt
# neither chowns the shared image cache nor keeps owner records in its xattrs (which two environments
# booting from the same kernel file would race on, and whose stale records it warns about on stderr).
EMBED_QEMU_CONF = """\
stdio_handler = "file"
user = "+{uid}"
group = "+{gid}"
dynamic_ownership = 0
remember_owner = 0
"""

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "stopping",
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def embed_uri(root: Path) -> str:
    return f"qemu:///embed?root={root}"


def is_embedded(uri: str) -> bool:
    return uri.startswith("qemu:///embed")


def embed_root(uri: str) -> Path | None:
    query = urllib.parse.urlsplit(uri).query
    roots = urllib.parse.parse_qs(query).get("root")
    return Path(roots[0]) if is_embedded(uri) and roots else None


def reap_orphan_probes(root: Path, wait: float = 2.0) -> list[int]:
    """Kill QEMU capability probes left under an embedded root by a vmctl that died mid-probe.

    The embedded driver probes QEMU (`-machine none -qmp unix:ROOT/lib/qemu/qmp-XXXX/...`) inside the
    vmctl process; if that process is SIGKILLed, the probe waits on its socket forever, and no domain
    points at it, so `down` would not find it. Only one process opens a root at a time (the environment's
    lock), so before this one opens it, any probe under it is an orphan.
    """
    needle = f"unix:{root}/lib/qemu/qmp-".encode()
    pids = []
    for pid, argv in qemu_processes().items():
        if any(a.startswith(needle) for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                pids.append(pid)
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.02)
    return pids


def clear_unstarted_domains(root: Path) -> list[str]:
    """Drop the status files of domains whose start never reached QEMU's fork, under an embedded root.

    libvirt writes a domain's status (`run/qemu/NAME.xml`, `pid='0'`, an async `start` job) as the start
    begins; if vmctl is SIGKILLed before QEMU is forked, the next `open` restores that job, no thread
    ever ends it, and every later operation on the domain times out on its state change lock. With no
    process behind it (pid 0), the file describes nothing that runs: without it the domain is just
    defined, and `down` undefines it. Like `reap_orphan_probes`, only safe while the environment's lock
    is held."""
    cleared = []
    for status in (root / "run" / "qemu").glob("*.xml"):
        try:
            pid = ET.parse(status).getroot().get("pid")
        except (OSError, ET.ParseError):
            continue
        if pid == "0":
            status.unlink(missing_ok=True)
            cleared.append(status.stem)
    return cleared


_roots_opened: set[Path] = set()  # embedded roots this process's libvirt has initialised
_roots_lock = threading.Lock()


def wait_for_root(root: Path, wait: float = 15.0) -> None:
    """Wait until no other process holds the embedded root's driver (its pid file's lock).

    The embedded driver keeps `run/qemu/driver.pid` locked until its process exits, not when the
    connection closes (libvirt 9.0). The previous vmctl command on an environment lets go of the
    environment's lock before it has exited, so the next one can find the root still held for a moment.
    libvirt must not be asked before it is free: a failed start of its driver stays failed for the
    rest of this process ("qemu state driver is not active"). Never for a root this process has opened
    itself: closing our own descriptor of the pid file would drop libvirt's lock on it."""
    pidfile = root / "run" / "qemu" / "driver.pid"
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(pidfile, os.O_RDWR)
        except FileNotFoundError:
            break
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(fd, fcntl.LOCK_UN)
            break
        except OSError:
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise HostError(f"the libvirt root {root} is still held by another process (pid {holder})",
                                hint="wait for that vmctl command to finish, or stop it") from None
        finally:
            os.close(fd)
        time.sleep(0.1)


def _threads() -> set[int]:
    return {int(t.name) for t in Path("/proc/self/task").iterdir()}


@contextlib.contextmanager
def on_one_cpu() -> Iterator[None]:
    """Run the body (this thread only) on the lowest CPU this process may use.

    libvirt's QEMU driver reads the host's CPUID through KVM_GET_SUPPORTED_CPUID as it starts, in the
    thread that opens the connection, and throws its cached QEMU capabilities away when the answer
    differs from the cached one ("host cpuid changed": a fresh QEMU probe, ~4 s under TCG). Some KVM
    modules (kvm_pvm) put the APIC ID of the CPU the ioctl ran on into that answer, so it depended on
    where the thread happened to run. From the same CPU every time, the cache stays valid. Threads
    libvirt starts meanwhile would inherit the pin (and QEMU from them): they get the full set back."""
    allowed = os.sched_getaffinity(0)
    before = _threads()
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        for tid in _threads() - before | {threading.get_native_id()}:
            with contextlib.suppress(OSError):  # a thread that has exited meanwhile
                os.sched_setaffinity(tid, allowed)


def _ensure_event_loop() -> None:
    """libvirt's event loop, running in this process: the embedded driver needs it, and so does the
    keepalive of a remote connection (without it a call to a host that stopped answering waits for TCP
    to give up, many minutes)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _quiet_errors() -> None:
    # libvirt prints every error to stderr; vmctl reports failures itself, once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def prepare_embed_root(root: Path, shared_cache: Path | None = None) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    conf = root / "etc" / "qemu.conf"
    text = EMBED_QEMU_CONF.format(uid=os.getuid(), gid=os.getgid())
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    if shared_cache is not None:
        # QEMU's capability probe costs seconds; share its cache between environments' roots.
        shared_cache.mkdir(parents=True, exist_ok=True)
        link = root / "cache" / "qemu"
        link.parent.mkdir(exist_ok=True)
        if not link.is_symlink() and not link.exists():
            link.symlink_to(shared_cache)


def shared_capability_cache() -> Path:
    """libvirt's QEMU capability cache, shared by every embedded root of this user."""
    return state_root() / "libvirt-cache"


def warm_capabilities(name: str) -> dict[str, str]:
    """Open an embedded root of vmctl's own (`runtime_root()/libvirt/NAME`) on the shared capability
    cache and ask for libvirt's and QEMU's versions. QEMU's version comes from its cached capabilities,
    so when the cache is cold or outdated this is where QEMU gets probed (seconds), not in an `up`."""
    root = runtime_root() / "libvirt" / name
    prepare_embed_root(root, shared_capability_cache())
    with Hypervisor(embed_uri(root)) as hv:
        return hv.versions()


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: str
    reason: int
    environment: str | None
    machine: str | None


class Hypervisor:
    """A libvirt connection with the few operations vmctl needs."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: Any = None

    def __enter__(self) -> Hypervisor:
        _quiet_errors()
        if is_embedded(self.uri):
            _ensure_event_loop()
            root = embed_root(self.uri)
            if root is not None:
                # What other, dead or exiting, processes left: never what this process is doing in
                # another thread (a probe it runs, a domain it is starting, the pid file it holds).
                with _roots_lock:
                    if root not in _roots_opened:
                        wait_for_root(root)
                        reap_orphan_probes(root)
                        clear_unstarted_domains(root)
                        _roots_opened.add(root)
        else:
            _ensure_event_loop()  # before the open: keepalive runs on it
        try:
            with on_one_cpu():
                self.conn = libvirt.open(self.uri)
            if not is_embedded(self.uri):
                with contextlib.suppress(libvirt.libvirtError):  # drivers in this process have none (test:)
                    self.conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError as e:
            raise HostError(
                f"cannot connect to libvirt at `{self.uri}`: {e.get_error_message()}",
                hint="check `--connect`/`libvirt.uri`; for qemu:///system start the daemon (`libvirtd -d`)",
            ) from None
        if is_embedded(self.uri):
            self._settle()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()
            self.conn = None

    def _settle(self, timeout: float = 10.0) -> None:
        """Wait until the embedded driver has re-attached to QEMU processes it finds running.

        Re-attaching runs asynchronously after `open`; a domain that is still being reconnected holds
        a job, so a query job (memory stats) only succeeds once it is done.
        """
        deadline = time.monotonic() + timeout
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            while time.monotonic() < deadline:
                try:
                    if not dom.isActive():
                        break
                    dom.memoryStats()
                    break
                except libvirt.libvirtError:
                    time.sleep(0.05)

    # -- queries -----------------------------------------------------------------------------------

    def lookup(self, name: str) -> Any | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def info(self, dom: Any) -> DomainInfo:
        state, reason = dom.state()
        env, machine = _tags(dom)
        return DomainInfo(dom.name(), STATE_NAMES.get(state, "unknown"), reason, env, machine)

    def domains_of(self, environment: str) -> list[Any]:
        """Domains tagged with `environment` in their vmctl metadata; never another environment's."""
        return [d for d in self.conn.listAllDomains() if _tags(d)[0] == environment]

    def capabilities(self) -> str:
        return str(self.conn.getCapabilities())

    def versions(self) -> dict[str, str]:
        def fmt(v: int) -> str:
            return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"

        return {"libvirt": fmt(self.conn.getLibVersion()), "qemu": fmt(self.conn.getVersion())}

    # -- changes -----------------------------------------------------------------------------------

    def define(self, xml: str) -> Any:
        try:
            return self.conn.defineXML(xml)
        except libvirt.libvirtError as e:
            raise HostError(f"libvirt refused the domain definition: {e.get_error_message()}") from None

    def start(self, dom: Any) -> None:
        try:
            dom.create()
        except libvirt.libvirtError as e:
            log = self.qemu_log(dom.name())
            said = _tail(log) if log else ""
            raise HostError(f"cannot start `{dom.name()}`: {e.get_error_message()}"
                            + (f"\n  QEMU's log ({log}):\n{said}" if said else "")) from None

    def resume(self, dom: Any) -> None:
        try:
            dom.resume()
        except libvirt.libvirtError as e:
            raise HostError(f"cannot resume `{dom.name()}`: {e.get_error_message()}") from None

    def qemu_log(self, name: str) -> Path | None:
        """Where libvirt keeps this domain's QEMU log (command line and QEMU's own errors), if local."""
        if (root := embed_root(self.uri)) is not None:
            return root / "log" / "qemu" / f"{name}.log"
        if self.uri.startswith("qemu:///system"):
            return Path("/var/log/libvirt/qemu") / f"{name}.log"
        return None

    def remove(self, dom: Any) -> None:
        """Stop (hard) and undefine; tolerant of a domain that is already gone or stopped."""
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        try:
            dom.undefine()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise


def _tags(dom: Any) -> tuple[str | None, str | None]:
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, XMLNS)
    except libvirt.libvirtError:
        return None, None
    root = ET.fromstring(text)
    env = root.find("{*}environment")
    machine = root.find("{*}machine")
    return (env.text if env is not None else None, machine.text if machine is not None else None)


def qemu_processes() -> dict[int, list[bytes]]:
    """Every QEMU process on this host: pid -> argv."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0]:
            found[int(entry.name)] = argv
    return found


def qemu_pid(domain_name: str) -> int | None:
    """The host PID of a local domain's QEMU, found by its `-name guest=NAME,` argument."""
    needle = f"guest={domain_name},".encode()
    return next((pid for pid, argv in qemu_processes().items() if any(a.startswith(needle) for a in argv)), None)


@contextlib.contextmanager
def connect(uri: str) -> Iterator[Hypervisor]:
    with Hypervisor(uri) as hv:
        yield hv


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])
