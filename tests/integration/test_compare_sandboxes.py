"""The README's set-up gives `vmctl compare` every default sandbox (issue 14): on a machine that ran
`./bootstrap.sh`, a missing docker or podman is a failure here, never a skip (CI could not notice it
otherwise). Through the real CLI and the real engines; compare starts dockerd itself when none runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from examples.build_images import build_image
from tests.conftest import ROOT, run_vmctl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the README's set-up runs as root")
EXAMPLE = ROOT / "examples" / "compare.yaml"
DEFAULT_SANDBOXES = ["runc", "docker", "podman", "microvm"]


@pytest.fixture(scope="module", autouse=True)
def tools_image() -> None:
    if not (ROOT / "examples" / "images" / "tools.tar").exists():
        build_image("tools", ROOT / "examples" / "images")


def _dockerds() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p) == "dockerd"}


def _comm(proc: Path) -> str:
    try:
        return (proc / "comm").read_text().strip()
    except OSError:
        return ""


def _start_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["sandbox"]: r for r in data["results"] if (r["workload"], r["metric"]) == ("start", "start_seconds")}


def test_docker_and_podman_run_the_workload() -> None:
    before = _dockerds()
    proc = run_vmctl("-f", str(EXAMPLE), "--progress", "plain", "compare", "--sandboxes", "docker,podman",
                     "--only", "start", "--runs", "1", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    starts = _start_rows(data)
    assert set(starts) == {"docker", "podman"} and all(r["median"] > 0 for r in starts.values())
    assert data["versions"]["dockerd"] not in ("", "?"), data["versions"]
    assert _dockerds() <= before, "compare left the dockerd it started running"


@pytest.mark.vm
def test_no_default_sandbox_is_skipped() -> None:
    proc = run_vmctl("-f", str(EXAMPLE), "--progress", "plain", "compare", "--only", "start", "--runs", "1",
                     "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["skipped"] == {}, data["skipped"]
    assert data["sandboxes"] == DEFAULT_SANDBOXES
    assert set(_start_rows(data)) == set(DEFAULT_SANDBOXES)
