"""Versioned cache outputs: atomic switch of the `<name>` link, a few older outputs kept for VMs in flight."""

from __future__ import annotations

import os
import time
from pathlib import Path

from vmctl import cache


def _build(parent: Path, tag: str) -> Path:
    built = parent / f".x.build-{tag}"
    built.mkdir()
    (built / "vmlinuz").write_text(tag)
    return built


def test_install_switches_the_link_and_keeps_a_few_older_outputs(tmp_path: Path) -> None:
    finals = []
    for i in range(5):
        final = cache.install("x", _build(tmp_path, str(i)), f"{i:016d}")
        os.utime(final, (time.time() + i, time.time() + i))  # mtimes in build order
        finals.append(final)
        assert (tmp_path / "x").resolve() == final
        assert (tmp_path / "x" / "vmlinuz").read_text() == str(i)
    kept = sorted(p.name for p in tmp_path.glob("x.*"))
    assert kept == sorted(f.name for f in finals[-1 - cache.KEEP_OLDER:])


def test_build_lock_serialises_builds_of_one_name(tmp_path: Path) -> None:
    with cache.build_lock(tmp_path, "x"):
        assert (tmp_path / ".x.lock").exists()
