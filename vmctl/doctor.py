"""What this host offers vmctl: accelerator, libvirt and QEMU versions, tools, cgroups, images."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path
from typing import Any

from vmctl import accel, guest_image, virt
from vmctl.errors import VmctlError
from vmctl.hypervisor import warm_capabilities

TOOLS = {  # program -> Debian package
    "qemu-system-x86_64": "qemu-system-x86", "virt-xml-validate": "libxml2-utils", "crun": "crun",
    "runc": "runc", "skopeo": "skopeo", "umoci": "umoci", "mkfs.ext4": "e2fsprogs", "slirp4netns": "slirp4netns",
    "docker": "docker.io", "podman": "podman", "dropbear": "dropbear-bin", "busybox": "busybox-static",
}


def cgroup_mode() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "v2 (unified)"
    if Path("/sys/fs/cgroup/unified/cgroup.controllers").exists():
        return "hybrid (v1 + v2)"
    return "v1"


def host_facts() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    host = virt.host()
    return {"kernel": platform.release(), "cpu": cpu, "cpus": os.cpu_count(), "memory_mib": mem_kib // 1024,
            "cgroups": cgroup_mode(),
            "virtualization": {"hypervisor": host.hypervisor, "nested": host.nested, "emulated": host.emulated,
                               "evidence": host.evidence}}


KSM = Path("/sys/kernel/mm/ksm")


def ksm_facts(root: Path = KSM) -> dict[str, Any]:
    """The host's kernel samepage merging: on or off, and what it saves now (MiB). QEMU marks guest RAM
    mergeable by default (`mem-merge`), so with KSM on, identical pages of VMs (a template's clones
    share most of theirs) are kept once; vmctl does not turn it on: it is a host-wide setting."""
    def read(name: str) -> int | None:
        try:
            return int((root / name).read_text())
        except (OSError, ValueError):
            return None

    run, sharing = read("run"), read("pages_sharing")
    return {"available": run is not None, "on": run == 1,
            "saving_mib": round((sharing or 0) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1) if run is not None else None}


def report(*, probe: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"host": host_facts()}
    out["tools"] = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in TOOLS}
    image = guest_image.find_guest_image()
    out["guest_image"] = ({"name": image.name, "kernel_release": image.kernel_release, "digest": image.digest,
                           "directory": str(image.directory)} if image else None)
    kvm: dict[str, Any] = {"dev_kvm": Path("/dev/kvm").exists(), "module": accel.kvm_module()}
    if image and probe:
        rep = accel.host_report(image.kernel, image.initrd)
        kvm.update(usable=rep.kvm_usable, reason=rep.reason)
    else:
        kvm.update(usable=None, reason="not probed: build the guest image first (`vmctl image build`)")
    kvm["cpuid_varies_by_cpu"] = accel.cpuid_varies_by_cpu()
    out["kvm"] = kvm
    out["accel"] = "kvm" if kvm["usable"] else "tcg"
    out["accel_label"] = virt.host().accel_label(out["accel"])
    out["ksm"] = ksm_facts()
    try:
        out["versions"] = warm_capabilities("doctor")
        out["libvirt_embedded"] = "works"
    except VmctlError as e:
        out["libvirt_embedded"] = f"fails: {e.message}"
    return out
