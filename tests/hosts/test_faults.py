"""Faults across hosts: a host killed in the middle of `up`, and a host that is down when `down` runs."""

from __future__ import annotations

import json
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


def _link(bed: hostbed.HostBed, host: hostbed.BedHost, state: str) -> None:
    """The host's cable to the bed's LAN, plugged (`up`) or pulled (`down`): its processes live on."""
    subprocess.run(["nsenter", f"--net={bed.lan}", "ip", "link", "set", f"vb{host.name}", state], check=True,
                   timeout=30)


def test_the_connection_cut_during_migrate(bed: hostbed.HostBed, tmp_path: Path) -> None:
    env = write_env(tmp_path, "name: cut\n" + hosts_yaml(bed) + "machines:\n  m: {memory: 256M, host: h1}\n")
    h1, h2 = bed.hosts
    up = vmctl_in(bed, "-f", str(env), "up", "--timeout", "120")
    try:
        assert up.returncode == 0, up.stderr
        # 2 MiB/s: the guest's memory takes tens of seconds to move, so the cut falls in the middle
        move = subprocess.Popen(bed.in_client([*VMCTL, "-f", str(env), "migrate", "m", "--to", "h2", "--bandwidth",
                                               "2"]), cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while _domains(bed, h2) != ["vmctl-cut-m"]:  # the target's incoming, paused domain
                assert move.poll() is None and time.monotonic() < deadline, "the migration never reached h2"
                time.sleep(0.2)
            time.sleep(2)
            _link(bed, h2, "down")
            t_cut = time.monotonic()
            _, err = move.communicate(timeout=120)
            waited = time.monotonic() - t_cut
        finally:
            _link(bed, h2, "up")
            if move.poll() is None:
                move.kill()
        assert move.returncode == 1, err
        assert "cannot migrate `m` to host `h2`" in err and "it still runs on host `h1`" in err, err
        assert waited < 60, f"migrate took {waited:.0f} s to give up"
        # exactly one host runs it: h1 (state and libvirt agree), and it answers there
        status = json.loads(vmctl_in(bed, "-f", str(env), "status", "--json").stdout)
        assert [(m["name"], m["host"], m["state"]) for m in status["machines"]] == [("m", "h1", "running")]
        assert _domains(bed, h1) == ["vmctl-cut-m"]
        proc = vmctl_in(bed, "-f", str(env), "exec", "m", "--", "cat", "/etc/hostname")
        assert (proc.returncode, proc.stdout) == (0, "m\n"), proc.stderr
        deadline = time.monotonic() + 90  # h2's libvirtd drops the incoming domain once its client is gone
        while _domains(bed, h2):
            assert time.monotonic() < deadline, f"h2 still has {_domains(bed, h2)}"
            time.sleep(1)
    finally:
        down = vmctl_in(bed, "-f", str(env), "down")
    assert down.returncode == 0, down.stderr
    assert _domains(bed, h1) == _domains(bed, h2) == []
