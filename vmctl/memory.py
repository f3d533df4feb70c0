"""Host memory of a process: PSS, and for a QEMU process the split into guest RAM, TCG code cache,
mapped files and QEMU's private memory (`Memory`), from /proc/PID/smaps and smaps_rollup.
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
    """MiB of one QEMU's PSS, in four parts that add up to it:

    - guest_ram: guest pages touched so far (the anonymous mapping of the guest's size);
    - tcg_cache: TCG's translated code (anonymous executable mappings; none under KVM);
    - files: mapped files (QEMU's binary and libraries, the kernel and initrd it keeps for reboots),
      page cache that every VM booting the same files shares: PSS splits it among them;
    - private: the rest, QEMU's own heap, stacks and device state.
    `overhead` (pss - guest_ram) is everything beyond the guest's RAM."""

    pss: float
    guest_ram: float
    tcg_cache: float
    files: float = 0.0

    @property
    def private(self) -> float:
        return self.pss - self.guest_ram - self.tcg_cache - self.files

    @property
    def overhead(self) -> float:
        return self.pss - self.guest_ram

    def as_dict(self) -> dict[str, float]:
        return {"pss_mib": round(self.pss, 1), "guest_ram_touched_mib": round(self.guest_ram, 1),
                "tcg_cache_mib": round(self.tcg_cache, 1), "mapped_files_mib": round(self.files, 1),
                "qemu_private_mib": round(self.private, 1), "qemu_overhead_mib": round(self.overhead, 1)}


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


def _is_file(name: str) -> bool:
    return name.startswith("/") and not name.startswith(("/memfd:", "/SYSV", "/dev/"))


def split_memory(maps: Sequence[Mapping[str, object]], rollup_pss_kib: int, guest_mib: int) -> Memory:
    """Find the guest RAM (anonymous, not executable, the guest's size), the TCG cache (anonymous and
    executable: one mapping of the tb-size, or one per region when several vCPUs translate in parallel)
    and the mapped files."""
    def pss(m: Mapping[str, object]) -> int:
        return int(str(m.get("Pss", 0)))

    def executable(m: Mapping[str, object]) -> bool:
        return "x" in str(m.get("perms", ""))

    anonymous = [m for m in maps if not m["name"]]
    # QEMU adds or removes a guard page; glibc's 64 MiB malloc arenas look alike, so of the candidates
    # take the one holding the most.
    ram = [pss(m) for m in anonymous if not executable(m) and abs(int(str(m["size_kib"])) - guest_mib * 1024) <= 8]
    return Memory(pss=rollup_pss_kib / 1024, guest_ram=max(ram, default=0) / 1024,
                  tcg_cache=sum(pss(m) for m in anonymous if executable(m)) / 1024,
                  files=sum(pss(m) for m in maps if _is_file(str(m["name"]))) / 1024)


def memory_of(pid: int, guest_mib: int) -> Memory | None:
    """The split of a running QEMU's memory; None when the process is gone or unreadable."""
    pss = pss_kib(pid)
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    return None if pss is None else split_memory(parse_smaps(smaps), pss, guest_mib)
