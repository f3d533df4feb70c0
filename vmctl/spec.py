"""The environment file: one table of settings drives parsing, defaults, errors and the README reference.

Parsing ends in frozen dataclasses (`Environment`, `MachineSpec`, `ServiceSpec`); nothing after this
module sees raw YAML. Every error names the file, line and key path, and says how to fix it.
The table machinery and the generic value parsers are in `settings`, the parsers of compose's own
service keys in `compose_values`, the compose keys vmctl does not honour in `compose_keys`; what
this module reads comes resolved from the loading stage (`vmctl.load`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmctl import compose_keys, file_mounts, fixed_nics, replicas, volumes
from vmctl.build import BuildSpec, p_build
from vmctl.compose_values import (
    GUEST_OVERHEAD_MIB,
    MAX_REPLICAS,
    Deploy,
    Limits,
    LogRotation,
    Restart,
    TmpfsSpec,
    Ulimit,
    p_bytes_mib,
    p_caps,
    p_container_name,
    p_cpu_micros,
    p_cpus,
    p_cpuset,
    p_deploy,
    p_dns,
    p_dns_opt,
    p_domainname,
    p_domains,
    p_environment,
    p_group_add,
    p_labels,
    p_links,
    p_logging,
    p_pids_limit,
    p_platform,
    p_profiles,
    p_pull_policy,
    p_restart,
    p_security_opt,
    p_signal,
    p_sysctls,
    p_tmpfs,
    p_ulimits,
    p_user,
)
from vmctl.container_image import PullPolicy
from vmctl.errors import UsageError, Where
from vmctl.hooks import Hook, p_hooks
from vmctl.load import Model, load_project
from vmctl.oci_spec import CPU_PERIOD
from vmctl.settings import (
    NAME_RE,
    NAME_RULE,
    REQUIRED,
    Ctx,
    Parser,
    Setting,
    Support,
    did_you_mean,
    p_abs_path,
    p_argv,
    p_bool,
    p_cmdline,
    p_dir,
    p_duration,
    p_enum,
    p_file,
    p_image,
    p_int,
    p_name,
    p_only,
    p_size_mib,
    p_str,
    p_uri,
    parse_table,
    typename,
    unsupported,
)
from vmctl.yamlpos import KeyPath, dotted

if TYPE_CHECKING:
    from vmctl.hostspec import HostSpec

DNS_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
DNS_LABEL_RULE = "a DNS label: lowercase letters, digits and `-`, 1-63 characters, not starting or ending with `-`"
DEFAULT_NETWORK = "default"  # compose's name for the network every service joins unless it names others


class Accel(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Isolation(StrEnum):
    MICROVM = "microvm"
    CONTAINER = "container"


@dataclass(frozen=True)
class PortSpec:
    """A published port: `host_ip:host_port` on the host to `target` in the guest or container."""

    target: int
    host_port: int | None = None  # None: a free port is picked at `up`
    host_ip: str = "127.0.0.1"
    proto: str = "tcp"


@dataclass(frozen=True)
class DiskSpec:
    name: str
    path: Path | None = None  # an existing image file, attached as is
    size_mib: int | None = None  # or a fresh sparse scratch disk of this size, per instance
    readonly: bool = False


@dataclass(frozen=True)
class VolumeSpec:
    source: Path  # the host folder (a named volume's: vmctl/volumes.py)
    target: str
    readonly: bool = True
    volume: str | None = None  # a named volume's key under top-level `volumes:`


@dataclass(frozen=True)
class HealthcheckSpec:
    test: tuple[str, ...]  # argv run inside the container
    interval: float = 2.0
    timeout: float = 5.0
    retries: int = 5
    start_period: float = 0.0
    start_interval: float | None = None  # between checks during `start_period` (None: `interval`)


class Condition(StrEnum):
    """What a dependent waits for before it starts (compose's `depends_on.NAME.condition`)."""

    STARTED = "service_started"
    HEALTHY = "service_healthy"
    COMPLETED = "service_completed_successfully"


@dataclass(frozen=True)
class Dependency:
    service: str
    condition: Condition = Condition.STARTED
    required: bool = True  # false: a dependency that is not in the file (or not running) is skipped
    restart: bool = False  # `vmctl restart` of the dependency restarts this service too


@dataclass(frozen=True)
class NetworkSpec:
    """A network of the environment (compose's top-level `networks:`): one L2 segment with its resolver."""

    name: str
    internal: bool = False  # no way out of the host from it
    subnet: str | None = None  # its own (`ipam`), or None: a /24 of the network plan's pool


@dataclass(frozen=True)
class Attachment:
    """A service on one network, with the extra names it answers to there (and its MAC and address, when fixed)."""

    network: str
    aliases: tuple[str, ...] = ()
    mac_address: str | None = None
    ipv4_address: str | None = None  # fixed, in the network's own subnet (vmctl/fixed_nics.py)


@dataclass(frozen=True)
class MachineSpec:
    name: str
    vcpus: int = 1
    memory_mib: int = 256
    image: str = "default"
    kernel: Path | None = None  # None: the guest image's kernel
    initrd: Path | None = None
    cmdline: tuple[str, ...] = ()
    disks: tuple[DiskSpec, ...] = ()
    ports: tuple[PortSpec, ...] = ()
    accel: Accel = Accel.AUTO
    uri: str | None = None  # None: the environment's connection
    host: str | None = None  # one of the file's `hosts:`; None: placed by vmctl (vmctl/placement.py)
    dedicated_to: str | None = None  # set when this VM exists only to run one service
    template: bool = True  # restore from a booted template of its shape (vmctl/template.py) when it can
    networks: tuple[str, ...] = ()  # resolved by load_environment: its own, or the union of its services'


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    environment: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    user: str | None = None
    ports: tuple[PortSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()
    volumes_from: tuple[tuple[str, bool | None], ...] = ()  # (service, read-only: None keeps its mode)
    dependencies: tuple[Dependency, ...] = ()
    healthcheck: HealthcheckSpec | None = None
    healthcheck_from_image: bool = False  # the file sets none (not even `disable`): the image's applies at `up`
    restart: Restart = Restart.NO
    restart_retries: int | None = None  # `on-failure:N`: at most N restarts
    isolation: Isolation = Isolation.MICROVM
    machine: str | None = None  # the VM it runs in (a declared one, or its dedicated one)
    read_only: bool = True
    privileged: bool = False
    container_name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    tmpfs: tuple[TmpfsSpec, ...] = ()
    files: tuple[file_mounts.FileMount, ...] = ()  # its secrets and configs, sources resolved
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = True
    init: bool = False
    stop_signal: str = "SIGTERM"
    stop_grace_period: float | None = None  # None: the runtime's default
    ulimits: tuple[Ulimit, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    limits: Limits = Limits()
    profiles: tuple[str, ...] = ()
    hostname: str | None = None  # None: the service name
    networks: tuple[Attachment, ...] = (Attachment(DEFAULT_NETWORK),)
    expose: tuple[int, ...] = ()  # documents ports reachable on the networks; publishes nothing
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, IPv4) lines for the container's /etc/hosts
    links: tuple[tuple[str, str], ...] = ()  # (service, alias): the service's address under alias in /etc/hosts
    dns: tuple[str, ...] = ()  # nameservers after the environment's resolver
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    domainname: str | None = None
    group_add: tuple[str, ...] = ()  # names or numbers
    shm_mib: int | None = None  # None: 64 MiB
    stdin_open: bool = False  # its stdin is a pipe kept open (docker's -i), not /dev/null
    tty: bool = False  # its process has a terminal (docker's -t)
    oom_score_adj: int | None = None
    log_rotation: LogRotation | None = None  # `logging`'s max-size/max-file (or the `local` driver's)
    post_start: tuple[Hook, ...] = ()  # run in the container once it has started (vmctl/hooks.py)
    pre_stop: tuple[Hook, ...] = ()  # run in it before its stop signal
    replica_of: str | None = None  # `NAME-i` of a service with several instances: NAME (vmctl/replicas.py)
    pull_policy: PullPolicy = PullPolicy.MISSING  # when `image` is pulled from its registry
    build: BuildSpec | None = None  # its image is built from a Dockerfile (vmctl/build.py)

    @property
    def depends_on(self) -> tuple[str, ...]:
        return tuple(d.service for d in self.dependencies)

    def names_on(self, network: str) -> tuple[str, ...]:
        """The names this service is found by on `network`: its name, hostname and aliases there (an
        instance of a replicated service: also the service's name, shared with the other instances)."""
        extra = next((a.aliases for a in self.networks if a.network == network), ())
        names = [self.name, *([self.replica_of] if self.replica_of else []),
                 *([self.hostname] if self.hostname else []), *extra]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class Environment:
    name: str
    file: Path
    base_dir: Path
    uri: str | None
    machines: tuple[MachineSpec, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()
    volumes: tuple[volumes.NamedVolume, ...] = ()  # the top-level `volumes:` (vmctl/volumes.py)
    hosts: tuple[HostSpec, ...] = ()  # the file's `hosts:`; none: machines run where `uri` says
    places: Mapping[str, Where] = field(default_factory=dict, compare=False, repr=False)
    files: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()  # ignored keys, unset variables: the CLI shows them as progress warnings

    def place(self, dotted_path: str) -> Where | None:
        """Where a key (`services.web.ports[0]`) was written: file, line and variables."""
        return self.places.get(dotted_path)

    def machine(self, name: str) -> MachineSpec | None:
        return next((m for m in self.machines if m.name == name), None)

    def service(self, name: str) -> ServiceSpec | None:
        """By name; the name of a replicated service means its first instance (compose's `--index 1`)."""
        return (next((s for s in self.services if s.name == name), None)
                or next((s for s in self.services if s.replica_of == name), None))

    def instances(self, name: str) -> tuple[ServiceSpec, ...]:
        """The service `name`, or every instance of it."""
        return tuple(s for s in self.services if name in (s.name, s.replica_of))

    def host(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts if h.name == name), None)

    def services_on(self, machine: str) -> tuple[ServiceSpec, ...]:
        return tuple(s for s in self.services if s.machine == machine)


# ---------------------------------------------------------------------------------------------------
# Value parsers: each takes (value, key path, context) and returns a typed value or fails.


_PORT = re.compile(r"^(?:(?:(?P<ip>[0-9.]+):)?(?P<host>\d+):)?(?P<target>\d+)(?:/(?P<proto>tcp|udp))?$")


def p_ports(value: Any, path: KeyPath, ctx: Ctx) -> tuple[PortSpec, ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list of port strings, not {typename(value)}")
    out = []
    for i, item in enumerate(value):
        m = _PORT.match(str(item)) if isinstance(item, str | int) and not isinstance(item, bool) else None
        if not m:
            ctx.fail((*path, i), f"invalid port {item!r}",
                     'write "HOST:GUEST" (e.g. "8080:80"), "GUEST" for a free host port, or "IP:HOST:GUEST"')
        ip = m["ip"] or "127.0.0.1"
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            ctx.fail((*path, i), f"invalid host address {ip!r} in port {item!r}", "use an IPv4 address")
        host = int(m["host"]) if m["host"] else None
        target = int(m["target"])
        for number in (host, target):
            if number is not None and not 1 <= number <= 65535:
                ctx.fail((*path, i), f"port {number} in {item!r} is out of range", "ports are 1-65535")
        out.append(PortSpec(target=target, host_port=host, host_ip=ip, proto=m["proto"] or "tcp"))
    return tuple(out)


def p_disks(value: Any, path: KeyPath, ctx: Ctx) -> tuple[DiskSpec, ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list of disks, not {typename(value)}")
    disks = []
    for i, item in enumerate(value):
        item_path = (*path, i)
        if isinstance(item, str):
            item = {"path": item}
        raw = parse_table(DISK_SETTINGS, item, item_path, ctx)
        if (raw["path"] is None) == (raw["size"] is None):
            ctx.fail(item_path, "a disk needs exactly one of `path` (an existing image) or `size` (a new scratch disk)")
        name = raw["name"] or (raw["path"].stem if raw["path"] else f"disk{i}")
        name = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:20] or f"disk{i}"
        disks.append(DiskSpec(name=name, path=raw["path"], size_mib=raw["size"], readonly=raw["readonly"]))
    names = [d.name for d in disks]
    for i, name in enumerate(names):
        if name in names[:i]:
            ctx.fail((*path, i), f"two disks are named `{name}`", "give each disk a distinct `name`")
    return tuple(disks)


def p_volumes_from(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, bool | None], ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        ctx.fail(path, f"must be a list of `SERVICE[:ro|rw]` strings, not {typename(value)}")
    out = []
    for i, item in enumerate(value):
        name, _, mode = item.partition(":")
        if name == "container":
            ctx.fail((*path, i), "`container:NAME` is not supported: containers outside the environment are "
                     "not vmctl's", "name a service of this file")
        if not NAME_RE.match(name) or mode not in ("", "ro", "rw"):
            ctx.fail((*path, i), f"invalid volumes_from entry {item!r}",
                     "write `SERVICE`, `SERVICE:ro` or `SERVICE:rw`")
        out.append((name, None if not mode else mode == "ro"))
    return tuple(out)


def _with_volumes_from(services: Sequence[ServiceSpec], ctx: Ctx) -> list[ServiceSpec]:
    """`volumes_from` resolved into volumes of the service's own (before the microVMs are made, which
    need to know of every folder they share); chains are followed, a cycle or an unknown service fails."""
    by_name = {s.name: s for s in services}

    def volumes_of(name: str, seen: tuple[str, ...]) -> tuple[VolumeSpec, ...]:
        svc = by_name[name]
        out = list(svc.volumes)
        for i, (source, readonly) in enumerate(svc.volumes_from):
            where = ("services", name, "volumes_from", i)
            if source not in by_name:
                ctx.fail(where, f"unknown service `{source}`", did_you_mean(source, by_name, "services"))
            if source in seen:
                ctx.fail(where, f"`volumes_from` goes round in a circle: {' -> '.join((*seen, source))}",
                         "let one of them declare the volumes")
            targets = {v.target for v in out}
            out += [replace(v, readonly=v.readonly if readonly is None else readonly)
                    for v in volumes_of(source, (*seen, source)) if v.target not in targets]
        return tuple(out)

    return [replace(s, volumes=volumes_of(s.name, (s.name,))) if s.volumes_from else s for s in services]


def p_volumes(value: Any, path: KeyPath, ctx: Ctx) -> tuple[VolumeSpec, ...]:
    """compose's two forms: `SOURCE:TARGET[:ro|rw]` strings (SOURCE a host folder, `./data`, or a named
    volume, `data`), or mappings `{type: bind|volume, source, target, read_only}`."""
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list of `SOURCE:TARGET[:ro|rw]` strings, not {typename(value)}")
    return tuple(_volume(item, (*path, i), ctx) for i, item in enumerate(value))


_VOLUME_FORMS = ('write "./host-folder:/path/in/container[:ro|rw]" or "VOLUME:/path[:ro|rw]" (VOLUME declared '
                 "under top-level `volumes:`)")


def _volume(item: Any, path: KeyPath, ctx: Ctx) -> VolumeSpec:
    if isinstance(item, dict):
        v = parse_table(MOUNT_SETTINGS, item, path, ctx)
        kind, source, target, readonly = v["type"], v["source"], v["target"], v["read_only"]
        if not isinstance(source, str) or not source:
            ctx.fail((*path, "source"), "needs a `source`", "a host folder (`./data`) or a named volume (`data`)")
        if readonly is None:
            readonly = kind == "bind"  # vmctl's default for host folders (see `services.NAME.volumes`)
    else:
        parts = item.split(":") if isinstance(item, str) else []
        if len(parts) == 1 and parts[0].startswith("/"):
            ctx.fail(path, f"anonymous volume {item!r} is not supported", "name it: `VOLUME:" + parts[0] + "` "
                     "with `VOLUME:` under top-level `volumes:` (it is then kept across `down`)")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            ctx.fail(path, f"invalid volume {item!r}", _VOLUME_FORMS)
        source, target = parts[0], parts[1]
        kind = "volume" if volumes.VOLUME_NAME.match(source) else "bind"
        # compose's defaults: a named volume is writable; a host folder is read-only in vmctl unless `:rw`
        readonly = parts[2] == "ro" if len(parts) == 3 else kind == "bind"
    target = p_abs_path(target, path, ctx)
    if kind == "volume":
        volumes.p_volume_name(source, path, ctx)
        return VolumeSpec(source=Path(), target=target, readonly=readonly, volume=source)  # resolved later
    return VolumeSpec(source=p_dir(source, path, ctx), target=target, readonly=readonly)


def p_mount_type(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if value not in ("bind", "volume"):
        hint = "use the service's `tmpfs:` list" if value == "tmpfs" else "use `bind` (a host folder) or `volume`"
        ctx.fail(path, f"mount type {value!r} is not supported", hint)
    return str(value)


MOUNT_SETTINGS = (
    Setting("type", p_mount_type, REQUIRED, "bind|volume", "a host folder, or a named volume"),
    Setting("source", lambda v, p, c: v, None, "string", "the host folder or the volume's key"),
    Setting("target", lambda v, p, c: v, REQUIRED, "path", "where it appears in the container"),
    Setting("read_only", p_bool, None, "bool", "mounted read-only (default: host folders yes, volumes no)"),
    Setting("bind", lambda v, p, c: None, None, "mapping", "propagation and SELinux relabelling do not apply "
            "to vmctl's mounts", support=Support.IGNORED),
    Setting("volume", lambda v, p, c: None, None, "mapping", "`nocopy` and `subpath` are not implemented",
            support=Support.REFUSED, hint="remove it"),
    Setting("consistency", lambda v, p, c: None, None, "string", "docker-for-mac only", support=Support.IGNORED),
)


def p_depends_on(value: Any, path: KeyPath, ctx: Ctx) -> tuple[Dependency, ...]:
    """compose's two forms: a list of names, or a mapping name -> {condition, required, restart}."""
    if isinstance(value, list):
        value = {p_name(v, (*path, i), ctx): None for i, v in enumerate(value)}
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a list of service names or a mapping of them, not {typename(value)}")
    out = []
    for name, raw in value.items():
        p_name(name, (*path, name), ctx)
        v = parse_table(DEPENDENCY_SETTINGS, raw, (*path, name), ctx)
        out.append(Dependency(name, v["condition"], v["required"], v["restart"]))
    return tuple(out)


def p_healthcheck(value: Any, path: KeyPath, ctx: Ctx) -> HealthcheckSpec | None:
    """None where compose turns the check off: `disable: true`, or `test: ["NONE"]`."""
    raw = parse_table(HEALTHCHECK_SETTINGS, value, path, ctx)
    if raw["disable"] or raw["test"] == ("NONE",):
        return None
    if raw["test"] is None:
        ctx.fail(path, "a healthcheck needs a `test`", 'add `test: ["CMD", "prog", "arg"]`, or `disable: true`')
    return HealthcheckSpec(test=raw["test"], interval=raw["interval"], timeout=raw["timeout"],
                           retries=raw["retries"], start_period=raw["start_period"],
                           start_interval=raw["start_interval"])


def p_healthcheck_test(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    """compose forms: ["CMD", argv...], ["CMD-SHELL", "line"] or a string (run by the image's /bin/sh)."""
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    argv = p_argv(value, path, ctx)
    if argv == ("NONE",):
        return argv  # (p_healthcheck: no check)
    if argv[0] == "CMD" and len(argv) > 1:
        return argv[1:]
    if argv[0] == "CMD-SHELL" and len(argv) == 2:
        return ("/bin/sh", "-c", argv[1])
    ctx.fail(path, f"invalid healthcheck test {value!r}",
             'use ["CMD", "prog", "arg"], ["CMD-SHELL", "line"] or ["NONE"]')


# -- the environment network (vmctl/network/ builds it; docs/design.md, "The environment network")


def p_dns_label(value: Any, path: KeyPath, ctx: Ctx) -> str:
    """Network names, hostnames and aliases: each becomes a name in DNS (and an interface label)."""
    if not isinstance(value, str) or not DNS_LABEL_RE.match(value):
        ctx.fail(path, f"invalid name {value!r}", f"use {DNS_LABEL_RULE}")
    return value


p_network_driver = p_only("bridge", "network driver", "vmctl makes every network itself as a private bridge")


def p_switch_only(honoured: bool, reason: str) -> Parser:
    """A compose switch vmctl can only honour one way: off (`external`, `enable_ipv6`) or on (`enable_ipv4`)."""
    def parse(value: Any, path: KeyPath, ctx: Ctx) -> bool:
        if p_bool(value, path, ctx) is not honoured:
            ctx.fail(path, f"`{path[-1]}: {str(not honoured).lower()}` is not supported: {reason}",
                     f"remove `{path[-1]}`")
        return honoured

    return parse


def p_networks(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    nets = _named_mapping(value, path, ctx, "networks", parse_name=p_dns_label)
    return {name: parse_table(NETWORK_SETTINGS, raw, (*path, name), ctx) for name, raw in nets.items()}


def p_service_networks(value: Any, path: KeyPath, ctx: Ctx) -> tuple[Attachment, ...]:
    """compose's two forms: a list of network names, or a mapping name -> {aliases} (or empty)."""
    if isinstance(value, list):
        value = {p_dns_label(v, (*path, i), ctx): None for i, v in enumerate(value)}
    if not isinstance(value, dict) or not value:
        ctx.fail(path, f"must be a list of network names or a mapping of them, not {typename(value)}",
                 'write `networks: [front, back]` or `networks: {front: {aliases: [web]}}`')
    out = []
    for name, raw in value.items():
        p_dns_label(name, (*path, name), ctx)
        v = parse_table(ATTACHMENT_SETTINGS, raw, (*path, name), ctx)
        out.append((-v["priority"], Attachment(network=name, aliases=v["aliases"], mac_address=v["mac_address"],
                                               ipv4_address=v["ipv4_address"])))
    return tuple(a for _, a in sorted(out, key=lambda pair: pair[0]))  # stable: equal priorities keep their order


def p_aliases(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list of names, not {typename(value)}")
    return tuple(p_dns_label(v, (*path, i), ctx) for i, v in enumerate(value))


_EXPOSE = re.compile(r"^(\d+)(?:/(tcp|udp))?$")


def p_expose(value: Any, path: KeyPath, ctx: Ctx) -> tuple[int, ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list of ports, not {typename(value)}")
    out = []
    for i, item in enumerate(value):
        m = _EXPOSE.match(str(item)) if isinstance(item, str | int) and not isinstance(item, bool) else None
        if not m or not 1 <= int(m.group(1)) <= 65535:
            ctx.fail((*path, i), f"invalid port {item!r}", 'write a port like `6379` or "6379/tcp"')
        out.append(int(m.group(1)))
    return tuple(out)


def p_extra_hosts(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    """compose's `["name:IP", "name=IP"]` or `{name: IP}`: lines of the container's /etc/hosts."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        pairs = [re.split(r"[:=]", v, maxsplit=1) for v in value]
        if any(len(p) != 2 for p in pairs):
            ctx.fail(path, "each entry must be `NAME:IP`", 'write e.g. `- "db.local:10.1.2.3"`')
        items = [(i, name, ip) for i, (name, ip) in enumerate(pairs)]
    elif isinstance(value, dict):
        items = [(name, name, str(ip)) for name, ip in value.items()]
    else:
        ctx.fail(path, f"must be a list of `NAME:IP` strings or a mapping, not {typename(value)}")
    out = []
    for key, name, ip in items:
        if not _HOSTNAME.match(name):
            ctx.fail((*path, key), f"invalid host name {name!r}", "use letters, digits, `-` and `.`")
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            ctx.fail((*path, key), f"invalid address {ip!r} for `{name}`", "use an IPv4 address")
        out.append((name, ip))
    return tuple(out)


_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def p_machine_networks(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        ctx.fail(path, f"must be a non-empty list of network names, not {typename(value)}")
    return tuple(dict.fromkeys(p_dns_label(v, (*path, i), ctx) for i, v in enumerate(value)))


def p_vm(value: Any, path: KeyPath, ctx: Ctx) -> Any:
    """Checked here; merged with `defaults` when the dedicated VM is built, so the raw mapping is kept."""
    parse_table(VM_SETTINGS, value, path, ctx)
    return value


def p_hosts(value: Any, path: KeyPath, ctx: Ctx) -> tuple[HostSpec, ...]:
    from vmctl.hostspec import parse_hosts  # the hosts' settings live in their own module

    return parse_hosts(value, path, ctx)


def p_libvirt(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    return parse_table(LIBVIRT_SETTINGS, value, path, ctx)


# ---------------------------------------------------------------------------------------------------
# The tables. The README's reference is generated from these (`vmctl schema --markdown`).

DISK_SETTINGS = (
    Setting("path", p_file, None, "path", "an existing raw disk image to attach"),
    Setting("size", p_size_mib(1, 1024 * 1024), None, "size", "size of a new, empty scratch disk"),
    Setting("readonly", p_bool, False, "bool", "attach read-only"),
    Setting("name", p_name, None, "name", "the disk's serial inside the guest (/sys/block/vdX/serial)"),
)

VM_SETTINGS = (
    Setting("vcpus", p_int(1, 64), 1, "int", "virtual CPUs"),
    Setting("memory", p_size_mib(32, 256 * 1024), 256, "size", "guest RAM, e.g. `256M`, `1G`", shown="256M"),
    Setting("image", p_image, "default", "name", "guest image recipe under guest_images/"),
    Setting("kernel", p_file, None, "path", "kernel to boot (default: the guest image's)"),
    Setting("initrd", p_file, None, "path", "initramfs (default: the guest image's)"),
    Setting("cmdline", p_cmdline, (), "string|list", "extra kernel arguments"),
    Setting("accel", p_enum(Accel), Accel.AUTO, "auto|kvm|tcg", "accelerator; auto probes KVM, else TCG"),
    Setting("uri", p_uri, None, "uri", "this machine's own libvirt URI (default: the environment's)"),
    Setting("host", p_name, None, "name", "the `hosts:` entry it runs on (default: the one with most free memory)"),
    Setting("template", p_bool, True, "bool",
            "start by restoring a booted template of the machine's shape; `false` boots its kernel every time"),
)

MACHINE_SETTINGS = (
    *VM_SETTINGS,
    Setting("disks", p_disks, (), "list", "extra virtio disks: a path, or {path|size, readonly, name}"),
    Setting("ports", p_ports, (), "list", 'forwarded ports "HOST:GUEST" or "GUEST", bound to 127.0.0.1'),
    Setting("networks", p_machine_networks, None, "list",
            "networks it joins (default: those of its services, else `default`)"),
)

NETWORK_SETTINGS = (
    Setting("internal", p_bool, False, "bool", "no way out of the host: members reach only each other"),
    Setting("driver", p_network_driver, "bridge", "bridge", "a private bridge per network (the only driver)"),
    Setting("external", p_switch_only(False, "vmctl creates and removes every network of an environment itself"),
            False, "false", "networks made by another program are not supported"),
    Setting("enable_ipv6", p_switch_only(False, "environment networks are IPv4 only"), False, "false",
            "IPv6 is not supported"),
    Setting("labels", p_labels, (), "mapping|list", "metadata, kept in the resolved model"),
    Setting("ipam", fixed_nics.p_ipam, None, "mapping", "`config: [{subnet: CIDR}]`: the network's own private IPv4 "
            "subnet (/16 to /28), where services may fix their `ipv4_address`; default: a /24 of 10.77.0.0/16"),
    Setting("enable_ipv4", p_switch_only(True, "environment networks are IPv4"), True, "true", "IPv4 is always on"),
    Setting("name", lambda v, p, c: None, None, "string", "the bridge lives in the environment's own network "
            "namespace, where nothing else looks it up by name", support=Support.IGNORED),
    Setting("attachable", lambda v, p, c: None, None, "bool", "Swarm-only: members are the environment's services",
            support=Support.IGNORED),
    Setting("driver_opts", lambda v, p, c: None, None, "mapping", "the bridge of an environment network takes no "
            "options", support=Support.REFUSED, hint="remove it"),
)

ATTACHMENT_SETTINGS = (
    Setting("aliases", p_aliases, (), "list", "more names this service is found by on this network"),
    Setting("mac_address", fixed_nics.p_mac, None, "string", "its NIC's MAC address on this network (default: one "
            "derived from the environment, member and network names)"),
    Setting("ipv4_address", fixed_nics.p_ipv4_address, None, "string", "its fixed address on this network, which "
            "must have a subnet of its own (`ipam`); default: the next free one"),
    Setting("priority", p_int(-(2**31), 2**31 - 1), 0, "int", "networks of higher priority come first: "
            "its NICs are in that order (a host container's eth0, eth1...) and so is the search for a name"),
    *unsupported(compose_keys.ATTACHMENT),
)

HEALTHCHECK_SETTINGS = (
    Setting("test", p_healthcheck_test, None, "list|string",
            'e.g. ["CMD", "wget", "-q", "-O-", "URL"]; ["NONE"]: no check', shown="**required**"),
    Setting("interval", p_duration, 2.0, "duration", "time between checks"),
    Setting("timeout", p_duration, 5.0, "duration", "time one check may take"),
    Setting("retries", p_int(1, 1000), 5, "int", "failures in a row before the service is unhealthy"),
    Setting("start_period", p_duration, 0.0, "duration", "grace time before failures count"),
    Setting("start_interval", p_duration, None, "duration", "time between checks during `start_period` "
            "(default: `interval`)"),
    Setting("disable", p_bool, False, "bool", "no healthcheck (as `test: [\"NONE\"]`)"),
)

DEPENDENCY_SETTINGS = (
    Setting("condition", p_enum(Condition), Condition.STARTED, "service_started|service_healthy|"
            "service_completed_successfully", "what this service waits for before it starts: the "
            "dependency running, healthy (it needs a `healthcheck`, or an image with a HEALTHCHECK), or exited "
            "with code 0"),
    Setting("required", p_bool, True, "bool", "false: a dependency that is not in the file (an inactive "
            "profile) is left out with a warning"),
    Setting("restart", p_bool, False, "bool", "`vmctl restart` of the dependency restarts this service too"),
)

SERVICE_SETTINGS = (
    Setting("image", p_str, None, "string", "docker-archive or OCI archive/layout path, a local docker/podman "
            "image, or a registry reference (`127.0.0.1:5000/app:1`, `redis:7`, `NAME@sha256:...`); with "
            "`build`, the built image's name", shown="**required** (or `build`)"),
    Setting("build", p_build, None, "string|mapping", "the image built from a Dockerfile by podman (or docker): "
            "the context folder, or `context`, `dockerfile`, `args`, `target`... (see `services.NAME.build:`)"),
    Setting("command", p_argv, None, "list|string", "overrides the image's CMD"),
    Setting("entrypoint", p_argv, None, "list|string", "overrides the image's ENTRYPOINT"),
    Setting("environment", p_environment, (), "mapping|list", "environment variables"),
    Setting("working_dir", p_abs_path, None, "path", "working directory in the container"),
    Setting("user", p_user, None, "USER[:GROUP]", "user to run as: numbers, or names looked up in the image's "
            "/etc/passwd and /etc/group"),
    Setting("ports", p_ports, (), "list", 'published ports "HOST:CONTAINER", bound to 127.0.0.1'),
    Setting("volumes", p_volumes, (), "list", '"./folder:/path[:ro|rw]" (read-only by default) or '
            '"VOLUME:/path[:ro|rw]" (a named volume, writable by default), or the long form'),
    Setting("volumes_from", p_volumes_from, (), "list", "`SERVICE[:ro|rw]`: every volume of that service (host "
            "folders and named volumes) mounted here too, at the same paths, in its mode unless `:ro`/`:rw` says"),
    Setting("depends_on", p_depends_on, (), "list|mapping", "services started before this one (list), or "
            "name -> `condition`, `required`, `restart`"),
    Setting("healthcheck", p_healthcheck, None, "mapping", "test, interval, timeout, retries, start_period; "
            "none at all: the image's HEALTHCHECK (docker's image format), as under compose"),
    Setting("restart", p_restart, (Restart.NO, None), '"no"|always|on-failure[:N]|unless-stopped',
            "restart policy, applied by the guest's supervisor (microVM) or vmctl's host supervisor (container)",
            shown='"no"'),
    Setting("isolation", p_enum(Isolation), Isolation.MICROVM, "microvm|container",
            "a dedicated microVM, or a plain container on the host"),
    Setting("machine", p_name, None, "name", "run inside this declared machine instead of a dedicated VM"),
    Setting("vm", p_vm, None, "mapping", "resources of the dedicated microVM (vcpus, memory, kernel, ...)"),
    Setting("host", p_name, None, "name", "the `hosts:` entry its microVM runs on (same as `vm: {host: ...}`)"),
    Setting("read_only", p_bool, True, "bool", "mount the container's root filesystem read-only"),
    Setting("privileged", p_bool, False, "bool", "all capabilities and devices (weakens isolation)"),
    Setting("hostname", p_dns_label, None, "name", "the container's hostname, and one more name on its networks"),
    Setting("networks", p_service_networks, None, "list|mapping",
            "networks it joins, with `aliases`, `mac_address` and `priority` per network (default: `default`)"),
    Setting("mac_address", fixed_nics.p_mac, None, "string", "its MAC address on its first network (the one of highest "
            "`priority`), as `networks: {NAME: {mac_address: ...}}` says it there; its own microVM's NIC or its "
            "host container's veth gets it"),
    Setting("expose", p_expose, (), "list", "ports reachable on its networks (documentation: all are)"),
    Setting("extra_hosts", p_extra_hosts, (), "list|mapping", '"NAME:IP" lines for its /etc/hosts'),
    Setting("links", p_links, (), "list", '"SERVICE[:ALIAS]": the linked service\'s address under ALIAS in its '
            "/etc/hosts, and a `depends_on` (the service's own name resolves on shared networks anyway)"),
    Setting("dns", p_dns, (), "list|string", "nameservers after the environment's resolver (instead of user-mode "
            "networking's), for names outside the environment"),
    Setting("dns_search", p_domains, (), "list|string", "search domains of its /etc/resolv.conf"),
    Setting("dns_opt", p_dns_opt, (), "list", "`options` of its /etc/resolv.conf (`ndots:2`, `timeout:1`...)"),
    Setting("domainname", p_domainname, None, "name", "the container's NIS domain name (`domainname`)"),
    Setting("group_add", p_group_add, (), "list", "supplementary groups of its process: names looked up in the "
            "image's /etc/group, or numbers"),
    Setting("stdin_open", p_bool, False, "bool", "keep its standard input open: a pipe nobody writes to, instead "
            "of /dev/null, so a program that reads stdin (`sh`, `cat`) waits rather than ending at EOF"),
    Setting("tty", p_bool, False, "bool", "give its process a terminal (docker's -t): programs see a tty, and "
            "its log is the terminal's output (lines end in CRLF, as `docker logs` shows them). In a microVM "
            "util-linux's `script` holds the terminal; on the host a relay of vmctl's receives runc's console"),
    Setting("shm_size", p_bytes_mib, None, "size", "the size of its /dev/shm tmpfs (default 64m)"),
    Setting("network_mode", lambda v, p, c: None, None, "-", "every service is a member of its environment's "
            "networks", support=Support.REFUSED, hint="remove it; use `networks:` to choose networks"),
    Setting("env_file", lambda v, p, c: None, None, "path|list",
            "read into `environment` at load time (`environment` wins); `{path, required: false}` for optional"),
    Setting("extends", lambda v, p, c: None, None, "string|mapping",
            "`NAME`, or `{service: NAME, file: FILE}`: that service's settings under this one's, merged at load "
            "time as override files are (its `depends_on`, `volumes_from`, `links` are not inherited; FILE's "
            "relative paths stay relative to FILE)"),
    Setting("container_name", p_container_name, None, "string",
            "the runtime's container name (runc on the host, crun in the guest); default: the service's"),
    Setting("labels", p_labels, (), "mapping|list", "OCI annotations of the container, and the dedicated "
            "microVM's domain metadata (`<vmctl:label>`)"),
    Setting("label_file", lambda v, p, c: None, None, "path|list",
            "`KEY=VALUE` lines read into `labels` at load time (`labels` wins), as `env_file` is read"),
    Setting("annotations", p_labels, (), "mapping|list", "OCI annotations of the container"),
    Setting("tmpfs", p_tmpfs, (), "path|list", "tmpfs mounts: `/path[:size=64m,mode=1777,noexec,...]`"),
    Setting("secrets", file_mounts.p_service("secrets"), (), "list", "top-level secrets it sees, read-only: "
            "names (at `/run/secrets/NAME`) or `{source, target, uid, gid, mode}`"),
    Setting("configs", file_mounts.p_service("configs"), (), "list", "top-level configs it sees, read-only: "
            "names (at `/NAME`) or `{source, target, uid, gid, mode}`"),
    Setting("cap_add", p_caps, (), "list", "capabilities added to docker's default set (`NET_ADMIN`, `ALL`)"),
    Setting("cap_drop", p_caps, (), "list", "capabilities removed from it (`ALL`: none left but those added)"),
    Setting("security_opt", p_security_opt, True, "list", "only `no-new-privileges[:true|false]` (vmctl's "
            "default: on; compose's: off)", shown="[no-new-privileges]"),
    Setting("init", p_bool, False, "bool", "run tini (the host's `tini-static`) as PID 1: it reaps zombies and "
            "forwards signals"),
    Setting("stop_signal", p_signal, "SIGTERM", "signal", "the signal that asks the container to stop"),
    Setting("stop_grace_period", p_duration, None, "duration",
            "time between `stop_signal` and SIGKILL at `down` and `stop` (default: 5s in a microVM, 10s on the host)"),
    Setting("ulimits", p_ulimits, (), "mapping", "`nofile: 1024` or `nofile: {soft: 1024, hard: 2048}` (default: "
            "nofile 1024)"),
    Setting("sysctls", p_sysctls, (), "mapping|list", "namespaced sysctls only: net.*, kernel.shm*, kernel.msg*, "
            "kernel.sem, fs.mqueue.*; in a microVM, net.* are set on the guest's network stack (the container "
            "shares it; not allowed with `machine`)"),
    Setting("mem_limit", p_bytes_mib, None, "size", "the container's memory limit (cgroup); a dedicated microVM gets "
            f"this plus {GUEST_OVERHEAD_MIB} MiB unless `vm.memory` says otherwise"),
    Setting("mem_reservation", p_bytes_mib, None, "size", "a soft memory limit (cgroup `memory.low`/reservation)"),
    Setting("cpus", p_cpus, None, "number", "CPU time limit (cgroup quota); a dedicated microVM gets "
            "ceil(cpus) vCPUs unless `vm.vcpus` says otherwise"),
    Setting("pids_limit", p_pids_limit, None, "int", "the most processes the container may have (-1: no limit)"),
    Setting("cpu_period", p_cpu_micros(1_000, 1_000_000), None, "int|duration", "the CFS period, microseconds or a "
            "duration (default 100ms): the cgroup's `cpu.max` period, which `cpus` and `cpu_quota` are shares of"),
    Setting("cpu_quota", p_cpu_micros(1_000, 64_000_000), None, "int|duration", "CPU time per period, microseconds "
            "or a duration: as `cpus` = cpu_quota / cpu_period (say one of the two), and it sizes a dedicated "
            "microVM as `cpus` does"),
    Setting("cpu_shares", p_int(2, 262_144), None, "int", "its CPU weight against other containers when the CPUs "
            "are busy (docker's 1024 is the default): cgroup v1's `cpu.shares`, or the `cpu.weight` the runtime "
            "maps it to on cgroup v2"),
    Setting("cpuset", p_cpuset, (), "string", "the CPUs it may run on (`0-1`, `0,2`: cgroup `cpuset.cpus`); a "
            "dedicated microVM gets enough vCPUs for the highest one unless `vm.vcpus` says otherwise"),
    Setting("post_start", p_hooks, (), "list", "commands run in the container once it has started, as `vmctl exec` "
            "runs them (`{command, user, working_dir, environment}`); one that fails fails the start"),
    Setting("pre_stop", p_hooks, (), "list", "commands run in the container before its `stop_signal` (`stop`, "
            "`down`, `up --force-recreate`); one that fails is a warning and the stop goes on"),
    Setting("logging", p_logging, None, "mapping", "`driver: json-file` (compose's default) or `local`: the "
            "container's output goes to its own log file, read by `vmctl logs`, rotated by `max-size` and "
            "`max-file`; see `logging:` below"),
    Setting("ipc", p_only(("private", "shareable"), "ipc mode", "each container has an IPC namespace of its own, "
            "which no other joins"), None, "private|shareable", "what vmctl always does: an IPC namespace of "
            "its own (`host` and `service:NAME` are refused)"),
    Setting("cgroup", p_only("private", "cgroup mode", "each container has a cgroup namespace of its own"), None,
            "private", "what vmctl always does: a cgroup namespace of its own (`host` is refused)"),
    Setting("userns_mode", p_only("host", "userns_mode", "containers run without a user namespace (root in the "
            "container is root of its kernel: the guest's, or the host's)"), None, "host",
            "what vmctl always does: no user namespace of its own"),
    Setting("oom_score_adj", p_int(-1000, 1000), None, "int", "its processes' OOM-killer preference "
            "(`/proc/PID/oom_score_adj`: 1000 goes first, -1000 never)"),
    Setting("deploy", p_deploy, Deploy(), "mapping", "`resources.limits` (memory, cpus, pids) and "
            "`resources.reservations.memory`, as `mem_limit`, `cpus`, `pids_limit`, `mem_reservation`; "
            "`replicas`, as `scale`", shown="-"),
    Setting("scale", p_int(1, MAX_REPLICAS), None, "int", "N instances `NAME-1`..`NAME-N`, each its own microVM "
            "(or host container), all found by `NAME` on the network; no fixed host ports, `hostname`, "
            "`container_name` or `machine`"),
    Setting("profiles", p_profiles, (), "list", "the service starts only when one of these is active "
            "(`--profile`, COMPOSE_PROFILES)"),
    Setting("platform", p_platform, None, "string", "`linux/amd64` only (anything else is refused)"),
    Setting("pull_policy", p_pull_policy, PullPolicy.MISSING, "always|missing|never",
            "when a registry image is pulled: `missing` (or `if_not_present`) when vmctl's cache has none for the "
            "reference, `always` at every `up` and `pull` (a tag pushed again is picked up), `never` (the cache "
            "only); archives and local engine images are read in place; `build` (with `build:`): built at every `up`"),
    *unsupported(compose_keys.SERVICE),
)

LIBVIRT_SETTINGS = (
    Setting("uri", p_uri, None, "uri", "libvirt connection (default: an embedded driver, no daemon)"),
)


def p_machines(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    return _named_mapping(value, path, ctx, "machines")


def p_services(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    return _named_mapping(value, path, ctx, "services")


def _named_mapping(value: Any, path: KeyPath, ctx: Ctx, what: str, parse_name: Parser = p_name) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(path, f"`{what}` must be a mapping from name to settings, not {typename(value)}")
    for name in value:
        parse_name(name, (*path, name), ctx)
    return value


ENV_SETTINGS = (
    Setting("name", p_name, None, "name", "environment name (default: the file's folder)"),
    Setting("libvirt", p_libvirt, None, "mapping", "`uri`: the libvirt connection"),
    Setting("defaults", lambda v, p, c: v, None, "mapping", "machine settings every machine starts from"),
    Setting("machines", p_machines, None, "mapping", "name -> machine settings"),
    Setting("services", p_services, None, "mapping", "name -> container service settings"),
    Setting("networks", p_networks, None, "mapping", "name -> network settings (`default` always exists)"),
    Setting("volumes", volumes.p_top_volumes, None, "mapping",
            "name -> named volume settings: folders vmctl keeps across `down` (`down -v` removes them)"),
    Setting("hosts", p_hosts, (), "mapping", "name -> libvirt host machines run on (default: this machine)"),
    Setting("secrets", file_mounts.p_top("secrets"), None, "mapping",
            "name -> a secret: `file:` or `environment:` (services list the ones they see)"),
    Setting("configs", file_mounts.p_top("configs"), None, "mapping",
            "name -> a config: `file:`, `environment:` or `content:` (services list the ones they see)"),
    Setting("include", lambda v, p, c: None, None, "list", "compose files (or `{path, project_directory, "
            "env_file}`) loaded as projects of their own (their folder, their `.env`) at load time; their "
            "`services`, `networks`, `volumes` are added; a name defined twice is an error"),
    *unsupported(compose_keys.TOP_LEVEL),
)


# ---------------------------------------------------------------------------------------------------
# From the document to the Environment


def load_environment(files: Path | Sequence[Path] = (), *, name_override: str | None = None,
                     profiles: Sequence[str] = (), cwd: Path | None = None,
                     environ: Mapping[str, str] | None = None, env_files: Sequence[Path] = ()) -> Environment:
    """Load the files as compose does (`vmctl.load`), then check them against the settings table."""
    model = load_project([files] if isinstance(files, Path) else files, cwd=cwd, environ=environ,
                         project_name=name_override, profiles=profiles, env_files=env_files)
    return environment_from(model)


def environment_from(model: Model) -> Environment:
    name_override = model.project_name
    if name_override is not None and not NAME_RE.match(name_override):
        # The name becomes a folder, a lock file and libvirt domain names: never a path or markup.
        raise UsageError(f"invalid environment name {name_override!r} (from `-p/--project-name` or "
                         "COMPOSE_PROJECT_NAME)", hint=f"names use {NAME_RULE}")
    ctx = Ctx(model)
    top = parse_table(ENV_SETTINGS, model.data, (), ctx, extensible=True)
    defaults = parse_table(MACHINE_SETTINGS, top["defaults"], ("defaults",), ctx)
    machines = [_machine(name, raw, ctx, defaults) for name, raw in (top["machines"] or {}).items()]
    raws = top["services"] or {}
    counts: dict[str, int] = {}
    services = [_service(name, raw, ctx, defaults, counts) for name, raw in raws.items()]
    services = _with_volumes_from(_optional_dependencies(services, ctx), ctx)
    pairs = replicas.expand(list(zip(services, raws.values(), strict=True)), counts, ctx)
    services = [s for s, _ in pairs]
    machines += [_dedicated_vm(s, raw, defaults, ctx) for s, raw in pairs
                 if s.isolation is Isolation.MICROVM and s.machine is None]
    services = [replace(s, machine=s.name) if s.isolation is Isolation.MICROVM and s.machine is None else s
                for s in services]
    machines = [_with_service_networks(_with_service_ports(m, services), services, ctx) for m in machines]
    name = name_override or top["name"] or folder_name(model.file)
    # compose's name for an image it builds: PROJECT-SERVICE
    services = [replace(s, image=f"{name}-{s.replica_of or s.name}") if s.build and not s.image else s
                for s in services]
    named = volumes.declared(name, top["volumes"] or {})
    services = [_with_named_volumes(s, named, ctx) for s in services]
    sources = {kind: file_mounts.declared(kind, top[kind] or {}, ctx, model.variables) for kind in file_mounts.KINDS}
    services = [replace(s, files=file_mounts.resolve(s.name, s.files, sources, ctx)) for s in services]
    env = Environment(
        name=name,
        file=model.file,
        base_dir=ctx.base_dir,
        uri=(top["libvirt"] or {}).get("uri"),
        machines=tuple(machines),
        services=tuple(services),
        networks=_used_networks(top["networks"] or {}, machines, services, ctx),
        volumes=named,
        hosts=top["hosts"],
        places={dotted(k): model.where(k) for k in model.origins},
        files=model.files,
        warnings=tuple(dict.fromkeys(ctx.warnings)),
    )
    if not env.machines and not env.services:
        ctx.fail((), "the environment declares no machines and no services",
                 "add a `machines:` or `services:` mapping (see examples/quickstart.yaml)")
    _check_references(env, ctx)
    _check_hosts(env, ctx)
    _check_port_conflicts(env, ctx)
    _check_names(env, ctx)
    fixed_nics.check(env, ctx)
    _check_cpusets(env, ctx)
    return env


def folder_name(file: Path) -> str:
    raw = file.resolve().parent.name.lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:32].strip("-")
    return name or "default"


def _machine(name: str, raw: Any, ctx: Ctx, defaults: Mapping[str, Any]) -> MachineSpec:
    v = parse_table(MACHINE_SETTINGS, raw, ("machines", name), ctx, defaults)
    return MachineSpec(name=name, vcpus=v["vcpus"], memory_mib=v["memory"], image=v["image"],
                       kernel=v["kernel"], initrd=v["initrd"], cmdline=v["cmdline"], disks=v["disks"],
                       ports=v["ports"], accel=v["accel"], uri=v["uri"], host=v["host"], networks=v["networks"] or (),
                       template=v["template"])


def _service(name: str, raw: Any, ctx: Ctx, defaults: Mapping[str, Any], counts: dict[str, int]) -> ServiceSpec:
    path = ("services", name)
    v = parse_table(SERVICE_SETTINGS, raw, path, ctx, extensible=True)
    counts[name] = replicas.count(v["scale"], v["deploy"].replicas, path, ctx)
    if v["image"] is None and v["build"] is None:
        ctx.fail(path, f"service `{name}` has no `image`", "set `image:` (an archive, a name, a registry "
                 "reference) or `build:` (a folder with a Dockerfile)")
    if v["pull_policy"] is PullPolicy.BUILD and v["build"] is None:
        ctx.fail((*path, "pull_policy"), "`pull_policy: build` needs a `build:` section", "add `build:`, or "
                 "use `always`, `missing` or `never`")
    if v["cpu_quota"] is not None and (v["cpus"] or v["deploy"].limits.cpus):
        ctx.fail((*path, "cpu_quota"), "`cpu_quota` and `cpus` both limit the CPU time",
                 "say it once: `cpus: 0.5` is `cpu_quota: 50000` of the default `cpu_period: 100000`")
    if v["cpu_quota"] is not None and v["cpu_quota"] > 64 * (v["cpu_period"] or CPU_PERIOD):
        ctx.fail((*path, "cpu_quota"), "`cpu_quota` over `cpu_period` is more than 64 CPUs",
                 "a quota of at most 64 periods (as `cpus`: 0.01 to 64)")
    if v["isolation"] is Isolation.CONTAINER and (v["machine"] or v["vm"]):
        key = "machine" if v["machine"] else "vm"
        ctx.fail((*path, key), f"`{key}` does not apply to `isolation: container`",
                 "remove it, or use `isolation: microvm`")
    if v["host"] and (v["machine"] or v["isolation"] is Isolation.CONTAINER):
        ctx.fail((*path, "host"), "`host` applies to a service's own microVM only",
                 "a service in a `machine` runs on that machine's host (set `host` there); a container runs here")
    if v["machine"] and v["vm"]:
        ctx.fail((*path, "vm"), "`vm` and `machine` exclude each other",
                 "a service runs in a declared machine (`machine`) or in its own VM sized by `vm`")
    restart, retries = v["restart"]
    networks = _with_mac(v["networks"] or (Attachment(DEFAULT_NETWORK),), v["mac_address"], path, ctx)
    if v["machine"] and any(key.startswith("net.") for key, _ in v["sysctls"]):
        ctx.fail((*path, "sysctls"), "net.* sysctls of a service in a shared machine would change the network of "
                 "every service in it (containers in a guest share its network stack)",
                 "give the service its own microVM (drop `machine`), or use `isolation: container`")
    return ServiceSpec(name=name, image=v["image"] or "", build=v["build"], command=v["command"],
                       entrypoint=v["entrypoint"],
                       environment=v["environment"], working_dir=v["working_dir"], user=v["user"],
                       ports=v["ports"], volumes=v["volumes"], dependencies=_with_links(v["depends_on"], v["links"]),
                       healthcheck=v["healthcheck"], restart=restart, restart_retries=retries,
                       isolation=v["isolation"], machine=v["machine"], read_only=v["read_only"],
                       privileged=v["privileged"], container_name=v["container_name"], labels=v["labels"],
                       annotations=v["annotations"], tmpfs=v["tmpfs"], cap_add=v["cap_add"], cap_drop=v["cap_drop"],
                       no_new_privileges=v["security_opt"], init=v["init"], stop_signal=v["stop_signal"],
                       stop_grace_period=v["stop_grace_period"], ulimits=v["ulimits"], sysctls=v["sysctls"],
                       limits=_limits(v), profiles=v["profiles"], hostname=v["hostname"],
                       networks=networks, expose=v["expose"],
                       extra_hosts=v["extra_hosts"], pull_policy=v["pull_policy"], links=v["links"], dns=v["dns"],
                       dns_search=v["dns_search"], dns_options=v["dns_opt"], domainname=v["domainname"],
                       group_add=v["group_add"], shm_mib=v["shm_size"], files=(*v["secrets"], *v["configs"]),
                       stdin_open=v["stdin_open"], tty=v["tty"], oom_score_adj=v["oom_score_adj"],
                       log_rotation=v["logging"],
                       post_start=v["post_start"], pre_stop=v["pre_stop"], volumes_from=v["volumes_from"],
                       healthcheck_from_image=not (isinstance(raw, Mapping) and "healthcheck" in raw))


def _with_mac(networks: tuple[Attachment, ...], mac: str | None, path: KeyPath, ctx: Ctx) -> tuple[Attachment, ...]:
    """The service's own `mac_address` is its first network's (compose's, for the network of highest priority)."""
    if mac is None:
        return networks
    first = networks[0]
    if first.mac_address is not None:
        ctx.fail((*path, "mac_address"), f"network `{first.network}` has a `mac_address` of its own already",
                 f"say it once: keep `networks.{first.network}.mac_address` or this one")
    return (replace(first, mac_address=mac), *networks[1:])


def _limits(v: Mapping[str, Any]) -> Limits:
    """The service's own keys win over `deploy.resources` (compose lets both say it; they should agree)."""
    deploy: Limits = v["deploy"].limits
    quota_cpus = v["cpu_quota"] / (v["cpu_period"] or CPU_PERIOD) if v["cpu_quota"] is not None else None
    return Limits(memory_mib=v["mem_limit"] or deploy.memory_mib,
                  memory_reservation_mib=v["mem_reservation"] or deploy.memory_reservation_mib,
                  cpus=v["cpus"] or deploy.cpus or quota_cpus, cpu_period_us=v["cpu_period"],
                  pids=v["pids_limit"] or deploy.pids, cpu_shares=v["cpu_shares"],
                  cpuset=v["cpuset"])


def _dedicated_vm(service: ServiceSpec, raw: Mapping[str, Any], defaults: Mapping[str, Any],
                  ctx: Ctx) -> MachineSpec:
    v = parse_table(VM_SETTINGS, raw.get("vm"), ("services", service.name, "vm"), ctx, defaults)
    explicit = set(raw.get("vm") or {}) | set(ctx.doc.data.get("defaults") or {})
    v.update(_sized_for(service.limits, explicit))
    if service.volumes and "image" not in explicit:
        # Folders reach a guest over virtio-9p, which only the minimal image's kernel has built in: a
        # compose file's volumes work unchanged, without a `vm: {image: minimal}` line.
        v["image"] = FOLDER_IMAGE
    return MachineSpec(name=service.name, vcpus=v["vcpus"], memory_mib=v["memory"], image=v["image"],
                       kernel=v["kernel"], initrd=v["initrd"], cmdline=v["cmdline"], accel=v["accel"],
                       uri=v["uri"], host=raw.get("host") or v["host"], dedicated_to=service.name,
                       template=v["template"])


FOLDER_IMAGE = "minimal"  # the guest image a dedicated microVM with `volumes` gets unless told otherwise


def _sized_for(limits: Limits, explicit: set[str]) -> dict[str, Any]:
    """A dedicated microVM sized by its container's limits, where `vm:` and `defaults:` do not size it:
    RAM = the memory limit + GUEST_OVERHEAD_MIB (kernel, the tmpfs root, crun, the writable layer's tmpfs),
    vCPUs = the CPU limit rounded up, and at least one more than the highest CPU of `cpuset`."""
    sized: dict[str, Any] = {}
    if limits.memory_mib is not None and "memory" not in explicit:
        sized["memory"] = limits.memory_mib + GUEST_OVERHEAD_MIB
    if (limits.cpus is not None or limits.cpuset) and "vcpus" not in explicit:
        sized["vcpus"] = max(math.ceil(limits.cpus or 1), max(limits.cpuset, default=0) + 1)
    return sized


def _with_service_ports(machine: MachineSpec, services: Sequence[ServiceSpec]) -> MachineSpec:
    """A service in a VM shares the guest's network stack, so its ports are forwards of its machine."""
    extra = tuple(p for s in services if s.machine == machine.name for p in s.ports)
    return replace(machine, ports=machine.ports + extra) if extra else machine


def _with_service_networks(machine: MachineSpec, services: Sequence[ServiceSpec], ctx: Ctx) -> MachineSpec:
    """A machine's services share its address (as the containers of a pod do), so it joins their networks.

    A machine that names its `networks` keeps them, and its services may only use those."""
    mine = [s for s in services if s.machine == machine.name]
    if machine.networks:
        for s in mine:
            for a in s.networks:
                if a.network not in machine.networks and machine.dedicated_to is None:
                    ctx.fail(("services", s.name, "networks", a.network),
                             f"`{s.name}` runs in machine `{machine.name}`, which is not on network `{a.network}`",
                             f"add `{a.network}` to `machines.{machine.name}.networks`, or remove it here")
        return machine
    wanted = [a.network for s in mine for a in s.networks] or [DEFAULT_NETWORK]
    return replace(machine, networks=tuple(dict.fromkeys(wanted)))


def _with_named_volumes(svc: ServiceSpec, named: Sequence[volumes.NamedVolume], ctx: Ctx) -> ServiceSpec:
    """A named volume's folder in place of its key; an undeclared key fails, as in compose."""
    by_key = {v.key: v for v in named}
    out = []
    for i, v in enumerate(svc.volumes):
        if v.volume is not None:
            if v.volume not in by_key:
                ctx.fail(("services", svc.name, "volumes", i), f"undeclared volume `{v.volume}`",
                         did_you_mean(v.volume, by_key, "volumes") + " (declare it under top-level `volumes:`, "
                         "or write `./" + v.volume + "` for a host folder)")
            v = replace(v, source=by_key[v.volume].path)
        out.append(v)
    return replace(svc, volumes=tuple(out))


def _used_networks(declared: Mapping[str, Any], machines: Sequence[MachineSpec], services: Sequence[ServiceSpec],
                   ctx: Ctx) -> tuple[NetworkSpec, ...]:
    """The networks members join, in declaration order (`default` first when used); undeclared ones fail."""
    used = [n for m in machines for n in m.networks]
    used += [a.network for s in services if s.isolation is Isolation.CONTAINER for a in s.networks]
    for m in machines:
        for n in m.networks:
            if n != DEFAULT_NETWORK and n not in declared:
                svc = next((s for s in services if s.machine == m.name and
                            any(a.network == n for a in s.networks)), None)
                path = ("services", svc.name, "networks", n) if svc else ("machines", m.name, "networks")
                ctx.fail(path, f"undeclared network `{n}`", did_you_mean(n, declared, "networks"))
    for s in services:
        for a in s.networks:
            if a.network != DEFAULT_NETWORK and a.network not in declared:
                ctx.fail(("services", s.name, "networks", a.network), f"undeclared network `{a.network}`",
                         did_you_mean(a.network, declared, "networks") + " (declare it under top-level `networks:`)")
    names = [n for n in (DEFAULT_NETWORK, *declared) if n in used]
    return tuple(NetworkSpec(name=n, internal=bool(declared.get(n, {}).get("internal")),
                             subnet=declared.get(n, {}).get("ipam")) for n in names)


def _check_names(env: Environment, ctx: Ctx) -> None:
    """On each network a name (service, hostname, alias, machine) belongs to one member, except a
    replicated service's name, which all its instances share."""
    for net in env.networks:
        owner: dict[str, str] = {}
        claims = [(m.name, m.name, ("machines", m.name)) for m in env.machines
                  if m.dedicated_to is None and net.name in m.networks]
        claims += [(s.machine or s.name, n, ("services", s.replica_of or s.name))
                   for s in env.services if net.name in _networks_of(env, s) for n in s.names_on(net.name)]
        shared = {s.replica_of: s.replica_of for s in env.services if s.replica_of}
        for member, name, path in claims:
            if owner.setdefault(name, shared.get(name, member)) != shared.get(name, member):
                ctx.fail(path, f"the name `{name}` is claimed twice on network `{net.name}`",
                         "each service name, hostname and alias must be unique on a network: rename one")


def _check_cpusets(env: Environment, ctx: Ctx) -> None:
    """A microVM's CPUs are its vCPUs: a `cpuset` beyond them could never be written to the cgroup."""
    for s in env.services:
        m = env.machine(s.machine) if s.machine else None
        if m is not None and s.limits.cpuset and max(s.limits.cpuset) >= m.vcpus:
            ctx.fail(("services", s.replica_of or s.name, "cpuset"),
                     f"CPU {max(s.limits.cpuset)} is not in its microVM `{m.name}`, which has {m.vcpus} vCPU(s)",
                     f"use CPUs 0-{m.vcpus - 1}, or give the microVM more (`vcpus` of the machine, or `vm.vcpus`)")


def _networks_of(env: Environment, svc: ServiceSpec) -> tuple[str, ...]:
    if svc.isolation is Isolation.CONTAINER:
        return tuple(a.network for a in svc.networks)
    machine = env.machine(svc.machine or svc.name)
    return machine.networks if machine else ()


def _check_references(env: Environment, ctx: Ctx) -> None:
    declared = {m.name for m in env.machines if m.dedicated_to is None}
    for s in env.services:
        if s.name in declared:
            ctx.fail(("services", s.name), f"`{s.name}` is both a machine and a service",
                     "machines and services share one namespace (so `exec NAME` is unambiguous): rename one")
        if s.machine and s.machine != s.name and s.machine not in declared:
            ctx.fail(("services", s.name, "machine"), f"unknown machine `{s.machine}`",
                     did_you_mean(s.machine, declared, "machines"))
        for i, (linked, _) in enumerate(s.links):
            if env.service(linked) is None:
                ctx.fail(("services", s.replica_of or s.name, "links", i), f"unknown service `{linked}`",
                         did_you_mean(linked, [x.name for x in env.services], "services"))
        for dep in s.dependencies:
            target = env.service(dep.service)
            path = _dependency_path(ctx, s.replica_of or s.name, (target and target.replica_of) or dep.service)
            if target is None:
                ctx.fail(path, f"unknown service `{dep.service}`",
                         did_you_mean(dep.service, [x.name for x in env.services], "services"))
            if dep.condition is Condition.HEALTHY and target.healthcheck is None and \
                    not target.healthcheck_from_image:  # (the image's is checked at `up`, once it is known)
                ctx.fail(path, f"`{dep.service}` has no healthcheck, so it never becomes healthy",
                         f"give `{dep.service}` a `healthcheck`, or use `condition: service_started`")
    cycle = _find_cycle({s.name: s.depends_on for s in env.services})
    if cycle:
        ctx.fail(("services", cycle[0], "depends_on"), f"`depends_on` cycle: {' -> '.join(cycle)}",
                 "remove one of these dependencies")


def _with_links(deps: tuple[Dependency, ...], links: tuple[tuple[str, str], ...]) -> tuple[Dependency, ...]:
    """A link is also a dependency (compose's rule): the linked service starts first."""
    named = {d.service for d in deps}
    return deps + tuple(Dependency(service) for service in dict.fromkeys(s for s, _ in links) if service not in named)


def _dependency_path(ctx: Ctx, service: str, dependency: str) -> KeyPath:
    """Where the file names a dependency: its key in the mapping form, its index in the list form."""
    written = ((ctx.doc.data.get("services") or {}).get(service) or {}).get("depends_on")
    key: str | int = written.index(dependency) if isinstance(written, list) and dependency in written else dependency
    return ("services", service, "depends_on", key)


def _optional_dependencies(services: Sequence[ServiceSpec], ctx: Ctx) -> list[ServiceSpec]:
    """`required: false` dependencies on a service the file does not run (an inactive profile) are
    left out, with a warning, as compose does."""
    known = {n for s in services for n in (s.name, s.replica_of) if n}
    out = []
    for s in services:
        missing = [d for d in s.dependencies if not d.required and d.service not in known]
        for d in missing:
            ctx.warn(("services", s.replica_of or s.name, "depends_on", d.service),
                     f"optional dependency `{d.service}` is not in the file (an inactive profile?): left out")
        out.append(replace(s, dependencies=tuple(d for d in s.dependencies if d not in missing)) if missing else s)
    return out


def _check_hosts(env: Environment, ctx: Ctx) -> None:
    """`host:` names a declared host, and a machine on a host takes its URI from there."""
    declared = [h.name for h in env.hosts]
    for m in env.machines:
        base = ("services", m.dedicated_to) if m.dedicated_to else ("machines", m.name)
        if m.host is not None and m.host not in declared:
            keys = [(*base, "host"), (*base, "vm", "host"), ("defaults", "host")]
            ctx.fail(next((k for k in keys if env.place(dotted(k))), base), f"undeclared host `{m.host}`",
                     did_you_mean(m.host, declared, "hosts") + " (declare it under top-level `hosts:`)")
        if env.hosts and m.uri is not None:
            ctx.fail((*base, "uri"), "a machine's own `uri` and the file's `hosts:` exclude each other",
                     "name its host with `host:` instead")


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def _check_port_conflicts(env: Environment, ctx: Ctx) -> None:
    seen: dict[tuple[str, int, str], str] = {}
    def own_ports(m: MachineSpec) -> tuple[PortSpec, ...]:  # without those merged in from its services
        merged = sum(len(s.ports) for s in env.services_on(m.name))
        return m.ports[:len(m.ports) - merged]

    owners = [(("machines", m.name, "ports"), p) for m in env.machines if m.dedicated_to is None
              for p in own_ports(m)]
    owners += [(("services", s.name, "ports"), p) for s in env.services for p in s.ports]
    for path, port in owners:
        if port.host_port is None:
            continue
        key = (port.host_ip, port.host_port, port.proto)
        if key in seen:
            ctx.fail(path, f"host port {port.host_ip}:{port.host_port}/{port.proto} is already used by {seen[key]}",
                     "every published host port must be distinct")
        seen[key] = f"`{dotted(path)}`"


def with_dependencies(env: Environment, names: set[str]) -> set[str]:
    """`names` and every service they depend on, directly or not."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        svc = env.service(name)
        if svc is not None and svc.name not in found:
            found.add(svc.name)
            todo += svc.depends_on
    return found


def with_restart_dependents(env: Environment, names: Sequence[str]) -> tuple[str, ...]:
    """`restart NAME...`: the named services and those that depend on them with `restart: true`, directly
    or not (none named: every service, which includes them)."""
    found: list[str] = []
    for n in names:
        found += [i.name for i in env.instances(n)] or [n]  # (an unknown name stays, for the caller's error)
    for name in found:  # (grows while it is read)
        found += [s.name for s in env.services
                  if s.name not in found and any(d.restart and d.service == name for d in s.dependencies)]
    return tuple(found)


def topological_services(env: Environment) -> list[ServiceSpec]:
    """Services in `depends_on` order (dependencies first), stable by declaration order."""
    done: list[str] = []

    def add(name: str) -> None:
        if name in done:
            return
        svc = env.service(name)
        assert svc is not None
        for dep in svc.depends_on:
            add(dep)
        done.append(name)

    for s in env.services:
        add(s.name)
    by_name = {s.name: s for s in env.services}
    return [by_name[name] for name in done]
