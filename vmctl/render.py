"""Domain XML and kernel command lines, from a resolved machine plan through autoescaped templates.

Pure functions: no libvirt, no I/O beyond reading templates, so `vmctl render` and the tests can show
exactly what `up` would define.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import markupsafe

from vmctl import cmdline
from vmctl.guest_image import KERNEL_CMDLINE
from vmctl.paths import TEMPLATES_DIR

if TYPE_CHECKING:
    import jinja2

XMLNS = "https://github.com/vmctl/vmctl/xmlns/instance/1"
DOMAIN_PREFIX = "vmctl"
GUEST_NET = "10.0.2.15"  # QEMU user-mode networking's default guest address
USER_NET_SLOT = 0x10  # pcie.0 slot of the user-mode NIC; environment network NICs follow it

# TCG's translation cache. bench/tb_cache.py: 64 MiB boots fastest here (32 MiB costs +0.06-0.09 s to
# READY and saves 8-26 MiB of host memory; 128 MiB gains nothing).
TB_CACHE_MIB = 64

# The guest image's arguments (serial console, no reboot loop on panic, quiet boot: console output is
# slow under TCG, no crypto self-tests), plus Firecracker's: no probing for a PS/2 controller a
# microVM does not have. `noreplace-smp`: a kernel booted on one vCPU patches every LOCK prefix out of
# its text, and under TCG each patched code page throws its translations away (bench, bare QEMU to
# READY, medians of 7: minimal 0.96 -> 0.87 s; cloud 2.19 -> 1.94 s of 5). The prefixes left in cost a
# one-vCPU guest next to nothing.
BASE_KERNEL_ARGS = (*KERNEL_CMDLINE, "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
                    "noreplace-smp")


@dataclass(frozen=True)
class DiskView:
    path: str
    dev: str
    serial: str
    readonly: bool
    format: str = "raw"
    # O_DIRECT: the guest's own page cache holds what it reads. A host page cache copy of a shared
    # read-only image would be one more copy, not a shared one (only DAX would let guests share pages).
    cache: str = "none"


@dataclass(frozen=True)
class FilesystemView:
    """A host folder shared with the guest over virtio-9p, mounted there by its tag."""

    source: str
    tag: str
    readonly: bool


@dataclass(frozen=True)
class Forward:
    """A host port forwarded into the guest by QEMU's user-mode network."""

    host_ip: str
    host_port: int
    guest_port: int
    proto: str = "tcp"


@dataclass(frozen=True)
class InterfaceView:
    """A NIC on the environment network: a tap vmctl made (libvirt opens it by name, `managed="no"`),
    at a fixed slot after user-mode networking's (0x10), so the guest's eth0 stays user-mode's."""

    tap: str | None  # None: libvirt makes a tap of its own (a template's NIC, joined to nothing)
    mac: str
    slot: int
    bridge: str | None = None  # on a declared host: libvirt's tap on this bridge (the tunnel's)


@dataclass(frozen=True)
class DomainView:
    """Everything the domain template needs, already resolved and validated."""

    environment: str
    environment_file: str
    machine: str
    domain_type: str  # "kvm" or "qemu" (TCG)
    accel: str  # "kvm" or "tcg"
    memory_mib: int
    vcpus: int
    kernel: str
    initrd: str | None
    cmdline: str
    console_log: str
    emulator: str
    loader: str | None
    forwards: tuple[Forward, ...]
    disks: tuple[DiskView, ...] = ()
    filesystems: tuple[FilesystemView, ...] = ()
    interfaces: tuple[InterfaceView, ...] = ()
    restrict: bool = False  # user-mode networking only for the forwards: no way out (internal networks)
    machine_type: str = "q35"
    tb_cache_mib: int = TB_CACHE_MIB
    dac_label: str | None = None
    # Templates and their clones (vmctl/template.py): the clone channel (ttyS1, a UNIX socket of QEMU's
    # through which the host sends the clone its identity) and a VM generation ID; `incoming` starts
    # QEMU waiting for the template's saved state instead of booting.
    clone_socket: str | None = None
    incoming: bool = False
    xmlns: str = XMLNS
    labels: tuple[tuple[str, str], ...] = ()  # the compose `labels` of the service a dedicated VM runs

    @property
    def domain_name(self) -> str:
        return domain_name(self.environment, self.machine)

    @property
    def qemu_args(self) -> list[str]:
        incoming = ["-incoming", "defer"] if self.incoming else []
        return [*netdev_args(self.forwards, restrict=self.restrict), *incoming]


def domain_name(environment: str, machine: str) -> str:
    return f"{DOMAIN_PREFIX}-{environment}-{machine}"


def netdev_args(forwards: Sequence[Forward], *, restrict: bool = False) -> list[str]:
    """QEMU user-mode networking with host forwards (libvirt 9.0 has no <portForward> for it).

    Values are integers and validated IPv4 addresses, so QEMU's comma syntax cannot be broken into.
    The address 0x10 avoids libvirt's own pcie-root-port in slot 1. `restrict=on` keeps the forwards
    (SSH, published ports) but lets the guest reach neither the host nor anything beyond it.
    """
    fwd = "".join(f",hostfwd={f.proto}:{f.host_ip}:{int(f.host_port)}-:{int(f.guest_port)}" for f in forwards)
    restricted = ",restrict=on" if restrict else ""
    return ["-netdev", f"user,id=vmctl0{restricted}{fwd}",
            "-device", f"virtio-net-pci,netdev=vmctl0,bus=pcie.0,addr=0x{USER_NET_SLOT:x}"]


def accel_kernel_args(accel: str, vcpus: int) -> tuple[str, ...]:
    """Arguments that depend on the accelerator.

    TCG has no TSC-deadline timer, so the guest calibrates its local APIC timer against the PIT for
    100 ms of guest time (KVM guests skip that). A one-vCPU guest loses nothing by ticking from the
    HPET instead (`nolapic_timer`): READY 0.87 -> 0.71 s (minimal, bare QEMU, medians of 7), idle host
    CPU 0.1-0.2% either way. With more vCPUs the others would be woken by broadcast IPIs (idle CPU
    0.2% -> 2.4% with two), so they keep their APIC timers.
    """
    return ("nolapic_timer",) if accel == "tcg" and vcpus == 1 else ()


def kernel_cmdline(hostname: str, ssh_key_blob: str, extra: Sequence[str] = (), *, accel: str = "kvm",
                   vcpus: int = 1, probe: bool = False, template: bool = False) -> str:
    """The guest contract (docs/design.md): settings travel as `vmctl.*` kernel arguments. A template
    gets no key at all: its clones get theirs after the restore."""
    tokens = [*BASE_KERNEL_ARGS, *accel_kernel_args(accel, vcpus), f"vmctl.hostname={hostname}"]
    if ssh_key_blob:
        tokens.append(f"vmctl.sshkey={ssh_key_blob}")
    if probe:
        tokens.append("vmctl.probe=1")
    if template:
        tokens.append("vmctl.template=1")
    return cmdline.join([*tokens, *extra])


def disk_dev(index: int) -> str:
    """vda, vdb, ... vdz, vdaa: the target names libvirt expects."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return f"vd{letters}"


_WHITESPACE_REFS = str.maketrans({"\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})


def _xml_text(value: object) -> object:
    """Escape as autoescape does, and also tabs and newlines: an XML parser turns them into spaces inside an
    attribute value (`<source file="...">`), so a path holding one would silently name another file."""
    if value is None or isinstance(value, markupsafe.Markup | int | float | bool):
        return value
    return markupsafe.Markup(str(markupsafe.escape(value)).translate(_WHITESPACE_REFS))


@functools.cache
def _templates() -> jinja2.Environment:
    import jinja2  # here, not at the top: commands that render nothing (status, ps, exec) skip its ~40 ms

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,  # every value is XML text; nothing from YAML may become markup
        finalize=_xml_text,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_template(name: str, **values: object) -> str:
    return _templates().get_template(name).render(**values)


def render_domain(view: DomainView) -> str:
    return render_template("domain/domain.xml.j2", vm=view)
