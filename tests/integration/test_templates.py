"""Templates for real: two `up`s build one template, its clones are machines of their own, and a
damaged template or `--no-template` means a cold boot.

The machines carry a kernel argument of this run's own, so their shape has no template yet (and the
template is removed afterwards). Under TCG here; KVM where the host offers it.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, VMCTL, run_vmctl
from vmctl import template
from vmctl.errors import GuestError
from vmctl.ssh import Guest
from vmctl.state import EnvDir

pytestmark = pytest.mark.vm

TOKEN = f"vmctltest={uuid.uuid4().hex[:12]}"  # makes this run's shape, and so its template, its own


def _env(name: str, machines: list[str]) -> str:
    body = "".join(f"  {m}: {{}}\n" for m in machines)
    return f"name: {name}\ndefaults: {{memory: 256M, cmdline: '{TOKEN}'}}\nmachines:\n{body}"


def _status(file: Path) -> dict[str, dict[str, Any]]:
    proc = run_vmctl("-f", str(file), "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {m["name"]: m for m in json.loads(proc.stdout)["machines"]}


def _sh(file: Path, machine: str, script: str) -> str:
    proc = run_vmctl("-f", str(file), "exec", machine, "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[str]]]:
    """Env `tpla` (machines a, b) and env `tplb` (machine c), of one shape, brought up at the same time."""
    folder = tmp_path_factory.mktemp("templates")
    a, b = folder / "a.yaml", folder / "b.yaml"
    a.write_text(_env("tpla", ["a", "b"]))
    b.write_text(_env("tplb", ["c"]))
    ups = [subprocess.Popen([*VMCTL, "-f", str(f), "--progress", "plain", "up", "--timeout", "180"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in (a, b)]
    errs = []
    try:
        for up in ups:
            _, err = up.communicate(timeout=600)
            errs.append(err)
            assert up.returncode == 0, err
        yield a, b, errs
    finally:
        names = {m["template"] for f in (a, b) for m in _status(f).values() if m["template"]}
        for f in (a, b):
            run_vmctl("-f", str(f), "down")
        for name in names:
            template.discard(name)


def test_two_ups_that_need_one_template_build_it_once(envs: tuple[Path, Path, list[str]]) -> None:
    a, b, errs = envs
    assert sum("building template" in err for err in errs) == 1, errs
    machines = {**_status(a), **_status(b)}
    names = {m["template"] for m in machines.values()}
    assert len(names) == 1 and None not in names, machines
    assert all(m["state"] == "running" for m in machines.values())


def test_clones_of_one_template_are_machines_of_their_own(envs: tuple[Path, Path, list[str]]) -> None:
    a, _, _ = envs
    st = _status(a)
    assert st["a"]["hostkey"] != st["b"]["hostkey"]
    assert st["a"]["networks"][0]["address"] != st["b"]["networks"][0]["address"]
    script = ("hostname; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
              "cat /sys/class/net/*/address; date +%s")
    seen = {m: _sh(a, m, script).splitlines() for m in ("a", "b")}
    assert seen["a"][0] == "a" and seen["b"][0] == "b"
    assert seen["a"][1] != seen["b"][1]  # the guests' RNG output
    assert st["a"]["networks"][0]["mac"] in seen["a"] and st["b"]["networks"][0]["mac"] in seen["b"]
    # their clocks were stepped to now, not left at the template's
    assert abs(int(seen["a"][-1]) - int(seen["b"][-1])) < 120
    # and the clone reaches the other by name over the environment network
    assert "1 packets received" in _sh(a, "b", "ping -c 1 -W 5 a")


def test_each_clone_answers_only_with_its_own_key(envs: tuple[Path, Path, list[str]]) -> None:
    a, _, _ = envs
    st = _status(a)
    keys = EnvDir("tpla").key_file
    with Guest(name="a", port=st["a"]["ssh"]["port"], hostkey=st["a"]["hostkey"], key_file=keys) as g:
        assert g.run(["hostname"])[1].strip() == b"a"
    with pytest.raises(GuestError, match="does not match"):
        Guest(name="a", port=st["a"]["ssh"]["port"], hostkey=st["b"]["hostkey"], key_file=keys).connect(timeout=5)


def test_no_template_boots_cold(envs: tuple[Path, Path, list[str]]) -> None:
    _, b, _ = envs
    assert run_vmctl("-f", str(b), "down").returncode == 0
    up = run_vmctl("-f", str(b), "up", "--no-template")
    assert up.returncode == 0, up.stderr
    assert _status(b)["c"]["template"] is None


def test_a_corrupt_template_means_a_cold_boot_with_a_warning(envs: tuple[Path, Path, list[str]]) -> None:
    a, b, _ = envs
    name = _status(a)["a"]["template"]
    state = (template.templates_dir() / name).resolve() / template.STATE_FILE
    with state.open("r+b") as f:  # same size, one byte flipped in the middle
        f.seek(state.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert run_vmctl("-f", str(b), "down").returncode == 0
    up = run_vmctl("-f", str(b), "--progress", "plain", "up")
    assert up.returncode == 0, up.stderr
    warnings = [line for line in up.stderr.splitlines() if "does not match its checksum" in line]
    assert len(warnings) == 1 and "booting cold" in warnings[0], up.stderr
    c = _status(b)["c"]
    assert c["template"] is None and c["state"] == "running" and c["hostkey"]
    assert not state.exists() and not (template.templates_dir() / name).exists()  # forgotten: rebuilt when next needed
