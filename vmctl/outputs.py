"""What a long command writes, checked before it measures and written as it goes (issue 14).

A run of `compare` or a benchmark can take many minutes; what it measured must be on disk before anything
optional (an HTML page with plots) runs, and an output it cannot write must stop it before it starts,
not after. So: `require` and `writable_dir` check up front (a usage error, exit 2), `write_atomic`
replaces a data file whole each time it grows (a reader, or a run killed mid-way, never sees half a
file), and `JsonLines` appends one measured row at a time.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vmctl import state
from vmctl.errors import UsageError


@dataclass(frozen=True)
class Requirement:
    """A Python module an optional output needs, and the extra of vmctl's package that provides it."""

    module: str
    extra: str
    output: str  # what needs it, for the message
    instead: str = ""  # what the user can do without it

    def check(self) -> None:
        try:
            importlib.import_module(self.module)
        except ImportError as e:
            raise UsageError(
                f"{self.output} needs `{self.module}`, which cannot be imported here ({e})",
                hint=f"install vmctl's `{self.extra}` extra: `pip install '.[{self.extra}]'` in vmctl's folder "
                     f"(or `pip install {self.module}`)" + (f"; {self.instead}" if self.instead else "")) from None


def writable_dir(path: Path, flag: str) -> Path:
    """Create `path` if needed and prove a file can be written in it, before anything is measured."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vmctl-check-"):
            pass
    except OSError as e:
        raise UsageError(f"`{flag}`: cannot write in {path}: {e.strerror or e}") from None
    return path


def writable_file(path: Path, flag: str) -> Path:
    """Like `writable_dir`, for a file the command will write: its folder must take a new file, and the
    path itself must not be a folder."""
    if path.is_dir():
        raise UsageError(f"`{flag}`: {path} is a folder, not a file")
    writable_dir(path.parent, flag)
    return path


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step (state.write_atomic: a temporary file of its own, then rename)."""
    state.write_atomic(path, text.encode())


class JsonLines:
    """One JSON object per line, each on disk (flushed) as soon as it is measured."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("w") if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, default=str) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
