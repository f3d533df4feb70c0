"""Crash safety: `vmctl up` killed (SIGKILL) at several moments, found by watching libvirt's files, the QEMU
process and the console (never by sleeping blindly); afterwards `down` removes everything and `up` works.
Ctrl-C (SIGINT) rolls back with exit code 130. The state file is never torn."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_vmctl
from tests.reliability.conftest import (
    defined_domains,
    kill,
    leftovers,
    networks,
    one_machine,
    qemu_of,
    spawn_vmctl,
    state_json,
    wait_until,
    write_env,
)
from vmctl.state import write_atomic

ENV = "crash"
UP_TIMEOUT = "60"
COLD = "    template: false\n"  # the moments below are a cold boot's (a clone's console has no VMCTL-INIT)


def console(state: Path) -> bytes:
    try:
        return (state / "envs" / ENV / "machines" / "m1" / "console.log").read_bytes()
    except FileNotFoundError:
        return b""


# Each moment: what to watch for, in the order `up` reaches them.
MOMENTS: dict[str, Callable[[Path], object]] = {
    "during-libvirt-probe": lambda s: any("-machine none" in argv for argv in qemu_of(s).values()),
    "after-network": lambda s: any(networks(s)),  # the namespace and its resolver exist, no domain yet
    "after-define": lambda s: defined_domains(s),
    "after-start": lambda s: any(f"guest=vmctl-{ENV}-m1," in argv for argv in qemu_of(s).values()),
    "waiting-for-ssh": lambda s: b"VMCTL-INIT" in console(s),
    "after-ready-line": lambda s: b"VMCTL-READY" in console(s),
}


@pytest.mark.vm
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigkill_during_up_then_down_cleans(moment: str, state_dir: Path, tmp_path: Path,
                                            no_leftover_qemu: None) -> None:
    file = write_env(tmp_path / "env", one_machine(ENV, extra=COLD))
    up = spawn_vmctl("-f", str(file), "up", "--timeout", UP_TIMEOUT)
    try:
        wait_until(moment, lambda: MOMENTS[moment](state_dir) or up.proc.poll() is not None, timeout=90, poll=0.005)
    finally:
        seen = {"domain defined": bool(defined_domains(state_dir)), "qemu": bool(qemu_of(state_dir))}
        kill(up.proc, signal.SIGKILL)
    assert up.proc.returncode == -signal.SIGKILL, f"`up` finished before the kill at {moment}"
    state = state_json(state_dir, ENV)
    assert state is None or isinstance(state.get("machines"), dict), "state file is torn"
    print(f"\n{moment}: at kill {seen}; left by the crash: {leftovers(state_dir)}")

    down = run_vmctl("-f", str(file), "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert leftovers(state_dir) == {}, f"after a crash {moment} and `down`: {leftovers(state_dir)}"

    if moment in ("during-libvirt-probe", "after-start", "after-ready-line"):  # a fresh `up` works (time-boxed)
        again = run_vmctl("-f", str(file), "up", "--timeout", UP_TIMEOUT, timeout=120)
        assert again.returncode == 0, again.stderr
        assert len(qemu_of(state_dir)) == 1
        assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
        assert leftovers(state_dir) == {}


@pytest.mark.vm
def test_sigkill_then_up_recovers_without_down(state_dir: Path, tmp_path: Path, no_leftover_qemu: None) -> None:
    """A crashed `up` leaves a half-booted domain; the next `up` replaces it (one QEMU, not two)."""
    file = write_env(tmp_path / "env", one_machine(ENV, extra=COLD))
    up = spawn_vmctl("-f", str(file), "up", "--timeout", UP_TIMEOUT)
    wait_until("QEMU", lambda: MOMENTS["after-start"](state_dir), timeout=90, poll=0.005)
    kill(up.proc)
    again = run_vmctl("-f", str(file), "up", "--timeout", UP_TIMEOUT, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(qemu_of(state_dir)) == 1
    status = json.loads(run_vmctl("-f", str(file), "status", "--json", timeout=60).stdout)
    assert [m["state"] for m in status["machines"]] == ["running"]
    assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    assert leftovers(state_dir) == {}


@pytest.mark.vm
def test_ctrl_c_rolls_back(state_dir: Path, tmp_path: Path, no_leftover_qemu: None) -> None:
    file = write_env(tmp_path / "env", one_machine(ENV, extra=COLD))
    up = spawn_vmctl("-f", str(file), "up", "--timeout", UP_TIMEOUT)
    wait_until("the guest's init", lambda: b"VMCTL-INIT" in console(state_dir), timeout=90, poll=0.01)
    started = time.monotonic()
    up.proc.send_signal(signal.SIGINT)
    code, _, err = up.finish(timeout=60)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert time.monotonic() - started < 15, "rollback took too long"
    assert qemu_of(state_dir) == {} and defined_domains(state_dir) == []
    state = state_json(state_dir, ENV)
    assert state is None or state["machines"] == {}, state
    assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    assert leftovers(state_dir) == {}


# ---------------------------------------------------------------------------------------------- atomic state


def _writer(path: str) -> None:
    """Rewrite the file forever with documents of very different sizes."""
    i = 0
    while True:
        i += 1
        doc = {"environment": "x", "n": i, "pad": "x" * (i % 7 * 50_000)}
        write_atomic(Path(path), json.dumps(doc).encode())


def test_state_file_is_never_torn(tmp_path: Path) -> None:
    """A reader never sees a partial file, and SIGKILL of the writer at any moment leaves a whole one."""
    path = tmp_path / "state.json"
    write_atomic(path, b'{"n": 0}')
    ctx = multiprocessing.get_context("fork")
    reads = kills = 0
    for _ in range(10):
        proc = ctx.Process(target=_writer, args=(str(path),))
        proc.start()
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            json.loads(path.read_bytes())  # raises on a torn file
            reads += 1
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        kills += 1
        json.loads(path.read_bytes())
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    # a killed writer may leave its own temporary file, never a broken state.json
    assert {p.name for p in tmp_path.iterdir()} - {"state.json"} <= {p.name for p in tmp_path.glob(".state.json.*.tmp")}
    assert reads > 100 and kills == 10


def test_write_atomic_cleans_up_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sub" / "state.json"
    write_atomic(path, b"old")

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in path.parent.iterdir()] == ["state.json"]
