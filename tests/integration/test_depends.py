"""`depends_on` conditions and healthcheck switches end to end, through the real CLI, with real runc
containers on the host (no VM: what is checked is the order of starts, the same code for both
isolations). Nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from examples.build_images import IMAGES_DIR, build_image
from tests.conftest import run_vmctl

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root"),
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")]

# (`sleep` as a container's pid 1 ignores SIGTERM: no grace period to wait out at `down`)
CONTAINER = "    image: ./tools.tar\n    isolation: container\n    stop_grace_period: 0s\n"


def write(tmp_path: Path, services: str) -> Path:
    build_image("tools", IMAGES_DIR)
    (tmp_path / "tools.tar").symlink_to(IMAGES_DIR / "tools.tar")
    file = tmp_path / "compose.yaml"
    file.write_text("name: deps\nservices:\n" + services)
    return file


def up_then_down(file: Path, *args: str) -> tuple[int, str, dict[str, dict[str, object]]]:
    up = run_vmctl("-f", str(file), "up", "--timeout", "60", *args)
    try:
        ps = json.loads(run_vmctl("-f", str(file), "ps", "-a", "--json").stdout or '{"services": []}')
        probe = run_vmctl("-f", str(file), "exec", "db", "--", "test", "-e", "/tmp/ready") if "db:" in \
            file.read_text() else None
    finally:
        down = run_vmctl("-f", str(file), "down")
        assert down.returncode == 0, down.stderr
    rows = {s["name"]: s for s in ps["services"]}
    if probe is not None:
        rows["db"]["ready"] = probe.returncode == 0
    return up.returncode, up.stderr, rows


def test_a_dependent_starts_after_its_dependency_completed(tmp_path: Path) -> None:
    file = write(tmp_path, "  migrate:\n" + CONTAINER + '    command: ["sh", "-c", "sleep 1"]\n'
                           "  app:\n" + CONTAINER + '    command: ["sleep", "3600"]\n'
                           "    depends_on: {migrate: {condition: service_completed_successfully}}\n")
    code, err, rows = up_then_down(file, "--no-wait")
    assert code == 0, err
    assert "waiting for `migrate` to complete" in err
    assert (rows["migrate"]["state"], rows["migrate"]["exit_code"]) == ("exited", 0)
    assert rows["app"]["state"] == "running"


def test_a_failed_dependency_stops_the_up_and_rolls_back(tmp_path: Path) -> None:
    file = write(tmp_path, "  migrate:\n" + CONTAINER + '    command: ["sh", "-c", "exit 3"]\n'
                           "  app:\n" + CONTAINER + '    command: ["sleep", "3600"]\n'
                           "    depends_on:\n      migrate: {condition: service_completed_successfully}\n")
    code, err, rows = up_then_down(file, "--no-wait")
    assert code == 1 and "`migrate` exited with code 3, and a dependent needs it to complete successfully" in err
    assert {r["state"] for r in rows.values()} == {"absent"}  # rolled back: nothing left


def test_service_healthy_waits_even_with_no_wait(tmp_path: Path) -> None:
    """`--no-wait` skips the final wait, never a dependent's condition: `web` starts only once `db`'s check
    (which passes 2 s after its start; `start_interval` checks it every 0.2 s) has passed."""
    file = write(tmp_path, "  db:\n" + CONTAINER +
                 '    command: ["sh", "-c", "sleep 2; touch /tmp/ready; exec sleep 3600"]\n'
                 '    healthcheck: {test: ["CMD", "test", "-e", "/tmp/ready"], interval: 30s, start_period: 20s,'
                 " start_interval: 0.2s}\n"
                 "  web:\n" + CONTAINER + '    command: ["sleep", "3600"]\n'
                 "    depends_on: {db: {condition: service_healthy}}\n")
    code, err, rows = up_then_down(file, "--no-wait")
    assert code == 0, err
    assert "waiting for `db` to be healthy" in err
    assert rows["db"]["ready"] is True and rows["web"]["state"] == "running"


def test_a_disabled_healthcheck_is_not_run(tmp_path: Path) -> None:
    file = write(tmp_path, "  db:\n" + CONTAINER + '    command: ["sleep", "3600"]\n'
                           '    healthcheck: {test: ["CMD", "false"], disable: true}\n'
                           "  other:\n" + CONTAINER + '    command: ["sleep", "3600"]\n'
                           '    healthcheck: {test: ["NONE"]}\n')
    code, err, rows = up_then_down(file)
    assert code == 0, err
    assert "healthy" not in err and rows["db"]["state"] == rows["other"]["state"] == "running"


def test_up_of_one_service_starts_what_it_depends_on(tmp_path: Path) -> None:
    file = write(tmp_path, "  db:\n" + CONTAINER + '    command: ["sleep", "3600"]\n'
                           "  web:\n" + CONTAINER + '    command: ["sleep", "3600"]\n    depends_on: [db]\n'
                           "  extra:\n" + CONTAINER + '    command: ["sleep", "3600"]\n')
    code, err, rows = up_then_down(file, "web")
    assert code == 0, err
    assert {name for name, r in rows.items() if r["state"] == "running"} == {"db", "web"}


def test_run_where_nothing_is_up_starts_what_the_service_needs_but_not_the_service(tmp_path: Path) -> None:
    """compose's `run` on an environment that is not up: `db` (a dependency, healthy first) and the
    network come up and stay up for `down`; `job` itself is not started, its one-off is, and sees `db`."""
    file = write(tmp_path, "  db:\n" + CONTAINER + '    command: ["sh", "-c", "touch /tmp/ready; exec sleep 3600"]\n'
                           '    healthcheck: {test: ["CMD", "test", "-e", "/tmp/ready"], interval: 200ms}\n'
                           "  job:\n" + CONTAINER + '    command: ["sh", "-c", "echo the-service-ran"]\n'
                           "    depends_on: {db: {condition: service_healthy}}\n")
    try:
        one = run_vmctl("-f", str(file), "run", "--rm", "job", "--", "sh", "-c", "nslookup db > /dev/null && echo ok")
        assert one.returncode == 0 and one.stdout == "ok\n", one.stderr
        assert "healthy in" in one.stderr  # db was waited for first
        ps = json.loads(run_vmctl("-f", str(file), "ps", "-a", "--json").stdout)
        assert {s["name"]: s["state"] for s in ps["services"]} == {"db": "running", "job": "absent"}
        again = run_vmctl("-f", str(file), "run", "--rm", "job", "--", "echo", "second")  # db is up now
        assert again.returncode == 0 and again.stdout == "second\n" and "healthy in" not in again.stderr, again.stderr
    finally:
        down = run_vmctl("-f", str(file), "down")
    assert down.returncode == 0, down.stderr
