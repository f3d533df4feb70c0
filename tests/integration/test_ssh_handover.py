"""The SSH connection `up` makes to see a guest answer is the one the next command of the process uses:
taken over once (no second handshake), a later one is new, and `down` closes what is still kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def check_handover(folder: Path) -> None:
    """The handover itself: in-process, as `vmctl up` followed by `vmctl exec` in one process would."""
    from vmctl import lifecycle
    from vmctl.cli.app import App
    from vmctl.ssh import KEPT

    file = folder / "vmctl.yaml"
    file.write_text("name: handover\nmachines:\n  m: {memory: 256M}\n")
    project = App(files=(file,), progress_mode="quiet").project()
    try:
        port = lifecycle.up(project, timeout=180).machines["m"].ssh_port
        kept = KEPT.client_for(port)
        assert kept is not None, "up kept no connection to its guest"

        first = lifecycle.guest(project, "m")
        assert first.client is kept and KEPT.client_for(port) is None
        assert first.run(["hostname"], check=True)[1].strip() == b"m"
        first.close()

        second = lifecycle.guest(project, "m")  # nothing kept any more: a connection of its own
        assert second.client is not None and second.client is not kept
        assert second.run(["true"])[0] == 0
        transport = second.client.get_transport()
        second.keep()
        assert KEPT.client_for(port) is not None
    finally:
        lifecycle.down(project)
    assert KEPT.client_for(port) is None, "down left a connection kept for its machine"
    assert transport is not None and not transport.is_active()


def test_the_connection_up_made_is_taken_over_once_and_closed_by_down(tmp_path: Path) -> None:
    # In a process of its own: libvirt's embedded driver stays bound to the first root a process
    # opens, and the unit tests later in this pytest process open roots of their own.
    code = "import sys; sys.path.insert(0, sys.argv[1]); from test_ssh_handover import check_handover; " \
           "from pathlib import Path; check_handover(Path(sys.argv[2]))"
    run = subprocess.run([sys.executable, "-c", code, str(HERE), str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
