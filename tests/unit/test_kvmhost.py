"""bench/kvmhost.py without booting anything: L1's QEMU command line and the retry rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import kvmhost
from vmctl.guest_image import GuestImage


def test_l1_is_tcg_with_an_emulated_svm_cpu_and_shared_memory(tmp_path: Path) -> None:
    image = GuestImage("l1", tmp_path / "vmlinux", tmp_path / "initramfs.cpio", "6.1", "d", tmp_path)
    argv = kvmhost.qemu_argv(kvmhost.Config(smp=1, tcg_thread="single"), image, tmp_path / "v.sock",
                             tmp_path / "a.sock", tmp_path / "console.log")
    joined = " ".join(argv)
    assert "-accel tcg,thread=single" in joined and "-cpu EPYC,+svm,+npt" in joined and "-smp 1" in joined
    assert "kvm" not in joined.replace("vmctl.l1", "")  # nothing of the host's /dev/kvm
    assert "share=on" in joined and "tag=hostroot" in joined and f"name={kvmhost.PORT_NAME}" in joined
    assert f"vmctl.l1.agent={kvmhost.AGENT}" in argv[argv.index("-append") + 1]


def test_config_from_the_environment() -> None:
    cfg = kvmhost.Config.from_env({"VMCTL_L1_SMP": "1", "VMCTL_L1_TCG_THREAD": "single"})
    assert (cfg.smp, cfg.tcg_thread, cfg.memory_mib) == (1, "single", kvmhost.Config().memory_mib)


def raising(error: Exception) -> object:
    def body(_l1: object) -> None:
        raise error
    return body


class FakeL1:
    def __init__(self, n: int) -> None:
        self.n, self.closed = n, False

    def close(self) -> None:
        self.closed = True


def test_only_l1_faults_are_retried_once_in_a_fresh_l1(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeL1] = []

    def new_l1(_self: kvmhost.Session) -> FakeL1:
        if _self.l1 is None:
            made.append(FakeL1(len(made)))
            _self.l1 = made[-1]  # type: ignore[assignment]
        return made[-1]

    monkeypatch.setattr(kvmhost.Session, "current", new_l1)
    session = kvmhost.Session(log=lambda _text: None)

    def panics_first(l1: FakeL1) -> int:
        if l1.n == 0:
            raise kvmhost.L1Fault("panic")
        return l1.n

    assert session.scenario(panics_first) == 1 and made[0].closed and session.retries == 1  # type: ignore[arg-type]
    with pytest.raises(AssertionError):  # a test's own failure: no retry, the L1 stays
        session.scenario(raising(AssertionError("no")))  # type: ignore[arg-type]
    assert len(made) == 2 and not made[1].closed
    with pytest.raises(kvmhost.L1Fault):  # two faults in a row: the second one is the answer
        session.scenario(raising(kvmhost.L1Fault("hang")))  # type: ignore[arg-type]
    assert len(made) == 3 and made[2].closed
