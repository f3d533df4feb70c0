"""Which accelerator can run our guests here: a real boot under KVM, not a guess from /dev/kvm.

/dev/kvm can exist and KVM_CREATE_VM succeed while a standard kernel still cannot run (a PVM host
module, or `-cpu host` refused). So the probe boots the guest image under KVM with
`vmctl.probe=1`, which makes the init print `VMCTL-PROBE-OK` and power off. Only that line counts.
The answer is cached per host boot, QEMU binary and guest image.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vmctl import render, virt
from vmctl.errors import HostError
from vmctl.paths import cache_root, private_dir, runtime_root
from vmctl.runner import spawn, which
from vmctl.spec import Accel
from vmctl.state import write_atomic

PROBE_TIMEOUT = 12.0  # a KVM guest reaches its init in well under a second; TCG is never probed
# KVM nested in a host whose CPU is emulated (vmctl/virt.py) runs at TCG speed: the probe guest reached
# its init in 6.1 s in the nested test host (bench/kvmhost.py), half of PROBE_TIMEOUT, on an idle machine.
PROBE_TIMEOUT_EMULATED_HOST = 90.0
QBOOT = Path("/usr/share/qemu/qboot.rom")


@dataclass(frozen=True)
class AccelReport:
    kvm_usable: bool
    reason: str  # why KVM is or is not usable, in one sentence
    kvm_module: str | None  # kvm_intel, kvm_amd, kvm_pvm...
    probe_seconds: float | None
    key: str  # what the cached answer depends on

    def choose(self, requested: Accel, machine: str = "") -> str:
        """The accelerator to use: "kvm" or "tcg". Forcing KVM where it cannot work is an error, not a hang."""
        if requested is Accel.TCG:
            return "tcg"
        if self.kvm_usable:
            return "kvm"
        if requested is Accel.KVM:
            who = f"machine `{machine}` asks for" if machine else "you asked for"
            raise HostError(f"{who} KVM (`accel: kvm`), but KVM cannot run the guest on this host: {self.reason}",
                            hint="use `accel: auto` (falls back to TCG emulation) or `accel: tcg`")
        return "tcg"


def kvm_module() -> str | None:
    for name in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path("/sys/module", name).exists():
            return name
    return None


KVM_GET_SUPPORTED_CPUID = 0xC008AE05  # _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
_CPUID_ENTRIES = 256  # room for every leaf a KVM module reports (59 here)
_CPUID_ENTRY = struct.Struct("7I12x")  # function, index, flags, eax, ebx, ecx, edx, padding[3]


def supported_cpuid() -> tuple[tuple[int, ...], ...]:
    """KVM_GET_SUPPORTED_CPUID of /dev/kvm, asked from the CPU this thread runs on: what libvirt's
    QEMU driver reads as it starts, and compares with its cached capabilities."""
    buf = bytearray(struct.pack("II", _CPUID_ENTRIES, 0) + bytes(_CPUID_ENTRY.size * _CPUID_ENTRIES))
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, KVM_GET_SUPPORTED_CPUID, buf)
    finally:
        os.close(fd)
    count = struct.unpack_from("I", buf)[0]
    return tuple(_CPUID_ENTRY.unpack_from(buf, 8 + i * _CPUID_ENTRY.size) for i in range(count))


def cpuid_varies_by_cpu() -> bool | None:
    """Does this host's KVM give a different supported CPUID on each CPU (kvm_pvm puts the current
    CPU's APIC ID into leaves 0x1, 0xb and 0x1f)? Then libvirt, left alone, re-probes QEMU whenever its
    driver starts on another CPU than the one its cache was written from. None: no usable /dev/kvm."""
    allowed = os.sched_getaffinity(0)
    answers = set()
    try:
        for cpu in sorted(allowed):
            os.sched_setaffinity(0, {cpu})
            answers.add(supported_cpuid())
    except OSError:
        return None
    finally:
        os.sched_setaffinity(0, allowed)
    return len(answers) > 1


def _cache_key(kernel: Path, initrd: Path) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    qemu = Path(which("qemu-system-x86_64", package="qemu-system-x86"))
    parts = [boot_id, str(qemu.stat().st_mtime_ns)]
    parts += [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (kernel, initrd)]
    return "|".join(parts)


def cached_report(kernel: Path, initrd: Path) -> AccelReport | None:
    """This boot's probe answer for these boot files, if a probe ran already; never probes."""
    return _cached_reports(cache_root() / "accel.json").get(_cache_key(kernel, initrd))


def host_report(kernel: Path, initrd: Path, *, refresh: bool = False) -> AccelReport:
    """The probe's answer for this kernel and initramfs, cached per key. Several keys are kept: with one,
    machines of two images in turn (`bench.boot`'s variants) re-probed (12 s here) at every other `up`."""
    cache = cache_root() / "accel.json"
    key = _cache_key(kernel, initrd)
    reports = {} if refresh else _cached_reports(cache)
    if key in reports:
        return reports[key]
    report = probe(kernel, initrd, key)
    kept = {k: asdict(r) for k, r in list(reports.items())[-(KEEP_REPORTS - 1):]}
    write_atomic(cache, json.dumps({"reports": {**kept, key: asdict(report)}}).encode(), mode=0o644)
    return report


KEEP_REPORTS = 8


def _cached_reports(cache: Path) -> dict[str, AccelReport]:
    try:
        raw = json.loads(cache.read_text()).get("reports", {})
        return {k: AccelReport(**v) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def probe(kernel: Path, initrd: Path, key: str = "") -> AccelReport:
    module = kvm_module()
    if not Path("/dev/kvm").exists():
        return AccelReport(False, "there is no /dev/kvm (no KVM module, or virtualization is off)", module, None, key)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelReport(False, "/dev/kvm is not accessible to this user (add yourself to group `kvm`)",
                           module, None, key)
    ok, why, seconds = _boot_under_kvm(kernel, initrd)
    if ok:
        return AccelReport(True, f"a probe guest booted under KVM in {seconds:.2f} s", module, seconds, key)
    if module == "kvm_pvm":
        why = f"the host's KVM is kvm_pvm, which runs only PVM-enabled guest kernels; {why}"
    return AccelReport(False, why, module, seconds, key)


def _boot_under_kvm(kernel: Path, initrd: Path) -> tuple[bool, str, float]:
    qemu = which("qemu-system-x86_64", package="qemu-system-x86")
    cmdline = render.kernel_cmdline("probe", "AAAA", probe=True)
    # Under the runtime folder, not /tmp: what a probe leaves (a SIGKILLed vmctl) is the runtime's.
    with tempfile.TemporaryDirectory(prefix="probe-", dir=private_dir(runtime_root())) as tmp:
        log = Path(tmp) / "console.log"
        argv = [qemu, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "128", "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                *(["-bios", str(QBOOT)] if QBOOT.exists() else []),
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
                "-serial", f"file:{log}"]
        limit = PROBE_TIMEOUT_EMULATED_HOST if virt.host().emulated else PROBE_TIMEOUT
        start = time.monotonic()
        proc = spawn(argv, stderr=subprocess.PIPE)
        try:
            while time.monotonic() - start < limit:
                if log.exists() and b"VMCTL-PROBE-OK" in log.read_bytes():
                    return True, "ok", time.monotonic() - start
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
                    last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
                    last = last.removeprefix("qemu-system-x86_64: ")[-100:]
                    return False, f"QEMU could not run a KVM guest ({last})", time.monotonic() - start
                time.sleep(0.05)
            return (False, f"a probe guest under KVM did not reach its init within {limit:.0f} s",
                    time.monotonic() - start)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
