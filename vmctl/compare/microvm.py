"""The microVM contender: a one-machine environment booted by `lifecycle.up`, the workload run by crun
in the guest through `guest_container.GuestRuntime` (the same ContainerRequest shape as runc's).

Start phases come from two clocks: the host's (vmctl set-up, define, QEMU up, firmware+kernel to
init, init to SSH, SSH connect, container create+start, first output) and the guest's own uptime at
init and at SSH-ready, kept beside them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vmctl import lifecycle
from vmctl.compare import footprint
from vmctl.compare.sandboxes import (
    Exec,
    Instance,
    Sandbox,
    Workload,
    phases_from_marks,
    request,
    tool_version,
    wait_first_line,
)
from vmctl.errors import VmctlError
from vmctl.guest_container import GuestRuntime, image_serial, service_dir
from vmctl.hypervisor import qemu_pid
from vmctl.progress import Progress, quiet_renderer
from vmctl.spec import DiskSpec, Environment, MachineSpec, PortSpec, ServiceSpec
from vmctl.ssh import Guest

MACHINE = "sandbox"
BOOT_TIMEOUT = 180.0


def environment(workload: Workload, env_name: str, base_dir: Path) -> Environment:
    disk = DiskSpec(name=image_serial(workload.image.digest), path=workload.image.disk, readonly=True)
    machine = MachineSpec(name=MACHINE, vcpus=workload.vcpus, memory_mib=workload.memory_mib, disks=(disk,),
                          ports=tuple(PortSpec(target=p) for p in workload.ports))
    return Environment(name=env_name, file=base_dir / "compare.yaml", base_dir=base_dir, uri=None,
                       machines=(machine,))


class MicroVMInstance(Instance):
    def __init__(self, project: lifecycle.Project, guest: Guest, workload: Workload, container: str) -> None:
        self.sandbox = "microvm"
        self.project, self.guest, self.workload, self.container = project, guest, workload, container
        self.runtime = GuestRuntime(guest)
        self.phases: dict[str, float] = {}
        self.start_seconds = 0.0
        self.ports: dict[int, int] = {}
        self.guest_clock: dict[str, float] = {}
        self.accel = "tcg"
        self.domain = ""
        self.siblings: list[str] = []

    def run_container(self, name: str, privileged: bool) -> None:
        req = request(self.workload, name, self.runtime.rootfs(name, self.workload.image),
                      self.runtime.etc_dir(name), share_network=True, privileged=privileged)
        self.runtime.start(req, ServiceSpec(name=name, image=self.workload.image_ref), self.workload.image)

    def first_output(self, name: str, timeout: float = 60.0) -> float:
        log = f"{service_dir(name)}/container.log"

        def read() -> str:
            return self.guest.run(["cat", log], timeout=30)[1].decode(errors="replace")

        return wait_first_line(read, timeout, f"container `{name}` in the microVM")

    def exec(self, argv: Sequence[str], *, timeout: float = 60.0) -> Exec:
        code, out = self.runtime.exec(self.container, argv, timeout=timeout)
        return Exec(code, out.decode(errors="replace"), "")

    def pids(self) -> list[int]:
        pid = qemu_pid(self.domain)
        return footprint.descendants(pid) if pid else []

    def cgroup(self) -> Path | None:
        pid = qemu_pid(self.domain)
        return footprint.memory_cgroup(pid) if pid else None

    def writable_bytes(self) -> int:
        # The container's writable layer is a tmpfs in guest RAM; on the host disk: console log, state.
        return footprint.dir_bytes(self.project.envdir.machine_dir(MACHINE))

    def privileged_sibling(self) -> Instance:
        name = f"{self.container}-priv"
        self.run_container(name, privileged=True)
        self.first_output(name)
        self.siblings.append(name)
        sibling = MicroVMInstance(self.project, self.guest, self.workload, name)
        sibling.domain, sibling.accel, sibling.ports = self.domain, self.accel, self.ports
        sibling.stop = lambda: self.runtime.stop(name, 0)  # type: ignore[method-assign]
        return sibling

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.guest.close()
        lifecycle.down(self.project)

    def notes(self) -> dict[str, Any]:
        return {"guest_clock": self.guest_clock, "guest_ram_mib": self.workload.memory_mib,
                "vcpus": self.workload.vcpus}


class MicroVM(Sandbox):
    name, kind = "microvm", "microvm"

    def __init__(self, base_dir: Path, env_prefix: str = "vmctl-cmp") -> None:
        self.base_dir, self.env_prefix = base_dir, env_prefix
        self._accel: str | None = None
        self.accel_reason = ""

    @property
    def accel(self) -> str:
        return self._accel or "tcg"

    def unavailable(self) -> str | None:
        import shutil

        if shutil.which("qemu-system-x86_64") is None:
            return "QEMU is not installed (`apt-get install qemu-system-x86`)"
        return None

    def project(self, workload: Workload, tag: str = "main") -> lifecycle.Project:
        """One environment per instance (`vmctl-cmp-TAG`), so instances can run side by side (density)."""
        return lifecycle.Project(env=environment(workload, f"{self.env_prefix}-{tag}", self.base_dir),
                                 progress=Progress(quiet_renderer))

    def prepare(self, workload: Workload) -> None:
        """Build the guest image if needed and learn the accelerator (a real probe, cached per boot)."""
        project = self.project(workload)
        images = lifecycle.ensure_images(project, list(project.env.machines))
        report = lifecycle.accel_report(images)
        self._accel = report.choose(project.env.machines[0].accel)
        self.accel_reason = report.reason

    def versions(self) -> dict[str, str]:
        import libvirt

        v = libvirt.getVersion()
        return {"qemu": tool_version(["qemu-system-x86_64", "--version"]),
                "libvirt": f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}", "crun (guest)": "from the guest image"}

    def image_bytes(self, workload: Workload) -> dict[str, int]:
        out = {"image": workload.image.disk.stat().st_size}
        project = self.project(workload)
        with contextlib.suppress(VmctlError, OSError):
            img = lifecycle.ensure_images(project, list(project.env.machines))["default"]
            out["guest kernel+initramfs"] = img.kernel.stat().st_size + img.initrd.stat().st_size
        return out

    def start(self, workload: Workload, tag: str) -> Instance:
        project = self.project(workload, tag)
        t0 = time.monotonic()
        try:
            state = lifecycle.up(project, timeout=BOOT_TIMEOUT)
            t_up = time.monotonic()
            ms = state.machines[MACHINE]
            guest = lifecycle.guest(project, MACHINE)
            t_ssh = time.monotonic()
            inst = MicroVMInstance(project, guest, workload, f"cmp-{tag}")
            inst.domain, inst.accel = ms.domain, ms.accel
            inst.ports = {f.guest_port: f.host_port for f in ms.forwards}
            inst.run_container(inst.container, workload.privileged)
            t_started = time.monotonic()
            t_out = inst.first_output(inst.container)
        except BaseException:
            with contextlib.suppress(Exception):
                lifecycle.down(project)
            raise
        tl = ms.timeline
        define_start = t_up - tl.get("ssh", 0.0)
        marks = [("vmctl set-up", define_start)]
        for phase, key in (("define", "defined"), ("QEMU up", "qemu_started"), ("firmware+kernel to init", "init"),
                           ("init to SSH-ready", "ssh")):
            if key in tl:
                marks.append((phase, define_start + tl[key]))
        marks += [("SSH connect", t_ssh), ("container create+start", t_started),
                  ("first output", t_out)]
        inst.phases = phases_from_marks(t0, marks)
        inst.start_seconds = round(t_out - t0, 4)
        inst.guest_clock = dict(ms.guest)
        return inst
