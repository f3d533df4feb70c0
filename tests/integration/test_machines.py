"""`vmctl up` for real: boot a machine under libvirt's embedded driver, reach it over SSH, take it down.

Runs the real CLI in a subprocess, as a user does. Under TCG here; KVM where the host offers it.
"""

from __future__ import annotations

import json
import os
import platform
import pty
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VMCTL, listening_ports, qemu_pids, run_vmctl

pytestmark = pytest.mark.vm

ENV = """\
name: itest
machines:
  alpha:
    memory: 256M
    ports: ["{port}:8000"]
    template: false  # this module checks a cold boot's phases; tests/integration/test_templates.py a clone's
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("itest")
    path = folder / "vmctl.yaml"
    path.write_text(ENV.format(port=_free_port()))
    try:
        yield path
    finally:
        run_vmctl("-f", str(path), "down")


@pytest.fixture(scope="module")
def running(env_file: Path) -> Path:
    proc = run_vmctl("-f", str(env_file), "up", "--timeout", "180")
    assert proc.returncode == 0, proc.stderr
    return env_file


def status(env_file: Path) -> dict:  # type: ignore[type-arg]
    proc = run_vmctl("-f", str(env_file), "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_status_before_up_lists_absent_machines(env_file: Path) -> None:
    data = status(env_file)
    assert [m["name"] for m in data["machines"]] == ["alpha"]
    assert data["machines"][0]["state"] == "absent"


def test_up_reports_a_measured_boot_and_the_accelerator(running: Path) -> None:
    machine = status(running)["machines"][0]
    assert machine["state"] == "running"
    assert machine["accel"] in ("kvm", "tcg")
    assert 0 < machine["boot_seconds"] < 180
    assert machine["ssh"]["host"] == "127.0.0.1"
    assert machine["ports"] == [{"host_ip": "127.0.0.1", "host_port": machine["ports"][0]["host_port"],
                                 "guest_port": 8000, "proto": "tcp"}]
    timeline = machine["timeline"]
    assert timeline["qemu_started"] < timeline["init"] < timeline["ready"] <= timeline["ssh"]
    assert machine["guest"]["init_uptime"] < machine["guest"]["ready_uptime"]
    memory = machine["memory"]  # QEMU's host memory, split (MiB)
    assert 0 < memory["guest_ram_touched_mib"] <= 256 and memory["pss_mib"] > memory["guest_ram_touched_mib"]
    assert memory["qemu_overhead_mib"] == pytest.approx(memory["pss_mib"] - memory["guest_ram_touched_mib"], abs=0.2)
    assert memory["mapped_files_mib"] > 1 and memory["qemu_private_mib"] > 1  # QEMU's binary; its heap
    assert memory["pss_mib"] == pytest.approx(sum(memory[k] for k in ("guest_ram_touched_mib", "tcg_cache_mib",
                                                                       "mapped_files_mib", "qemu_private_mib")),
                                              abs=0.3)


def test_forwarded_ports_listen_on_loopback_only(running: Path) -> None:
    machine = status(running)["machines"][0]
    assert machine["ports"][0]["host_port"] in listening_ports()
    with socket.socket() as s:  # the SSH forward answers on 127.0.0.1
        s.connect(("127.0.0.1", machine["ssh"]["port"]))


def test_exec_runs_in_the_guest_kernel(running: Path) -> None:
    proc = run_vmctl("-f", str(running), "exec", "alpha", "--", "uname", "-r")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != platform.release()
    assert proc.stdout.strip().endswith("-cloud-amd64") or proc.stdout.strip()


def test_exec_passes_exit_code_and_arguments_through(running: Path) -> None:
    proc = run_vmctl("-f", str(running), "exec", "alpha", "--", "sh", "-c", 'echo "$1"; exit 7', "sh", "a b;$(x)")
    assert proc.returncode == 7
    assert proc.stdout == "a b;$(x)\n"


def test_exec_feeds_stdin(running: Path) -> None:
    proc = run_vmctl("-f", str(running), "exec", "alpha", "--", "cat", input="through ssh\n")
    assert proc.stdout == "through ssh\n"


def test_ssh_is_an_interactive_terminal(running: Path) -> None:
    """`vmctl ssh` on a real pseudo-terminal: the guest shell sees a tty, and `exit 5` ends the session."""
    pid, fd = pty.fork()
    if pid == 0:  # the child becomes `vmctl ssh` with the pty as its terminal
        os.execv(VMCTL[0], [*VMCTL, "-f", str(running), "ssh", "alpha"])
    output = b""
    typed = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the session ended
                break
            if not chunk:
                break
            output += chunk
            if b"\x1b[6n" in chunk:  # the guest shell asks where the cursor is, as shells do: answer it
                os.write(fd, b"\x1b[1;1R")
            if not typed and b"# " in output:  # type at the prompt, as a person would
                os.write(fd, b"tty; echo marker-$((6*7)); exit 5\n")
                typed = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert b"marker-42" in output
    assert b"/dev/pts/" in output
    assert os.waitstatus_to_exitcode(status) == 5


def test_logs_show_the_console(running: Path) -> None:
    proc = run_vmctl("-f", str(running), "logs", "alpha")
    assert proc.returncode == 0
    assert "VMCTL-READY" in proc.stdout


def test_up_twice_creates_no_duplicates(running: Path) -> None:
    pids = qemu_pids("vmctl-itest-")
    assert len(pids) == 1
    proc = run_vmctl("-f", str(running), "up")
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stderr
    assert qemu_pids("vmctl-itest-") == pids


def test_down_leaves_nothing(running: Path, vmctl_dirs: Path) -> None:
    machine = status(running)["machines"][0]
    ports = {machine["ssh"]["port"], machine["ports"][0]["host_port"]}
    pid = machine["pid"]
    proc = run_vmctl("-f", str(running), "down")
    assert proc.returncode == 0, proc.stderr
    assert pid not in qemu_pids()
    assert not qemu_pids("vmctl-itest-")
    assert not ports & listening_ports()
    assert not (vmctl_dirs / "envs" / "itest").exists()
    assert status(running)["machines"][0]["state"] == "absent"
