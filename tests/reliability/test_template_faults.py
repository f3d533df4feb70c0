"""Templates under faults: a SIGKILL while one is being saved (no half template is ever used, `down`
removes the template guest, the next `up` builds it again), and a disk full while saving (cold boot)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_vmctl
from tests.reliability.conftest import kill, leftovers, one_machine, qemu_of, spawn_vmctl, wait_until, write_env
from vmctl import template
from vmctl.paths import cache_root

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


@pytest.mark.vm
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs for the templates")
def test_a_disk_full_while_saving_means_a_cold_boot(state_dir: Path, tmp_path: Path, no_leftover_qemu: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The templates' folder on a 16 MiB tmpfs (a template of the default image is ~76 MiB): QEMU's
    migration to the file fails, `up` says so in one line and boots the machine cold."""
    real = cache_root()
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("guest", "kernels", "accel.json"):  # the images and the probe's answer as they are
        if (real / name).exists():
            (cache / name).symlink_to(real / name)
    small = cache / "templates"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setenv("VMCTL_CACHE_DIR", str(cache))
        file = write_env(tmp_path / "env", one_machine(ENV, memory="256M"))
        up = run_vmctl("-f", str(file), "--progress", "plain", "up", "--timeout", "120", timeout=300)
        try:
            assert up.returncode == 0, up.stderr
            warnings = [line for line in up.stderr.splitlines() if "booting cold" in line]
            assert len(warnings) == 1 and "migration of the template state ended `failed`" in warnings[0], up.stderr
            machine = json.loads(run_vmctl("-f", str(file), "status", "--json").stdout)["machines"][0]
            assert machine["template"] is None and machine["state"] == "running"
            assert [p.name for p in small.iterdir() if not p.name.startswith(".")] == []
        finally:
            assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    finally:
        subprocess.run(["umount", str(small)], check=False)
    assert leftovers(state_dir) == {}
