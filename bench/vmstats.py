"""Shared by the boot and density benchmarks: run the real `vmctl` CLI in a scratch state folder, a
process's CPU time, medians and plain-text tables. QEMU's memory split is vmctl.memory's, its pid
vmctl.hypervisor.qemu_pid's.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- processes

def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---------------------------------------------------------------------------------------------- vmctl CLI

@dataclass
class Scratch:
    """A scratch vmctl state folder (the image cache stays shared) and environment files in it."""

    directory: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "VMCTL_STATE_DIR": str(self.directory / "state")}

    def write_env(self, name: str, machines: Mapping[str, Mapping[str, object]]) -> Path:
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "machines": dict(machines)}, sort_keys=False))
        return path

    def vmctl(self, file: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "vmctl", "-f", str(file), "--progress", "plain", *args]
        proc = subprocess.run(argv, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"vmctl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def machines(self, file: Path) -> list[dict[str, Any]]:
        """`vmctl status --json`'s machines."""
        data = json.loads(self.vmctl(file, "status", "--json").stdout)
        return list(data["machines"])


@contextlib.contextmanager
def scratch() -> Iterator[Scratch]:
    with tempfile.TemporaryDirectory(prefix="vmctl-bench-") as tmp:
        yield Scratch(Path(tmp))


def timed_up(s: Scratch, file: Path, timeout: float = 300) -> float:
    started = time.monotonic()
    s.vmctl(file, "up", "--timeout", str(timeout))
    return time.monotonic() - started


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)
