"""Soak: 20 `up`/`down` cycles of a one-machine environment; QEMU processes, listening ports, the state
folder's disk use and the host's open file handles return to their starting values."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import listening_ports_of, run_vmctl, runtime_of
from tests.reliability.conftest import leftovers, one_machine, qemu_of, write_env

pytestmark = [pytest.mark.vm, pytest.mark.slow]
CYCLES = int(os.environ.get("VMCTL_SOAK_CYCLES", "20"))


def disk_use(*folders: Path) -> int:
    """Bytes in files under the folders, the libvirt debug log excluded (it is an append-only log)."""
    return sum(p.stat().st_size for f in folders if f.exists() for p in f.rglob("*")
               if p.is_file() and p.name != "libvirt.log")


def file_handles() -> int:
    return int(Path("/proc/sys/fs/file-nr").read_text().split()[0])


def test_up_down_cycles(state_dir: Path, tmp_path: Path, no_leftover_qemu: None) -> None:
    file = write_env(tmp_path / "env", one_machine("soak", extra="    ports: ['18491:80']\n"))
    # one warm-up cycle: the first `up` fills libvirt's capability cache
    assert run_vmctl("-f", str(file), "up", "--timeout", "90", timeout=150).returncode == 0
    assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    before = {"qemu": len(qemu_of(state_dir)), "ports": len(listening_ports_of({os.getpid()})),
              "disk": disk_use(state_dir, runtime_of(state_dir)), "file-nr": file_handles()}
    boots = []
    for i in range(CYCLES):
        up = run_vmctl("-f", str(file), "up", "--timeout", "90", timeout=150)
        assert up.returncode == 0, f"cycle {i}: {up.stderr}"
        status = json.loads(run_vmctl("-f", str(file), "status", "--json", timeout=60).stdout)["machines"][0]
        assert status["state"] == "running" and len(qemu_of(state_dir)) == 1
        boots.append(status["boot_seconds"])
        down = run_vmctl("-f", str(file), "down", timeout=120)
        assert down.returncode == 0, f"cycle {i}: {down.stderr}"
        assert leftovers(state_dir) == {}, f"cycle {i}"
    after = {"qemu": len(qemu_of(state_dir)), "ports": len(listening_ports_of({os.getpid()})),
             "disk": disk_use(state_dir, runtime_of(state_dir)), "file-nr": file_handles()}
    print(f"\nsoak: {CYCLES} cycles, boot {min(boots):.2f}-{max(boots):.2f}s; before {before}; after {after}")
    assert after["qemu"] == before["qemu"] == 0
    assert after["ports"] == before["ports"]
    # the lock file keeps the last holder's pid, whose digit count varies; nothing may grow with the cycles
    assert abs(after["disk"] - before["disk"]) <= 16
    # host-wide and shared with other users of the machine: a leak of ours would grow with the cycles
    assert after["file-nr"] - before["file-nr"] < 20 * CYCLES
