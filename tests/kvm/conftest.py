"""The nested KVM test host for the `kvm` tests: one L1 (bench/kvmhost.py) shared by a test module.

L1 boots on first use. If it cannot boot, or boots without /dev/kvm, every test that needs it FAILS
with what is missing (never a skip: a KVM branch that silently did not run is the failure these tests
exist to prevent). If L1 itself panics or hangs during a test, that test runs once more in a fresh L1.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from bench import kvmhost
from tests.conftest import ROOT
from vmctl.errors import VmctlError
from vmctl.guest_image import build_guest_image

T = TypeVar("T")
L1_STATE = "/root/vmctl-l1-state"  # vmctl's state in L1 (tmpfs overlay): nothing of it reaches the host
L1_RUNTIME = "/run/vmctl"


class KvmHost:
    """The module's L1s (kvmhost.Session): `scenario(body)` runs a block in L1, with one retry in a fresh
    L1 when L1 itself fails; an L1 that cannot be had fails the test, naming what is missing."""

    def __init__(self, config: kvmhost.Config | None = None) -> None:
        self.retried: list[str] = []
        self.session = kvmhost.Session(config or kvmhost.Config.from_env(), log=self.retried.append)
        self.boot_failure: str | None = None

    def scenario(self, body: Callable[[kvmhost.L1], T]) -> T:
        if self.boot_failure:
            pytest.fail(self.boot_failure, pytrace=False)
        try:
            self.session.current()
        except (kvmhost.L1Fault, kvmhost.NoKvmInL1, VmctlError, OSError) as e:
            self.boot_failure = (f"the nested KVM test host (L1: TCG, -cpu {self.session.config.cpu}) could "
                                 f"not give these tests KVM: {e}")
            pytest.fail(self.boot_failure, pytrace=False)
        return self.session.scenario(body)

    def close(self) -> None:
        self.session.close()


def vmctl_env() -> dict[str, str]:
    """vmctl in L1: this tree first, the host's guest image cache (read through the overlay), L1's own state."""
    return {"PYTHONPATH": str(ROOT), "VMCTL_STATE_DIR": L1_STATE, "VMCTL_RUNTIME_DIR": L1_RUNTIME,
            "VMCTL_CACHE_DIR": os.environ.get("VMCTL_CACHE_DIR", str(Path.home() / ".cache" / "vmctl"))}


def vmctl(l1: kvmhost.L1, *args: str, cwd: Path | None = None, timeout: float = 600) -> kvmhost.Result:
    """The real CLI in L1, with the Python that runs these tests (the host's venv, seen through virtiofs)."""
    return l1.run([sys.executable, "-m", "vmctl", *args], env=vmctl_env(), cwd=str(cwd or ROOT), timeout=timeout)


def sh(l1: kvmhost.L1, script: str, *args: str, timeout: float = 120) -> kvmhost.Result:
    """A fixed shell script in L1, values passed as "$1".. (never pasted into the script)."""
    return l1.run(["sh", "-c", script, "sh", *args], timeout=timeout)


def qemus_in_l1(l1: kvmhost.L1) -> Sequence[str]:
    out = sh(l1, "ps -eo pid,args | grep '[q]emu-system' || true").check().stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def kvm_host() -> Iterator[KvmHost]:
    # vmctl in L1 reads the host's guest image cache and has no network to build one: build it here first
    # (cached; a run of `-m kvm` alone on a fresh machine needs it, the whole suite has it already)
    build_guest_image("default")
    host = KvmHost()
    try:
        yield host
    finally:
        host.close()
        for retry in host.retried:  # passed on the second try: say so in the run's summary, not silently
            warnings.warn(pytest.PytestWarning(retry[:2000]), stacklevel=1)
