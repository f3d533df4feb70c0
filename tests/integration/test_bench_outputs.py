"""The benchmarks keep what they measured (issue 14), through their real command lines: `--out FILE`
and the tools a measurement needs are checked before anything runs, and each row is on disk (JSON lines)
as soon as it is measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

BENCHES = {"bench.boot": [], "bench.density": ["1G"], "bench.tb_cache": [], "bench.services": []}


def _bench(module: str, *args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("module", sorted(BENCHES))
def test_an_unwritable_out_is_a_usage_error_before_measuring(module: str, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _bench(module, *BENCHES[module], "--out", str(tmp_path))  # a folder, not a file
    assert proc.returncode == 2, proc.stderr
    assert "`--out`" in proc.stderr and "is a folder" in proc.stderr
    assert time.monotonic() - started < 2.0
    assert not list(tmp_path.iterdir())


def test_density_checks_fincore_before_measuring(tmp_path: Path) -> None:
    out = tmp_path / "density.jsonl"
    proc = _bench("bench.density", "1G", "--out", str(out), env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert "fincore" in proc.stderr and "util-linux" in proc.stderr
    assert not out.exists()


@pytest.mark.vm
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed")
def test_tb_cache_rows_are_on_disk_as_measured(tmp_path: Path) -> None:
    out = tmp_path / "tb.jsonl"
    proc = _bench("bench.tb_cache", "--variant", "cloud", "--sizes", "16", "--runs", "1", "--out", str(out),
                  timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["run"]
    assert rows[0]["tb_mib"] == 16 and rows[0]["accel"] == "tcg" and rows[0]["bare_ready_s"] > 0
