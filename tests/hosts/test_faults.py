"""Faults across hosts: a host killed in the middle of `up`, and a host that is down when `down` runs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bench import hostbed
from tests.conftest import ROOT, VMCTL
from tests.hosts.conftest import hosts_yaml, vmctl_in, write_env

pytestmark = [pytest.mark.vm, pytest.mark.daemon]

MACHINES = "machines:\n  a: {memory: 192M, host: h1}\n  b: {memory: 192M, host: h2}\n"


def _domains(bed: hostbed.HostBed, host: hostbed.BedHost) -> list[str]:
    out = subprocess.run(bed.in_client(hostbed.client_ssh(bed, host, ["virsh", "-c", "qemu:///system", "list",
                                                                      "--all", "--name"])),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [line for line in out.splitlines() if line.strip()]


def _qemu_started(host: hostbed.BedHost) -> bool:
    for pid in hostbed.processes_in(host.netns):
        try:
            if b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_a_host_killed_during_up(bed: hostbed.HostBed, tmp_path: Path) -> None:
    env = write_env(tmp_path, "name: killed\n" + hosts_yaml(bed) + MACHINES)
    h1, h2 = bed.hosts
    up = subprocess.Popen(bed.in_client([*VMCTL, "-f", str(env), "up", "--timeout", "120"]), cwd=ROOT,
                          stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not _qemu_started(h2):  # b's QEMU on h2: the `up` is in the middle of booting
            assert up.poll() is None and time.monotonic() < deadline, "up ended before h2 started QEMU"
            time.sleep(0.02)
        hostbed.kill(h2)
        _, err = up.communicate(timeout=180)
    finally:
        if up.poll() is None:
            up.kill()
        hostbed.restart(bed, h2)
    assert up.returncode == 1, err
    assert "host `h2` (qemu+ssh://root@10.79.0.12/system)" in err
    assert _domains(bed, h1) == []  # rolled back on the host that stayed up
    down = vmctl_in(bed, "-f", str(env), "down")
    assert down.returncode == 0, down.stderr
    assert _domains(bed, h2) == []


def test_down_with_a_host_down_cleans_the_others_and_keeps_the_state(bed: hostbed.HostBed, tmp_path: Path) -> None:
    env = write_env(tmp_path, "name: gone\n" + hosts_yaml(bed) + MACHINES)
    h1, h2 = bed.hosts
    up = vmctl_in(bed, "-f", str(env), "up", "--timeout", "120")
    assert up.returncode == 0, up.stderr
    hostbed.kill(h2)
    try:
        down = vmctl_in(bed, "-f", str(env), "down")
        assert down.returncode == 1
        assert "host `h2` (qemu+ssh://root@10.79.0.12/system) does not answer" in down.stderr
        assert _domains(bed, h1) == []
    finally:
        hostbed.restart(bed, h2)
    assert _domains(bed, h2) == ["vmctl-gone-b"]  # defined, its QEMU died with the host
    again = vmctl_in(bed, "-f", str(env), "down")
    assert again.returncode == 0, again.stderr
    assert _domains(bed, h2) == []
