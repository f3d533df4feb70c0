"""Concurrency: two `up` of one environment at once give one set of VMs (the second waits for the lock);
two environments side by side never touch each other's domains, ports or files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import listening_ports_of, run_vmctl
from tests.reliability.conftest import (
    defined_domains,
    leftovers,
    one_machine,
    qemu_of,
    spawn_vmctl,
    write_env,
)

pytestmark = pytest.mark.vm


def status(file: Path) -> dict[str, dict[str, object]]:
    result = run_vmctl("-f", str(file), "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return {m["name"]: m for m in json.loads(result.stdout)["machines"]}


def test_same_environment_twice_and_two_environments(state_dir: Path, tmp_path: Path, no_leftover_qemu: None) -> None:
    a = write_env(tmp_path / "a", one_machine("env-a", extra="    ports: ['18291:80']\n"))
    b = write_env(tmp_path / "b", one_machine("env-b", extra="    ports: ['18292:80']\n"))
    ups = [spawn_vmctl("-f", str(a), "up", "--timeout", "90") for _ in range(2)]
    ups.append(spawn_vmctl("-f", str(b), "up", "--timeout", "90"))
    results = [u.finish(timeout=180) for u in ups]
    failed = "\n\n".join(f"`up` #{i} exited {code}:\n{err}" for i, (code, _, err) in enumerate(results) if code)
    assert not failed, failed
    a_errs = results[0][2] + results[1][2]
    assert "waiting for another vmctl command" in a_errs and "already running" in a_errs, a_errs

    # one QEMU per environment, never two sets
    qemus = qemu_of(state_dir)
    assert sorted(argv.split("guest=")[1].split(",")[0] for argv in qemus.values()) == ["vmctl-env-a-m1",
                                                                                      "vmctl-env-b-m1"]
    assert defined_domains(state_dir) == ["vmctl-env-a-m1", "vmctl-env-b-m1"]
    sa, sb = status(a)["m1"], status(b)["m1"]
    assert sa["state"] == sb["state"] == "running" and sa["pid"] != sb["pid"]
    ports_a = listening_ports_of({int(str(sa["pid"]))})
    ports_b = listening_ports_of({int(str(sb["pid"]))})
    assert 18291 in ports_a and 18292 in ports_b and not ports_a & ports_b

    # `down` of one leaves the other running, with its files
    assert run_vmctl("-f", str(a), "down", timeout=120).returncode == 0
    assert status(a)["m1"]["state"] == "absent"
    after = status(b)["m1"]
    assert after["state"] == "running" and after["pid"] == sb["pid"]
    assert (state_dir / "envs" / "env-b" / "state.json").exists() and not (state_dir / "envs" / "env-a").exists()
    assert list(qemu_of(state_dir)) == [sb["pid"]]

    assert run_vmctl("-f", str(b), "down", timeout=120).returncode == 0
    assert leftovers(state_dir) == {}
