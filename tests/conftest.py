"""Shared test set-up: an isolated vmctl state folder per run, a shared image cache, and a leak audit.

The leak audit runs around every test module (VM fixtures are module-scoped): a module that leaves a
QEMU process, a listening port on loopback, a runc container or a vmctl temp file behind fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VMCTL = [sys.executable, "-m", "vmctl"]


@pytest.fixture(scope="session", autouse=True)
def vmctl_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """State goes to a fresh folder; the image cache is shared between runs so images are built once."""
    state = tmp_path_factory.mktemp("vmctl-state")
    old = {k: os.environ.get(k) for k in ("VMCTL_STATE_DIR", "VMCTL_CACHE_DIR")}
    os.environ["VMCTL_STATE_DIR"] = str(state)
    os.environ.setdefault("VMCTL_CACHE_DIR", str(Path.home() / ".cache" / "vmctl"))
    yield state
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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


def runc_containers() -> set[str]:
    root = Path("/run/vmctl/runc")
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def vmctl_temp_files() -> set[str]:
    return {p.name for p in Path("/tmp").iterdir() if p.name.startswith(("vmctl-", ".vmctl"))}


def snapshot() -> dict[str, set[object]]:
    return {"qemu processes": set(qemu_pids()), "listening ports": set(listening_ports()),
            "runc containers": set(runc_containers()), "temp files": set(vmctl_temp_files())}


@pytest.fixture(scope="module", autouse=True)
def leak_audit() -> Iterator[None]:
    before = snapshot()
    yield
    after = snapshot()
    leaks = {k: sorted(map(str, after[k] - before[k])) for k in after if after[k] - before[k]}
    assert not leaks, f"this test module left things behind: {leaks}"


def run_vmctl(*args: str, cwd: Path | None = None, input: str | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([*VMCTL, *args], cwd=cwd or ROOT, input=input, capture_output=True, text=True,
                          timeout=timeout, check=False)
