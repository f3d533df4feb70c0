"""docker and podman as contenders, through their CLIs. Optional: used when the host has them.

docker: the daemon is started by hand when it is not running (`dockerd --iptables=false --bridge=none`,
no systemd here) and stopped again afterwards; with no bridge, containers run with `--network none`, so
the network benchmark is skipped for docker. podman 4.3: `--runtime runc` (crun fails on this host's
hybrid cgroups) and explicit ulimits, with slirp4netns networking and 127.0.0.1 port publishing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vmctl.compare import footprint
from vmctl.compare.sandboxes import Exec, Instance, Sandbox, Workload, phases_from_marks, tool_version, wait_first_line
from vmctl.container_image import resolve_source, tls_off
from vmctl.errors import CommandFailed, HostError
from vmctl.host_container import bounding_caps
from vmctl.oci_spec import ALL_CAPS
from vmctl.ports import free_port
from vmctl.runner import output, run, spawn

DAEMON_WAIT = 30.0


class EngineInstance(Instance):
    def __init__(self, owner: Engine, cid: str, workload: Workload, tag: str, phases: dict[str, float],
                 ports: dict[int, int]) -> None:
        self.sandbox = owner.name
        self.owner, self.cid, self.workload, self.tag = owner, cid, workload, tag
        self.phases, self.ports = phases, ports
        self.start_seconds = round(sum(phases.values()), 4)

    def _inspect(self, fmt: str) -> str:
        return output([*self.owner.cli, "inspect", "-f", fmt, self.cid], timeout=30).strip()

    def exec(self, argv: Sequence[str], *, timeout: float = 60.0) -> Exec:
        try:
            proc = run([*self.owner.cli, "exec", self.cid, *argv], check=False, timeout=timeout)
        except CommandFailed as e:
            return Exec(124, "", e.message)
        return Exec(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))

    def _pid(self) -> int:
        with contextlib.suppress(HostError, CommandFailed, ValueError):
            return int(self._inspect("{{.State.Pid}}"))
        return 0

    def cgroup(self) -> Path | None:
        pid = self._pid()
        return footprint.memory_cgroup(pid) if pid else None

    def pids(self) -> list[int]:
        pid = self._pid()
        if not pid:
            return []
        procs = footprint.cgroup_procs(self.cgroup()) or footprint.descendants(pid)
        helper = footprint.parent(pid)  # containerd-shim or conmon
        return [*procs, *([helper] if helper and helper > 1 else [])]

    def writable_bytes(self) -> int:
        with contextlib.suppress(HostError, CommandFailed):
            upper = self._inspect("{{.GraphDriver.Data.UpperDir}}")
            if upper.startswith("/"):
                return footprint.dir_bytes(Path(upper))
        return 0

    def stop(self) -> None:
        run([*self.owner.cli, "rm", "-f", self.cid], check=False, timeout=60)

    def privileged_sibling(self) -> Instance:
        return self.owner.start(self.workload.variant(privileged=True), f"{self.tag}-priv")


class Engine(Sandbox):
    kind = "container"
    program = ""
    transport = ""
    ref = "vmctl-compare/workload:latest"

    @property
    def cli(self) -> list[str]:
        return [self.program]

    def unavailable(self) -> str | None:
        if shutil.which(self.program) is None:
            return f"`{self.program}` is not installed"
        return None

    def versions(self) -> dict[str, str]:
        return {self.name: tool_version([*self.cli, "--version"])}

    def prepare(self, workload: Workload) -> None:
        source = resolve_source(workload.image_ref, workload.base_dir)
        run(["skopeo", "copy", "--quiet", *tls_off(source, "--src-tls-verify"), source, f"{self.transport}{self.ref}"],
            timeout=600)

    def run_args(self, workload: Workload, ports: dict[int, int]) -> list[str]:
        args = ["--network", "none"]
        if workload.memory_limit_mib:
            args += ["--memory", f"{workload.memory_limit_mib}m"]
        if workload.pids_limit:
            args += ["--pids-limit", str(workload.pids_limit)]
        if workload.privileged:
            return args + privileged_args()
        return args + ["--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run"]  # as vmctl's own containers

    def start(self, workload: Workload, tag: str) -> Instance:
        ports = {p: free_port() for p in workload.ports} if self.publishes else {}
        argv = [*self.cli, "create", "--name", f"vmctl-cmp-{tag}", *self.run_args(workload, ports)]
        argv += [*(a for e in workload.env for a in ("--env", e)), "--entrypoint", workload.args[0], self.ref,
                 *workload.args[1:]]
        t0 = time.monotonic()
        cid = output(argv, timeout=120).strip().splitlines()[-1]
        t_create = time.monotonic()
        inst = EngineInstance(self, cid, workload, tag, {}, ports)
        try:
            run([*self.cli, "start", cid], timeout=120)
            t_start = time.monotonic()
            t_out = wait_first_line(lambda: output([*self.cli, "logs", cid], timeout=30), 60,
                                    f"{self.name} container {cid[:12]}")
        except BaseException:
            inst.stop()
            raise
        inst.phases = phases_from_marks(t0, [("runtime create", t_create), ("start", t_start),
                                             ("first output", t_out)])
        inst.start_seconds = round(t_out - t0, 4)
        return inst

    publishes = False


def privileged_args() -> list[str]:
    """`--privileged`, or where this host's bounding set lacks capabilities (runc cannot grant them, and
    the engine's `--privileged` asks for all), the closest equivalent: every capability we hold, no
    seccomp or AppArmor profile, no masked /proc paths."""
    missing = [c for c in ALL_CAPS if c not in bounding_caps()]
    if not missing:
        return ["--privileged"]
    args = ["--cap-add", "ALL", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined"]
    return args + [a for c in missing for a in ("--cap-drop", c.removeprefix("CAP_"))]


def dockerd() -> str | None:
    return shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/sbin")


def docker_client() -> str | None:
    """The `docker` client that came with this host's `dockerd` (Debian's docker.io: /usr/sbin/dockerd and
    /usr/bin/docker), before any other on PATH: a newer client in /usr/local/bin talks to an older daemon
    only by negotiation, and reports its own version, not the engine's."""
    daemon = dockerd()
    if daemon is not None:
        sibling = Path(daemon).resolve().parent.parent / "bin" / "docker"
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    return shutil.which("docker")


class Docker(Engine):
    name, transport = "docker", "docker-daemon:"

    def __init__(self) -> None:
        self.daemon: subprocess.Popen[bytes] | None = None
        self.program = docker_client() or "docker"

    def _daemon_up(self) -> bool:
        return run([self.program, "info"], check=False, timeout=30).returncode == 0

    def unavailable(self) -> str | None:
        if docker_client() is None:
            return "`docker` is not installed (`apt-get install docker.io`)"
        if not self._daemon_up() and dockerd() is None:
            return "no docker daemon is running and `dockerd` is not installed (`apt-get install docker.io`)"
        return None

    def versions(self) -> dict[str, str]:
        server = run([self.program, "version", "--format", "{{.Server.Version}}"], check=False, timeout=30)
        engine = server.stdout.decode(errors="replace").strip() if server.returncode == 0 else "?"
        return {**super().versions(), "dockerd": engine}

    def prepare(self, workload: Workload) -> None:
        if not self._daemon_up():
            self.daemon = spawn([dockerd() or "dockerd", "--iptables=false", "--bridge=none"],
                                stderr=subprocess.DEVNULL, new_session=True)
            deadline = time.monotonic() + DAEMON_WAIT
            while not self._daemon_up():
                if time.monotonic() > deadline or self.daemon.poll() is not None:
                    self.close()
                    raise HostError("dockerd did not come up", hint="start it by hand: "
                                    "`dockerd --iptables=false --bridge=none &`")
                time.sleep(0.3)
        super().prepare(workload)

    def close(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.daemon = None


class Podman(Engine):
    name, program, transport = "podman", "podman", "containers-storage:"
    publishes = True

    @property
    def cli(self) -> list[str]:
        return ["podman", "--runtime", "runc"]

    def run_args(self, workload: Workload, ports: dict[int, int]) -> list[str]:
        args = super().run_args(workload, ports)[2:]  # podman has a user-mode network of its own
        args += ["--network", "slirp4netns", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
        for container_port, host_port in ports.items():
            args += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
        return args
