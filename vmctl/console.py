"""The guest's serial console, written by QEMU into a file: readiness, timestamps, tails for errors."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmctl.errors import GuestError

INIT_RE = re.compile(r"VMCTL-INIT uptime=(?P<up>[\d.]+)")
# The line must be complete: under load the console file can end in the middle of the host key.
READY_RE = re.compile(r"VMCTL-READY uptime=(?P<up>[\d.]+) hostkey=(?P<key>ssh-ed25519 [A-Za-z0-9+/]+=*)\r?\n")
PROBE_RE = re.compile(r"VMCTL-PROBE-OK")
# A template guest (vmctl/template.py) waits for its clone line from here on: no identity, no host key.
TEMPLATE_RE = re.compile(r"VMCTL-TEMPLATE uptime=(?P<up>[\d.]+)\r?\n")
FAIL_RE = re.compile(r"VMCTL-FAIL step=(?P<step>\S+)")
PANIC_RE = re.compile(r"Kernel panic - not syncing[^\r\n]*")


@dataclass
class Boot:
    """What the console showed during one boot, with host-clock stamps (monotonic seconds)."""

    first_byte: float | None = None
    init_seen: float | None = None
    ready_seen: float | None = None
    guest_init_uptime: float | None = None
    guest_ready_uptime: float | None = None
    hostkey: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return tail_of(path.read_bytes(), lines)
    except FileNotFoundError:
        return "(no console output)"


def file_reader(path: Path) -> Callable[[int], bytes]:
    """The console file's bytes from an offset on (none while it does not exist)."""
    def read(pos: int) -> bytes:
        try:
            with path.open("rb") as f:
                f.seek(pos)
                return f.read()
        except FileNotFoundError:
            return b""
    return read


def wait_ready(path: Path, *, machine: str, timeout: float, alive: Callable[[], bool],
               offset: int = 0, poll: float = 0.02, read: Callable[[int], bytes] | None = None,
               template: bool = False) -> Boot:
    """Follow the console from `offset` until the READY line (a template's: the TEMPLATE line); fail fast
    on FAIL, panic or a dead VM.

    `read` gives the console's bytes from an offset (default: the local file at `path`; for a machine on
    another host, its console volume read through libvirt, `path` then only names it in messages)."""
    read = read or file_reader(path)
    boot = Boot()
    deadline = time.monotonic() + timeout
    buf = b""
    pos = offset
    next_alive_check = 0.0
    while True:
        now = time.monotonic()
        chunk = read(pos)
        if chunk:
            pos += len(chunk)
            buf += chunk
            if boot.first_byte is None:
                boot.first_byte = now
            text = buf.decode(errors="replace")
            if boot.init_seen is None and (m := INIT_RE.search(text)):
                boot.init_seen, boot.guest_init_uptime = now, float(m["up"])
            if template and (m := TEMPLATE_RE.search(text)):
                boot.ready_seen, boot.guest_ready_uptime = now, float(m["up"])
                return boot
            if not template and (m := READY_RE.search(text)):
                boot.ready_seen, boot.guest_ready_uptime, boot.hostkey = now, float(m["up"]), m["key"]
                return boot
            if m := FAIL_RE.search(text):
                raise _failed(machine, path, buf, f"the guest init failed at step `{m['step']}`")
            if m := PANIC_RE.search(text):
                raise _failed(machine, path, buf, f"the guest kernel panicked ({m.group(0).strip()})")
        if now >= deadline:
            raise _failed(machine, path, buf, f"the guest did not become ready within {timeout:.0f} s",
                          hint="raise `--timeout`; under TCG a boot is CPU-bound and slower on a busy host")
        if now >= next_alive_check:
            next_alive_check = now + 0.25
            if not alive():
                raise _failed(machine, path, buf + read(pos), "the VM stopped before it became ready")
        time.sleep(poll)


def tail_of(data: bytes, lines: int = 25) -> str:
    text = data[-16384:].decode(errors="replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:]) or "(no console output)"


def _failed(machine: str, path: Path, seen: bytes, why: str, hint: str | None = None) -> GuestError:
    return GuestError(f"machine `{machine}`: {why}. Last console lines ({path}):\n{tail_of(seen)}",
                      hint=hint or f"see the whole console with `vmctl logs {machine}`")
