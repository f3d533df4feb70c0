"""`up`, `down` and `status` for the machines of an environment.

`up` keeps every side effect on one ExitStack: if any machine fails (or Ctrl-C arrives), what this
`up` created is removed in reverse order and the state file says so. State is saved before each
domain is started, so even a SIGKILL leaves enough for `down` to find and remove everything
(domains are also found by their libvirt metadata tag).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from vmctl import (
    accel,
    console,
    guest_image,
    host_accel,
    host_files,
    placement,
    ports,
    preflight,
    remote,
    render,
    template,
    virt,
    volumes,
    workloads,
)
from vmctl.container_image import PreparedImage, PullPolicy
from vmctl.errors import GuestError, HostError, UsageError, VmctlError
from vmctl.hostspec import HostSpec
from vmctl.hypervisor import Hypervisor, embed_uri, is_embedded, prepare_embed_root, qemu_pid, shared_capability_cache
from vmctl.memory import memory_of
from vmctl.network import plan as netplan
from vmctl.network import span
from vmctl.network.host import EnvNetwork
from vmctl.network.machine import MachineNetwork
from vmctl.progress import Progress
from vmctl.runner import which
from vmctl.spec import Environment, MachineSpec, ServiceSpec, with_dependencies
from vmctl.ssh import KEPT, Guest
from vmctl.state import EnvDir, EnvState, ForwardState, MachineState

QBOOT = Path("/usr/share/qemu/qboot.rom")
DEFAULT_TIMEOUT = 120.0


@dataclass
class Project:
    """An environment file together with where its state lives and how to reach libvirt."""

    env: Environment
    progress: Progress
    connect: str | None = None  # --connect, overrides the file's libvirt.uri
    envdir: EnvDir = field(init=False)
    placed: dict[str, str] = field(default_factory=dict)  # machine -> host, when the file has `hosts:`

    def __post_init__(self) -> None:
        self.envdir = EnvDir(self.env.name)

    @property
    def network_host(self) -> EnvNetwork:
        """The host side of this environment's network, named by its state folder."""
        return EnvNetwork(str(self.envdir.path))

    def host_of(self, machine: MachineSpec) -> HostSpec | None:
        """The declared host the machine runs on: its own `host`, or where placement put it."""
        name = self.placed.get(machine.name) or machine.host  # where it runs beats where the file wants it
        return self.env.host(name) if name else None

    def uri_for(self, machine: MachineSpec) -> str:
        if (host := self.host_of(machine)) is not None:
            return host.connection_uri
        uri = machine.uri or self.connect or self.env.uri
        return uri or embed_uri(self.envdir.libvirt_root)

    def uris(self) -> list[str]:
        """Where the machines run; with `hosts:`, only the machines that have a host yet."""
        return sorted({self.uri_for(m) for m in self.env.machines if not self.env.hosts or self.host_of(m)})

    def remember(self, state: EnvState) -> None:
        """Where an earlier `up` placed the machines it started."""
        self.placed.update({name: ms.host for name, ms in state.machines.items() if ms.host})

    def place(self, machines: Sequence[MachineSpec], state: EnvState) -> None:
        """With `hosts:`: ask every host `up` needs, and choose one for each machine, before anything
        is created. Running machines keep their host."""
        if not self.env.hosts:
            return
        self.remember(state)
        todo = [m for m in machines if m.name not in self.placed]
        wanted = {m.host for m in todo} if all(m.host for m in todo) else {h.name for h in self.env.hosts}
        loads = placement.survey(h for h in self.env.hosts if h.name in wanted)
        placement.require_answers(self.env, loads)
        self.placed = placement.place(self.env, todo, loads, self.placed)

    @contextlib.contextmanager
    def hypervisors(self) -> Iterator[dict[str, Hypervisor]]:
        """One connection per distinct URI of the environment's machines."""
        with contextlib.ExitStack() as stack:
            out = {}
            for uri in self.uris():
                if is_embedded(uri):
                    prepare_embed_root(self.envdir.libvirt_root, shared_capability_cache())
                out[uri] = stack.enter_context(Hypervisor(uri))
            yield out

    def select_with_services(self, names: Sequence[str]) -> tuple[list[MachineSpec], list[ServiceSpec]]:
        """`up NAME...`: a name is a machine (with its services) or a service (with its machine), each
        service with what it depends on, as compose starts it."""
        if not names:
            return list(self.env.machines), list(self.env.services)
        services = with_dependencies(self.env, {s.name for s in self.env.services
                                                if {s.name, s.machine, s.replica_of} & set(names)})
        machine_names = [n for n in names if self.env.service(n) is None]
        machine_names += [s.machine for s in self.env.services if s.name in services and s.machine]
        machines = self.select(sorted(set(machine_names))) if machine_names else []
        return machines, [s for s in self.env.services if s.name in services]

    def select_services(self, names: Sequence[str]) -> list[ServiceSpec]:
        """`pull NAME...`: services only (all when none is named), in the file's order."""
        unknown = [n for n in names if self.env.service(n) is None]
        if unknown:
            known = ", ".join(s.name for s in self.env.services) or "none"
            raise UsageError(f"unknown service `{unknown[0]}` in {self.env.file}", hint=f"services: {known}")
        return [s for s in self.env.services if not names or s.name in names]

    def select(self, names: Sequence[str]) -> list[MachineSpec]:
        if not names:
            return list(self.env.machines)
        unknown = [n for n in names if self.env.machine(n) is None]
        if unknown:
            known = ", ".join(m.name for m in self.env.machines) or "none"
            raise UsageError(f"unknown machine `{unknown[0]}` in {self.env.file}", hint=f"machines: {known}")
        return [m for m in self.env.machines if m.name in names]


# ------------------------------------------------------------------------------------------------
# boot files and accelerator


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path | None
    kernel_release: str | None


def ensure_images(project: Project, machines: Sequence[MachineSpec]) -> dict[str, guest_image.GuestImage]:
    images = {}
    for name in sorted({m.image for m in machines}):
        found = guest_image.find_guest_image(name)
        if found is None:
            project.progress.working(f"image {name}", "building the guest image (first use)")
            found = guest_image.build_guest_image(name, progress=project.progress.callback(f"image {name}"))
            project.progress.done(f"image {name}", f"built ({found.kernel_release})")
        images[name] = found
    return images


def boot_files(machine: MachineSpec, image: guest_image.GuestImage) -> BootFiles:
    if machine.kernel is None:
        return BootFiles(image.kernel, machine.initrd or image.initrd, image.kernel_release)
    return BootFiles(machine.kernel, machine.initrd or image.initrd, None)


def accel_report(images: dict[str, guest_image.GuestImage]) -> accel.AccelReport:
    image = images.get("default") or next(iter(images.values()))
    return accel.host_report(image.kernel, image.initrd)


# ------------------------------------------------------------------------------------------------
# rendering


def domain_view(project: Project, machine: MachineSpec, files: BootFiles, accel_name: str,
                forwards: Sequence[render.Forward], ssh_port: int,
                image_disks: Sequence[tuple[str, Path]] = (),
                net: MachineNetwork | None = None) -> render.DomainView:
    uri = project.uri_for(machine)
    mdir = project.envdir.machine_dir(machine.name)
    on_host = project.host_of(machine) is not None
    name = render.domain_name(project.env.name, machine.name)
    return render.DomainView(
        environment=project.env.name,
        environment_file=str(project.env.file),
        machine=machine.name,
        domain_type="kvm" if accel_name == "kvm" else "qemu",
        accel=accel_name,
        memory_mib=machine.memory_mib,
        vcpus=machine.vcpus,
        kernel=str(files.kernel),
        initrd=str(files.initrd) if files.initrd else None,
        cmdline=render.kernel_cmdline(machine.name, project.envdir.ssh_key_blob(), machine.cmdline,
                                      accel=accel_name, vcpus=machine.vcpus),
        console_log=host_files.console_path(name) if on_host else str(mdir / "console.log"),
        emulator=which("qemu-system-x86_64", package="qemu-system-x86"),
        loader=str(QBOOT) if QBOOT.exists() else None,
        forwards=(render.Forward("127.0.0.1", ssh_port, 22), *forwards),
        disks=tuple(_disk_views(project, machine, image_disks)),
        filesystems=tuple(render.FilesystemView(str(source), tag, readonly)
                          for tag, source, readonly in workloads.machine_volumes(project.env, machine.name)),
        # On a declared host QEMU runs as that libvirtd's user, on the files vmctl sent there.
        dac_label=None if is_embedded(uri) or on_host else f"+{os.getuid()}:+{os.getgid()}",
        interfaces=tuple(render.InterfaceView(tap, nic.mac, slot, bridge)
                         for tap, bridge, nic, slot in (net.interfaces() if net else [])),
        restrict=net.member.internal_only if net else False,
        labels=_service_labels(project, machine),
    )


def _service_labels(project: Project, machine: MachineSpec) -> tuple[tuple[str, str], ...]:
    svc = project.env.service(machine.dedicated_to) if machine.dedicated_to else None
    return svc.labels if svc else ()


def _disk_views(project: Project, machine: MachineSpec,
                image_disks: Sequence[tuple[str, Path]] = ()) -> Iterator[render.DiskView]:
    """The machine's own disks, then the container images its services use (read-only, shared)."""
    mdir = project.envdir.machine_dir(machine.name)
    for i, disk in enumerate(machine.disks):
        path = disk.path
        if path is None:
            path = mdir / f"disk-{disk.name}.raw"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as f:
                    f.truncate((disk.size_mib or 1) * 1024 * 1024)
        yield render.DiskView(str(path), render.disk_dev(i), disk.name, disk.readonly)
    for j, (serial, image_path) in enumerate(image_disks, start=len(machine.disks)):
        yield render.DiskView(str(image_path), render.disk_dev(j), serial, readonly=True)


# ------------------------------------------------------------------------------------------------
# up


def up(project: Project, names: Sequence[str] = (), *, timeout: float = DEFAULT_TIMEOUT,
       wait: bool = True, templates: bool = True, rebuild: bool = False, recreate: bool = False,
       hold: frozenset[str] = frozenset()) -> EnvState:
    """Boot the machines, then start the services in `depends_on` order; roll everything back on failure.

    Services' images are prepared before any boot: each distinct image's ext4 disk is attached
    read-only to every machine that runs it. With `templates`, a machine of a shape that has a template
    (vmctl/template.py; built on first use) is restored from it instead of booting its kernel. With
    `recreate`, running services' containers are made anew (their machines keep running). The services
    in `hold` get their machine, image and network but are not started (`vmctl run`'s own service)."""
    machines, services = project.select_with_services(names)
    envdir = project.envdir
    with envdir.lock(on_wait=lambda text: project.progress.info("lock", text)):
        state = envdir.load(str(project.env.file))
        state.file = str(project.env.file)
        project.place(machines, state)  # with `hosts:`, before anything is created
        preflight.check(project, machines, state)  # before anything is created
        service_images = workloads.prepare_images(project.env, services, project.progress, rebuild=rebuild)
        env = workloads.with_image_healthchecks(project.env, service_images)
        workloads.refuse_unhealthy_dependencies(env)
        for name in volumes.ensure(project.env.volumes, workloads.volume_seeds(services, service_images)):
            project.progress.done(f"volume {name}", "created")
        images = ensure_images(project, machines)
        chosen = _choose_accels(project, machines, images)
        created: list[str] = []
        try:
            plan = _network_up(project, state)
            with project.hypervisors() as hvs, contextlib.ExitStack() as rollback, remote.PortChecks() as checks:
                jobs = []
                for m in machines:
                    hv = hvs[project.uri_for(m)]
                    if _is_ready(hv, state, m):
                        project.progress.done(m.name, "already running")
                        continue
                    created.append(m.name)
                    disks = workloads.image_disks(project.env, m.name, service_images)
                    net = _machine_network(project, plan, m)
                    jobs.append(_prepare(project, state, hv, m, images[m.image], chosen[m.name],
                                         rollback, checks, disks, net, templates=templates))
                envdir.save(state)
                _boot_all(project, hvs, jobs, state, timeout, plan)
                envdir.save(state)
                workloads.start_services(env, envdir, state,
                                         {n: i for n, i in service_images.items() if n not in hold}, project.progress,
                                         timeout=timeout, wait=wait, recreate=recreate)
                rollback.pop_all()
        except BaseException:
            # The ExitStack has removed the domains; forget them and their files too, and the whole
            # environment folder when nothing of it is left running.
            for name in created:
                state.machines.pop(name, None)
                shutil.rmtree(envdir.machine_dir(name), ignore_errors=True)
            if not (state.machines or state.services):
                project.network_host.destroy()
                state.tunnel_hosts = [h.name for h in _withdraw_tunnels(project, state)]
            if state.machines or state.services or state.tunnel_hosts:
                envdir.save(state)  # what is left for `down`
            else:
                _remove_env_files(envdir)
            raise
        return state


def up_for_one_off(project: Project, service: str, *, timeout: float = DEFAULT_TIMEOUT) -> PreparedImage | None:
    """`vmctl run SERVICE` where the service has never been started: what `up SERVICE` would bring up
    (its machine, the network, what it depends on, started and waited for) comes up, the service itself
    does not (compose's `run`). Its prepared image, or None when the service has run here before (the
    one-off then uses the image it ran)."""
    [svc] = workloads.select_services(project.env, [service])[:1]
    if svc.name in project.envdir.load(str(project.env.file)).services:
        return None
    up(project, [svc.name], timeout=timeout, hold=frozenset({svc.name}))
    return workloads.prepare_images(project.env, [svc], project.progress, policy=PullPolicy.NEVER)[svc.name]


def pull(project: Project, names: Sequence[str] = ()) -> list[str]:
    """Prepare the services' images, asking each registry for its current digest (compose's `pull`), except
    for `pull_policy: never` services, which are skipped. Returns the services whose image was pulled."""
    services = project.select_services(names)
    for s in services:
        if s.pull_policy is PullPolicy.NEVER or s.build:
            project.progress.info(s.name, "skipped: " + ("built, not pulled (`vmctl build`)" if s.build else
                                                         "`pull_policy: never`"))
    wanted = [s for s in services if s.pull_policy is not PullPolicy.NEVER and not s.build]
    workloads.prepare_images(project.env, wanted, project.progress, policy=PullPolicy.ALWAYS)
    return [s.name for s in wanted]


def build(project: Project, names: Sequence[str] = (), *, no_cache: bool = False) -> list[str]:
    """Build the services' images that have `build:` (compose's `build`), even when the context is
    unchanged; returns the services built."""
    wanted = [s for s in project.select_services(names) if s.build]
    if no_cache:
        wanted = [dataclasses.replace(s, build=dataclasses.replace(s.build, no_cache=True)) for s in wanted
                  if s.build]
    workloads.prepare_images(project.env, wanted, project.progress, rebuild=True)
    return [s.name for s in wanted]


def _network_up(project: Project, state: EnvState) -> netplan.NetworkPlan:
    """The environment's network before any member joins it: namespace, bridges, resolvers. The
    addresses handed out are kept in state, so a later `up` gives running members the same ones."""
    plan = netplan.plan(project.env, state.network)
    state.network = plan.remembered()
    hosts = _member_hosts(project)
    state.tunnel_hosts = sorted({*state.tunnel_hosts, *(h.name for h in hosts)})
    project.envdir.save(state)  # before the namespace and tunnels exist: `down` finds them even after a SIGKILL
    project.network_host.create(plan)
    span.extend(project.network_host, plan, hosts)
    return plan


def _member_hosts(project: Project) -> list[HostSpec]:
    """The declared hosts the environment's machines are placed on: each gets the network's tunnel ends."""
    names = sorted(set(project.placed.values()))
    return [h for name in names if (h := project.env.host(name)) is not None]


def _withdraw_tunnels(project: Project, state: EnvState) -> list[HostSpec]:
    """The tunnel ends off every host that may hold them; the hosts that did not answer."""
    hosts = [h for name in state.tunnel_hosts if (h := project.env.host(name)) is not None]
    return span.withdraw(project.network_host.id, hosts)


def _machine_network(project: Project, plan: netplan.NetworkPlan, m: MachineSpec) -> MachineNetwork | None:
    """Its part of the environment network; a machine on a declared host is on that host's tunnel
    bridges (vmctl/network/span.py)."""
    return MachineNetwork(project.network_host, plan, _member(plan, m.name), on_host=project.host_of(m) is not None)


def machine_network(project: Project, name: str) -> MachineNetwork:
    """A machine's part of the network as `up` would build it now (addresses kept from the state)."""
    state = project.envdir.load(str(project.env.file)) if project.envdir.state_file.exists() else None
    plan = netplan.plan(project.env, state.network if state else None)
    m = project.env.machine(name)
    return MachineNetwork(project.network_host, plan, _member(plan, name),
                          on_host=m is not None and project.host_of(m) is not None)


def _member(plan: netplan.NetworkPlan, name: str) -> netplan.Member:
    member = plan.member(name)
    assert member is not None, f"the network plan has no member `{name}`"
    return member


def _choose_accels(project: Project, machines: Sequence[MachineSpec],
                   images: dict[str, guest_image.GuestImage]) -> dict[str, str]:
    if not machines:
        return {}
    local = [m for m in machines if project.host_of(m) is None]
    chosen: dict[str, str] = {}
    if local:
        report = accel_report(images)
        chosen = {m.name: report.choose(m.accel, m.name) for m in local}
        if "tcg" in chosen.values() and report.kvm_module:
            project.progress.warn("accel", f"using TCG (software emulation): {report.reason}")
    host = virt.host()
    if "kvm" in chosen.values() and host.emulated:  # the boot times `up` prints are emulation times
        project.progress.warn("accel", f"using {host.accel_label('kvm')}: this host's own CPU is emulated "
                                       f"({host.evidence})")
    # a declared host's own probe: what this machine can run says nothing about it
    remote_ones = [(h, m) for m in machines if m not in local and (h := project.host_of(m)) is not None]
    for spec, found, on_it in host_accel.reports(remote_ones, images, project.progress):
        chosen |= {m.name: found.choose(m.accel, m.name) for m in on_it}
        if any(chosen[m.name] == "tcg" for m in on_it):
            project.progress.warn(f"accel {spec.name}", f"using TCG (software emulation): {found.reason}")
    return chosen


def _boot_all(project: Project, hvs: dict[str, Hypervisor], jobs: Sequence[Job],
              state: EnvState, timeout: float, plan: netplan.NetworkPlan) -> None:
    """Boot machines concurrently; Ctrl-C or one failure cancels the others' waits at once."""
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = [pool.submit(_boot, project, hvs[project.uri_for(j.machine)], j, state.machines[j.machine.name],
                               timeout, cancel, _machine_network(project, plan, j.machine))
                   for j in jobs]
        try:
            for f in as_completed(futures):
                if f.exception() is not None:
                    cancel.set()
        except BaseException:
            cancel.set()
            raise
    errors = [e for f in futures if (e := f.exception()) is not None and not isinstance(e, Cancelled)]
    if errors:
        first = errors[0]
        raise first if isinstance(first, VmctlError) else GuestError(f"{type(first).__name__}: {first}")


class Cancelled(Exception):
    """Another machine failed, or the user pressed Ctrl-C: stop waiting."""


def _is_ready(hv: Hypervisor, state: EnvState, m: MachineSpec) -> bool:
    dom = hv.lookup(render.domain_name(state.environment, m.name))
    ms = state.machines.get(m.name)
    return dom is not None and dom.isActive() and ms is not None and ms.hostkey is not None


@dataclass(frozen=True)
class Job:
    """A defined machine, ready to start: cold, or as a clone of a template (with its cold definition
    to fall back to)."""

    machine: MachineSpec
    dom: Any
    t_define: float
    cold_xml: str
    clone: template.Clone | None = None


def _prepare(project: Project, state: EnvState, hv: Hypervisor, m: MachineSpec, image: guest_image.GuestImage,
             accel_name: str, rollback: contextlib.ExitStack, checks: remote.PortChecks,
             image_disks: Sequence[tuple[str, Path]] = (),
             net: MachineNetwork | None = None, *, templates: bool = True) -> Job:
    """Define the domain (replacing a stale one) and record it in state before it starts."""
    files = boot_files(m, image)
    name = render.domain_name(project.env.name, m.name)
    stale = hv.lookup(name)
    if stale is not None:
        hv.remove(stale)
    mdir = project.envdir.machine_dir(m.name)
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "console.log").unlink(missing_ok=True)
    if (host := project.host_of(m)) is not None:
        files, image_disks = _send_files(project, hv, m, host, files, image_disks)
        m = remote.send_disks(hv.conn, project.env.name, m, project.progress, host)
    is_free = checks.on(host)  # free where QEMU binds them: this machine, or the host
    forwards = ports.resolve(m.name, m.ports, is_free=is_free, on=host.name if host else "")
    ssh_port = ports.free_port(is_free=is_free)
    view = domain_view(project, m, files, accel_name, forwards, ssh_port, image_disks, net)
    clone = _clone_of(project, hv, m, image, view) if templates else None
    t0 = time.monotonic()
    if net is not None:
        rollback.callback(net.remove_taps)
        net.make_taps()
    cold_xml = render.render_domain(view)
    dom = hv.define(render.render_domain(template.clone_view(view, clone.shape, clone.socket)) if clone else cold_xml)
    t_defined = time.monotonic()
    rollback.callback(_remove_quietly, hv, dom)
    state.machines[m.name] = MachineState(
        name=m.name, domain=name, uri=hv.uri, accel=accel_name, ssh_port=ssh_port,
        forwards=[ForwardState(f.host_ip, f.host_port, f.guest_port, f.proto) for f in forwards],
        memory_mib=m.memory_mib, vcpus=m.vcpus, kernel_release=files.kernel_release,
        timeline={"defined": round(t_defined - t0, 4)}, host_emulated=virt.host().emulated,
        host=project.placed.get(m.name, m.host),
        template=clone.template.name if clone else None,
    )
    return Job(m, dom, t0, cold_xml, clone)


def _clone_of(project: Project, hv: Hypervisor, m: MachineSpec, image: guest_image.GuestImage,
              view: render.DomainView) -> template.Clone | None:
    """The template this machine starts from (built on first use), or None: a cold boot. A template that
    cannot be used is reported in one line, forgotten, and the machine boots cold."""
    shape = template.shape_for(m, image, view, embedded=is_embedded(hv.uri))
    if shape is None:
        return None
    versions = hv.versions()
    try:
        found = template.ensure(hv, view, shape, versions, say=lambda text: project.progress.working(m.name, text))
    except template.TemplateError as e:
        project.progress.warn(m.name, f"{e.message}; booting cold")
        template.discard(shape.key(versions))
        return None
    return template.Clone(found, shape, template.clone_socket(project.envdir.path, m.name))


def _send_files(project: Project, hv: Hypervisor, m: MachineSpec, host: HostSpec, files: BootFiles,
                image_disks: Sequence[tuple[str, Path]]) -> tuple[BootFiles, list[tuple[str, Path]]]:
    """Kernel, initramfs and image disks into the host's vmctl pool; the same, as paths there."""
    local = [(files.kernel, "kernel"), *([(files.initrd, "initrd")] if files.initrd else []),
             *((path, "ext4") for _, path in image_disks)]
    there = [Path(p) for p in remote.send_files(hv.conn, local, project.progress, m.name, host)]
    initrd = there[1] if files.initrd else None
    disks = [(serial, path) for (serial, _), path in zip(image_disks, there[len(there) - len(image_disks):],
                                                         strict=True)]
    return BootFiles(there[0], initrd, files.kernel_release), disks


def _remove_quietly(hv: Hypervisor, dom: Any) -> None:
    """By name: after a failed restore the machine's cold definition replaced the one `dom` names."""
    with contextlib.suppress(Exception):
        found = hv.lookup(dom.name())
        if found is not None:
            hv.remove(found)


CLONE_TIMEOUT = 30.0  # a clone that is not READY by then is given up: the machine boots cold


def _boot(project: Project, hv: Hypervisor, job: Job, ms: MachineState, timeout: float, cancel: threading.Event,
          net: MachineNetwork | None = None) -> None:
    """Start one domain (a clone, or cold) and wait until its guest is ready and answers SSH with the
    key it announced.

    The timeline holds host-clock seconds since the definition began, for each phase.
    """
    progress, m = project.progress, job.machine
    host = project.host_of(m)
    log = project.envdir.machine_dir(m.name) / "console.log"
    read = None
    if host is not None:  # the console is a file on that host, read through libvirt
        log = Path(f"{host.name}:{host_files.console_path(ms.domain)}")
        read = remote.console_reader(hv.conn, ms.domain)
    dom = job.dom
    t0 = time.monotonic()

    def alive() -> bool:
        if cancel.is_set():
            raise Cancelled()
        return bool(dom.isActive())

    try:
        stamps: dict[str, float] = {}
        boot = None
        if job.clone is not None:  # templates are local only (vmctl/template.py: shape_for)
            progress.working(m.name, f"restoring template {job.clone.template.name} ({ms.accel})")
            try:
                boot = _start_clone(project, hv, job, log, net, alive, stamps)
            except template.TemplateError as e:
                progress.warn(m.name, f"{e.message}; booting cold")
                if isinstance(e, template.TemplateDamaged):
                    template.discard(job.clone.template.key)
                dom = _redefine_cold(hv, job, log, net)
                ms.template, stamps = None, {}
                t0 = time.monotonic()
        if boot is None:
            progress.working(m.name, f"booting ({ms.accel}, {m.vcpus} vCPU, {m.memory_mib} MiB)")
            _start_cold(hv, dom, host)
            stamps["qemu_started"] = time.monotonic()
            if net is not None:
                net.join()
            boot = console.wait_ready(log, machine=m.name, timeout=timeout, alive=alive, read=read)
        ms.hostkey = boot.hostkey
        with Guest(name=m.name, port=ms.ssh_port, hostkey=boot.hostkey or "",
                   key_file=project.envdir.key_file, via=remote.jump(host)) as guest:
            t_ssh = time.monotonic()
            if net is not None:
                net.configure_guest(guest, job.clone.template.macs if ms.template and job.clone else ())
            t_network = time.monotonic()
            guest.keep()  # for the services' start (or compare's container) in this process
    except Cancelled:
        progress.error(m.name, "cancelled")
        raise
    except VmctlError:
        progress.error(m.name, "failed")
        raise
    ms.timeline.update({k: round(v - job.t_define, 4) for k, v in {
        "start_called": t0, **stamps, "first_console_byte": boot.first_byte, "init": boot.init_seen,
        "ready": boot.ready_seen, "ssh": t_ssh, "network": t_network}.items() if v is not None})
    ms.guest = {k: v for k, v in {"init_uptime": boot.guest_init_uptime,
                                  "ready_uptime": boot.guest_ready_uptime}.items() if v is not None}
    ms.boot_seconds = round(t_ssh - t0, 4)
    how = f"from template {ms.template}" if ms.template else "cold"
    where = f"host {host.name}, " if host else ""
    progress.done(m.name, f"ready in {ms.boot_seconds:.2f}s, {how} ({where}ssh 127.0.0.1:{ms.ssh_port})")


def _start_cold(hv: Hypervisor, dom: Any, host: HostSpec | None) -> None:
    """Start the domain; a refusal on a declared host names the host."""
    try:
        hv.start(dom)
    except HostError as e:
        if host is None:
            raise
        raise HostError(f"host `{host.name}` ({host.uri}): {e.message}", hint=e.hint) from None


def _start_clone(project: Project, hv: Hypervisor, job: Job, log: Path, net: MachineNetwork | None,
                 alive: Any, stamps: dict[str, float]) -> console.Boot:
    """Restore the template into the clone's QEMU, give the guest its identity over its channel, and wait
    for the READY line with the host key the clone made itself. Any failure is a TemplateError."""
    assert job.clone is not None
    template.start_paused(job.dom, job.clone.template)
    stamps["qemu_started"] = time.monotonic()
    template.load_state(job.dom, job.clone.template)
    stamps["restored"] = time.monotonic()
    line = template.clone_line(job.machine.name, project.envdir.ssh_key_blob())
    with template.clone_channel(job.clone.socket, line):
        try:
            hv.resume(job.dom)
            if net is not None:  # while the guest makes its host key: it needs the bridges only after SSH
                net.join()
            return console.wait_ready(log, machine=job.machine.name, timeout=CLONE_TIMEOUT, alive=alive)
        except (GuestError, HostError) as e:
            raise template.TemplateError(f"the clone did not become ready: {e.message.splitlines()[0]}") from None


def _redefine_cold(hv: Hypervisor, job: Job, log: Path, net: MachineNetwork | None) -> Any:
    """After a failed restore: the machine's cold definition, fresh taps (the clone's moved into the
    environment's namespace) and an empty console."""
    hv.remove(job.dom)
    if net is not None:
        net.make_taps()
    log.unlink(missing_ok=True)
    return hv.define(job.cold_xml)


# ------------------------------------------------------------------------------------------------
# down


def down(project: Project, *, remove_volumes: bool = False) -> list[str]:
    """Remove every domain tagged with this environment, on every URI it uses, and its files; with
    `remove_volumes`, its named volumes too (never an external one)."""
    removed: list[str] = []
    envdir = project.envdir
    with envdir.lock(on_wait=lambda text: project.progress.info("lock", text)):
        state = envdir.load(str(project.env.file))
        project.remember(state)
        removed += workloads.stop_host_services(project.env, envdir, state, project.progress)
        workloads.stop_guest_services(project.env, envdir, state, project.progress)
        for ms in state.machines.values():  # what `up` in this process kept open to them
            if ms.hostkey:
                KEPT.release(ms.ssh_port, ms.hostkey)
        uris = set(project.uris()) | {ms.uri for ms in state.machines.values()}
        unreachable = []
        for uri in sorted(uris):
            if is_embedded(uri) and not envdir.libvirt_root.exists():
                continue
            try:
                with Hypervisor(uri) as hv:
                    domains = hv.domains_of(project.env.name)
                    removed += _remove_all(project, hv, domains)
                    if not preflight.is_local(uri):
                        remote.forget(hv.conn, project.env.name, [str(d.name()) for d in domains])
            except HostError as e:
                if is_embedded(uri):
                    continue
                if not project.env.hosts:
                    raise
                host = next((h for h in project.env.hosts if h.connection_uri == uri), None)
                said = f"host `{host.name}` ({host.uri}) does not answer" if host else e.message
                if any(ms.uri == uri for ms in state.machines.values()):
                    unreachable.append(said)  # the others are cleaned all the same
                else:  # nothing of this environment was recorded there
                    project.progress.warn(host.name if host else uri, said)
        for h in _withdraw_tunnels(project, state):
            said = f"host `{h.name}` ({h.uri}) does not answer"
            if said not in unreachable:
                unreachable.append(said)
        if unreachable:
            # Keep the state: a later `down` removes what is left once the host answers again.
            raise HostError("`down` removed what it could reach, but not everything: " + "; ".join(unreachable),
                            hint="run `vmctl down` again once the host answers")
        project.network_host.destroy()
        _remove_env_files(envdir)
        if remove_volumes:
            for name in volumes.remove(project.env.volumes):
                project.progress.done(f"volume {name}", "removed")
    return removed


def _remove_all(project: Project, hv: Hypervisor, domains: Sequence[Any]) -> list[str]:
    """Stop and undefine domains concurrently: libvirt waits up to seconds for each QEMU to exit."""
    def remove(dom: Any) -> str:
        name = str(dom.name())
        project.progress.working(name, "stopping")
        hv.remove(dom)
        project.progress.done(name, "removed")
        return name

    with ThreadPoolExecutor(max_workers=max(1, len(domains))) as pool:
        return list(pool.map(remove, domains))


def _remove_env_files(envdir: EnvDir) -> None:
    shutil.rmtree(envdir.path, ignore_errors=True)
    shutil.rmtree(envdir.libvirt_root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# status


@dataclass
class MachineStatus:
    name: str
    state: str
    accel: str | None
    uri: str
    ssh: dict[str, Any] | None
    ports: list[dict[str, Any]]
    boot_seconds: float | None
    vcpus: int
    memory_mib: int
    kernel_release: str | None = None
    pid: int | None = None
    memory: dict[str, float] | None = None  # MiB: vmctl.memory.Memory.as_dict()
    timeline: dict[str, float] = field(default_factory=dict)
    guest: dict[str, float] = field(default_factory=dict)
    dedicated_to: str | None = None
    host_emulated: bool = False  # the host's own CPU is emulated: a `kvm` machine ran at TCG speed
    accel_label: str | None = None  # `accel` as reports print it, e.g. "kvm (nested under TCG: ...)"
    networks: list[dict[str, str]] = field(default_factory=list)  # {network, address, mac} per NIC
    host: str | None = None  # the `hosts:` entry it runs on (None: the file names no hosts)
    hostkey: str | None = None  # pinned from the guest's READY line (a clone's own, never its template's)
    template: str | None = None  # the template it was restored from, or None: booted cold


def status(project: Project) -> list[MachineStatus]:
    """Every declared machine, also those never started (`absent`), from libvirt's view and the state."""
    state = project.envdir.load(str(project.env.file)) if project.envdir.state_file.exists() else None
    if state:
        project.remember(state)
    live = _live_states(project) if state and state.machines else {}
    plan = netplan.plan(project.env, state.network) if state and state.network else None
    rows = []
    for m in project.env.machines:
        ms = state.machines.get(m.name) if state else None
        member = plan.member(m.name) if plan else None
        st = live.get(m.name, "absent")
        if st == "running" and (ms is None or ms.hostkey is None):
            st = "starting"
        rows.append(MachineStatus(
            name=m.name, state=st, accel=ms.accel if ms else None, uri=project.uri_for(m),
            host=(h.name if (h := project.host_of(m)) else None),
            ssh={"host": "127.0.0.1", "port": ms.ssh_port} if ms and st != "absent" else None,
            ports=[{"host_ip": f.host_ip, "host_port": f.host_port, "guest_port": f.guest_port, "proto": f.proto}
                   for f in (ms.forwards if ms else [])],
            boot_seconds=ms.boot_seconds if ms else None, vcpus=m.vcpus, memory_mib=m.memory_mib,
            kernel_release=ms.kernel_release if ms else None,
            pid=(pid := qemu_pid(ms.domain) if ms and st in ("running", "starting") and preflight.is_local(ms.uri)
                 else None),
            memory=_memory(pid, m.memory_mib),
            timeline=ms.timeline if ms else {}, guest=ms.guest if ms else {}, dedicated_to=m.dedicated_to,
            host_emulated=bool(ms and ms.host_emulated),
            accel_label=virt.accel_label(ms.accel, ms.host_emulated) if ms else None,
            networks=[{"network": n.network, "address": n.address, "mac": n.mac}
                      for n in (member.nics if member and ms else ())],
            hostkey=ms.hostkey if ms else None, template=ms.template if ms else None,
        ))
    return rows


def _live_states(project: Project) -> dict[str, str]:
    """Machine -> libvirt's state of its domain, from each URI that answers (one host that does not
    leaves only its own machines `absent`)."""
    live = {}
    for uri in project.uris():
        with contextlib.suppress(HostError):
            if is_embedded(uri):
                prepare_embed_root(project.envdir.libvirt_root, shared_capability_cache())
            with Hypervisor(uri) as hv:
                for m in project.env.machines:
                    if project.uri_for(m) == uri and (dom := hv.lookup(render.domain_name(project.env.name, m.name))):
                        live[m.name] = hv.info(dom).state
    return live


def _memory(pid: int | None, guest_mib: int) -> dict[str, float] | None:
    """Host memory of a running machine's QEMU: PSS, guest RAM touched, TCG cache, files, private."""
    found = memory_of(pid, guest_mib) if pid else None
    return found.as_dict() if found else None


@contextlib.contextmanager
def locked_state(project: Project) -> Iterator[EnvState]:
    """The environment's state under its lock, for `stop`/`start`/`restart`: services change, machines do not."""
    with project.envdir.lock(on_wait=lambda text: project.progress.info("lock", text)):
        yield project.envdir.load(str(project.env.file))


def guest(project: Project, name: str) -> Guest:
    """A connected SSH session to a running machine, its host key pinned from state."""
    m = project.env.machine(name)
    if m is None:
        raise UsageError(f"unknown machine `{name}`",
                         hint=f"machines: {', '.join(x.name for x in project.env.machines) or 'none'}")
    state = project.envdir.load(str(project.env.file))
    ms = state.machines.get(name)
    if ms is None or ms.hostkey is None:
        raise VmctlError(f"machine `{name}` is not running", hint="start it with `vmctl up`")
    return Guest(name=name, port=ms.ssh_port, hostkey=ms.hostkey, key_file=project.envdir.key_file,
                 via=remote.jump(project.env.host(ms.host) if ms.host else None)).connect()


def remote_console(project: Project, ms: MachineState, out: BinaryIO, *, tail: int | None = None,
                   follow: bool = False, poll: float = 0.5) -> None:
    """`vmctl logs MACHINE` for a machine on a declared host: its console file there, through libvirt."""
    with Hypervisor(ms.uri) as hv:
        read = remote.console_reader(hv.conn, ms.domain)
        data = read(0)
        pos = len(data)
        if tail is not None:
            data = b"".join(data.splitlines(keepends=True)[-tail:]) if tail else b""
        out.write(data)
        out.flush()
        while follow:
            time.sleep(poll)
            if chunk := read(pos):
                pos += len(chunk)
                out.write(chunk)
                out.flush()

