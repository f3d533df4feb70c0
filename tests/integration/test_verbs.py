"""compose's verbs through the real CLI: stop, start, restart, ps -a, port, images, exec -u/-w/-e, run.

Host containers (runc) for most cases, and one microVM service (crun in its guest, under TCG here) for
stop/start inside a guest. Everything is checked from the outside: runc's own state, the container's
PID, the published port answering or not, the guest's `crun list`. Nothing is mocked.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.build_images import build_tiny_image
from tests.conftest import ROOT, VMCTL, environment_up, missing_tools, run_vmctl, runc_containers
from vmctl.paths import runtime_root

TOOLS = ("runc", "slirp4netns", "skopeo", "umoci", "mkfs.ext4", "busybox")
missing = missing_tools(TOOLS)
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root"),
    pytest.mark.skipif(bool(missing), reason=f"missing tools: {missing}"),
]

ENV = """\
name: verbs
machines:
  box: {memory: 256M}
services:
  web:
    image: ./web.tar
    isolation: container
    environment: {GREETING: from-the-host}
    ports: ["8080"]
    restart: always
  once:
    image: ./web.tar
    isolation: container
    entrypoint: ["sh", "-c", "echo done"]
  vm:
    image: ./web.tar
    machine: box
    environment: {GREETING: from-the-vm}
    ports: ["8080"]
    restart: always
"""
CONTAINER = "verbs.web"  # runc's name of `web`: ENV.SERVICE
SETTLE = 3.0  # longer than both supervisors' restart delay (1 s): what `restart: always` would have done by then


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("verbs")
    build_tiny_image(folder)
    file = folder / "vmctl.yaml"
    file.write_text(ENV)
    with environment_up(file):
        yield file


def _vmctl(file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_vmctl("-f", str(file), *args)


def _ok(file: Path, *args: str) -> str:
    out = _vmctl(file, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _ps(file: Path, *flags: str) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in json.loads(_ok(file, "ps", *flags, "--json"))["services"]}


def _host_port(file: Path, name: str) -> int:
    port: int = _ps(file, "-a")[name]["ports"][0]["host_port"]
    return port


def _answers(port: int) -> str | None:
    """The page on 127.0.0.1:port, or None when nothing serves it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            return str(r.read().decode())
    except OSError:  # refused (slirp4netns is gone), reset or closed (QEMU's forward, nothing in the guest)
        return None


def _wait_answer(port: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (page := _answers(port)) is None:
        assert time.monotonic() < deadline, f"nothing answers on port {port}"
        time.sleep(0.3)
    return page


def _runc_pid(name: str) -> int | None:
    runc = shutil.which("runc") or "runc"
    proc = subprocess.run([runc, "--root", str(runtime_root() / "runc"), "state", name], capture_output=True,
                          text=True, check=False)
    return int(json.loads(proc.stdout)["pid"]) if proc.returncode == 0 else None


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (this host's PID 1 may never reap an orphaned container init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _guest(file: Path, *argv: str) -> str:
    """A command in the machine `box`, outside every container."""
    return _ok(file, "exec", "box", "--", *argv)


def _crun_names(file: Path) -> list[str]:
    """The containers crun knows in `box` (its table's first column)."""
    return [line.split()[0] for line in _guest(file, "crun", "list").splitlines()[1:] if line.strip()]


def test_port_prints_the_published_address_and_it_answers(env: Path) -> None:
    port = _host_port(env, "web")
    assert _ok(env, "port", "web", "8080") == f"127.0.0.1:{port}\n"
    host, _, number = _ok(env, "port", "vm", "8080").strip().rpartition(":")
    assert host == "127.0.0.1" and "greeting: from-the-vm" in _wait_answer(int(number))
    assert "greeting: from-the-host" in _wait_answer(port)
    for args, code, said in ((("web", "9999"), 1, "publishes no port 9999/tcp"),
                             (("web", "8080", "--protocol", "udp"), 1, "it publishes: 8080/tcp"),
                             (("nope", "80"), 2, "services: web, once, vm")):
        out = _vmctl(env, "port", *args)
        assert (out.returncode, out.stdout) == (code, ""), out.stderr
        assert said in out.stderr


def test_images_lists_the_digest_each_service_runs_from(env: Path) -> None:
    state = json.loads((Path(os.environ["VMCTL_STATE_DIR"]) / "envs" / "verbs" / "state.json").read_text())
    digest = state["services"]["web"]["digest"]
    rows = {r["service"]: r for r in json.loads(_ok(env, "images", "--json"))["images"]}
    assert set(rows) == {"web", "once", "vm"}
    assert all(r["image"] == "./web.tar" and r["digest"] == digest and r["size_bytes"] > 1_000_000
               for r in rows.values())
    table = _ok(env, "images", "web").splitlines()
    assert table[0].split() == ["SERVICE", "IMAGE", "DIGEST", "SIZE"]
    assert table[1].split()[:3] == ["web", "./web.tar", digest[:19]]


def test_ps_lists_running_services_and_all_with_a(env: Path) -> None:
    assert _wait_exited(env, "once")["state"] == "exited"
    assert set(_ps(env)) == {"web", "vm"}  # `once` ran and exited: only -a shows it
    assert set(_ps(env, "-a")) == {"web", "once", "vm"}
    assert set(_ps(env, "-a", "once")) == {"once"}
    table = _ok(env, "ps").splitlines()
    assert [line.split()[0] for line in table] == ["NAME", "web", "vm"]


def _wait_exited(file: Path, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (row := _ps(file, "-a")[name])["state"] != "exited":
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    return row


def test_exec_user_workdir_and_env(env: Path) -> None:
    for name in ("web", "vm"):
        out = _ok(env, "exec", "-u", "nobody", "-w", "/tmp", "-e", "A=it's b", "-e", "B=2", name, "--",
                  "sh", "-c", 'id -u; id -g; pwd; echo "$A $B"; echo "$GREETING"')
        greeting = "from-the-host" if name == "web" else "from-the-vm"
        assert out.splitlines() == ["65534", "65534", "/tmp", "it's b 2", greeting]
        assert _ok(env, "exec", "-u", "12:34", name, "--", "sh", "-c", "id -u; id -g").split() == ["12", "34"]
    bad = _vmctl(env, "exec", "-e", "NOVALUE", "web", "--", "true")
    assert bad.returncode == 2 and "is not KEY=VALUE" in bad.stderr
    bad = _vmctl(env, "exec", "-u", "nosuch", "web", "--", "true")
    assert bad.returncode == 2 and "one of: nobody, root" in bad.stderr


def test_stop_keeps_a_host_container_stopped_and_start_runs_it_again(env: Path) -> None:
    port, pid = _host_port(env, "web"), _runc_pid(CONTAINER)
    assert pid is not None and _alive(pid)
    _ok(env, "stop", "web")
    assert CONTAINER not in runc_containers(runtime_root()) and not _alive(pid)
    time.sleep(SETTLE)  # `restart: always`: its supervisor would have started it again by now
    assert CONTAINER not in runc_containers(runtime_root()) and _answers(port) is None
    assert _ps(env, "-a")["web"]["state"] == "exited" and "web" not in _ps(env)
    assert _ps(env)["vm"]["state"] == "running"  # the others are left alone
    out = _vmctl(env, "exec", "web", "--", "true")
    assert out.returncode == 1 and "`vmctl start web`" in out.stderr

    _ok(env, "start", "web")
    assert _ps(env)["web"]["state"] == "running" and _host_port(env, "web") == port  # the port it had
    assert "greeting: from-the-host" in _wait_answer(port)
    assert _ok(env, "exec", "web", "--", "cat", "/etc/hostname") == "web\n"
    assert _ok(env, "logs", "web").count("| web: from-the-host from web") == 2  # the log is kept
    again = _vmctl(env, "start", "web")
    assert again.returncode == 0 and "already running" in again.stderr


def test_restart_runs_a_new_process(env: Path) -> None:
    before = _runc_pid(CONTAINER)
    _ok(env, "restart", "-t", "1", "web")
    after = _runc_pid(CONTAINER)
    assert before and after and after != before and not _alive(before)
    assert "greeting: from-the-host" in _wait_answer(_host_port(env, "web"))


def test_up_force_recreate_makes_a_running_container_anew(env: Path) -> None:
    before = _runc_pid(CONTAINER)
    plain = _vmctl(env, "up", "web")
    assert plain.returncode == 0 and "already running" in plain.stderr and _runc_pid(CONTAINER) == before
    recreated = _vmctl(env, "up", "--force-recreate", "web")
    assert recreated.returncode == 0 and "recreating" in recreated.stderr, recreated.stderr
    after = _runc_pid(CONTAINER)
    assert before and after and after != before and not _alive(before)
    assert "greeting: from-the-host" in _wait_answer(_host_port(env, "web"))


def test_stop_and_start_a_service_in_its_guest(env: Path) -> None:
    port = _host_port(env, "vm")
    assert _crun_names(env) == ["vm"]
    stopped = _vmctl(env, "stop", "-t", "2", "vm")
    assert stopped.returncode == 0 and "vm" in stopped.stderr and "stopped (exit code" in stopped.stderr
    time.sleep(SETTLE)  # the guest's supervisor restarts `always` services after one second
    assert _crun_names(env) == [] and _answers(port) is None
    assert _guest(env, "cat", "/run/vmctl/svc/vm/state") == "exited\n"  # kept, for `start`
    row = _ps(env, "-a")["vm"]
    assert row["state"] == "exited" and row["exit_code"] is not None and "vm" not in _ps(env)
    assert _ps(env)["web"]["state"] == "running"

    _ok(env, "start", "vm")
    assert _ps(env)["vm"]["state"] == "running" and _crun_names(env) == ["vm"]
    assert "greeting: from-the-vm" in _wait_answer(port)
    assert _ok(env, "exec", "vm", "--", "cat", "/etc/hostname") == "vm\n"


def _on_a_terminal(file: Path, *args: str, answer: tuple[bytes, bytes], timeout: float = 180) -> tuple[int, str]:
    """vmctl on a pty of its own (its controlling terminal, 24x80), as typed at a terminal: once the output
    shows `answer[0]`, the terminal is resized to 33x111, then `answer[1]` is typed. Its exit code and
    everything the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([*VMCTL, "-f", str(file), *args], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            preexec_fn=lambda: os.login_tty(0))  # a session with this pty, as a login has
    os.close(slave)
    shown, typed, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every end of the terminal is closed, vmctl has ended
                    break
                shown += data
            if not typed and answer[0] in shown:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))  # SIGWINCH to vmctl
                time.sleep(1.0)  # the new size reaches the container's terminal (over SSH for a microVM)
                os.write(master, answer[1])
                typed = True
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_run_and_exec_are_attached_to_our_stdin_and_to_our_terminal(env: Path) -> None:
    """compose's `run`: piped input reaches the one-off and ends where the pipe does, stderr stays apart
    (`-T`); on a terminal it gets a terminal of its own and what is typed reaches it; `exec` gets one too.
    In the service's microVM (crun on the SSH channel) and on the host (runc with our descriptors) alike."""
    for name in ("web", "vm"):
        piped = run_vmctl("-f", str(env), "run", "--rm", "-T", "--entrypoint", "sh", name, "--", "-c",
                          'read -r line; echo "got $line"; cat; echo apart >&2; exit 5', input="first\nrest\n")
        assert (piped.returncode, piped.stdout) == (5, "got first\nrest\n"), piped
        assert "apart" in piped.stderr and "apart" not in piped.stdout, piped.stderr
        # the first size is read before the line that sets off the resize: it cannot see the new one
        code, shown = _on_a_terminal(env, "run", "--rm", "--entrypoint", "sh", name, "--", "-c",
                                     'test -t 0 && test -t 1 && stty size && echo "on a terminal"; read -r x; '
                                     'echo "typed: $x"; stty size; exit 4', answer=(b"on a terminal", b"hello\n"))
        assert code == 4 and "typed: hello" in shown, shown
        assert -1 < shown.find("24 80") < shown.find("on a terminal") < shown.find("typed: hello") < shown.find(
            "33 111"), shown  # resized too
        # `exec` too, in the running service's container (compose's default; `-T` keeps pipes)
        code, shown = _on_a_terminal(env, "exec", name, "--", "sh", "-c", 'test -t 0 && echo "on a tty"; read -r x; '
                                     'echo "typed: $x"; stty size; exit 6', answer=(b"on a tty", b"again\n"))
        assert code == 6 and "typed: again" in shown and "33 111" in shown, shown
        piped = run_vmctl("-f", str(env), "exec", "-T", name, "--", "sh", "-c", "test -t 0 || echo pipes")
        assert (piped.returncode, piped.stdout) == (0, "pipes\n"), piped.stderr
    assert not [c for c in runc_containers(runtime_root()) if "-run-" in c]
    assert _guest(env, "ls", "/run/vmctl/svc").split() == ["vm"]


def test_run_a_one_off_where_the_service_runs_and_remove_it(env: Path) -> None:
    for name, greeting in (("web", "from-the-host"), ("vm", "from-the-vm")):
        # the service's environment plus -e, in -w; beside the service: its own server answers on the
        # one-off's loopback (the same network stack); the exit code is the one-off's
        # (the image has an entrypoint: the command would be its arguments, as in compose)
        proc = _vmctl(env, "run", "--rm", "-e", "EXTRA=1", "-w", "/tmp", "--entrypoint", "sh", name, "--", "-c",
                      'echo "$GREETING $EXTRA $(pwd)"; wget -q -O- http://127.0.0.1:8080/ | grep greeting; exit 3')
        assert proc.returncode == 3, proc.stderr
        assert proc.stdout.splitlines()[0] == f"{greeting} 1 /tmp", proc.stdout
        assert f"greeting: {greeting}" in proc.stdout
        assert _vmctl(env, "run", "--rm", "--entrypoint", "true", name).returncode == 0
    # nothing of them is left: not in the guest, not in runc's table, not in `ps -a`
    assert _crun_names(env) == ["vm"] and _guest(env, "ls", "/run/vmctl/svc").split() == ["vm"]
    assert not [c for c in runc_containers(runtime_root()) if "-run-" in c]
    assert set(_ps(env, "-a")) == {"web", "once", "vm"}
    # a host service that is not running (`once` exited) lends the one-off its place on the network: it
    # reaches `web` by name from there; a microVM service that is stopped, its guest
    exited = _vmctl(env, "run", "--rm", "--entrypoint", "sh", "once", "--", "-c",
                    "cat /etc/hostname; wget -q -O- http://web:8080/ | grep greeting")
    assert exited.returncode == 0 and exited.stdout.splitlines() == ["once", "greeting: from-the-host"], exited
    assert _vmctl(env, "stop", "vm").returncode == 0
    try:
        in_guest = _vmctl(env, "run", "--rm", "--entrypoint", "cat", "vm", "--", "/etc/hostname")
        assert (in_guest.returncode, in_guest.stdout) == (0, "vm\n"), in_guest.stderr
    finally:
        assert _vmctl(env, "start", "vm").returncode == 0
    assert not [c for c in runc_containers(runtime_root()) if "-run-" in c]
    unknown = _vmctl(env, "run", "--rm", "nosuch")
    assert unknown.returncode == 2 and "`nosuch` is not a service" in unknown.stderr
