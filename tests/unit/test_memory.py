"""The benchmarks' memory split: guest RAM and TCG cache found among QEMU's mappings by their sizes."""

from __future__ import annotations

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
"""


def test_split_finds_guest_ram_and_tcg_cache_by_size() -> None:
    maps = parse_smaps(SMAPS)
    assert [m["size_kib"] for m in maps] == [16384, 262144, 65532]
    assert [m["perms"] for m in maps] == ["r-xp", "rw-p", "rwxp"]
    memory = split_memory(maps, rollup_pss_kib=200 * 1024, guest_mib=256, tb_mib=64)
    assert round(memory.guest_ram, 1) == round(100000 / 1024, 1)
    assert memory.tcg_cache == 61440 / 1024
    assert round(memory.overhead, 1) == round(200 - 100000 / 1024, 1)


def test_split_without_a_tcg_cache() -> None:
    memory = split_memory(parse_smaps(SMAPS), rollup_pss_kib=150 * 1024, guest_mib=256, tb_mib=None)
    assert memory.tcg_cache == 0.0


def test_a_malloc_arena_of_nearly_the_same_size_is_not_the_cache() -> None:
    arena = "7f1000000000-7f1003fdf000 rw-p 00000000 00:00 0\nSize: 65404 kB\nRss: 100 kB\nPss: 100 kB\n"
    maps = parse_smaps(arena + SMAPS)
    assert split_memory(maps, rollup_pss_kib=200 * 1024, guest_mib=256, tb_mib=64).tcg_cache == 61440 / 1024


def test_guest_ram_and_cache_of_the_same_size_are_told_apart_by_exec() -> None:
    same = SMAPS.replace("7f0000000000-7f0010000000 rw-p", "7f0000000000-7f0003fff000 rw-p").replace(
        "Size:             262144 kB", "Size:              65532 kB")
    memory = split_memory(parse_smaps(same), rollup_pss_kib=200 * 1024, guest_mib=64, tb_mib=64)
    assert round(memory.guest_ram, 1) == round(100000 / 1024, 1) and memory.tcg_cache == 61440 / 1024
