"""Shared test set-up: an isolated vmctl state folder per run, a shared image cache, and a leak audit.

The leak audit runs around every test module (VM fixtures are module-scoped): a module that leaves a
process it started (QEMU, slirp4netns, a container), a listening port, a runc container or a vmctl temp
file behind fails. What it counts is attributed to this run's folders, so other VMs on the host (a
developer's own, another test run) neither fail it nor get killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from vmctl import kernel_build
from vmctl.guest_image import GuestImage, build_guest_image
from vmctl.network.host import TAP_PREFIX, VETH_PREFIX

ROOT = Path(__file__).resolve().parent.parent
VMCTL = [sys.executable, "-m", "vmctl"]


RUNTIME_PREFIX = "/tmp/vrt-"  # short: libvirt's UNIX sockets live under the embedded root (108-byte limit)


RUNTIMES: set[Path] = set()  # the runtime folders this run has handed out, for the leak audit


def missing_tools(tools: Sequence[str]) -> list[str]:
    """The programs of `tools` this machine lacks (looked for on PATH and in the sbin folders)."""
    return [t for t in tools if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin"))]


def runtime_of(state: Path) -> Path:
    """The runtime folder (embedded libvirt roots, runc state) that goes with a test's state folder."""
    runtime = Path(RUNTIME_PREFIX + hashlib.sha256(str(state).encode()).hexdigest()[:10])
    RUNTIMES.add(runtime)
    return runtime


@pytest.fixture(scope="session", autouse=True)
def vmctl_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """State and runtime folders of this run's own; the image cache is shared between runs (built once)."""
    state = tmp_path_factory.mktemp("vmctl-state")
    runtime = runtime_of(state)
    runtime.mkdir(mode=0o700)
    old = {k: os.environ.get(k) for k in ("VMCTL_STATE_DIR", "VMCTL_RUNTIME_DIR", "VMCTL_CACHE_DIR")}
    os.environ["VMCTL_STATE_DIR"] = str(state)
    os.environ["VMCTL_RUNTIME_DIR"] = str(runtime)
    os.environ.setdefault("VMCTL_CACHE_DIR", str(Path.home() / ".cache" / "vmctl"))
    yield state
    shutil.rmtree(runtime, ignore_errors=True)
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


KERNEL_BUILD_TIMEOUT = float(os.environ.get("VMCTL_TEST_KERNEL_BUILD_TIMEOUT", "2700"))


@pytest.fixture(scope="session")
def minimal_image() -> GuestImage:
    """The `minimal` guest image (its kernel has 9p built in), for every test that boots it.

    Its kernel is compiled at most once per cache, keyed by source version + fragment + compiler, so only
    the first run after one of those changed pays the compile, here, bounded by
    `VMCTL_TEST_KERNEL_BUILD_TIMEOUT` seconds, and not inside some test's `up --timeout`.
    `VMCTL_TEST_KERNEL_BUILD=0` skips the tests that need it when it is not cached yet.
    """
    if kernel_build.find_kernel("minimal") is None and os.environ.get("VMCTL_TEST_KERNEL_BUILD") == "0":
        pytest.skip("the minimal kernel is not cached and VMCTL_TEST_KERNEL_BUILD=0 forbids compiling it")
    kernel_build.build_kernel("minimal", timeout=KERNEL_BUILD_TIMEOUT,
                              progress=lambda m: print(f"kernel minimal: {m}", file=sys.stderr))
    return build_guest_image("minimal")


def qemu_pids(domain_prefix: str = "") -> set[int]:
    """QEMU processes on this host; with a prefix, only those whose `-name guest=` starts with it."""
    out = set()
    needle = f"guest={domain_prefix}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"qemu-system" in argv[0] and any(a.startswith(needle) for a in argv):
                out.add(int(entry.name))
    return out


def listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def processes_of(*roots: Path | str) -> dict[int, str]:
    """Processes (QEMU, slirp4netns, runc's container init...) whose argv names a file under one of
    `roots`: what this test run started, told apart from other users' VMs on the same host."""
    needles = [str(r).rstrip("/").encode() + b"/" for r in roots]  # a folder, not a name prefix (pytest-8 vs -88)
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if argv and any(n in argv for n in needles):
            out[int(entry.name)] = argv.replace(b"\0", b" ").decode(errors="replace")[:200]
    return out


def qemu_of(*roots: Path | str) -> dict[int, str]:
    return {pid: argv for pid, argv in processes_of(*roots).items() if "qemu-system" in argv.split(" ")[0]}


def socket_inodes(pid: int) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


def listening_ports_of(pids: set[int]) -> set[int]:
    """TCP ports in LISTEN state held by these processes (matched by socket inode in /proc/net/tcp*)."""
    inodes = set().union(*(socket_inodes(p) for p in pids)) if pids else set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def runc_containers(runtime: Path) -> set[str]:
    root = runtime / "runc"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def mounts_under(*roots: Path | str) -> set[str]:
    """Mount points under `roots` in this mount namespace: the nested KVM host's read-only view of / must
    stay inside virtiofsd's private namespace, never appear (or stay) here."""
    needles = tuple(str(r).rstrip("/") + "/" for r in roots)
    entries = (line.split() for line in Path("/proc/self/mounts").read_text().splitlines())
    return {e[1] for e in entries if e[2] != "nsfs" and e[1].startswith(needles)}  # nsfs: namespaces_under
def network_devices() -> set[str]:
    """vmctl's taps and veth ends in the host's namespace (`vt...`, `vc...`: vmctl/network/host.py)."""
    return {p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith((TAP_PREFIX, VETH_PREFIX))}


def namespaces_under(*roots: Path) -> set[str]:
    """Network namespaces bound to files under `roots` (each environment's: RUNTIME/net/ID/netns)."""
    prefixes = tuple(str(r).rstrip("/") + "/" for r in roots)
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "nsfs" and fields[4].startswith(prefixes):
            found.add(fields[4])
    return found


def processes_in_namespaces(namespaces: set[str]) -> set[str]:
    """Processes whose network namespace is one of these bound files (a test bed host's daemons and QEMUs)."""
    inodes = set()
    for ns in namespaces:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(ns).st_ino)
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and inodes:
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino in inodes:
                    found.add(entry.name)
    return found


def vmctl_temp_files() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith(("vmctl-", ".vmctl"))}


UNATTRIBUTED = {"temp files", "network devices"}


@pytest.fixture(scope="module", autouse=True)
def leak_audit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail a module that leaves behind a process this run started (QEMU, slirp4netns, a container, a
    resolver, a test bed host's daemon, the nested KVM host's QEMU and virtiofsd), a port those or pytest
    listen on, a runc container, a vmctl temp file, a tap or veth, a network namespace (an environment's,
    the test bed's), or a mount; and kill such processes."""
    runtime = Path(os.environ.get("VMCTL_RUNTIME_DIR", "/nonexistent"))

    def snapshot() -> dict[str, set[str]]:
        pids = set(processes_of(tmp_path_factory.getbasetemp(), *RUNTIMES))
        # Namespaces under the run's temp folders too: the multi-host test bed's (tests/hosts), and what
        # runs in them (each bed host's libvirtd, sshd, QEMUs).
        namespaces = namespaces_under(*RUNTIMES, tmp_path_factory.getbasetemp())
        return {"processes": {str(p) for p in pids} | processes_in_namespaces(namespaces),
                "listening ports": {str(p) for p in listening_ports_of(pids | {os.getpid()})},
                "runc containers": runc_containers(runtime), "temp files": vmctl_temp_files(),
                "network devices": network_devices(), "network namespaces": namespaces,
                "mounts": mounts_under(tmp_path_factory.getbasetemp(), *RUNTIMES)}

    before = snapshot()
    yield
    after = snapshot()
    leaks = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    if set(leaks) & UNATTRIBUTED:
        # Taps and temp files are not named after this run: another run's `up` may hold one for a moment
        # (a tap lives in the host namespace until its QEMU starts). A leak is what is still there later.
        time.sleep(3)
        again = snapshot()
        for key in UNATTRIBUTED & set(leaks):
            leaks[key] = sorted(set(leaks[key]) & again[key])
        leaks = {k: v for k, v in leaks.items() if v}
    for pid in after["processes"] - before["processes"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    assert not leaks, f"this test module left things behind: {leaks}"


def run_vmctl(*args: str, cwd: Path | None = None, input: str | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([*VMCTL, *args], cwd=cwd or ROOT, input=input, capture_output=True, text=True,
                          timeout=timeout, check=False)


@contextlib.contextmanager
def environment_up(file: Path, *, timeout: str = "180") -> Iterator[Path]:
    """`vmctl up` the file for the block, and `vmctl down` it afterwards, even when the block fails."""
    up = run_vmctl("-f", str(file), "up", "--timeout", timeout)
    try:
        assert up.returncode == 0, up.stderr
        yield file
    finally:
        down = run_vmctl("-f", str(file), "down")
        assert down.returncode == 0, down.stderr
