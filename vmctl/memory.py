"""Host memory of a process: PSS, and for a QEMU process the split into guest RAM, TCG code cache and
QEMU's own overhead.

Memory comes from /proc/PID/smaps: the guest's RAM is QEMU's anonymous mapping of exactly the guest's
size (its Rss = guest pages touched so far), the TCG translation cache is the executable anonymous
mapping of the tb-size; the rest of the PSS (`smaps_rollup`) is QEMU's own overhead (code, heap,
device state, ROM copies of the kernel and initrd).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def pss_kib(pid: int) -> int | None:
    """PSS of one process in KiB, or None when it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


@dataclass(frozen=True)
class Memory:
    """MiB. `overhead` = pss - guest_ram (it includes the TCG cache, also shown on its own)."""

    pss: float
    guest_ram: float
    tcg_cache: float

    @property
    def overhead(self) -> float:
        return self.pss - self.guest_ram

    def as_dict(self) -> dict[str, float]:
        return {"pss_mib": round(self.pss, 1), "guest_ram_touched_mib": round(self.guest_ram, 1),
                "tcg_cache_mib": round(self.tcg_cache, 1), "qemu_overhead_mib": round(self.overhead, 1)}


_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def parse_smaps(text: str) -> list[dict[str, object]]:
    """smaps text -> [{"size_kib", "perms", "name", "Rss", "Pss", ...}] (kB values as ints)."""
    maps: list[dict[str, object]] = []
    for line in text.splitlines():
        if match := _HEADER.match(line):
            maps.append({"size_kib": (int(match.group(2), 16) - int(match.group(1), 16)) // 1024,
                         "perms": match.group(3), "name": match.group(4)})
        elif maps and (field := re.match(r"^(\w+):\s+(\d+) kB", line)):
            maps[-1][field.group(1)] = int(field.group(2))
    return maps


def split_memory(maps: Sequence[Mapping[str, object]], rollup_pss_kib: int, guest_mib: int,
                 tb_mib: int | None) -> Memory:
    """Find the guest RAM (anonymous, not executable, the guest's size) and the TCG cache (anonymous and
    executable: TCG's generated code, tb-size) mappings."""
    def pss_of(size_mib: int | None, executable: bool) -> float:
        if size_mib is None:
            return 0.0
        # QEMU adds or removes a guard page; glibc's 64 MiB malloc arenas (65404 kB) look alike, so of
        # the candidates take the one holding the most.
        found = [int(str(m.get("Pss", 0))) for m in maps
                 if not m["name"] and ("x" in str(m.get("perms", ""))) == executable
                 and abs(int(str(m["size_kib"])) - size_mib * 1024) <= 8]
        return max(found, default=0) / 1024

    return Memory(pss=rollup_pss_kib / 1024, guest_ram=pss_of(guest_mib, False), tcg_cache=pss_of(tb_mib, True))


def memory_of(pid: int, guest_mib: int, tb_mib: int | None) -> Memory | None:
    """The split of a running QEMU's memory; None when the process is gone or unreadable."""
    pss = pss_kib(pid)
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    return None if pss is None else split_memory(parse_smaps(smaps), pss, guest_mib, tb_mib)
