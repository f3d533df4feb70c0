"""Services: compose-shaped containers, in a microVM (crun in the guest) or on the host (runc).

Both isolations share one mechanism: `container_request` turns a service and its image into one
`oci_spec.ContainerRequest` (the same generator on both sides, so a comparison differs only by the VM
boundary), and a `Runtime` (`GuestRuntime` in guest_container.py, `HostServiceRuntime` here over
host_container.HostRuntime) starts it, reports on it, runs `exec`, shows its log and stops it.

`start_services` starts services in `depends_on` order, waits for each to run (or to be healthy when
it has a healthcheck) and records them in `EnvState.services`; `rows` is the one row model for
`ps` and `ps --json`. `stop_services` and `start_stopped` (`vmctl stop`/`start`/`restart`) end a container
but keep it (`Runtime.halt`), and run it again (`Runtime.resume`), with the machines left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from vmctl import build, host_supervisor, remote
from vmctl import ports as host_ports
from vmctl.compose_values import MAX_LOG_FILES, Restart
from vmctl.container_image import PreparedImage, PullPolicy, cached_image, prepare_image
from vmctl.errors import CommandFailed, GuestError, UsageError, VmctlError, Where
from vmctl.guest_container import ExecOptions, GuestRuntime, Live, host_init, image_serial, volume_tag
from vmctl.hooks import HOOK_SECONDS, Hook
from vmctl.host_container import STOP_GRACE_SECONDS, HostRuntime, PortForward, reap
from vmctl.network import plan as netplan
from vmctl.network.host import EnvNetwork
from vmctl.oci_spec import BindMount, ContainerRequest, FileData, merge_command, merge_env
from vmctl.progress import Progress
from vmctl.spec import Condition, Environment, HealthcheckSpec, Isolation, ServiceSpec, topological_services
from vmctl.ssh import Guest
from vmctl.state import EnvDir, EnvState

HOST = "host"  # the runtime key of `isolation: container` services
LOG_TAIL_ON_FAILURE = 12
POLL_SECONDS = 0.2
UP_STATES = frozenset({"starting", "running", "restarting", "unknown"})  # what `ps` without `-a` lists


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"


@dataclass
class ServiceRow:
    """One service for `ps` (the table and `--json` alike)."""

    name: str
    machine: str | None
    isolation: str
    state: str
    image: str
    ports: list[PublishedPort]
    started_seconds: float | None
    exit_code: int | None


class Runtime(Protocol):
    """What runs containers: crun in one guest, or runc on the host. Methods take the service name."""

    isolation: str
    share_network: bool
    stop_grace: float  # seconds from the stop signal to SIGKILL, when the service sets no `stop_grace_period`

    def container_name(self, service: str) -> str: ...
    def rootfs(self, name: str, image: PreparedImage) -> str: ...
    def etc_dir(self, name: str) -> str | None: ...
    def init_path(self, name: str) -> str: ...
    def volume_source(self, source: Path) -> str: ...
    def start(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage,
              ports: Sequence[PublishedPort]) -> None: ...
    def resume(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage,
               ports: Sequence[PublishedPort]) -> None: ...
    def attach(self, service: str, req: ContainerRequest, one: ServiceSpec, image: PreparedImage) -> int: ...
    def live(self, name: str) -> Live: ...
    def exec(self, name: str, argv: Sequence[str], *, capture: bool = True, timeout: float | None = None,
             options: ExecOptions | None = None) -> tuple[int, bytes]: ...
    def logs(self, name: str, out: BinaryIO, *, tail: int | None, follow: bool, timestamps: bool = False) -> None: ...
    def stop(self, name: str, grace: float = ..., signal: str = ...) -> int | None: ...
    def halt(self, name: str, grace: float = ..., signal: str = ...) -> int | None: ...


class ServiceFailed(GuestError):
    """A service did not start, exited with an error, or stayed unhealthy."""


# ------------------------------------------------------------------------------------------------
# the host runtime


class HostServiceRuntime:
    """`isolation: container`: runc on the host (host_container.HostRuntime), one folder per service."""

    isolation = "container"
    share_network = False
    stop_grace = STOP_GRACE_SECONDS

    def __init__(self, environment: str, services_dir: Path, names: Mapping[str, str] | None = None,
                 network: tuple[EnvNetwork, netplan.NetworkPlan] | None = None, awaited: frozenset[str] = frozenset(),
                 ) -> None:
        """`names`: service -> its `container_name`, where the file sets one. `awaited`: services whose
        exit code a dependent waits for (`service_completed_successfully`)."""
        self.awaited = awaited
        self.environment = environment
        self.services_dir = services_dir
        self.names_ = dict(names or {})
        self.network = network  # where the containers join the environment network
        self.host = HostRuntime()

    def container_name(self, service: str) -> str:
        # `.` never occurs in service names: no clash between environments
        return self.names_.get(service) or f"{self.environment}.{service}"

    def init_path(self, name: str) -> str:
        return str(host_init())

    def cdir(self, name: str) -> Path:
        return self.services_dir / name

    def rootfs(self, name: str, image: PreparedImage) -> str:
        return str(image.rootfs)  # the overlay's lower layer; HostRuntime mounts the overlay

    def etc_dir(self, name: str) -> str | None:
        return None  # HostRuntime writes and binds them itself

    def volume_source(self, source: Path) -> str:
        return str(source)

    def start(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage,
              ports: Sequence[PublishedPort]) -> None:
        """Without a restart policy runc runs the container by itself; with one, vmctl's host supervisor
        (host_supervisor.py) starts it and restarts it after it exits, outliving this command. A service
        a dependent waits to complete is supervised too: only the supervisor learns its exit code."""
        for log in ("log", "log.t"):
            host_supervisor.files(self.cdir(svc.name))[log].unlink(missing_ok=True)
        self._launch(req, svc, ports)

    def resume(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage,
               ports: Sequence[PublishedPort]) -> None:
        """Start a halted (or exited) container again over its folder: its writable layer and log stay."""
        self.host.halt(req.name, self.cdir(svc.name), grace=0)  # one that exited by itself is still runc's
        self._launch(req, svc, ports)

    def _launch(self, req: ContainerRequest, svc: ServiceSpec, ports: Sequence[PublishedPort]) -> None:
        forwards = tuple(PortForward(p.host_port, p.container_port, p.host_ip, p.proto) for p in ports)
        cdir = self.cdir(svc.name)
        paths = host_supervisor.files(cdir)
        paths["status.json"].unlink(missing_ok=True)  # a stopped one's `exited`
        join = self._joiner(svc.name)
        if svc.restart is Restart.NO and svc.name not in self.awaited:
            self.host.start(req, cdir, ports=forwards, log=paths["log"], stamped=paths["log.t"], on_created=join)
            return
        host_supervisor.launch(host_supervisor.Plan(req, cdir, forwards, svc.restart, svc.restart_retries,
                                                    self.host.runc_root, join))

    def _joiner(self, name: str) -> host_supervisor.NetworkJoin | None:
        """Adds the container's NICs on the environment network between `runc create` and `start`
        (picklable: the host supervisor does it again at each restart)."""
        if self.network is None or (member := self.network[1].member(name)) is None:
            return None
        host, plan = self.network
        return host_supervisor.NetworkJoin(host, member, plan)

    def attach(self, service: str, req: ContainerRequest, one: ServiceSpec, image: PreparedImage) -> int:
        """`vmctl run`'s one-off `one` of `service` in the foreground; its exit code. Its stdin and output
        are this process's (its terminal, relayed, with `req.terminal`), and this process is its child
        subreaper, so `waitpid` sees its init as the host supervisor's does. Where the service's container
        runs: in its network namespace (no NIC of its own; the namespace's sysctls stay the service's).
        Where it does not: in the service's place on the environment network, its NICs and addresses for
        as long as the one-off runs."""
        st = self.host.state(self.container_name(service))
        join = None
        if st is not None and st.pid > 0 and st.status == "running":
            req = dataclasses.replace(req, netns_path=f"/proc/{st.pid}/ns/net", sysctls=without_net(req.sysctls))
        else:
            join = self._joiner(service)
        host_supervisor.become_subreaper()
        log = host_supervisor.files(self.cdir(one.name))["log"]  # runc's own words, should it fail
        log.unlink(missing_ok=True)
        container = self.host.start(req, self.cdir(one.name), log=log, on_created=join, attached=True)
        try:
            return host_supervisor.wait_exit(container.pid)
        finally:
            for pid in container.output_pids:  # the terminal's relay: its last output reaches ours first
                reap(pid, wait=2.0)
            log.unlink(missing_ok=True)

    def live(self, name: str) -> Live:
        status = host_supervisor.read_status(self.cdir(name))
        if status and (host_supervisor.is_supervised(self.cdir(name)) or status.get("state") == "exited"):
            return Live(str(status.get("state", "starting")), status.get("exit_code"), int(status.get("restarts", 0)))
        st = self.host.state(self.container_name(name))
        if st is None:
            return Live("absent")
        return Live({"created": "starting", "stopped": "exited"}.get(st.status, st.status))

    def exec(self, name: str, argv: Sequence[str], *, capture: bool = True, timeout: float | None = None,
             options: ExecOptions | None = None) -> tuple[int, bytes]:
        options = options or ExecOptions()
        try:
            proc = self.host.exec(self.container_name(name), argv, env=options.env, user=options.user or None,
                                  cwd=options.cwd or None, capture=capture, timeout=timeout, tty=options.tty)
        except CommandFailed as e:  # timed out
            return 124, e.message.encode()
        return proc.returncode, (proc.stdout or b"") + (proc.stderr or b"")

    def logs(self, name: str, out: BinaryIO, *, tail: int | None, follow: bool, timestamps: bool = False) -> None:
        log = host_supervisor.files(self.cdir(name))["log.t" if timestamps else "log"]
        if timestamps and not log.exists():
            raise VmctlError(f"service `{name}` has no timestamped log", hint=f"`vmctl restart {name}` starts one")
        copy_file(log, out, tail=tail, follow=follow)

    def stop(self, name: str, grace: float = 5.0, signal: str = "SIGTERM") -> int | None:
        host_supervisor.end(self.cdir(name))  # first, so that it does not restart what is being stopped
        self.host.stop(self.container_name(name), self.cdir(name), grace=grace, signal=signal)
        for key in ("log", "log.t"):
            log = host_supervisor.files(self.cdir(name))[key]
            for path in (*rotated(log), log):
                path.unlink(missing_ok=True)
        return None

    def halt(self, name: str, grace: float = 5.0, signal: str = "SIGTERM") -> int | None:
        """End the container but keep its folder and log (`vmctl stop`); runc's detached mode gives no exit code."""
        host_supervisor.end(self.cdir(name))  # first, so that it does not restart what is being stopped
        self.host.halt(self.container_name(name), self.cdir(name), grace=grace, signal=signal)
        host_supervisor.mark_stopped(self.cdir(name))
        return None

    def names(self) -> list[str]:
        """Services of this environment that runc knows, or that left a folder behind."""
        prefix = f"{self.environment}."
        known = {p.name[len(prefix):] for p in self.host.runc_root.glob(f"{prefix}*")} if \
            self.host.runc_root.is_dir() else set()
        known |= {p.name for p in self.services_dir.iterdir() if p.is_dir()} if self.services_dir.is_dir() else set()
        return sorted(known)


# ------------------------------------------------------------------------------------------------
# one request for both sides


def container_request(svc: ServiceSpec, image: PreparedImage, runtime: Runtime,
                      plan: netplan.NetworkPlan | None = None) -> ContainerRequest:
    """The service as an OCI request: compose's command/entrypoint/env merging over the image config,
    and its place on the environment network (nameservers, its own address) when there is one."""
    cfg = image.config
    member = plan.member(svc.machine or svc.name) if plan else None  # a host container is a member of its own
    return ContainerRequest(
        name=runtime.container_name(svc.name),
        args=merge_command(svc.entrypoint, svc.command, cfg),
        env=merge_env(cfg.env, [f"{k}={v}" for k, v in svc.environment]),
        cwd=svc.working_dir or cfg.working_dir or "/",
        user=numeric_user(svc.user or cfg.user, image.rootfs, svc.name),
        hostname=svc.hostname or svc.name,
        rootfs=runtime.rootfs(svc.name, image),
        readonly_rootfs=svc.read_only,
        mounts=_mounts(svc, runtime),
        privileged=svc.privileged,
        share_host_network=runtime.share_network,
        cgroups_path=f"/vmctl/{runtime.container_name(svc.name)}",
        etc_dir=runtime.etc_dir(svc.name),
        extra_hosts=(*svc.extra_hosts, *_linked(svc, plan)),
        dns=_nameservers(svc, plan, member),
        dns_search=svc.dns_search,
        dns_options=svc.dns_options,
        domainname=svc.domainname,
        additional_gids=numeric_groups(svc.group_add, image.rootfs, svc.name),
        shm_bytes=(svc.shm_mib or 64) << 20,
        stdin_open=svc.stdin_open,
        terminal=svc.tty,
        address=member.nics[0].address if member and member.nics else None,
        cap_add=svc.cap_add,
        cap_drop=svc.cap_drop,
        no_new_privileges=svc.no_new_privileges,
        rlimits=tuple((u.name, u.soft, u.hard) for u in svc.ulimits),
        sysctls=without_net(svc.sysctls) if runtime.share_network else svc.sysctls,
        tmpfs=tuple((t.target, t.options) for t in svc.tmpfs),
        memory_limit_bytes=_bytes(svc.limits.memory_mib),
        memory_reservation_bytes=_bytes(svc.limits.memory_reservation_mib),
        cpus=svc.limits.cpus,
        pids_limit=svc.limits.pids,
        cpu_period=svc.limits.cpu_period_us,
        cpu_shares=svc.limits.cpu_shares,
        cpuset=svc.limits.cpuset_text,
        oom_score_adj=svc.oom_score_adj,
        log_rotation=(svc.log_rotation.max_bytes, svc.log_rotation.keep) if svc.log_rotation else None,
        annotations=(*svc.labels, *svc.annotations),
        init_path=runtime.init_path(svc.name) if svc.init else None,
        files=_files(svc),
    )


def without_net(sysctls: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The sysctls a container may set when its network namespace is another's (its guest's, or the
    service's it runs beside): net.* ones would change that one's."""
    return tuple((k, v) for k, v in sysctls if not k.startswith("net."))


def _files(svc: ServiceSpec) -> tuple[FileData, ...]:
    """Its secrets and configs, read now (a file is read at each start, as compose binds the file)."""
    out = []
    for m in svc.files:
        try:
            data = m.data()
        except OSError as e:
            raise UsageError(f"cannot read {m.kind[:-1]} `{m.source}` of `{svc.name}` ({m.file}): {e.strerror}",
                             hint=f"check the file under top-level `{m.kind}:`") from None
        out.append(FileData(m.target, data, m.mode, m.uid, m.gid))
    return tuple(out)


def _nameservers(svc: ServiceSpec, plan: netplan.NetworkPlan | None, member: netplan.Member | None) -> tuple[str, ...]:
    """The member's resolver first (the environment's names), then the service's `dns` in place of
    user-mode networking's (names outside the environment)."""
    servers = plan.nameservers(member) if plan and member else (netplan.USER_NET_DNS,)
    if not svc.dns:
        return servers
    return (*(s for s in servers if s != netplan.USER_NET_DNS), *svc.dns)


def _linked(svc: ServiceSpec, plan: netplan.NetworkPlan | None) -> list[tuple[str, str]]:
    """compose's `links`: (alias, the linked service's address on a network both are on)."""
    if plan is None or not svc.links:
        return []
    mine = plan.member(svc.machine or svc.name)
    networks = [n.network for n in mine.nics] if mine else []
    out = []
    for service, alias in svc.links:
        # (the member that answers to the service's name: its own, or its machine)
        other = next((m for m in plan.members if any(service in n.names for n in m.nics)), None)
        nic = next((n for net in networks if other and (n := other.nic(net))), None)
        if nic is not None:
            out.append((alias, nic.address))
    return out


def _bytes(mib: int | None) -> int | None:
    return None if mib is None else mib << 20


def numeric_user(user: str, rootfs: Path, service: str) -> str:
    """`USER[:GROUP]` as `uid[:gid]`: numbers as they are, names looked up in the image's /etc/passwd and
    /etc/group (a user without a group gets its passwd entry's primary group, as docker does)."""
    if not user:
        return ""
    name, _, group = user.partition(":")
    passwd = _id_table(rootfs / "etc" / "passwd")
    if name.isdigit():
        uid, gid = name, next((e[3] for e in passwd.values() if e[2] == name), name)
    elif name in passwd:
        uid, gid = passwd[name][2], passwd[name][3]
    else:
        raise UsageError(f"service `{service}`: user `{name}` is not in the image's /etc/passwd",
                         hint=f"use a numeric uid, or one of: {', '.join(sorted(passwd)) or 'none'}")
    if group:
        gid = str(_gid(group, _id_table(rootfs / "etc" / "group"), service))
    return f"{uid}:{gid}"


def numeric_groups(groups: Sequence[str], rootfs: Path, service: str) -> tuple[int, ...]:
    """`group_add`: names looked up in the image's /etc/group, numbers as they are."""
    table = _id_table(rootfs / "etc" / "group") if groups else {}
    return tuple(_gid(g, table, service) for g in groups)


def _gid(group: str, table: Mapping[str, list[str]], service: str) -> int:
    if group.isdigit():
        return int(group)
    if group in table:
        return int(table[group][2])
    raise UsageError(f"service `{service}`: group `{group}` is not in the image's /etc/group",
                     hint=f"use a numeric gid, or one of: {', '.join(sorted(table)) or 'none'}")


def _id_table(file: Path) -> dict[str, list[str]]:
    """name -> the `:`-separated fields of /etc/passwd or /etc/group (a missing file is empty)."""
    try:
        lines = file.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    entries = [line.split(":") for line in lines if line and not line.startswith("#")]
    return {e[0]: e for e in entries if len(e) >= 4 and e[2].isdigit() and e[3 if file.name == "passwd" else 2]
            .isdigit()}


def _mounts(svc: ServiceSpec, runtime: Runtime) -> tuple[BindMount, ...]:
    """Host folders: bound directly by runc on the host; in a guest, bound from its 9p mount of the folder."""
    return tuple(BindMount(runtime.volume_source(v.source), v.target, v.readonly) for v in svc.volumes)


def prepare_images(env: Environment, services: Sequence[ServiceSpec], progress: Progress,
                   policy: PullPolicy | None = None, *, rebuild: bool = False) -> dict[str, PreparedImage]:
    """Each distinct image once: service name -> its prepared image (rootfs + ext4 disk, cached by digest).
    Each service's `pull_policy` says when its registry is asked, unless `policy` (a `vmctl pull`) overrides it.
    A service with `build:` gets the image its builder makes (vmctl/build.py), built again with `rebuild`."""
    def use(s: ServiceSpec) -> tuple[str, PullPolicy]:
        return (f"build:{s.replica_of or s.name}" if s.build else s.image), policy or s.pull_policy

    prepared: dict[tuple[str, PullPolicy], PreparedImage] = {}
    for s in sorted(services, key=use):
        if use(s) not in prepared:
            prepared[use(s)] = _prepare_image(env, s, use(s)[1], progress, rebuild)
    return {s.name: prepared[use(s)] for s in services}


def with_image_healthchecks(env: Environment, images: Mapping[str, PreparedImage]) -> Environment:
    """Each service that sets no `healthcheck:` runs its image's HEALTHCHECK (compose's rule): `up`,
    `start` and `restart` all wait for it."""
    def own(svc: ServiceSpec) -> ServiceSpec:
        image = images.get(svc.name)
        hc = image.config.healthcheck if image is not None and svc.healthcheck_from_image else None
        if hc is None or svc.healthcheck is not None:
            return svc
        return dataclasses.replace(svc, healthcheck=HealthcheckSpec(hc.test, hc.interval, hc.timeout, hc.retries,
                                                                    hc.start_period, hc.start_interval))

    return dataclasses.replace(env, services=tuple(own(s) for s in env.services))


def refuse_unhealthy_dependencies(env: Environment) -> None:
    """A `service_healthy` dependency on a service that has no healthcheck, even from its image, is
    refused before `up` creates anything: the file could not say, its image can."""
    for svc in env.services:
        for dep in svc.dependencies:
            target = env.service(dep.service)
            if dep.condition is Condition.HEALTHY and target is not None and target.healthcheck is None:
                key = f"services.{svc.replica_of or svc.name}.depends_on"
                where = env.place(f"{key}.{target.replica_of or target.name}") or env.place(key)
                image = f"the image built from `{target.build.context}`" if target.build else \
                    f"its image `{target.image}`"
                raise UsageError(f"`{dep.service}` has no healthcheck (none in the file, and {image} has no "
                                 "HEALTHCHECK), so it never becomes healthy",
                                 where=where or Where(str(env.file), None, key),
                                 hint=f"give `{dep.service}` a `healthcheck`, or use `condition: service_started`")


def _prepare_image(env: Environment, svc: ServiceSpec, policy: PullPolicy, progress: Progress,
                   rebuild: bool) -> PreparedImage:
    label = f"image {svc.image}"
    progress.working(label, "preparing")
    key = f"services.{svc.replica_of or svc.name}.{'build' if svc.build else 'image'}"
    try:
        ref = svc.image
        if svc.build is not None:
            ref = str(build.ensure(svc.build, build.tag_for(svc.image), force=rebuild or policy is PullPolicy.BUILD,
                                   progress=progress.callback(label)))
            policy = PullPolicy.MISSING  # (an archive: read in place)
        image = prepare_image(ref, env.base_dir, policy=policy, progress=progress.callback(label))
    except VmctlError as e:  # the image is the service's: point at the line that names it
        e.where = e.where or env.place(key) or Where(str(env.file), None, key)
        raise
    progress.done(label, image.digest[:19])
    return image


def volume_seeds(services: Sequence[ServiceSpec], images: Mapping[str, PreparedImage]
                 ) -> list[tuple[Path, Path, str]]:
    """(named volume's folder, image rootfs, mount point) for copy-up into a new volume: the first
    service (in the file's order) that mounts the volume gives it its content."""
    return [(v.source, images[s.name].rootfs, v.target)
            for s in services if s.name in images for v in s.volumes if v.volume is not None]


def image_disks(env: Environment, machine: str, images: Mapping[str, PreparedImage]) -> list[tuple[str, Path]]:
    """(serial, ext4 path) of each distinct image a machine's services use: attached read-only."""
    disks = {image_serial(images[s.name].digest): images[s.name].disk
             for s in env.services_on(machine) if s.name in images}
    return sorted(disks.items())


def machine_volumes(env: Environment, machine: str) -> list[tuple[str, Path, bool]]:
    """(9p tag, host folder, read-only) of each distinct folder a machine's services mount, sorted by tag:
    one virtio-9p device each, read-only unless some service mounts the folder `:rw`."""
    readonly: dict[Path, bool] = {}
    for s in env.services_on(machine):
        for v in s.volumes:
            readonly[v.source] = readonly.get(v.source, True) and v.readonly
    return sorted((volume_tag(src), src, ro) for src, ro in readonly.items())


# ------------------------------------------------------------------------------------------------
# runtimes for one command


class Runtimes(contextlib.AbstractContextManager["Runtimes"]):
    """The runtimes a command needs, opened on first use (one SSH connection per machine)."""

    def __init__(self, env: Environment, envdir: EnvDir, state: EnvState) -> None:
        self.env, self.envdir, self.state = env, envdir, state
        self.plan = netplan.plan(env, state.network) if state.network else None
        self._open: dict[str, Runtime] = {}
        self._guests: list[Guest] = []

    def for_service(self, svc: ServiceSpec) -> Runtime:
        key = HOST if svc.isolation is Isolation.CONTAINER else svc.machine or svc.name
        if key not in self._open:
            self._open[key] = self.host() if key == HOST else self.guest(key)
        return self._open[key]

    def host(self) -> HostServiceRuntime:
        network = (EnvNetwork(str(self.envdir.path)), self.plan) if self.plan else None
        awaited = frozenset(d.service for s in self.env.services for d in s.dependencies
                            if d.condition is Condition.COMPLETED)
        return HostServiceRuntime(self.env.name, self.envdir.path / "services", container_names(self.env), network,
                                  awaited)

    def guest(self, machine: str, connect_timeout: float = 20.0) -> GuestRuntime:
        """The runtime of one machine's guest, over a new SSH connection (closed with this object)."""
        ms = self.state.machines.get(machine)
        if ms is None or ms.hostkey is None:
            raise VmctlError(f"machine `{machine}` is not running", hint="start it with `vmctl up`")
        host = self.env.host(ms.host) if ms.host else None
        guest = Guest(name=machine, port=ms.ssh_port, hostkey=ms.hostkey, key_file=self.envdir.key_file,
                      via=remote.jump(host))
        self._guests.append(guest.connect(timeout=connect_timeout))
        return GuestRuntime(guest, {tag: ro for tag, _, ro in machine_volumes(self.env, machine)},
                            container_names(self.env))

    def __exit__(self, *exc: object) -> None:
        for guest in self._guests:
            guest.close()


def container_names(env: Environment) -> dict[str, str]:
    return {s.name: s.container_name for s in env.services if s.container_name}


# ------------------------------------------------------------------------------------------------
# starting


def start_services(env: Environment, envdir: EnvDir, state: EnvState, images: Mapping[str, PreparedImage],
                   progress: Progress, *, timeout: float, wait: bool = True, recreate: bool = False) -> None:
    """Start the services in `images` in `depends_on` order. If one fails (or Ctrl-C), the ones this
    call started are stopped again, in reverse order, while their connections are still open. With
    `recreate` (`up --force-recreate`), a running service's container is stopped and made anew."""
    deadline = time.monotonic() + timeout
    healthy: set[str] = set()  # checked healthy by this call already
    with Runtimes(env, envdir, state) as runtimes, contextlib.ExitStack() as rollback:
        for svc in topological_services(env):
            if svc.name not in images:
                continue
            rt = runtimes.for_service(svc)
            if svc.name in state.services and rt.live(svc.name).state == "running":
                if not recreate:
                    progress.done(svc.name, "already running")
                    continue
                pre_stop(env, state, svc, rt, progress)
                progress.working(svc.name, f"recreating: stopping ({svc.stop_signal})")
                rt.stop(svc.name, grace_of(svc, rt), svc.stop_signal)
            wait_for_dependencies(env, svc, runtimes, progress, deadline, healthy)
            rollback.callback(_forget, envdir, state, svc.name)
            _start_one(svc, images[svc.name], rt, state, envdir, progress, rollback, runtimes.plan)
            post_start(env, state, svc, rt, progress, deadline)
            if wait and wait_ready(svc, rt, progress, deadline):
                healthy.add(svc.name)
        rollback.pop_all()


def _start_one(svc: ServiceSpec, image: PreparedImage, rt: Runtime, state: EnvState, envdir: EnvDir,
               progress: Progress, rollback: contextlib.ExitStack, plan: netplan.NetworkPlan | None = None) -> None:
    where = f"in `{svc.machine}`" if rt.isolation == "microvm" else "on the host (runc)"
    progress.working(svc.name, f"starting {where}")
    published = published_ports(svc, state)
    req = container_request(svc, image, rt, plan)
    state.services[svc.name] = {
        "name": svc.name, "isolation": svc.isolation.value, "machine": svc.machine, "image": svc.image,
        "digest": image.digest, "container": req.name, "ports": [asdict(p) for p in published],
    }
    envdir.save(state)  # before the start: `down` finds it even if this process dies
    rollback.callback(_stop_quietly, rt, svc.name)
    _timed(rt.start, req, svc, image, published, state, envdir)


def _timed(start: Callable[[ContainerRequest, ServiceSpec, PreparedImage, Sequence[PublishedPort]], None],
           req: ContainerRequest, svc: ServiceSpec, image: PreparedImage, ports: Sequence[PublishedPort],
           state: EnvState, envdir: EnvDir) -> None:
    """`Runtime.start` or `resume`, its time recorded for `ps` and the figures."""
    t0 = time.monotonic()
    start(req, svc, image, ports)
    state.services[svc.name].update(started_at=time.time(), start_seconds=round(time.monotonic() - t0, 4))
    state.services[svc.name].pop("stopped_at", None)
    envdir.save(state)


def _forget(envdir: EnvDir, state: EnvState, name: str) -> None:
    state.services.pop(name, None)
    with contextlib.suppress(OSError):
        envdir.save(state)


def _stop_quietly(rt: Runtime, name: str) -> None:
    with contextlib.suppress(Exception):
        rt.stop(name, 0)


def published_ports(svc: ServiceSpec, state: EnvState) -> list[PublishedPort]:
    """Host ports of a service: its machine's forwards (microVM), or ports resolved now (host)."""
    if svc.isolation is Isolation.CONTAINER:
        return [PublishedPort(f.host_ip, f.host_port, f.guest_port, f.proto)
                for f in host_ports.resolve(svc.name, svc.ports)]
    ms = state.machines.get(svc.machine or svc.name)
    wanted = {(p.target, p.proto) for p in svc.ports}
    return [PublishedPort(f.host_ip, f.host_port, f.guest_port, f.proto)
            for f in (ms.forwards if ms else []) if (f.guest_port, f.proto) in wanted]


# ------------------------------------------------------------------------------------------------
# waiting: running, or healthy


def wait_ready(svc: ServiceSpec, rt: Runtime, progress: Progress, deadline: float) -> bool:
    """Return when `svc` runs (or has finished with exit code 0), or is healthy when it has a healthcheck;
    whether it was checked healthy."""
    t0 = time.monotonic()
    live = _wait_started(svc, rt, deadline)
    if svc.healthcheck is not None and live.state == "running":
        _wait_healthy(svc, rt, progress, deadline)
        progress.done(svc.name, f"healthy in {time.monotonic() - t0:.2f}s")
        return True
    if live.state == "exited":
        progress.done(svc.name, f"exited 0 in {time.monotonic() - t0:.2f}s")
    elif live.state == "restarting":
        progress.warn(svc.name, f"restarting (exit code {live.exit_code}, restart: {svc.restart})")
    else:
        progress.done(svc.name, f"running in {time.monotonic() - t0:.2f}s")
    return False


def wait_for_dependencies(env: Environment, svc: ServiceSpec, runtimes: Runtimes, progress: Progress,
                          deadline: float, healthy: set[str]) -> None:
    """Before `svc` starts: each dependency running, healthy, or exited with code 0, as its
    `condition` says. One that does not run fails the start (a `required: false` one is skipped)."""
    for dep in svc.dependencies:
        target = env.service(dep.service)
        assert target is not None  # (spec checked it)
        if target.name not in runtimes.state.services:
            if dep.required:
                raise ServiceFailed(f"service `{svc.name}` depends on `{target.name}`, which is not running",
                                    hint=f"start it too (`vmctl up {target.name} {svc.name}`)")
            progress.warn(svc.name, f"optional dependency `{target.name}` is not running: starting without it")
            continue
        rt = runtimes.for_service(target)
        if dep.condition is Condition.COMPLETED:
            progress.working(svc.name, f"waiting for `{target.name}` to complete")
            _wait_completed(target, rt, deadline)
        elif dep.condition is Condition.HEALTHY and target.name not in healthy:
            progress.working(svc.name, f"waiting for `{target.name}` to be healthy")
            _wait_started(target, rt, deadline)
            _wait_healthy(target, rt, progress, deadline)
            healthy.add(target.name)
        else:
            _wait_started(target, rt, deadline)


def _wait_completed(svc: ServiceSpec, rt: Runtime, deadline: float) -> None:
    while True:
        live = rt.live(svc.name)
        if live.state == "exited":
            if live.exit_code != 0:
                _fail(svc, rt, f"exited with code {live.exit_code}, and a dependent needs it to complete successfully")
            return
        if live.state == "absent":
            _fail(svc, rt, "disappeared before it completed")
        if time.monotonic() > deadline:
            _fail(svc, rt, f"did not complete in time (state `{live.state}`)")
        time.sleep(POLL_SECONDS)


def _wait_started(svc: ServiceSpec, rt: Runtime, deadline: float) -> Live:
    while True:
        live = rt.live(svc.name)
        if live.state == "exited" and live.exit_code not in (0, None):
            _fail(svc, rt, f"exited with code {live.exit_code}")
        if live.state in ("running", "exited", "restarting"):
            return live
        if live.state == "absent":
            _fail(svc, rt, "disappeared right after it was started")
        if time.monotonic() > deadline:
            _fail(svc, rt, f"did not start in time (state `{live.state}`)")
        time.sleep(POLL_SECONDS)


def _wait_healthy(svc: ServiceSpec, rt: Runtime, progress: Progress, deadline: float) -> None:
    hc = svc.healthcheck
    assert hc is not None
    grace_until = time.monotonic() + hc.start_period
    failures = 0
    while True:
        code, out = rt.exec(svc.name, hc.test, capture=True, timeout=hc.timeout)
        if code == 0:
            return
        live = rt.live(svc.name)
        if live.state not in ("running", "starting", "restarting"):
            _fail(svc, rt, f"stopped (state `{live.state}`, exit code {live.exit_code}) before it was healthy")
        if time.monotonic() >= grace_until:
            failures += 1
            progress.working(svc.name, f"waiting to be healthy ({failures}/{hc.retries} checks failed)")
        detail = out.decode(errors="replace").strip()[-200:] or f"exit code {code}"
        if failures >= hc.retries:
            _fail(svc, rt, f"is unhealthy: its healthcheck failed {failures} times in a row (last: {detail})")
        early = hc.start_interval is not None and time.monotonic() < grace_until
        pause = hc.start_interval if early and hc.start_interval is not None else hc.interval
        if time.monotonic() + pause > deadline:
            _fail(svc, rt, f"was not healthy before the timeout (last check: {detail})")
        time.sleep(pause)


# ------------------------------------------------------------------------------------------------
# lifecycle hooks (vmctl/hooks.py)


def post_start(env: Environment, state: EnvState, svc: ServiceSpec, rt: Runtime, progress: Progress,
               deadline: float) -> None:
    """The service's `post_start` hooks, once its container runs; one that fails fails the start."""
    if not svc.post_start:
        return
    if _wait_started(svc, rt, deadline).state != "running":
        _fail(svc, rt, "ended before its `post_start` hooks could run in it")
    for hook in svc.post_start:
        code, detail = _run_hook(env, state, svc, rt, hook, "post_start", progress)
        if code != 0:
            _fail(svc, rt, f"failed its `post_start` hook `{shlex.join(hook.command)}` (exit code {code}: {detail})")


def pre_stop(env: Environment, state: EnvState, svc: ServiceSpec | None, rt: Runtime, progress: Progress) -> None:
    """The service's `pre_stop` hooks, while its container still runs; one that fails is only a warning."""
    if svc is None or not svc.pre_stop or rt.live(svc.name).state != "running":
        return
    for hook in svc.pre_stop:
        try:
            code, detail = _run_hook(env, state, svc, rt, hook, "pre_stop", progress)
        except VmctlError as e:  # `down` must go on: a hook that cannot even run is said, not raised
            code, detail = -1, e.message
        if code != 0:
            progress.warn(svc.name, f"its `pre_stop` hook `{shlex.join(hook.command)}` failed (exit code {code}: "
                                    f"{detail}); stopping it anyway")


def _run_hook(env: Environment, state: EnvState, svc: ServiceSpec, rt: Runtime, hook: Hook, which: str,
              progress: Progress) -> tuple[int, str]:
    progress.working(svc.name, f"{which}: {shlex.join(hook.command)}")
    options = ExecOptions(_exec_user(env, state, svc, hook.user), hook.working_dir,
                          tuple(f"{k}={v}" for k, v in hook.environment))
    code, out = rt.exec(svc.name, hook.command, capture=True, timeout=HOOK_SECONDS, options=options)
    return code, out.decode(errors="replace").strip()[-200:] or "no output"


def _fail(svc: ServiceSpec, rt: Runtime, what: str) -> None:
    raise ServiceFailed(f"service `{svc.name}` {what}\n{last_log_lines(svc.name, rt)}",
                        hint=f"the environment was rolled back; check `{svc.name}`'s command and image")


def last_log_lines(name: str, rt: Runtime, count: int = LOG_TAIL_ON_FAILURE) -> str:
    buf = io.BytesIO()
    try:
        rt.logs(name, cast(BinaryIO, PrefixWriter(buf, name)), tail=count, follow=False)
    except Exception as e:  # the log is a courtesy: never hide the real failure behind it
        return f"  (its log could not be read: {e})"
    text = buf.getvalue().decode(errors="replace").rstrip()
    return f"  last log lines:\n{text}" if text else "  (its log is empty)"


# ------------------------------------------------------------------------------------------------
# ps, exec, logs, stop


def select_services(env: Environment, names: Sequence[str]) -> list[ServiceSpec]:
    """The named services (every one when none is named) in `depends_on` order; an unknown name is a
    usage error that lists the known ones."""
    unknown = [n for n in names if env.service(n) is None]
    if unknown:
        raise UsageError(f"unknown service `{unknown[0]}`",
                         hint=f"services: {', '.join(s.name for s in env.services) or 'none'}")
    return [s for s in topological_services(env) if not names or s.name in names or s.replica_of in names]


def rows(env: Environment, envdir: EnvDir, state: EnvState, names: Sequence[str] = (), *,
         every: bool = True) -> list[ServiceRow]:
    """The declared services (or the named ones), in the file's order, live where they run, `absent`
    where they do not; without `every`, only those that are up (`UP_STATES`), as compose's `ps` without -a."""
    out = []
    wanted = {s.name for s in select_services(env, names)}
    with Runtimes(env, envdir, state) as runtimes:
        for svc in env.services:
            if svc.name not in wanted:
                continue
            rec = state.services.get(svc.name)
            live = _live_or_unknown(runtimes, svc) if rec else Live("absent")
            if not every and live.state not in UP_STATES:
                continue
            started = rec.get("started_at") if rec else None
            out.append(ServiceRow(
                name=svc.name, machine=svc.machine, isolation=svc.isolation.value, state=live.state,
                image=svc.image, ports=[PublishedPort(**p) for p in rec.get("ports", [])] if rec else [],
                started_seconds=round(time.time() - started, 1) if started and live.state != "absent" else None,
                exit_code=live.exit_code,
            ))
    return out


def _live_or_unknown(runtimes: Runtimes, svc: ServiceSpec) -> Live:
    try:
        return runtimes.for_service(svc).live(svc.name)
    except VmctlError:
        return Live("unknown")


def service_runtime(runtimes: Runtimes, env: Environment, name: str) -> tuple[ServiceSpec, Runtime]:
    [svc] = select_services(env, [name])[:1]  # (a replicated service's name: its first instance)
    if svc.name not in runtimes.state.services:
        raise VmctlError(f"service `{svc.name}` is not running", hint="start it with `vmctl up`")
    return svc, runtimes.for_service(svc)


@dataclass(frozen=True)
class ExecRequest:
    """`vmctl exec`'s options as typed: `user` may be a name (looked up in the service's image)."""

    user: str = ""
    workdir: str = ""
    env: tuple[str, ...] = ()  # K=V
    tty: bool = False  # on a terminal of its own (compose's default where ours is one; `-T`: not)


def exec_service(env: Environment, envdir: EnvDir, state: EnvState, name: str, argv: Sequence[str],
                 request: ExecRequest = ExecRequest()) -> int:
    """Run argv inside the service's container, attached to this terminal; its exit code."""
    bad = next((e for e in request.env if "=" not in e or e.startswith("=")), None)
    if bad is not None:
        raise UsageError(f"`-e {bad}` is not KEY=VALUE")
    with Runtimes(env, envdir, state) as runtimes:
        svc, rt = service_runtime(runtimes, env, name)
        live = rt.live(svc.name)
        if live.state != "running":
            detail = f", exit code {live.exit_code}" if live.exit_code is not None else ""
            raise VmctlError(f"service `{name}` is not running (state `{live.state}`{detail})",
                             hint=f"see `vmctl logs {name}`; `vmctl start {name}` starts it again")
        options = ExecOptions(_exec_user(env, state, svc, request.user), request.workdir, request.env, request.tty)
        exit_code, _ = rt.exec(svc.name, argv, capture=False, options=options)
        return exit_code


def _exec_user(env: Environment, state: EnvState, svc: ServiceSpec, user: str) -> str:
    """`-u` as uid[:gid]: names from the image the container runs (the digest state recorded)."""
    if not user or all(part.isdigit() for part in user.split(":", 1)):
        return user
    image = cached_image(svc.image, env.base_dir, state.services[svc.name].get("digest"))
    return numeric_user(user, image.rootfs if image else Path("/nonexistent"), svc.name)


def service_logs(env: Environment, envdir: EnvDir, state: EnvState, name: str, out: BinaryIO, *,
                 tail: int | None, follow: bool, timestamps: bool = False) -> None:
    """The container's output, each line prefixed `NAME  | ` like compose (with `timestamps`, then the
    UTC time the line arrived, to the second)."""
    with Runtimes(env, envdir, state) as runtimes:
        svc, rt = service_runtime(runtimes, env, name)
        width = max(len(s.name) for s in env.services)
        writer = PrefixWriter(out, svc.name.ljust(width))
        try:
            rt.logs(svc.name, cast(BinaryIO, writer), tail=tail, follow=follow, timestamps=timestamps)
        finally:
            writer.close()


def services_logs(env: Environment, envdir: EnvDir, state: EnvState, names: Sequence[str], out: BinaryIO, *,
                  tail: int | None, follow: bool, timestamps: bool = False) -> None:
    """`vmctl logs [SERVICE...]`: each service's output (every started one when none is named), one
    after the other; with `follow`, all at once, a thread per service. Lines stay whole: each prefixed
    line is one write to `out`. The followers are daemon threads: Ctrl-C ends the command."""
    names = list(names) or [s.name for s in env.services if s.name in state.services]
    if not follow or len(names) == 1:
        for name in names:
            service_logs(env, envdir, state, name, out, tail=tail, follow=follow, timestamps=timestamps)
        return
    failures: list[BaseException] = []
    gate = _Gate(out)

    def one(name: str) -> None:
        try:
            service_logs(env, envdir, state, name, cast(BinaryIO, gate), tail=tail, follow=True,
                         timestamps=timestamps)
        except Exception as e:  # noqa: BLE001 - raised again in the main thread
            failures.append(e)

    threads = [threading.Thread(target=one, args=(n,), daemon=True, name=f"logs-{n}") for n in names]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads) and not failures:
            time.sleep(0.2)
    finally:  # no follower touches `out` any more: one still writing at exit would stall the interpreter
        gate.close()
    if failures:
        raise failures[0]


class _Gate:
    """Writes to `out` one at a time, and none once closed (the followers of `services_logs`)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.lock, self.open = out, threading.Lock(), True

    def write(self, data: bytes) -> int:
        with self.lock:
            if self.open:
                self.out.write(data)
        return len(data)

    def flush(self) -> None:
        with self.lock:
            if self.open:
                self.out.flush()

    def close(self) -> None:
        with self.lock:
            self.open = False


def grace_of(svc: ServiceSpec | None, rt: Runtime, override: float | None = None) -> float:
    """Seconds between the stop signal and SIGKILL: `-t`, else `stop_grace_period`, else the runtime's."""
    if override is not None:
        return override
    return svc.stop_grace_period if svc and svc.stop_grace_period is not None else rt.stop_grace


def stop_services(env: Environment, envdir: EnvDir, state: EnvState, names: Sequence[str], progress: Progress,
                  *, grace: float | None = None) -> list[str]:
    """`vmctl stop`: each running service (dependents first) ended by its `stop_signal`, SIGKILL after
    `grace_of`, but kept (`Runtime.halt`): no restart policy brings it back, the machines keep running,
    the state keeps its record, so `start_stopped` runs it again. The names of those stopped."""
    stopped = []
    with Runtimes(env, envdir, state) as runtimes:
        for svc in reversed(select_services(env, names)):
            if svc.name not in state.services:
                continue  # never started: nothing to stop
            rt = runtimes.for_service(svc)
            if rt.live(svc.name).state not in UP_STATES:
                progress.done(svc.name, "not running")
                continue
            pre_stop(env, state, svc, rt, progress)
            progress.working(svc.name, f"stopping ({svc.stop_signal})")
            code = rt.halt(svc.name, grace_of(svc, rt, grace), svc.stop_signal)
            state.services[svc.name]["stopped_at"] = time.time()
            envdir.save(state)
            progress.done(svc.name, "stopped" + (f" (exit code {code})" if code is not None else ""))
            stopped.append(svc.name)
    return stopped


def start_stopped(env: Environment, envdir: EnvDir, state: EnvState, names: Sequence[str], progress: Progress,
                  *, timeout: float) -> list[str]:
    """`vmctl start`: each stopped or exited service (dependencies first) run again from the container it
    had, with the ports it had, waited for as `up` does; a microVM service's machine must be running. A
    container that is gone (its guest was rebooted) is created again. The names of those started."""
    services = select_services(env, names)
    never = [s.name for s in services if s.name not in state.services]
    if names and never:
        raise VmctlError(f"service `{never[0]}` has no container to start", hint="create it with `vmctl up`")
    todo = [s for s in services if s.name in state.services]
    images = prepare_images(env, todo, progress)  # cached since `up`: no pull, no build
    env = with_image_healthchecks(env, images)
    todo = [s for s in select_services(env, names) if s.name in state.services]
    deadline = time.monotonic() + timeout
    started = []
    with Runtimes(env, envdir, state) as runtimes:
        for svc in todo:
            rt = runtimes.for_service(svc)
            live = rt.live(svc.name)
            if live.state in UP_STATES:
                progress.done(svc.name, f"already {live.state}")
                continue
            progress.working(svc.name, "starting")
            req = container_request(svc, images[svc.name], rt, runtimes.plan)
            ports = [PublishedPort(**p) for p in state.services[svc.name].get("ports", [])]
            _timed(rt.start if live.state == "absent" else rt.resume, req, svc, images[svc.name], ports, state,
                   envdir)
            post_start(env, state, svc, rt, progress, deadline)
            wait_ready(svc, rt, progress, deadline)
            started.append(svc.name)
    return started


def published_port(env: Environment, state: EnvState, name: str, private_port: int, proto: str = "tcp"
                   ) -> PublishedPort:
    """`vmctl port`: where the host publishes the service's `private_port` (from the state `up` wrote)."""
    select_services(env, [name])
    ports = [PublishedPort(**p) for p in state.services.get(name, {}).get("ports", [])]
    found = next((p for p in ports if (p.container_port, p.proto) == (private_port, proto)), None)
    if found is None:
        known = ", ".join(f"{p.container_port}/{p.proto}" for p in ports) or "none"
        raise VmctlError(f"service `{name}` publishes no port {private_port}/{proto}",
                         hint=f"it publishes: {known}" if name in state.services else "it is not up: `vmctl up`")
    return found


@dataclass(frozen=True)
class ImageRow:
    """One service's image for `vmctl images`: what the file says, and the cache entry it runs from."""

    service: str
    image: str
    digest: str | None  # None: not in the cache (never prepared)
    size_bytes: int | None


def image_rows(env: Environment, state: EnvState, names: Sequence[str] = ()) -> list[ImageRow]:
    """The image of each service (or of the named ones), in the file's order: the digest its container was
    started from, else the cached one; never pulled."""
    wanted = {s.name for s in select_services(env, names)}
    out = []
    for svc in (s for s in env.services if s.name in wanted):
        image = cached_image(svc.image, env.base_dir, state.services.get(svc.name, {}).get("digest"))
        out.append(ImageRow(svc.name, svc.image, image.digest if image else None,
                            image.size_bytes if image else None))
    return out


GUEST_STOP_CONNECT_SECONDS = 3.0  # a guest that does not answer by then is powered off without it


def stop_guest_services(env: Environment, envdir: EnvDir, state: EnvState, progress: Progress) -> None:
    """Before `down` powers the guests off: each running microVM service stopped with its `stop_signal`,
    SIGKILL after its `stop_grace_period`, dependents first, the machines in parallel. A guest that
    cannot be reached is only warned about: powering it off is what `down` does anyway."""
    by_machine: dict[str, list[ServiceSpec]] = {}
    for svc in reversed(topological_services(env)):
        rec = state.services.get(svc.name)
        if rec and rec.get("isolation") == Isolation.MICROVM.value and svc.machine in state.machines:
            by_machine.setdefault(svc.machine, []).append(svc)

    def stop_in(machine: str, services: Sequence[ServiceSpec]) -> None:
        try:
            with Runtimes(env, envdir, state) as runtimes:
                rt = runtimes.guest(machine, GUEST_STOP_CONNECT_SECONDS)
                for svc in services:
                    pre_stop(env, state, svc, rt, progress)
                    progress.working(svc.name, f"stopping ({svc.stop_signal})")
                    code = rt.stop(svc.name, grace_of(svc, rt), svc.stop_signal)
                    progress.done(svc.name, "stopped" + (f" (exit code {code})" if code is not None else ""))
        except VmctlError as e:
            progress.warn(machine, f"its services were not stopped before power-off: {e.message}")

    with ThreadPoolExecutor(max_workers=max(1, len(by_machine))) as pool:
        list(pool.map(lambda item: stop_in(*item), by_machine.items()))


def stop_host_services(env: Environment, envdir: EnvDir, state: EnvState, progress: Progress) -> list[str]:
    """Stop every host container of the environment (from state, and any runc still knows of)."""
    names = {n for n, rec in state.services.items() if rec.get("isolation") == Isolation.CONTAINER.value}
    if not names and not any(s.isolation is Isolation.CONTAINER for s in env.services):
        return []
    rt = Runtimes(env, envdir, state).host()
    stopped = []
    for name in sorted(names | set(rt.names())):
        svc = env.service(name)
        pre_stop(env, state, svc, rt, progress)
        progress.working(name, "stopping (runc)")
        rt.stop(name, grace_of(svc, rt), svc.stop_signal if svc else "SIGTERM")
        progress.done(name, "removed")
        stopped.append(name)
    return stopped


# ------------------------------------------------------------------------------------------------
# small helpers


class PrefixWriter:
    """A binary stream that prefixes each line with `prefix  | ` (partial lines wait for their end)."""

    def __init__(self, out: BinaryIO | io.BytesIO, prefix: str) -> None:
        self.out, self.prefix, self.pending = out, f"{prefix} | ".encode(), b""

    def write(self, data: bytes) -> int:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            self.out.write(self.prefix + line + b"\n")
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self.out.write(self.prefix + self.pending + b"\n")
            self.pending = b""
        self.out.flush()


def copy_file(path: Path, out: BinaryIO, *, tail: int | None, follow: bool,
              sleep: Callable[[float], Any] = time.sleep) -> None:
    """Print a log file, the files it was rotated into first (templates/logs/stamp.awk's FILE.N .. FILE.1),
    all of it or its last `tail` lines; then, with `follow`, what is appended (until Ctrl-C), from the new
    FILE whenever it has been rotated (once the old one is read to its end)."""
    older = b"".join(p.read_bytes() for p in rotated(path))
    f = path.open("rb")
    try:
        data = older + f.read()
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail > 0 else b""
        out.write(data)
        out.flush()
        while follow:
            if chunk := f.read():
                out.write(chunk)
                out.flush()
            elif _replaced(f, path):
                f.close()
                f = path.open("rb")
            else:
                sleep(0.1)
    finally:
        f.close()


def rotated(log: Path) -> list[Path]:
    """The files a log was rotated into, oldest first."""
    return [p for i in range(MAX_LOG_FILES, 0, -1) if (p := log.with_name(f"{log.name}.{i}")).exists()]


def _replaced(f: BinaryIO, path: Path) -> bool:
    try:
        return path.stat().st_ino != os.fstat(f.fileno()).st_ino
    except FileNotFoundError:  # between the rotation's move and the new file: look again
        return False


def iter_rows_json(rows_: Sequence[ServiceRow]) -> Iterator[dict[str, Any]]:
    return (asdict(r) for r in rows_)
