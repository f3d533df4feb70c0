"""QEMU's memory split: guest RAM, TCG cache, mapped files and the rest, found among its mappings."""

from __future__ import annotations

import pytest

from vmctl.memory import parse_smaps, split_memory

SMAPS = """\
55d0c0000000-55d0c1000000 r-xp 00000000 08:01 1234 /usr/bin/qemu-system-x86_64
Size:              16384 kB
Rss:                8000 kB
Pss:                4000 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
Pss:              100000 kB
7f0010000000-7f0013fff000 rwxp 00000000 00:00 0
Size:              65532 kB
Rss:               61440 kB
Pss:               61440 kB
7f0020000000-7f0020400000 rw-p 00000000 00:00 0                          [heap]
Size:               4096 kB
Rss:                3000 kB
Pss:                3000 kB
"""


def test_split_finds_guest_ram_tcg_cache_and_files() -> None:
    maps = parse_smaps(SMAPS)
    assert [m["size_kib"] for m in maps] == [16384, 262144, 65532, 4096]
    assert [m["perms"] for m in maps] == ["r-xp", "rw-p", "rwxp", "rw-p"]
    memory = split_memory(maps, rollup_pss_kib=200 * 1024, guest_mib=256)
    assert memory.guest_ram == pytest.approx(100000 / 1024)
    assert memory.tcg_cache == 61440 / 1024
    assert memory.files == 4000 / 1024
    assert memory.private == pytest.approx(200 - (100000 + 61440 + 4000) / 1024)
    assert memory.overhead == pytest.approx(200 - 100000 / 1024)
    parts = memory.as_dict()
    assert parts["pss_mib"] == pytest.approx(parts["guest_ram_touched_mib"] + parts["tcg_cache_mib"]
                                             + parts["mapped_files_mib"] + parts["qemu_private_mib"], abs=0.2)


def test_split_without_a_tcg_cache() -> None:
    kvm = SMAPS.replace("rwxp", "rw-p")
    memory = split_memory(parse_smaps(kvm), rollup_pss_kib=150 * 1024, guest_mib=256)
    assert memory.tcg_cache == 0.0


def test_of_two_guest_sized_anonymous_mappings_the_fuller_one_is_the_ram() -> None:
    arena = "7f1000000000-7f1004000000 rw-p 00000000 00:00 0\nSize: 65536 kB\nRss: 100 kB\nPss: 100 kB\n"
    small_guest = SMAPS.replace("7f0000000000-7f0010000000 rw-p", "7f0000000000-7f0004000000 rw-p")
    memory = split_memory(parse_smaps(arena + small_guest), rollup_pss_kib=200 * 1024, guest_mib=64)
    assert memory.guest_ram == pytest.approx(100000 / 1024)


def test_several_translation_regions_add_up() -> None:
    """With several vCPUs QEMU cuts the cache into 4 MiB regions with guard pages between them."""
    regions = "".join(f"7f30{i:02x}000000-7f30{i:02x}3ff000 rwxp 00000000 00:00 0\nSize: 4092 kB\nRss: 4092 kB\n"
                      f"Pss: {4092 if i < 3 else 0} kB\n" for i in range(5))
    memory = split_memory(parse_smaps(SMAPS.replace("rwxp", "rw-p") + regions), 200 * 1024, guest_mib=256)
    assert memory.tcg_cache == pytest.approx(3 * 4092 / 1024)


def test_guest_ram_and_cache_of_the_same_size_are_told_apart_by_exec() -> None:
    same = SMAPS.replace("7f0000000000-7f0010000000 rw-p", "7f0000000000-7f0003fff000 rw-p").replace(
        "Size:             262144 kB", "Size:              65532 kB")
    memory = split_memory(parse_smaps(same), rollup_pss_kib=200 * 1024, guest_mib=64)
    assert memory.guest_ram == pytest.approx(100000 / 1024) and memory.tcg_cache == 61440 / 1024
