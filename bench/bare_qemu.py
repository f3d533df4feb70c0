"""Baseline for the benchmark: boot a guest image with a bare `qemu-system-x86_64`, no libvirt.

Same kernel, initramfs and kernel command line contract as `vmctl up` (docs/design.md), user-mode
networking with SSH forwarded to a port on 127.0.0.1. `boot()` starts QEMU and waits for the init's
`VMCTL-READY` line, timing it; the caller owns the QEMU process and must stop it (`BareVm.stop`, or
use `running_vm()` as a context manager).

CLI:  .venv/bin/python -m bench.bare_qemu [--image NAME] [--probe] [--show-command] [--json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vmctl import render
from vmctl.runner import which

QBOOT = Path("/usr/share/qemu/qboot.rom")
_LINE = re.compile(r"^(VMCTL-[A-Z-]+)(.*)$")


# ---------------------------------------------------------------------------------------------- argv

def kernel_cmdline(hostname: str, sshkey_b64: str, *, probe: bool = False, extra: Sequence[str] = (),
                   accel: str = "tcg") -> str:
    """The same kernel command line vmctl's render stage gives a one-vCPU machine."""
    return render.kernel_cmdline(hostname, sshkey_b64, extra, accel=accel, vcpus=1, probe=probe)


def machine_args(accel: str = "tcg", tb_size_mib: int | None = None) -> list[str]:
    """q35 with qboot; `tb_size_mib` sizes TCG's translation cache as libvirt's `<tb-cache>` does
    (`-accel tcg,tb-size=N`); None keeps QEMU's default (1 GiB of address space here)."""
    firmware = ["-bios", str(QBOOT)] if QBOOT.is_file() else []
    if tb_size_mib is not None and accel == "tcg":
        machine = ["-machine", "q35", "-accel", f"tcg,tb-size={int(tb_size_mib)}"]
    else:
        machine = ["-machine", f"q35,accel={accel}"]
    return [*machine, *firmware, "-nodefaults", "-no-user-config", "-display", "none"]


def resource_args(memory_mib: int = 256, cpus: int = 1) -> list[str]:
    return ["-m", str(memory_mib), "-smp", str(cpus)]


def boot_args(kernel: Path, initrd: Path, cmdline: str) -> list[str]:
    return ["-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]


def console_args() -> list[str]:
    return ["-serial", "stdio"]


def network_args(ssh_port: int) -> list[str]:
    return ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
            "-device", "virtio-net-pci,netdev=n0,addr=0x10"]


def entropy_args() -> list[str]:
    """A virtio-rng device: without one (or RDRAND, `-cpu max` under TCG) the guest's crng needs ~1.1 s
    of jitter entropy before dropbearkey can make the host key."""
    return ["-device", "virtio-rng-pci,addr=0x11"]


def qemu_argv(kernel: Path, initrd: Path, cmdline: str, *, ssh_port: int, memory_mib: int = 256,
              cpus: int = 1, accel: str = "tcg", tb_size_mib: int | None = None, rng: bool = True) -> list[str]:
    """`kernel` may be a bzImage or an uncompressed ELF `vmlinux` with a PVH note (QEMU then enters it
    through PVH, skipping real-mode setup and decompression)."""
    return [which("qemu-system-x86_64", package="qemu-system-x86"), *machine_args(accel, tb_size_mib),
            *resource_args(memory_mib, cpus), *boot_args(kernel, initrd, cmdline), *console_args(),
            *network_args(ssh_port), *(entropy_args() if rng else [])]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- running

@dataclass
class BareVm:
    """A running QEMU and what its console said. Times are host seconds since QEMU was started."""

    process: subprocess.Popen[bytes]
    ssh_port: int
    started: float
    console: list[str] = field(default_factory=list)
    events: dict[str, tuple[float, str]] = field(default_factory=dict)  # VMCTL-X -> (wall, rest of line)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def _read_console(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            now = time.monotonic() - self.started
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._seen:
                self.console.append(line)
                match = _LINE.match(line.strip())
                if match and match.group(1) not in self.events:
                    self.events[match.group(1)] = (now, match.group(2).strip())
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, *markers: str, timeout: float) -> str:
        """Wait until one of `markers` (or VMCTL-FAIL) is printed; return which one."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for marker in (*markers, "VMCTL-FAIL"):
                    if marker in self.events:
                        return marker
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader_alive()):
                    tail = "\n".join(self.console[-15:])
                    raise TimeoutError(f"no {'/'.join(markers)} within {timeout:.0f} s; console:\n{tail}")
                self._seen.wait(min(left, 0.5))

    def _reader_alive(self) -> bool:
        return any(t.name == f"console-{self.process.pid}" and t.is_alive() for t in threading.enumerate())

    def uptime(self, marker: str) -> float | None:
        found = re.search(r"uptime=([0-9.]+)", self.events.get(marker, (0.0, ""))[1])
        return float(found.group(1)) if found else None

    def wall(self, marker: str) -> float | None:
        return self.events[marker][0] if marker in self.events else None

    def hostkey(self) -> str:
        found = re.search(r"hostkey=ssh-ed25519 ([A-Za-z0-9+/=]+)", self.events.get("VMCTL-READY", (0.0, ""))[1])
        if not found:
            raise ValueError("no host key on the VMCTL-READY line")
        return found.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()

    def timings(self) -> dict[str, float | None]:
        return {
            "wall_init_s": self.wall("VMCTL-INIT"), "uptime_init_s": self.uptime("VMCTL-INIT"),
            "wall_ready_s": self.wall("VMCTL-READY"), "uptime_ready_s": self.uptime("VMCTL-READY"),
        }


def start(argv: Sequence[str], ssh_port: int) -> BareVm:
    """Start QEMU (argv from `qemu_argv`) with its serial console on a pipe read by a thread."""
    # A long-running child: vmctl.runner has no spawn helper, so Popen with an argv list (no shell).
    process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    vm = BareVm(process=process, ssh_port=ssh_port, started=time.monotonic())
    threading.Thread(target=vm._read_console, name=f"console-{process.pid}", daemon=True).start()
    return vm


@contextlib.contextmanager
def running_vm(kernel: Path, initrd: Path, hostname: str, sshkey_b64: str, *, probe: bool = False,
               extra: Sequence[str] = (), memory_mib: int = 256, tb_size_mib: int | None = None,
               rng: bool = True, accel: str = "tcg") -> Iterator[BareVm]:
    """A QEMU booting the image, killed on exit whatever happens."""
    port = free_port()
    cmdline = kernel_cmdline(hostname, sshkey_b64, probe=probe, extra=extra, accel=accel)
    vm = start(qemu_argv(kernel, initrd, cmdline, ssh_port=port, memory_mib=memory_mib, tb_size_mib=tb_size_mib,
                         rng=rng, accel=accel), port)
    try:
        yield vm
    finally:
        vm.stop()


def boot(kernel: Path, initrd: Path, hostname: str, sshkey_b64: str, *, timeout: float = 60.0,
         extra: Sequence[str] = ()) -> dict[str, float | None]:
    """Boot to VMCTL-READY, stop QEMU and return the timings (host wall seconds and guest uptimes)."""
    with running_vm(kernel, initrd, hostname, sshkey_b64, extra=extra) as vm:
        if vm.wait_for("VMCTL-READY", timeout=timeout) != "VMCTL-READY":
            raise RuntimeError(f"guest failed: {vm.events['VMCTL-FAIL'][1]}")
        return vm.timings()


# ---------------------------------------------------------------------------------------------- CLI

def throwaway_key_blob() -> str:
    """The ssh-ed25519 public-key blob (base64) of a new key, for a boot nobody logs into."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    blob = b"".join(len(p).to_bytes(4, "big") + p for p in (b"ssh-ed25519", raw))
    return base64.b64encode(blob).decode()


def main(argv: Sequence[str] | None = None) -> int:
    from vmctl.guest_image import build_guest_image

    parser = argparse.ArgumentParser(prog="bench.bare_qemu", description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="default")
    parser.add_argument("--kernel", type=Path, help="boot this kernel (bzImage or PVH vmlinux) instead of the image's")
    parser.add_argument("--initrd", type=Path, help="boot this initramfs instead of the image's")
    parser.add_argument("--tb-size", type=int, help="TCG translation cache in MiB (QEMU's default if not given)")
    parser.add_argument("--memory", type=int, default=256, help="guest RAM in MiB")
    parser.add_argument("--probe", action="store_true", help="boot with vmctl.probe=1 and wait for power-off")
    parser.add_argument("--show-command", action="store_true", help="print the QEMU argv and exit")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--extra", action="append", default=[], help="extra kernel argument (repeatable)")
    args = parser.parse_args(argv)

    image = build_guest_image(args.image, progress=lambda m: print(f"guest image: {m}", file=sys.stderr))
    kernel, initrd = args.kernel or image.kernel, args.initrd or image.initrd
    key = throwaway_key_blob()
    if args.show_command:
        cmdline = kernel_cmdline("bench", key, probe=args.probe, extra=args.extra)
        print(shlex.join(qemu_argv(kernel, initrd, cmdline, ssh_port=free_port(), memory_mib=args.memory,
                                   tb_size_mib=args.tb_size)))
        return 0
    with running_vm(kernel, initrd, "bench", key, probe=args.probe, extra=args.extra, memory_mib=args.memory,
                    tb_size_mib=args.tb_size) as vm:
        marker = vm.wait_for("VMCTL-PROBE-OK" if args.probe else "VMCTL-READY", timeout=args.timeout)
        if args.probe:
            vm.process.wait(timeout=args.timeout)
        result: dict[str, object] = {"accel": "tcg", "outcome": marker, **vm.timings(),
                                     "wall_exit_s": time.monotonic() - vm.started if args.probe else None,
                                     "initrd_bytes": os.path.getsize(initrd)}
        console = [line for line in vm.console if line.startswith("VMCTL-")]
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(console), file=sys.stderr)
        for key_, value in result.items():
            print(f"{key_:16} {value}")
    return 0 if marker != "VMCTL-FAIL" else 1


if __name__ == "__main__":
    sys.exit(main())
