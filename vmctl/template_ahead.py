"""Templates ahead of time (`vmctl image build --template`) and the cache listing (`vmctl image ls`).

`up` builds a missing template itself (vmctl/template.py); building it here, for the shapes most
machines have, keeps that first boot out of the first `up`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmctl import accel, guest_image, render, template
from vmctl.errors import VmctlError
from vmctl.guest_image import GuestImage
from vmctl.hypervisor import Hypervisor, embed_uri, prepare_embed_root, shared_capability_cache
from vmctl.paths import runtime_root
from vmctl.progress import Progress
from vmctl.runner import which
from vmctl.spec import Accel, MachineSpec


@dataclass(frozen=True)
class AheadShape:
    """A shape `vmctl image build --template` makes before any `up` needs it."""

    label: str
    nics: int = 1  # every machine is on the environment's `default` network unless told otherwise
    image_disks: int = 0


# A declared machine with the defaults, and a service's own VM (one container-image disk).
AHEAD_SHAPES = (AheadShape("machine"), AheadShape("service VM", image_disks=1))
FIRST_NIC_SLOT = 0x11  # vmctl/network/machine.py: after user-mode networking's NIC


def generic_view(image: GuestImage, accel: str, ahead: AheadShape, *, memory_mib: int = 256, vcpus: int = 1,
                 emulator: str) -> render.DomainView:
    """A domain of `ahead`'s device set, as `up` would make for a machine with the defaults."""
    return render.DomainView(
        environment="ahead", environment_file="", machine="m", domain_type="kvm" if accel == "kvm" else "qemu",
        accel=accel, memory_mib=memory_mib, vcpus=vcpus, kernel=str(image.kernel), initrd=str(image.initrd),
        cmdline="", console_log="", emulator=emulator, loader=None, forwards=(),
        disks=tuple(render.DiskView("", render.disk_dev(i), "", readonly=True) for i in range(ahead.image_disks)),
        interfaces=tuple(render.InterfaceView(None, "", FIRST_NIC_SLOT + i) for i in range(ahead.nics)))


def build(image: GuestImage, progress: Progress, root_name: str) -> list[template.Template]:
    """The templates of `AHEAD_SHAPES` for `image` on this host's accelerator, built where missing, in
    the embedded root `runtime_root()/libvirt/ROOT_NAME` (a process opens one root only).
    A shape that cannot be built is reported and skipped: `up` will boot such machines cold."""
    chosen = accel.host_report(image.kernel, image.initrd).choose(Accel.AUTO, "template")
    root = runtime_root() / "libvirt" / root_name
    prepare_embed_root(root, shared_capability_cache())
    emulator = which("qemu-system-x86_64", package="qemu-system-x86")
    built = []
    with Hypervisor(embed_uri(root)) as hv:
        versions = hv.versions()
        for ahead in AHEAD_SHAPES:
            label = f"template {ahead.label}"
            view = generic_view(image, chosen, ahead, emulator=emulator)
            shape = template.shape_for(MachineSpec(name="m", image=image.name), image, view, embedded=True)
            assert shape is not None
            progress.working(label, f"{image.name}, {view.memory_mib} MiB, {chosen}")
            try:
                found = template.ensure(hv, view, shape, versions, say=progress.callback(label))
            except VmctlError as e:
                progress.warn(label, e.message)
                continue
            progress.done(label, f"{found.name} ({found.size / 2**20:.0f} MiB)")
            built.append(found)
    return built


def images() -> list[dict[str, Any]]:
    """The guest images in the cache (name, kernel release, digest, size in bytes), whatever recipe made them."""
    out = []
    for link in sorted(guest_image.image_dir().parent.glob("*")):
        if not link.is_symlink():
            continue
        manifest = guest_image.read_manifest(link.resolve())
        if manifest is None:
            continue
        size = sum(p.stat().st_size for p in link.resolve().iterdir() if p.is_file())
        out.append({"name": link.name, "kernel_release": manifest.get("kernel_release"),
                    "digest": manifest.get("digest"), "size": size, "directory": str(link.resolve())})
    return out
