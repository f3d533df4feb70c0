"""Services end to end through the real CLI: a tiny image in a microVM (crun in the guest) and as a plain
runc container on the host. Real VMs under TCG here, real crun and runc; nothing is mocked.

One environment at a time: the failing-healthcheck environment first (it must roll back and leave
nothing), then one module-scoped environment shared by the other tests and removed at the end.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.build_images import build_tiny_image
from tests.conftest import ROOT, VMCTL, environment_up, missing_tools, qemu_pids, run_vmctl, runc_containers
from vmctl.paths import runtime_root

TOOLS = ("runc", "slirp4netns", "skopeo", "umoci", "mkfs.ext4", "busybox")
missing = missing_tools(TOOLS)
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root"),
    pytest.mark.skipif(bool(missing), reason=f"missing tools: {missing}"),
]

GOOD = """\
name: svc-good
machines:
  box: {memory: 256M}
services:
  web:
    image: ./web.tar
    machine: box
    environment: {GREETING: from-the-vm}
    ports: ["8080"]
    healthcheck: {test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"], interval: 500ms}
  crasher:
    image: ./web.tar
    machine: box
    entrypoint: ["sh", "-c", "echo attempt; exit 3"]
    restart: on-failure
  plain:
    image: ./web.tar
    isolation: container
    environment: {GREETING: from-the-host}
    ports: ["8080"]
    depends_on: [web]
"""

BAD = """\
name: svc-bad
services:
  ok:
    image: ./web.tar
    isolation: container
  sick:
    image: ./web.tar
    depends_on: [ok]
    healthcheck: {test: ["CMD", "false"], interval: 200ms, retries: 2}
"""


TERMINAL = ["sh", "-c", "tty; [ -t 1 ] && echo has-a-terminal; echo TERM=$$TERM; exec sh"]
TTY = f"""\
name: svc-tty
services:
  vmterm:
    image: ./web.tar
    entrypoint: {json.dumps(TERMINAL)}
    tty: true
    vm: {{memory: 256M}}
  hostterm:
    image: ./web.tar
    isolation: container
    entrypoint: {json.dumps(TERMINAL)}
    tty: true
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("services")
    build_tiny_image(path)
    return path


def _write(folder: Path, name: str, text: str) -> Path:
    file = folder / f"{name}.yaml"
    file.write_text(text)
    return file


def _state(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(os.environ["VMCTL_STATE_DIR"]) / "envs" / name / "state.json").read_text())
    return data


def _of_env(env: str) -> tuple[list[int], list[str]]:
    """QEMU processes and runc containers that belong to environment `env`."""
    qemus = [p for p in qemu_pids() if f"vmctl-{env}-".encode() in Path(f"/proc/{p}/cmdline").read_bytes()]
    return qemus, [c for c in runc_containers(runtime_root()) if c.startswith(f"{env}.")]


def test_failing_healthcheck_fails_up_cleanly(folder: Path) -> None:
    file = _write(folder, "bad", BAD)
    up = run_vmctl("-f", str(file), "up", "--timeout", "120")
    try:
        assert up.returncode == 1, up.stderr
        assert "service `sick` is unhealthy" in up.stderr
        assert "sick | web: hello from sick" in up.stderr  # its last log lines
        assert _of_env("svc-bad") == ([], [])
        ps = json.loads(run_vmctl("-f", str(file), "ps", "-a", "--json").stdout)
        assert {s["name"]: s["state"] for s in ps["services"]} == {"ok": "absent", "sick": "absent"}
    finally:
        run_vmctl("-f", str(file), "down")


@pytest.fixture(scope="module")
def good(folder: Path) -> Iterator[Path]:
    file = _write(folder, "good", GOOD)
    try:
        with environment_up(file):
            yield file
    finally:
        assert _of_env("svc-good") == ([], [])


def _ps(file: Path) -> dict[str, dict[str, Any]]:
    out = run_vmctl("-f", str(file), "ps", "-a", "--json")
    assert out.returncode == 0, out.stderr
    return {s["name"]: s for s in json.loads(out.stdout)["services"]}


def _exec(file: Path, name: str, *argv: str) -> tuple[int, str]:
    out = run_vmctl("-f", str(file), "exec", name, "--", *argv)
    return out.returncode, out.stdout + out.stderr


def test_ps_rows(good: Path) -> None:
    rows = _ps(good)
    assert rows["web"]["state"] == "running" and rows["web"]["machine"] == "box"
    assert rows["web"]["isolation"] == "microvm" and rows["plain"]["isolation"] == "container"
    assert rows["plain"]["machine"] is None and rows["plain"]["state"] == "running"
    assert rows["web"]["ports"][0]["container_port"] == 8080
    assert rows["web"]["ports"][0]["host_ip"] == "127.0.0.1"
    table = run_vmctl("-f", str(good), "ps").stdout.splitlines()
    assert table[0].split() == ["NAME", "MACHINE", "ISOLATION", "STATE", "PORTS"]


def test_published_ports_answer_with_env_and_hostname(good: Path) -> None:
    rows = _ps(good)
    for name, greeting in (("web", "from-the-vm"), ("plain", "from-the-host")):
        port = rows[name]["ports"][0]["host_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            body = r.read().decode()
        assert f"hostname: {name}" in body and f"greeting: {greeting}" in body


def test_kernel_is_the_guests_or_the_hosts(good: Path) -> None:
    code, vm_kernel = _exec(good, "web", "uname", "-r")
    assert code == 0 and vm_kernel.strip() != os.uname().release
    code, host_kernel = _exec(good, "plain", "uname", "-r")
    assert code == 0 and host_kernel.strip() == os.uname().release
    code, machine_kernel = _exec(good, "box", "uname", "-r")
    assert code == 0 and machine_kernel.strip() == vm_kernel.strip()


def test_exec_hostname_env_and_exit_codes(good: Path) -> None:
    for name in ("web", "plain"):
        assert _exec(good, name, "cat", "/etc/hostname") == (0, f"{name}\n")
        code, env = _exec(good, name, "env")
        assert code == 0 and "GREETING=from-the-" in env
        assert _exec(good, name, "sh", "-c", "exit 7")[0] == 7


def test_read_only_root(good: Path) -> None:
    for name in ("web", "plain"):
        code, out = _exec(good, name, "touch", "/x")
        assert code != 0 and "Read-only" in out


def test_logs_are_prefixed(good: Path) -> None:
    out = run_vmctl("-f", str(good), "logs", "web")
    assert out.returncode == 0 and "web     | web: from-the-vm from web" in out.stdout
    out = run_vmctl("-f", str(good), "logs", "-n", "1", "plain")
    assert out.stdout.startswith("plain   | web: from-the-host from plain")


def test_logs_of_several_services_and_of_all(good: Path) -> None:
    both = run_vmctl("-f", str(good), "logs", "web", "plain")
    assert both.returncode == 0, both.stderr
    assert "web     | web: from-the-vm" in both.stdout and "plain   | web: from-the-host" in both.stdout
    every = run_vmctl("-f", str(good), "logs").stdout  # no name: every started service
    assert {"web     |", "plain   |", "crasher |"} <= {line[:9] for line in every.splitlines()}
    # -f with several: both followed at once (ended by the timeout, as Ctrl-C would)
    proc = subprocess.Popen([*VMCTL, "-f", str(good), "logs", "-f", "web", "plain"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "web     | web: from-the-vm" in out and "plain   | web: from-the-host" in out, out
    bad = run_vmctl("-f", str(good), "logs", "web", "nosuch")
    assert bad.returncode == 2 and "unknown machine or service `nosuch`" in bad.stderr


def test_logs_with_timestamps(good: Path) -> None:
    """`logs -t`: the same lines, each after the UTC time it was written (to the second), in a guest (web;
    crasher across its restarts) and on the host (plain)."""
    now = datetime.datetime.now(datetime.UTC)
    for name in ("web", "crasher", "plain"):
        raw = run_vmctl("-f", str(good), "logs", name)
        stamped = run_vmctl("-f", str(good), "logs", "-t", name)
        assert raw.returncode == stamped.returncode == 0, stamped.stderr
        lines = [re.fullmatch(r"(\S+ +\| )(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)", line)
                 for line in stamped.stdout.splitlines()]
        assert lines and all(lines), stamped.stdout
        texts, plain = [m.group(1) + m.group(3) for m in lines if m], raw.stdout.splitlines()
        assert texts[:len(plain)] == plain and len(texts) <= len(plain) + 2  # read second: crasher ran again
        times = [datetime.datetime.strptime(m.group(2), "%Y-%m-%dT%H:%M:%S%z") for m in lines if m]
        assert times == sorted(times) and now - datetime.timedelta(minutes=30) < times[0]
        assert times[-1] <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=2), times
    machine = run_vmctl("-f", str(good), "logs", "-t", "box")
    assert machine.returncode == 2 and "its console has no timestamps" in machine.stderr


def test_tty_gives_the_container_a_terminal_that_stays_open(folder: Path) -> None:
    """`tty: true`, in a microVM and on the host: the process's stdout is a terminal (TERM set, lines
    ending CRLF in the log as docker's do), and a shell on it waits for input instead of ending."""
    file = _write(folder, "tty", TTY)
    with environment_up(file):
        for name in ("vmterm", "hostterm"):  # bytes: text mode would turn the CRLFs into newlines
            log = subprocess.run([*VMCTL, "-f", str(file), "logs", name], cwd=ROOT, capture_output=True,
                                 timeout=60, check=True).stdout
            assert re.search(rb"^" + name.encode() + rb" +\| /dev/pts/\d+\r\n", log, re.M), log
            assert b"| has-a-terminal\r\n" in log and b"| TERM=xterm\r\n" in log and b"\r\r" not in log, log
        time.sleep(1)  # the shells have read their (empty) terminals by now
        assert {n: r["state"] for n, r in _ps(file).items()} == {"vmterm": "running", "hostterm": "running"}
    assert _of_env("svc-tty") == ([], [])


def test_depends_on_order(good: Path) -> None:
    services = _state("svc-good")["services"]
    assert services["web"]["started_at"] < services["plain"]["started_at"]


def test_restart_on_failure(good: Path) -> None:
    row = _ps(good)["crasher"]
    assert row["exit_code"] == 3
    out = run_vmctl("-f", str(good), "logs", "crasher").stdout
    assert out.count("crasher | attempt") >= 2  # restarted at least once
