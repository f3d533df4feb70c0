"""Helpers for the reliability tests: a fresh vmctl state folder per test, and ways to see what a vmctl
command left on the host, attributed to that folder (other engineers boot VMs on the same host).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import VMCTL, listening_ports, namespaces_under, processes_of, runtime_of
from tests.conftest import qemu_of as shared_qemu_of
from vmctl import lifecycle

# `vmctl.preflight.check` is written; `lifecycle.up` must call it before anything is created.
PREFLIGHT_WIRED = "preflight" in inspect.getsource(lifecycle)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state folder and a runtime folder of this test's own: subprocesses (`run_vmctl`) inherit them
    through the environment."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    runtime_of(path).mkdir(mode=0o700)
    monkeypatch.setenv("VMCTL_STATE_DIR", str(path))
    monkeypatch.setenv("VMCTL_RUNTIME_DIR", str(runtime_of(path)))
    yield path
    shutil.rmtree(runtime_of(path), ignore_errors=True)


def qemu_of(*roots: Path | str) -> dict[int, str]:
    """QEMU processes of these roots; a state folder also stands for its runtime folder."""
    return shared_qemu_of(*roots, *(runtime_of(r) for r in roots if isinstance(r, Path)))


def defined_domains(state: Path) -> list[str]:
    """Domains the embedded libvirt drivers of this state folder have defined (persistent XML)."""
    return sorted(p.stem for p in runtime_of(state).glob("libvirt/*/etc/qemu/*.xml"))


def env_folders(state: Path) -> list[str]:
    envs = state / "envs"
    return sorted(p.name for p in envs.iterdir()) if envs.is_dir() else []


def libvirt_roots(state: Path) -> list[str]:
    folder = runtime_of(state) / "libvirt"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def networks(state: Path) -> list[str]:
    """The environment networks of this state folder still there: their folders (each holds the
    namespace file, resolver configurations and pid files), namespaces and resolver processes."""
    folder = runtime_of(state) / "net"
    found = sorted(str(p) for p in folder.iterdir()) if folder.is_dir() else []
    found += sorted(namespaces_under(runtime_of(state)))
    found += [argv for argv in processes_of(runtime_of(state)).values() if "dnsmasq" in argv]
    return found


def leftovers(state: Path) -> dict[str, object]:
    """Everything a fully cleaned-up state folder must not have: QEMU, domains, environment folders,
    embedded libvirt roots, environment networks (namespace, resolvers)."""
    found: dict[str, object] = {"qemu": qemu_of(state), "domains": defined_domains(state),
                                "env folders": env_folders(state), "libvirt roots": libvirt_roots(state),
                                "networks": networks(state)}
    return {k: v for k, v in found.items() if v}


def wait_until(what: str, predicate: Callable[[], object], timeout: float, poll: float = 0.02) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def write_env(folder: Path, text: str, name: str = "vmctl.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def one_machine(env: str, *, memory: str = "128M", extra: str = "") -> str:
    return f"name: {env}\nmachines:\n  m1:\n    memory: {memory}\n{extra}"


@dataclass
class Spawned:
    proc: subprocess.Popen[str]

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err


def spawn_vmctl(*args: str) -> Spawned:
    """The real CLI as a child we can signal: its own process group, so a kill reaches only it."""
    proc = subprocess.Popen([*VMCTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return Spawned(proc)


def kill(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal vmctl itself (not its group: QEMU, once started, belongs to libvirt and must survive a crash)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.communicate(timeout=60)


def state_json(state: Path, env: str) -> dict[str, object] | None:
    path = state / "envs" / env / "state.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def listening(port: int) -> bool:
    return port in listening_ports()


@pytest.fixture
def no_leftover_qemu(state_dir: Path) -> Iterator[None]:
    """Belt and braces for VM tests: whatever a test leaves, kill its QEMU (by pid, ours only) and fail it."""
    yield
    stray = qemu_of(state_dir)
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not stray, f"QEMU left running: {stray}"
