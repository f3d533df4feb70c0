"""Embedded-root housekeeping done before libvirt opens a root (no libvirt needed)."""

from __future__ import annotations

from pathlib import Path

from vmctl.hypervisor import clear_unstarted_domains

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
