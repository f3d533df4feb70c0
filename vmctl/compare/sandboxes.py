"""The contenders behind one small interface: start a workload, exec in it, find its host processes
and cgroup, stop it. `runc` (vmctl's own host runtime), `docker`, `podman` and `microvm`.

A sandbox starts an `Instance` of a `Workload` and reports the phases of that start (host clock,
seconds, in order; they add up to `start_seconds`, which ends at the workload's first output line).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmctl import host_container
from vmctl.compare import footprint
from vmctl.container_image import PreparedImage
from vmctl.errors import HostError, VmctlError
from vmctl.host_container import HostRuntime, PortForward
from vmctl.oci_spec import ContainerRequest
from vmctl.ports import free_port
from vmctl.runner import output

READY_POLL = 0.005


@dataclass(frozen=True)
class Workload:
    """What runs in every sandbox: the same image, command and limits."""

    name: str
    image_ref: str  # as written in the environment file
    base_dir: Path
    image: PreparedImage
    args: tuple[str, ...]  # prints a line when it is up, then stays up
    env: tuple[str, ...]
    ports: tuple[int, ...] = ()  # container ports to publish on 127.0.0.1
    vcpus: int = 1
    memory_mib: int = 256  # guest RAM of the microVM
    memory_limit_mib: int | None = 128  # the container's memory cgroup limit (every sandbox)
    pids_limit: int | None = 64
    privileged: bool = False

    def variant(self, **changes: Any) -> Workload:
        return dataclasses.replace(self, **changes)

    @property
    def source(self) -> str:
        """The image as a file written elsewhere must name it: a local archive's path made absolute."""
        path = self.base_dir / self.image_ref  # relative to the compared file's folder
        return str(path.resolve()) if path.exists() else self.image_ref


@dataclass
class Exec:
    code: int
    out: str
    err: str


class Instance(ABC):
    """One running sandbox."""

    sandbox: str
    phases: dict[str, float]
    start_seconds: float
    ports: dict[int, int]  # container port -> host port on 127.0.0.1

    @abstractmethod
    def exec(self, argv: Sequence[str], *, timeout: float = 60.0) -> Exec: ...

    @abstractmethod
    def pids(self) -> list[int]:
        """Every host process this sandbox costs (its own and its runtime helpers)."""

    @abstractmethod
    def cgroup(self) -> Path | None:
        """The host memory cgroup the sandbox is charged to, if it has its own."""

    @abstractmethod
    def writable_bytes(self) -> int:
        """Host disk this instance wrote for itself (writable layer, logs, state)."""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def privileged_sibling(self) -> Instance:
        """Another container of the same workload, privileged, in the same kind of sandbox."""

    def notes(self) -> dict[str, Any]:
        return {}


class Sandbox(ABC):
    name: str
    kind: str  # "container" or "microvm"

    @property
    def accel(self) -> str:
        return "none"

    @abstractmethod
    def unavailable(self) -> str | None:
        """Why this host cannot run this sandbox, or None when it can."""

    @abstractmethod
    def start(self, workload: Workload, tag: str) -> Instance: ...

    @abstractmethod
    def versions(self) -> dict[str, str]: ...

    def image_bytes(self, workload: Workload) -> dict[str, int]:
        """What the sandbox keeps on disk for the image (shared by all instances)."""
        return {"image": workload.image.size_bytes}

    def start_many(self, workload: Workload, tag: str, count: int) -> list[Instance]:
        """`count` instances running side by side (density); one after another unless a sandbox can do better."""
        out: list[Instance] = []
        try:
            for i in range(count):
                out.append(self.start(workload, f"{tag}{i}"))
        except BaseException:
            for inst in reversed(out):
                with contextlib.suppress(Exception):
                    inst.stop()
            raise
        return out

    def prepare(self, workload: Workload) -> None:
        """One-time set-up before the first start (load an image into an engine...)."""
        return None

    def close(self) -> None:
        """Undo `prepare` where it started something (a daemon)."""
        return None


def request(workload: Workload, name: str, rootfs: str, etc_dir: str | None, *, share_network: bool,
            privileged: bool | None = None) -> ContainerRequest:
    """The workload as an OCI request: one shape for every sandbox, limits included."""
    return ContainerRequest(
        name=name, args=workload.args, env=workload.env, cwd="/", user="", hostname="sandbox", rootfs=rootfs,
        privileged=workload.privileged if privileged is None else privileged,
        memory_limit_bytes=workload.memory_limit_mib * 2**20 if workload.memory_limit_mib else None,
        pids_limit=workload.pids_limit, share_host_network=share_network, cgroups_path=f"/vmctl/{name}",
        etc_dir=etc_dir,
    )


def wait_first_line(read: Callable[[], str], timeout: float, what: str) -> float:
    """Poll `read()` until it returns a non-empty line; return the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if read().strip():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise VmctlError(f"{what}: no output within {timeout:.0f} s")
        time.sleep(READY_POLL)


def phases_from_marks(t0: float, marks: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Consecutive differences of monotonic stamps, named by the phase that ended at each stamp."""
    out, prev = {}, t0
    for name, t in marks:
        out[name] = round(max(0.0, t - prev), 4)
        prev = t
    return out


# ------------------------------------------------------------------------------------------- runc


class _TimedRuntime(HostRuntime):
    """HostRuntime with a stamp at each step of its start, for the phase breakdown."""

    marks: list[tuple[str, float]]

    def _create(self, name: str, bundle: Path, output: host_container.ContainerOutput, exit_w: int, *,
                stdin: Path | None = None, console: Path | None = None) -> tuple[int, ...]:
        self.marks.append(("prepare", time.monotonic()))
        carriers = super()._create(name, bundle, output, exit_w, stdin=stdin, console=console)
        self.marks.append(("runtime create", time.monotonic()))
        return carriers

    def _start_slirp(self, pid: int, cdir: Path, exit_r: int, state: dict[str, Any], timeout: float) -> int:
        slirp_pid = super()._start_slirp(pid, cdir, exit_r, state, timeout)
        self.marks.append(("network", time.monotonic()))
        return slirp_pid


class RuncInstance(Instance):
    def __init__(self, runtime: _TimedRuntime, c: host_container.HostContainer, cdir: Path,
                 phases: dict[str, float], ports: dict[int, int], *, owner: Runc, workload: Workload,
                 tag: str) -> None:
        self.sandbox = "runc"
        self.sandbox_obj, self.workload, self.tag = owner, workload, tag
        self.runtime, self.container, self.cdir = runtime, c, cdir
        self.phases, self.ports = phases, ports
        self.start_seconds = round(sum(phases.values()), 4)

    def exec(self, argv: Sequence[str], *, timeout: float = 60.0) -> Exec:
        proc = self.runtime.exec(self.container.name, argv, timeout=timeout)
        return Exec(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def cgroup(self) -> Path | None:
        return footprint.memory_cgroup(self.container.pid)

    def pids(self) -> list[int]:
        procs = footprint.cgroup_procs(self.cgroup()) or footprint.descendants(self.container.pid)
        return [*procs, *([self.container.slirp_pid] if self.container.slirp_pid else [])]

    def writable_bytes(self) -> int:
        return footprint.dir_bytes(self.cdir)

    def stop(self) -> None:
        self.runtime.stop(self.container.name, self.cdir, grace=0)
        shutil.rmtree(self.cdir.parent, ignore_errors=True)

    def privileged_sibling(self) -> Instance:
        return self.sandbox_obj.start(self.workload.variant(privileged=True), f"{self.tag}-priv")


class Runc(Sandbox):
    """vmctl's own plain container: runc + an overlay over the cached rootfs + slirp4netns."""

    name, kind = "runc", "container"

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    def unavailable(self) -> str | None:
        if shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return "runc is not installed (`apt-get install runc`)"
        if shutil.which("slirp4netns") is None:
            return "slirp4netns is not installed (`apt-get install slirp4netns`)"
        import os

        return None if os.geteuid() == 0 else "host containers need root here"

    def versions(self) -> dict[str, str]:
        return {"runc": host_container.runc_version()}

    def start(self, workload: Workload, tag: str) -> Instance:
        runtime = _TimedRuntime(self.root)
        name = f"vmctl-cmp-{tag}"
        cdir = Path(tempfile.mkdtemp(prefix="cmp-", dir=_work_dir())) / "c"
        req = request(workload, name, str(workload.image.rootfs), None, share_network=False)
        ports = {p: free_port() for p in workload.ports}
        t0 = time.monotonic()
        runtime.marks = []
        try:
            c = runtime.start(req, cdir, ports=[PortForward(h, p) for p, h in ports.items()])
            runtime.marks.append(("start", time.monotonic()))
            log = c.log
            t_out = wait_first_line(lambda: log.read_text(errors="replace"), 30, f"runc container `{name}`")
        except BaseException:
            with contextlib.suppress(Exception):
                runtime.stop(name, cdir, grace=0)
            shutil.rmtree(cdir.parent, ignore_errors=True)
            raise
        phases = phases_from_marks(t0, [*runtime.marks, ("first output", t_out)])
        return RuncInstance(runtime, c, cdir, phases, ports, owner=self, workload=workload, tag=tag)


def _work_dir() -> Path:
    from vmctl.paths import runtime_root

    path = runtime_root() / "compare"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tool_version(argv: Sequence[str]) -> str:
    try:
        return output(argv, timeout=30).strip().splitlines()[0]
    except (VmctlError, IndexError):
        return "unknown"


def require(condition: bool, message: str) -> None:
    if not condition:
        raise HostError(message)


@dataclass
class Selection:
    """The sandboxes a comparison runs, and why the others were left out."""

    sandboxes: list[Sandbox] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
