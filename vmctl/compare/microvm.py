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
)
from vmctl.errors import GuestError, VmctlError
from vmctl.guest_container import GuestRuntime, image_serial
from vmctl.hypervisor import qemu_pid
from vmctl.progress import Progress, quiet_renderer
from vmctl.spec import DiskSpec, Environment, MachineSpec, PortSpec, ServiceSpec
from vmctl.ssh import Guest
from vmctl.state import MachineState

MACHINE = "sandbox"
ENV_NAME = "vmctl-compare"  # one environment (one embedded libvirt root) for every instance: libvirt
# opens one embedded root per process
BOOT_TIMEOUT = 180.0


def environment(workload: Workload, env_name: str, base_dir: Path, count: int = 1,
                template: bool = False) -> Environment:
    """`count` identical machines `sandbox-0`... with the image disk attached read-only; cold-booted, or
    restored from their shape's template (vmctl/template.py)."""
    disk = DiskSpec(name=image_serial(workload.image.digest), path=workload.image.disk, readonly=True)
    machines = tuple(MachineSpec(name=f"{MACHINE}-{i}", vcpus=workload.vcpus, memory_mib=workload.memory_mib,
                                 disks=(disk,), ports=tuple(PortSpec(target=p) for p in workload.ports),
                                 template=template)
                     for i in range(count))
    return Environment(name=env_name, file=base_dir / "compare.yaml", base_dir=base_dir, uri=None,
                       machines=machines)


class MicroVMInstance(Instance):
    def __init__(self, project: lifecycle.Project, guest: Guest, workload: Workload, container: str,
                 machine: str = f"{MACHINE}-0", sandbox: str = "microvm") -> None:
        self.sandbox = sandbox
        self.machine = machine
        self.group: list[MicroVMInstance] = [self]  # instances of one `up`: the last to stop runs `down`
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
        # Waited for in the guest: a poll over SSH would run a shell in the guest per round trip, on the
        # vCPU the container is starting on.
        try:
            self.runtime.wait_output(name, timeout)
        except GuestError as e:
            raise VmctlError(f"container `{name}` in the microVM: {e.message}") from None
        return time.monotonic()

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
        return footprint.dir_bytes(self.project.envdir.machine_dir(self.machine))

    def privileged_sibling(self) -> Instance:
        name = f"{self.container}-priv"
        self.run_container(name, privileged=True)
        self.first_output(name)
        self.siblings.append(name)
        sibling = MicroVMInstance(self.project, self.guest, self.workload, name, self.machine, self.sandbox)
        sibling.domain, sibling.accel, sibling.ports = self.domain, self.accel, self.ports
        def stop_sibling() -> None:
            self.runtime.stop(name, 0)

        sibling.stop = stop_sibling  # type: ignore[method-assign]
        return sibling

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.guest.close()
        if self in self.group:
            self.group.remove(self)
        if not self.group:
            lifecycle.down(self.project)

    def notes(self) -> dict[str, Any]:
        return {"guest_clock": self.guest_clock, "guest_ram_mib": self.workload.memory_mib,
                "vcpus": self.workload.vcpus}


class MicroVM(Sandbox):
    name, kind = "microvm", "microvm"

    def __init__(self, base_dir: Path, env_name: str = ENV_NAME, template: bool = False) -> None:
        self.base_dir, self.env_name, self.template = base_dir, env_name, template
        if template:
            self.name = "microvm (template)"
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

    def project(self, workload: Workload, count: int = 1) -> lifecycle.Project:
        return lifecycle.Project(env=environment(workload, self.env_name, self.base_dir, count, self.template),
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
        return self.start_many(workload, tag, 1)[0]

    def start_many(self, workload: Workload, tag: str, count: int) -> list[Instance]:
        """Boot `count` machines in one `up` (in parallel), then start the container in each in turn."""
        project = self.project(workload, count)
        t0 = time.monotonic()
        instances: list[MicroVMInstance] = []
        try:
            state = lifecycle.up(project, timeout=BOOT_TIMEOUT)
            t_up = time.monotonic()
            for i, m in enumerate(project.env.machines):
                inst = self._run_in(project, state.machines[m.name], workload, f"cmp-{tag}-{i}", t0, t_up)
                inst.group = instances
                instances.append(inst)
        except BaseException:
            with contextlib.suppress(Exception):
                for inst in instances:
                    inst.guest.close()
                lifecycle.down(project)
            raise
        return list(instances)

    def _run_in(self, project: lifecycle.Project, ms: MachineState, workload: Workload, name: str, t0: float,
                t_up: float) -> MicroVMInstance:
        t_begin = time.monotonic()
        guest = lifecycle.guest(project, ms.name)
        t_ssh = time.monotonic()
        inst = MicroVMInstance(project, guest, workload, name, ms.name, self.name)
        inst.domain, inst.accel = ms.domain, ms.accel
        inst.ports = {f.guest_port: f.host_port for f in ms.forwards}
        inst.run_container(inst.container, workload.privileged)
        t_started = time.monotonic()
        t_out = inst.first_output(inst.container)
        tl = ms.timeline
        define_start = t_up - tl.get("ssh", 0.0)
        marks = [("vmctl set-up", define_start)]
        for phase, key in (("define", "defined"), ("QEMU up", "qemu_started"), ("template restored", "restored"),
                           ("firmware+kernel to init", "init"), ("init to SSH-ready", "ssh")):
            if key in tl:
                marks.append((phase, define_start + tl[key]))
        # Machines of one `up` start their containers one after another: the wait for the earlier ones is
        # not part of this one's start.
        marks += [("SSH connect", t_ssh - (t_begin - t_up)), ("container create+start", t_started - (t_begin - t_up)),
                  ("first output", t_out - (t_begin - t_up))]
        inst.phases = phases_from_marks(t0, marks)
        inst.start_seconds = round(sum(inst.phases.values()), 4)
        inst.guest_clock = dict(ms.guest)
        return inst
