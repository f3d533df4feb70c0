"""Host memory a sandbox costs, measured the same way for every sandbox.

Two numbers, never added together (the second contains most of the first):
- PSS (proportional set size, /proc/PID/smaps_rollup) summed over every host process of the sandbox:
  QEMU for a microVM; the container's processes plus their runtime helpers (slirp4netns, shim, conmon)
  for a container. Shared pages are split among the processes sharing them, so PSS adds up fairly.
- cgroup memory: what the kernel charges to the sandbox's memory cgroup (anonymous memory *and* page
  cache), from `memory.current` (v2) or `memory.usage_in_bytes` (v1).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vmctl.memory import pss_kib

CGROUP_ROOT = Path("/sys/fs/cgroup")
# How long after the peak the memory is read again: a container's memory goes back to the host when its
# process exits; a guest's freed pages only through free page reporting, which waits 2 s and then
# reports in 2-4 MiB chunks.
AFTER_PEAK_S = 5.0


def total_pss_mib(pids: Iterable[int]) -> float:
    return sum(pss_kib(p) or 0 for p in set(pids)) / 1024


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children file)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and everything below it."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += children(p)
    return seen


def parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def memory_cgroup(pid: int) -> Path | None:
    """The folder of `pid`'s memory cgroup (v1 `memory` controller, else the v2 one), None for the root."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v1 = v2 = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = CGROUP_ROOT / "memory" / path.lstrip("/")
        elif controllers == "":
            base = CGROUP_ROOT / "unified" if (CGROUP_ROOT / "unified").is_dir() else CGROUP_ROOT
            v2 = base / path.lstrip("/")
    roots = (CGROUP_ROOT / "memory", CGROUP_ROOT, CGROUP_ROOT / "unified")
    for candidate in (v1, v2):
        if candidate is not None and candidate not in roots and (
                (candidate / "memory.usage_in_bytes").exists() or (candidate / "memory.current").exists()):
            return candidate
    return None


def cgroup_memory_bytes(cgroup: Path | None) -> int | None:
    if cgroup is None:
        return None
    for name in ("memory.current", "memory.usage_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return int((cgroup / name).read_text().strip())
    return None


def cgroup_peak_bytes(cgroup: Path | None) -> int | None:
    """The highest charge the kernel recorded for the cgroup (v2 `memory.peak`, v1 `max_usage_in_bytes`)."""
    if cgroup is None:
        return None
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return int((cgroup / name).read_text().strip())
    return None


def cgroup_procs(cgroup: Path | None) -> list[int]:
    if cgroup is None:
        return []
    try:
        return [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def host_mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_bytes(path: Path) -> int:
    """Disk blocks used below `path` (not following symlinks, not crossing mounts)."""
    total = 0
    if not path.exists():
        return 0
    dev = path.lstat().st_dev
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


@dataclass
class Snapshot:
    """One look at a sandbox: PSS per process (by command name) and its cgroup charge."""

    pss_mib: float
    cgroup_mib: float | None
    processes: dict[str, float] = field(default_factory=dict)  # "comm[pid]" -> PSS MiB


def snapshot(pids: Iterable[int], cgroup: Path | None) -> Snapshot:
    per = {f"{comm(p)}[{p}]": (pss_kib(p) or 0) / 1024 for p in sorted(set(pids))}
    cg = cgroup_memory_bytes(cgroup)
    return Snapshot(sum(per.values()), cg / 2**20 if cg is not None else None, per)


class PeakSampler:
    """Sample a sandbox's PSS and cgroup memory in a thread while a workload runs; keep the maxima."""

    def __init__(self, pids: Callable[[], Iterable[int]], cgroup: Callable[[], Path | None],
                 interval: float = 0.2) -> None:
        self.pids, self.cgroup, self.interval = pids, cgroup, interval
        self.peak_pss = 0.0
        self.peak_cgroup: float | None = None
        self.min_available = host_mem_available_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = snapshot(self.pids(), self.cgroup())
            self.peak_pss = max(self.peak_pss, snap.pss_mib)
            if snap.cgroup_mib is not None:
                self.peak_cgroup = max(self.peak_cgroup or 0.0, snap.cgroup_mib)
            self.min_available = min(self.min_available, host_mem_available_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def settle(seconds: float) -> None:
    time.sleep(seconds)
