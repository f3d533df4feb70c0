"""Progress as events: the core reports (id, status, text); a renderer chosen by the CLI shows them.

Data goes to stdout, progress to stderr. On a terminal each line carries the elapsed time, docker
compose style; `--progress json` prints one JSON object per event for scripts.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

WORKING, DONE, ERROR, WARN, INFO = "working", "done", "error", "warning", "info"
_MARKS = {WORKING: "·", DONE: "✔", ERROR: "✘", WARN: "!", INFO: " "}


@dataclass(frozen=True)
class Event:
    id: str
    status: str
    text: str
    elapsed: float


Renderer = Callable[[Event], None]


class Progress:
    def __init__(self, renderer: Renderer | None = None) -> None:
        self.renderer = renderer or plain_renderer(sys.stderr)
        self.start = time.monotonic()
        self._lock = threading.Lock()

    def emit(self, id: str, status: str, text: str) -> None:
        with self._lock:
            self.renderer(Event(id, status, text, time.monotonic() - self.start))

    def working(self, id: str, text: str) -> None:
        self.emit(id, WORKING, text)

    def done(self, id: str, text: str) -> None:
        self.emit(id, DONE, text)

    def error(self, id: str, text: str) -> None:
        self.emit(id, ERROR, text)

    def warn(self, id: str, text: str) -> None:
        self.emit(id, WARN, text)

    def info(self, id: str, text: str) -> None:
        self.emit(id, INFO, text)

    def callback(self, id: str) -> Callable[[str], None]:
        """A `progress(text)` function for stages that only report text (image builds)."""
        return lambda text: self.working(id, text)


def plain_renderer(stream: TextIO) -> Renderer:
    def render(e: Event) -> None:
        stream.write(f"{_MARKS.get(e.status, ' ')} {e.id:<14} {e.text}  {e.elapsed:5.1f}s\n")
        stream.flush()

    return render


def json_renderer(stream: TextIO) -> Renderer:
    def render(e: Event) -> None:
        stream.write(json.dumps({"id": e.id, "status": e.status, "text": e.text,
                                 "elapsed": round(e.elapsed, 3)}) + "\n")
        stream.flush()

    return render


def quiet_renderer(_e: Event) -> None:
    return None
