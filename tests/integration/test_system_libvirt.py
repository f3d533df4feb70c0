"""The same lifecycle through a hand-started system libvirtd (`qemu:///system`), as on a server.

No systemd here (nor in CI): the fixture starts virtlogd and libvirtd itself when they are not
running, and stops what it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import qemu_pids, run_vmctl

pytestmark = [pytest.mark.vm, pytest.mark.daemon]

ENV = """\
name: sysd
libvirt:
  uri: qemu:///system
machines:
  beta:
    memory: 192M
"""


def _same_namespaces(name: str) -> list[str]:
    """pgrep/pkill arguments for `name` in this process's mount and network namespaces only: not the
    daemons of a multi-host test bed (tests/hosts), which run in namespaces of their own."""
    return ["--ns", str(os.getpid()), "--nslist", "mnt,net", "-x", name]


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", *_same_namespaces(name)], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def system_libvirtd() -> Iterator[None]:
    if shutil.which("libvirtd", path="/usr/sbin:/sbin") is None:
        pytest.fail("libvirtd is not installed: run the README's set-up command")
    started: list[str] = []
    deadline = time.monotonic() + 30
    while subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True,
                         check=False).returncode != 0:
        assert time.monotonic() < deadline, "libvirtd did not answer within 30 s"
        for daemon in ("virtlogd", "libvirtd"):
            if not _running(daemon):  # (again, if a previous instance was still exiting)
                subprocess.run([daemon, "-d"], check=True)
                started.append(daemon)
        time.sleep(0.5)
    # This test's own domain, if a run of it was killed mid-way (the system daemon keeps definitions)
    for name in _domains():
        if name.startswith("vmctl-sysd-"):
            subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True, check=False)
            subprocess.run(["virsh", "-c", "qemu:///system", "undefine", name], capture_output=True, check=False)
    yield
    for daemon in reversed(dict.fromkeys(started)):
        subprocess.run(["pkill", *_same_namespaces(daemon)], check=False)


def _domains() -> list[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_up_exec_down_through_the_system_daemon(system_libvirtd: None, tmp_path: Path) -> None:
    env = tmp_path / "vmctl.yaml"
    env.write_text(ENV)
    before = qemu_pids("vmctl-sysd-")
    try:
        proc = run_vmctl("-f", str(env), "up", "--timeout", "180")
        assert proc.returncode == 0, proc.stderr
        assert "vmctl-sysd-beta" in _domains()
        proc = run_vmctl("-f", str(env), "exec", "beta", "--", "cat", "/proc/sys/kernel/hostname")
        assert (proc.returncode, proc.stdout) == (0, "beta\n")
        # the environment network works through the system daemon too (libvirt opens vmctl's tap)
        proc = run_vmctl("-f", str(env), "exec", "beta", "--", "ping", "-c", "1", "-W", "5", "10.77.0.1")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        status = run_vmctl("-f", str(env), "status", "--json")
        assert '"uri": "qemu:///system"' in status.stdout
    finally:
        proc = run_vmctl("-f", str(env), "down")
    assert proc.returncode == 0, proc.stderr
    assert "vmctl-sysd-beta" not in _domains()
    assert qemu_pids("vmctl-sysd-") <= before  # this test's own domain (other tests may run VMs meanwhile)
