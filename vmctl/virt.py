"""Is vmctl's own host a virtual machine, and is its CPU emulated? The questions systemd-detect-virt asks.

It matters for the labels: KVM inside a host whose CPU QEMU emulates (TCG) is real KVM, so vmctl's KVM
path runs, but every guest instruction is still emulated underneath. Figures measured there are right
about correctness and say nothing about KVM's speed, and must say so (`kvm (nested under TCG: ...)`).

Evidence, strongest first (as systemd-detect-virt): the CPUID hypervisor leaf 0x40000000 (through
/dev/cpu/0/cpuid, module `cpuid`), the kernel's paravirtual clock (kvm-clock is KVM's alone), the DMI
strings, /sys/hypervisor, and the CPUID "hypervisor" bit in /proc/cpuinfo. QEMU's TCG signs its leaf
`TCGTCGTCGTCG`; a QEMU guest without KVM and without that leaf still says `QEMU` in its DMI vendor
while lacking kvm-clock: emulated as well.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

HYPERVISOR_LEAF = 0x40000000
SIGNATURES = {  # CPUID leaf 0x40000000 EBX:ECX:EDX -> hypervisor
    b"KVMKVMKVM\0\0\0": "kvm", b"TCGTCGTCGTCG": "qemu", b"Microsoft Hv": "microsoft", b"VMwareVMware": "vmware",
    b"XenVMMXenVMM": "xen", b"bhyve bhyve ": "bhyve", b"ACRNACRNACRN": "acrn", b"VBoxVBoxVBox": "oracle",
}
DMI_VENDORS = (  # substring of a DMI vendor/product string -> hypervisor (systemd's table, shortened)
    ("KVM", "kvm"), ("Amazon EC2", "amazon"), ("QEMU", "qemu"), ("VMware", "vmware"), ("VMW", "vmware"),
    ("innotek GmbH", "oracle"), ("VirtualBox", "oracle"), ("Xen", "xen"), ("Bochs", "bochs"),
    ("Parallels", "parallels"), ("BHYVE", "bhyve"), ("Google", "google"), ("Microsoft Corporation", "microsoft"),
)
DMI_FILES = ("sys_vendor", "product_name", "board_vendor", "bios_vendor")
EMULATED = frozenset({"qemu", "bochs"})  # hypervisors that emulate the CPU rather than run it


@dataclass(frozen=True)
class HostVirt:
    """What vmctl's host is: bare metal (`hypervisor` None) or a guest of `hypervisor`."""

    hypervisor: str | None  # "kvm", "qemu" (QEMU without KVM: TCG), "xen", "microsoft", ..., "other"
    evidence: str  # how it was told, for `doctor`

    @property
    def nested(self) -> bool:
        """vmctl's guests would be nested guests: vmctl's host is itself a VM."""
        return self.hypervisor is not None

    @property
    def emulated(self) -> bool:
        """The host's own CPU is emulated: KVM here runs at emulation speed."""
        return self.hypervisor in EMULATED

    def accel_label(self, accel: str) -> str:
        return accel_label(accel, self.emulated)


def accel_label(accel: str, host_emulated: bool) -> str:
    """The accelerator as every report prints it: `kvm`, `tcg`, or KVM flagged as nested under TCG."""
    if accel == "kvm" and host_emulated:
        return "kvm (nested under TCG: correctness only, not speed)"
    return accel


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def cpuid_signature(dev: Path = Path("/dev/cpu/0/cpuid")) -> bytes | None:
    """EBX:ECX:EDX of CPUID leaf 0x40000000, or None when /dev/cpu/0/cpuid is absent or unreadable."""
    try:
        fd = os.open(dev, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, 16, HYPERVISOR_LEAF)  # the file offset is the leaf
    except OSError:
        return None
    finally:
        os.close(fd)
    return data[4:16] if len(data) == 16 else None


def _hypervisor_bit(root: Path) -> bool:
    for line in _read(root / "proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            return "hypervisor" in line.split()
    return False


def _from_dmi(root: Path) -> tuple[str, str] | None:
    for name in DMI_FILES:
        value = _read(root / "sys/class/dmi/id" / name)
        for needle, hypervisor in DMI_VENDORS:
            if needle in value:
                return hypervisor, f"DMI {name} `{value}`"
    return None


def detect(root: Path = Path("/"), signature: bytes | None = None) -> HostVirt:
    """Look at the host under `root` (tests pass a fake tree); `signature` overrides the CPUID read."""
    sig = signature if signature is not None else cpuid_signature(root / "dev/cpu/0/cpuid")
    if sig is not None and sig in SIGNATURES:
        return HostVirt(SIGNATURES[sig], f"CPUID leaf 0x40000000 `{sig.rstrip(bytes(1)).decode(errors='replace')}`")
    clocks = _read(root / "sys/devices/system/clocksource/clocksource0/available_clocksource").split()
    if "kvm-clock" in clocks:
        return HostVirt("kvm", "the kernel's kvm-clock clocksource")
    if "hyperv_clocksource_tsc_page" in clocks:
        return HostVirt("microsoft", "the kernel's Hyper-V clocksource")
    if (dmi := _from_dmi(root)) is not None:
        return HostVirt(*dmi)
    if xen := _read(root / "sys/hypervisor/type"):
        return HostVirt(xen, f"/sys/hypervisor/type `{xen}`")
    if _hypervisor_bit(root):
        return HostVirt("other", "the CPUID hypervisor bit (/proc/cpuinfo), no known signature")
    return HostVirt(None, "no hypervisor bit, signature or DMI string: bare metal")


@functools.cache
def host() -> HostVirt:
    """This host, looked at once per process."""
    return detect()
