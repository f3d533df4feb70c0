"""Content-addressed build outputs in the cache: `<name>.<digest16>/` folders behind a `<name>` symlink.

A build writes into a temporary folder beside its final place; `install` renames it into place and
swaps the symlink in one atomic rename, so a reader sees the old output or the new one, never half of
either, and a killed build leaves only a temporary folder. Builds of one name are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

KEEP_OLDER = 2  # outputs kept besides the current one


@contextlib.contextmanager
def build_lock(folder: Path, name: str) -> Iterator[None]:
    """One build of `name` under `folder` at a time (another vmctl waits, then finds it cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def install(name: str, built: Path, digest: str) -> Path:
    """Move `built` to `<name>.<digest16>` beside it, point the `<name>` symlink there, prune old outputs."""
    final = built.parent / f"{name}.{digest[:16]}"
    if final.exists():
        shutil.rmtree(final)
    built.rename(final)
    tmp_link = built.parent / f".{name}.link-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(final.name)
    tmp_link.replace(built.parent / name)
    # Keep a few older outputs: a VM being defined elsewhere at this moment may still point at one.
    older = sorted((p for p in built.parent.glob(f"{name}.*") if p != final and p.is_dir()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in older[KEEP_OLDER:]:
        shutil.rmtree(old, ignore_errors=True)
    return final
