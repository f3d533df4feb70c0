"""vmctl/virt.py: what tells a nested, emulated host apart (fake /proc and /sys trees, no real CPUID)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import virt


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


CPUINFO_VM = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor svm\n"
CLOCKS = "sys/devices/system/clocksource/clocksource0/available_clocksource"


@pytest.mark.parametrize(("signature", "hypervisor", "emulated"), [
    (b"TCGTCGTCGTCG", "qemu", True), (b"KVMKVMKVM\0\0\0", "kvm", False), (b"Microsoft Hv", "microsoft", False)])
def test_cpuid_leaf_decides_first(tmp_path: Path, signature: bytes, hypervisor: str, emulated: bool) -> None:
    root = _tree(tmp_path, {"proc/cpuinfo": CPUINFO_VM, "sys/class/dmi/id/sys_vendor": "QEMU"})
    host = virt.detect(root, signature)
    assert (host.hypervisor, host.emulated, host.nested) == (hypervisor, emulated, True)
    assert "CPUID leaf" in host.evidence


def test_qemu_dmi_without_kvm_clock_is_emulated(tmp_path: Path) -> None:
    """The L1 test host without the cpuid module: DMI says QEMU and there is no kvm-clock."""
    root = _tree(tmp_path, {"proc/cpuinfo": CPUINFO_VM, CLOCKS: "hpet acpi_pm\n",
                            "sys/class/dmi/id/sys_vendor": "QEMU"})
    host = virt.detect(root, b"")
    assert host.emulated and host.accel_label("kvm") == "kvm (nested under TCG: correctness only, not speed)"
    assert host.accel_label("tcg") == "tcg"


def test_kvm_clock_means_kvm_even_with_qemu_dmi(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"proc/cpuinfo": CPUINFO_VM, CLOCKS: "kvm-clock tsc hpet\n",
                            "sys/class/dmi/id/sys_vendor": "QEMU"})
    host = virt.detect(root, b"")
    assert (host.hypervisor, host.emulated) == ("kvm", False)
    assert host.accel_label("kvm") == "kvm"


def test_hypervisor_bit_alone_and_bare_metal(tmp_path: Path) -> None:
    assert virt.detect(_tree(tmp_path / "vm", {"proc/cpuinfo": CPUINFO_VM}), b"").hypervisor == "other"
    bare = virt.detect(_tree(tmp_path / "metal", {"proc/cpuinfo": "flags\t: fpu sse2 vmx\n"}), b"")
    assert (bare.hypervisor, bare.nested, bare.emulated) == (None, False, False)
