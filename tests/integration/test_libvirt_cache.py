"""libvirt keeps its QEMU capability cache between vmctl commands (issue 14).

On a host whose KVM reports the current CPU's APIC ID in KVM_GET_SUPPORTED_CPUID (kvm_pvm), libvirt's
QEMU driver threw the cache away ("host cpuid changed") whenever it started on another CPU than the one
the cache was written from, and probed QEMU again: seconds, in every other `up`. vmctl opens libvirt
from one CPU. Through the real CLI (`vmctl doctor` opens the embedded driver and asks for QEMU's
version, which looks the capabilities up), with libvirt's own debug log as the witness, while a busy
process on one CPU or the other pushes each command's start onto the other one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, VMCTL

pytestmark = [
    pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm: libvirt "
                       "compares the host CPUID only where QEMU has KVM"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to move between"),
]
RUNS = 6
OUTDATED = "Outdated capabilities"


@contextlib.contextmanager
def busy(cpu: int) -> Iterator[None]:
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile 1: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _doctor(tmp_path: Path, log: Path) -> dict[str, object]:
    env = {**os.environ, "VMCTL_STATE_DIR": str(tmp_path / "state"),
           "LIBVIRT_LOG_FILTERS": "1:qemu.qemu_capabilities 1:util.filecache", "LIBVIRT_LOG_OUTPUTS": f"1:file:{log}"}
    proc = subprocess.run([*VMCTL, "doctor", "--json", "--no-probe"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_capability_cache_stays_valid_across_commands(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    logs = []
    for i in range(RUNS):
        logs.append(tmp_path / f"libvirt-{i}.log")
        with busy(cpus[i % 2]):
            report = _doctor(tmp_path, logs[-1])
        assert report["libvirt_embedded"] == "works", report
    # The first command fills an empty cache; none after it may find the cache outdated.
    outdated = [str(log) for log in logs[1:] if OUTDATED in log.read_text()]
    assert not outdated, f"libvirt re-probed QEMU in {len(outdated)} of {RUNS - 1} commands: {outdated}"


def test_doctor_says_whether_the_host_makes_libvirt_reprobe(tmp_path: Path) -> None:
    report = _doctor(tmp_path, tmp_path / "libvirt.log")
    kvm = report["kvm"]
    assert isinstance(kvm, dict)
    if kvm["module"] == "kvm_pvm":
        assert kvm["cpuid_varies_by_cpu"] is True
    else:
        assert kvm["cpuid_varies_by_cpu"] in (True, False)
