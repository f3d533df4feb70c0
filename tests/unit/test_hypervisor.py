"""Embedded roots: housekeeping before libvirt opens one, and a root another process still holds
(libvirt's real embedded driver, no VM)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vmctl.errors import HostError
from vmctl.hypervisor import (
    Hypervisor,
    clear_unstarted_domains,
    embed_uri,
    on_one_cpu,
    prepare_embed_root,
    wait_for_root,
)

STATUS = """<!--
WARNING: THIS IS AN AUTO-GENERATED FILE.
-->
<domstatus state='paused' reason='starting up' pid='{pid}'>
  <job type='none' async='start' flags='0x0'/>
</domstatus>
"""


def test_only_starts_that_never_forked_qemu_are_cleared(tmp_path: Path) -> None:
    run = tmp_path / "run" / "qemu"
    run.mkdir(parents=True)
    (run / "vmctl-e-never.xml").write_text(STATUS.format(pid=0))
    (run / "vmctl-e-running.xml").write_text(STATUS.format(pid=4242))
    (run / "vmctl-e-torn.xml").write_text("<domstatus pid='0'")  # unreadable: left to libvirt
    assert clear_unstarted_domains(tmp_path) == ["vmctl-e-never"]
    assert sorted(p.name for p in run.iterdir()) == ["vmctl-e-running.xml", "vmctl-e-torn.xml"]


def test_a_root_without_status_files_is_fine(tmp_path: Path) -> None:
    assert clear_unstarted_domains(tmp_path) == []


# A process that opens an embedded root, closes the connection, says so, and lives on for a while:
# libvirt keeps the root's pid file locked until the process exits.
HOLDER = """
import sys, threading, time, libvirt
libvirt.virEventRegisterDefaultImpl()
threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)], daemon=True).start()
libvirt.open(sys.argv[1]).close()
print("closed", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, embed_uri(root), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"closed"
    return proc


def test_a_root_held_by_a_process_on_its_way_out_is_waited_for(tmp_path: Path) -> None:
    root = tmp_path / "root"
    prepare_embed_root(root)
    holder = _holder(root, 1.0)
    try:
        started = time.monotonic()
        with Hypervisor(embed_uri(root)) as hv:
            assert hv.conn is not None
        assert time.monotonic() - started > 0.3  # it did have to wait
    finally:
        holder.kill()
        holder.wait()


def test_a_root_held_for_longer_names_the_holder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    prepare_embed_root(root)
    holder = _holder(root, 30.0)
    try:
        with pytest.raises(HostError, match=f"held by another process \\(pid {holder.pid}\\)"):
            wait_for_root(root, wait=0.5)
    finally:
        holder.kill()
        holder.wait()


def test_on_one_cpu_pins_only_the_body_and_gives_new_threads_the_full_set() -> None:
    allowed = os.sched_getaffinity(0)
    seen: dict[str, set[int]] = {}
    gate = threading.Event()

    def worker() -> None:  # started while pinned, as a thread libvirt might start in `open`
        gate.wait(10)
        seen["worker"] = os.sched_getaffinity(0)

    with on_one_cpu():
        seen["body"] = os.sched_getaffinity(0)
        thread = threading.Thread(target=worker)
        thread.start()
    gate.set()
    thread.join(10)
    assert seen["body"] == {min(allowed)}
    assert os.sched_getaffinity(0) == allowed and seen["worker"] == allowed
