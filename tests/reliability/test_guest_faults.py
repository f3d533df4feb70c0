"""Guest faults and trust, with real guests: a guest that never becomes ready or panics, a QEMU killed from
outside, a host key that does not match; keys and state private, forwarded ports on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import run_vmctl
from tests.reliability.conftest import leftovers, one_machine, qemu_of, wait_until, write_env
from vmctl.errors import GuestError
from vmctl.guest_image import find_guest_image
from vmctl.ssh import Guest

pytestmark = pytest.mark.vm
BUSYBOX = Path("/usr/bin/busybox")


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's `newc` format: (path, mode, data) entries."""
    out = b""
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        out += header + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


@pytest.fixture
def kernel() -> Path:
    image = find_guest_image("default")
    if image is None:
        pytest.skip("the default guest image is not built")
    return image.kernel


def test_guest_that_never_becomes_ready_times_out(state_dir: Path, tmp_path: Path, kernel: Path,
                                                  no_leftover_qemu: None) -> None:
    """An initrd whose init prints a line and sleeps: `up` gives up at --timeout with the console tail."""
    init = b"#!/bin/busybox sh\n/bin/busybox echo never-ready-init\nexec /bin/busybox sleep 3600\n"
    initrd = tmp_path / "env" / "sleepy.cpio"
    initrd.parent.mkdir()
    initrd.write_bytes(newc([("bin", 0o40755, b""), ("bin/busybox", 0o100755, BUSYBOX.read_bytes()),
                             ("init", 0o100755, init)]))
    extra = f"    kernel: {kernel}\n    initrd: ./sleepy.cpio\n"
    file = write_env(tmp_path / "env", one_machine("sleepy", extra=extra))
    started = time.monotonic()
    result = run_vmctl("-f", str(file), "up", "--timeout", "12", timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "did not become ready within 12 s" in result.stderr and "never-ready-init" in result.stderr
    assert "hint: raise `--timeout`" in result.stderr and "Traceback" not in result.stderr
    assert took < 12 + 15, f"`up` took {took:.0f}s for a 12 s timeout"
    assert qemu_of(state_dir) == {}
    assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    assert leftovers(state_dir) == {}


def test_guest_kernel_panic_fails_fast(state_dir: Path, tmp_path: Path, kernel: Path, no_leftover_qemu: None) -> None:
    """An initrd with no init: the kernel panics; `up` reports the panic long before the timeout."""
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "empty.cpio").write_bytes(newc([("etc", 0o40755, b"")]))
    file = write_env(tmp_path / "env", one_machine("panicky", extra=f"    kernel: {kernel}\n    initrd: empty.cpio\n"))
    started = time.monotonic()
    result = run_vmctl("-f", str(file), "up", "--timeout", "90", timeout=120)
    assert result.returncode == 1, result.stderr
    assert "panicked" in result.stderr or "stopped before it became ready" in result.stderr, result.stderr
    assert time.monotonic() - started < 60
    assert qemu_of(state_dir) == {}
    assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    assert leftovers(state_dir) == {}


# ---------------------------------------------------------------------------------------------- a running guest


@pytest.fixture
def running(state_dir: Path, tmp_path: Path, no_leftover_qemu: None) -> Iterator[Path]:
    file = write_env(tmp_path / "env", one_machine("live", extra="    ports: ['18391:80', '80']\n"))
    result = run_vmctl("-f", str(file), "up", "--timeout", "90", timeout=150)
    assert result.returncode == 0, result.stderr
    yield file
    assert run_vmctl("-f", str(file), "down", timeout=120).returncode == 0
    assert leftovers(state_dir) == {}


def machine_status(file: Path) -> dict[str, object]:
    result = run_vmctl("-f", str(file), "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)["machines"][0])


def test_trust_and_faults_of_a_running_guest(running: Path, state_dir: Path) -> None:
    env = state_dir / "envs" / "live"
    state = json.loads((env / "state.json").read_text())
    ms = state["machines"]["m1"]

    # keys and state: 0600 files in 0700 folders
    for path in (env / "id_ed25519", env / "state.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (state_dir, state_dir / "envs", env):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    # QEMU listens on 127.0.0.1 only: every LISTEN socket it holds, from /proc/net/tcp{,6}
    [pid] = qemu_of(state_dir)
    addresses = qemu_listen_addresses(pid)
    assert {port for _, port in addresses} >= {18391, ms["ssh_port"]}
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses

    # a host key other than the pinned one is refused
    wrong = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    with pytest.raises(GuestError, match="does not match"):
        Guest(name="m1", port=ms["ssh_port"], hostkey=wrong, key_file=env / "id_ed25519").connect(timeout=10)
    with Guest(name="m1", port=ms["ssh_port"], hostkey=ms["hostkey"], key_file=env / "id_ed25519") as g:
        assert g.run(["hostname"])[1].strip() == b"m1"

    # QEMU killed from outside: status tells the truth, `up` recovers, a new host key is pinned
    os.kill(pid, signal.SIGKILL)
    wait_until("QEMU to die", lambda: pid not in qemu_of(state_dir), timeout=10)
    st = machine_status(running)
    assert st["state"] in ("stopped", "absent", "crashed"), st
    again = run_vmctl("-f", str(running), "up", "--timeout", "90", timeout=150)
    assert again.returncode == 0, again.stderr
    st = machine_status(running)
    assert st["state"] == "running" and st["pid"] != pid and list(qemu_of(state_dir)) == [st["pid"]]
    new_key = json.loads((env / "state.json").read_text())["machines"]["m1"]["hostkey"]
    assert new_key != ms["hostkey"]


def qemu_listen_addresses(pid: int) -> set[tuple[str, int]]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[9]) in inodes:
                hexip, hexport = fields[1].split(":")
                ip = ".".join(str(b) for b in reversed(bytes.fromhex(hexip))) if len(hexip) == 8 else hexip
                out.add((ip, int(hexport, 16)))
    return out
