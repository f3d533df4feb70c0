"""Compose files run unchanged: the examples under tests/compose/ through the real CLI, found by compose's
default names (no `-f`), with what they promise checked from the outside.

`config` of every example costs nothing; one environment (webapp: one microVM, one host container) is
brought up once and checks the env values (`.env`, `env_file`, the override file), the memory limit
in the guest's cgroup and the guest's size, init, sysctls, limits on the host, a restart after a crash
on both sides and the stop signal `down` sends; a host-only one (retries) checks `on-failure:N`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.build_images import build_tiny_image
from tests.conftest import ROOT, missing_tools, run_vmctl
from vmctl.compose_values import GUEST_OVERHEAD_MIB

EXAMPLES = ROOT / "tests" / "compose"
TOOLS = ("runc", "slirp4netns", "skopeo", "umoci", "mkfs.ext4", "busybox", "tini-static")
missing = missing_tools(TOOLS)


def _config(folder: Path, *args: str) -> dict[str, Any]:
    out = run_vmctl(*args, "config", "--json", cwd=folder)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_three_tier_resolves_with_an_override_file() -> None:
    folder = EXAMPLES / "three-tier"
    base = _config(folder)
    assert sorted(base["services"]) == ["cache", "db", "web"] and base["name"] == "three-tier"
    prod = _config(folder, "-f", "docker-compose.yml", "-f", "docker-compose.prod.yml")
    web = prod["services"]["web"]
    assert web["ports"] == ["8080:8080", "127.0.0.1:9090:8080"] and web["restart"] == "unless-stopped"
    assert web["environment"]["LOG_LEVEL"] == "warn" and web["environment"]["CACHE_URL"] == "redis://cache:6379"


def test_webapp_resolves_env_file_override_and_profiles() -> None:
    folder = EXAMPLES / "webapp"
    web = _config(folder)["services"]["web"]
    assert web["environment"] == {"FROM_ENV_FILE": "yes", "MODE": "override", "GREETING": "hello from .env"}
    assert web["mem_limit"] == "64m"
    assert "debug" not in _config(folder)["services"]
    assert "debug" in _config(folder, "--profile", "debug")["services"]
    xml = run_vmctl("render", "web", cwd=folder)
    assert '<vmctl:label name="com.example.tier">web</vmctl:label>' in xml.stdout, xml.stderr


def test_extends_include_and_env_file_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the CLI runs in the temp project: import this checkout
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "compose.yaml").write_text("services:\n  db: {image: db.tar, user: '${DB_USER}'}\n")
    (tmp_path / "lib" / ".env").write_text("DB_USER=from-lib\n")
    (tmp_path / "base.yaml").write_text("services:\n  base: {image: web.tar, labels: {tier: '${TIER}'}}\n")
    (tmp_path / ".env").write_text("TIER=dotenv\n")
    (tmp_path / "prod.env").write_text("TIER=prod\n")
    (tmp_path / "compose.yaml").write_text("include: [lib/compose.yaml]\nservices:\n"
                                           "  web: {extends: {file: base.yaml, service: base}, depends_on: [db]}\n")
    services = _config(tmp_path, "--env-file", "prod.env")["services"]
    assert services["db"]["user"] == "from-lib"
    assert services["web"] == {"image": "web.tar", "labels": {"tier": "prod"}, "depends_on": ["db"]}


# ------------------------------------------------------------------------------------------------ up


@pytest.fixture(scope="module")
def webapp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("compose") / "webapp"
    shutil.copytree(EXAMPLES / "webapp", folder)
    build_tiny_image(folder)
    (folder / "out").chmod(0o777)  # the container runs as `nobody`
    up = run_vmctl("up", "--timeout", "240", cwd=folder)
    try:
        assert up.returncode == 0, up.stderr
        yield folder
    finally:
        down = run_vmctl("down", cwd=folder)
        assert down.returncode == 0, down.stderr


def _exec(folder: Path, name: str, *argv: str) -> str:
    out = run_vmctl("exec", name, "--", *argv, cwd=folder)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _ps(folder: Path) -> dict[str, dict[str, Any]]:
    out = run_vmctl("ps", "-a", "--json", cwd=folder)  # -a: exited ones too
    assert out.returncode == 0, out.stderr
    return {s["name"]: s for s in json.loads(out.stdout)["services"]}


def _wait_for_restart(folder: Path, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = run_vmctl("logs", name, cwd=folder).stdout
        if log.count("started") >= 2 and _ps(folder)[name]["state"] == "running":
            return log
        time.sleep(1)
    raise AssertionError(f"`{name}` was not restarted: {log!r}")


@pytest.mark.vm
@pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=f"needs root and {TOOLS}")
def test_webapp_env_limits_and_restarts(webapp: Path) -> None:
    rows = _ps(webapp)
    assert set(rows) == {"web", "cache"}  # `debug` is in a profile nobody activated
    assert rows["web"]["isolation"] == "microvm" and rows["cache"]["isolation"] == "container"

    assert _exec(webapp, "web", "cat", "/proc/1/cmdline").startswith("/sbin/docker-init\0--\0sh\0")  # init: true

    env = _exec(webapp, "web", "env")
    assert "GREETING=hello from .env" in env and "FROM_ENV_FILE=yes" in env and "MODE=override" in env

    # mem_limit 64m: the container's cgroup in the guest, and a guest of 64 MiB + the guest's own share
    assert _exec(webapp, "web", "cat", "/sys/fs/cgroup/memory.max").strip() == str(64 << 20)
    total_kib = int(_exec(webapp, "web", "sh", "-c", "grep MemTotal /proc/meminfo").split()[1])
    assert 64 * 1024 < total_kib <= (64 + GUEST_OVERHEAD_MIB) * 1024

    assert _exec(webapp, "web", "cat", "/proc/sys/net/core/somaxconn").strip() == "512"  # set on the guest

    # the host container: its container_name, user by name, cpus and pids limits, tmpfs
    state = json.loads((Path(os.environ["VMCTL_STATE_DIR"]) / "envs" / "webapp" / "state.json").read_text())
    assert state["services"]["cache"]["container"] == "webapp-cache"
    assert _exec(webapp, "cache", "id", "-u").strip() == "65534"
    assert _exec(webapp, "cache", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip() == "50000"
    assert _exec(webapp, "cache", "cat", "/sys/fs/cgroup/pids/pids.max").strip() == "32"
    assert "tmpfs" in _exec(webapp, "cache", "sh", "-c", "grep ' /scratch ' /proc/mounts")

    # a crash (exit 9 on SIGUSR1) is restarted: by the guest's supervisor, and by the host supervisor
    for name in ("web", "cache"):  # the exec itself may be killed with the container it is in: no exit code check
        run_vmctl("exec", name, "--", "kill", "-USR1", "1", cwd=webapp)
    for name in ("web", "cache"):
        _wait_for_restart(webapp, name)

    # `down` stops the host container with its stop_signal (its trap writes to a host folder)
    down = run_vmctl("down", cwd=webapp)
    assert down.returncode == 0, down.stderr
    assert (webapp / "out" / "signal").read_text() == "got-INT\n"
    assert "web            stopped (exit code 9)" in down.stderr  # SIGUSR1, forwarded by tini: not SIGKILL's 137


@pytest.mark.skipif(os.geteuid() != 0 or bool(missing), reason=f"needs root and {TOOLS}")
def test_on_failure_retries_on_the_host(tmp_path: Path) -> None:
    folder = tmp_path / "retries"
    shutil.copytree(EXAMPLES / "retries", folder)
    build_tiny_image(folder)
    up = run_vmctl("up", "--no-wait", cwd=folder)
    try:
        assert up.returncode == 0, up.stderr
        deadline = time.monotonic() + 60
        while _ps(folder)["worker"]["state"] != "exited" and time.monotonic() < deadline:
            time.sleep(0.5)
        row = _ps(folder)["worker"]
        assert (row["state"], row["exit_code"]) == ("exited", 3)
        assert run_vmctl("logs", "worker", cwd=folder).stdout.count("attempt") == 3  # the first run + 2 restarts
    finally:
        down = run_vmctl("down", cwd=folder)
        assert down.returncode == 0, down.stderr
