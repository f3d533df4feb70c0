"""Shared by the boot and density benchmarks: run the real `vmctl` CLI in a scratch state folder, a
process's CPU time, medians and plain-text tables. QEMU's memory split is vmctl.memory's, its pid
vmctl.hypervisor.qemu_pid's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vmctl import accel
from vmctl.errors import VmctlError
from vmctl.guest_image import GuestImage
from vmctl.hypervisor import shared_capability_cache, warm_capabilities
from vmctl.outputs import JsonLines, writable_file
from vmctl.paths import private_dir, runtime_root
from vmctl.spec import Accel

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- accelerator

def probed_accel(image: GuestImage, say: Callable[[str], None]) -> str:
    """The accelerator `accel: auto` gives this image's machines here (vmctl's real probe, cached), so a
    benchmark measures KVM on a KVM host and TCG elsewhere, and labels every row with it."""
    report = accel.host_report(image.kernel, image.initrd)
    chosen = report.choose(Accel.AUTO)
    say(f"accelerator for image {image.name}: {chosen} ({report.reason})")
    return chosen


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
    # Under the runtime folder, not /tmp: a killed benchmark's leftovers are its runtime's (and a test
    # run's leak audit attributes them to that run).
    with tempfile.TemporaryDirectory(prefix="bench-", dir=private_dir(runtime_root())) as tmp:
        # libvirt's QEMU capability cache is the user's, not a cold one per run: a first `up` that
        # probes QEMU (seconds) would measure the probe, not the boot.
        shared = shared_capability_cache()
        shared.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "state").mkdir()
        (Path(tmp) / "state" / "libvirt-cache").symlink_to(shared)
        warm_capabilities("bench")  # a cold cache's QEMU probe here, not in the first measured `up`
        yield Scratch(Path(tmp))


# ---------------------------------------------------------------------------------------------- results

def add_out_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write every measured row to FILE as JSON lines the moment it is measured "
                             "(the summary last), so an interrupted or failing run keeps its data")


def results_file(parser: argparse.ArgumentParser, path: Path | None, tools: Sequence[Callable[[], object]] = ()
                 ) -> JsonLines:
    """Check before anything is measured that `--out` can be written and that every tool a measurement
    needs is there (a usage error, exit 2), then open the JSON-lines file."""
    try:
        for check in tools:
            check()
        if path is not None:
            writable_file(path, "--out")
    except VmctlError as e:
        parser.error(e.render())
    return JsonLines(path)


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
