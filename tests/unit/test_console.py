"""Reading the guest's readiness from its console file, as QEMU writes it (possibly mid-line)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from vmctl import console, ports
from vmctl.errors import GuestError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDLVsKrXWG8F6npqYo3v7aUMM135xkJHt5fwr38utYbA"


def test_ready_line_is_read_only_when_complete(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text(f"VMCTL-INIT uptime=1.20\r\nVMCTL-READY uptime=1.70 hostkey={KEY[:30]}")

    def finish() -> None:
        time.sleep(0.3)
        with log.open("a") as f:
            f.write(f"{KEY[30:]}\r\n")

    threading.Thread(target=finish).start()
    boot = console.wait_ready(log, machine="m", timeout=10, alive=lambda: True)
    assert boot.hostkey == KEY
    assert (boot.guest_init_uptime, boot.guest_ready_uptime) == (1.20, 1.70)
    assert boot.first_byte is not None and boot.ready_seen is not None and boot.first_byte <= boot.ready_seen


@pytest.mark.parametrize(("text", "why"), [
    ("VMCTL-FAIL step=network\n", "failed at step `network`"),
    ("[ 1.0] Kernel panic - not syncing: No working init found\n", "kernel panicked"),
])
def test_failures_end_the_wait_with_the_console_tail(tmp_path: Path, text: str, why: str) -> None:
    log = tmp_path / "console.log"
    log.write_text("booting\n" + text)
    with pytest.raises(GuestError) as err:
        console.wait_ready(log, machine="m", timeout=10, alive=lambda: True)
    assert why in err.value.message
    assert "booting" in err.value.message  # the tail is shown


def test_a_dead_vm_ends_the_wait(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="stopped before it became ready"):
        console.wait_ready(tmp_path / "none.log", machine="m", timeout=10, alive=lambda: False)


def test_timeout(tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="did not become ready within 1 s"):
        console.wait_ready(tmp_path / "none.log", machine="m", timeout=1, alive=lambda: True)


def test_free_ports_stay_below_the_ephemeral_range() -> None:
    low, _ = ports._ephemeral_range()
    for _ in range(20):
        port = ports.free_port()
        assert port < low
        assert ports.port_is_free("127.0.0.1", port)
