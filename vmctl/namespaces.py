"""Network namespaces bound to files, and the processes in them: one implementation for the
environment network (vmctl/network/host.py) and the multi-host test bed (bench/hostbed.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def is_mountpoint(path: Path) -> bool:
    """Whether `path` is mounted on (a namespace file is a bind mount of nsfs)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if line.split()[4].encode().decode("unicode_escape") == str(path):
                return True
    return False


def processes_in(ns: Path) -> list[int]:
    """Processes whose network namespace is the one bound to `ns` (none when it is not bound)."""
    if not is_mountpoint(ns):
        return []
    inode = ns.stat().st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    found.append(int(entry.name))
    return found


def is_gone(pid: int) -> bool:
    """Exited, or a zombie nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def end(pid: int, *, grace: float = 2.0, expect: str | None = None) -> bool:
    """TERM, then KILL after `grace` s; True when it is gone. `expect` guards against a reused pid: the
    process's name must match, or it is left alone."""
    if expect:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != expect:
                return True
        except OSError:
            return True
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if is_gone(pid):
                return True
            time.sleep(0.01)
    return is_gone(pid)
