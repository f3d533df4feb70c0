"""A SIGKILL while a template is being saved: no half template is ever used, `down` removes the
template guest, and the next `up` builds the template again and restores from it."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_vmctl
from tests.reliability.conftest import kill, leftovers, one_machine, qemu_of, spawn_vmctl, wait_until, write_env
from vmctl import template

ENV = "tplcrash"


@pytest.mark.vm
def test_sigkill_while_saving_a_template_leaves_no_half_template(state_dir: Path, tmp_path: Path,
                                                                 no_leftover_qemu: None) -> None:
    token = f"vmctltest={uuid.uuid4().hex[:12]}"  # a shape of this test's own: its template is missing
    file = write_env(tmp_path / "env", one_machine(ENV, memory="256M", extra=f"    cmdline: '{token}'\n"))
    folder = template.templates_dir()
    before = set(folder.glob("*")) if folder.exists() else set()

    def saving() -> bool:  # QEMU has begun writing the state into a build folder
        return any(p.stat().st_size > 0 for p in folder.glob(f".*.build-*/{template.STATE_FILE}"))

    up = spawn_vmctl("-f", str(file), "up", "--timeout", "120")
    try:
        wait_until("the template's save", lambda: saving() or up.proc.poll() is not None, timeout=150, poll=0.002)
    finally:
        kill(up.proc, signal.SIGKILL)
    assert up.proc.returncode == -signal.SIGKILL, "`up` finished before the kill"
    installed = [p for p in set(folder.glob("*")) - before if not p.name.startswith(".")]
    assert installed == [], f"a half-saved template was installed: {installed}"

    down = run_vmctl("-f", str(file), "down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert qemu_of(state_dir) == {} and leftovers(state_dir) == {}

    again = run_vmctl("-f", str(file), "--progress", "plain", "up", "--timeout", "120", timeout=300)
    try:
        assert again.returncode == 0, again.stderr
        assert "building template" in again.stderr, again.stderr
        machine = json.loads(run_vmctl("-f", str(file), "status", "--json").stdout)["machines"][0]
        assert machine["template"] is not None and machine["state"] == "running"
        assert not list(folder.glob(f".{machine['template']}.build-*")), "the killed build's folder is left"
    finally:
        assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
        for name in {p.name for p in set(folder.glob("*")) - before if not p.name.startswith(".")}:
            template.discard(name)
    assert leftovers(state_dir) == {}
