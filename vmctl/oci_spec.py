"""One generator of OCI runtime `config.json`, for runc on the host and crun in the guest alike.

Everything here is pure: a validated `ContainerRequest` goes in, a dict ready for `json.dumps` comes out.
The small files a container needs in `/etc` (hostname, hosts, resolv.conf) are described by
`etc_files()`; the caller writes them into the bundle and names that folder in `etc_dir`, and
`make_config()` bind-mounts them. The defaults follow runc's `runc spec` and docker's defaults:
docker's capability set, runc's masked and read-only /proc and /sys paths, no_new_privileges,
RLIMIT_NOFILE 1024. There is no seccomp profile (yet).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmctl.container_image import ImageConfig
from vmctl.errors import UsageError

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SLIRP_DNS = "10.0.2.3"
SLIRP_ADDRESS = "10.0.2.100"  # slirp4netns --configure; the guest's eth0 is 10.0.2.15

# docker's default capability set (moby oci/caps/defaults.go)
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
ALL_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
)  # fmt: skip
READONLY_PATHS: tuple[str, ...] = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
ETC_FILES: tuple[str, ...] = ("hostname", "hosts", "resolv.conf")
CPU_PERIOD = 100_000  # microseconds; `cpus: 0.5` is a quota of half of it

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_RESOLV_OPTION = re.compile(r"[a-z][a-z0-9-]*(:\d{1,3})?")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_USER = re.compile(r"(\d{1,10})(:(\d{1,10}))?")


@dataclass(frozen=True)
class BindMount:
    """A host (or guest) path bind-mounted at `target` in the container; read-only unless `read_only=False`."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class FileData:
    """A file vmctl writes beside the container's /etc files and binds read-only at `target` (secrets, configs)."""

    target: str
    data: bytes = field(repr=False)  # a secret's bytes: never in a log or an error
    mode: int = 0o444
    uid: int = 0
    gid: int = 0


def file_name(index: int) -> str:
    """Its name in the request's `etc_dir` (beside hosts, resolv.conf...: names vmctl chose, never the user's)."""
    return f"file-{index}"


@dataclass(frozen=True)
class ContainerRequest:
    name: str
    args: tuple[str, ...]
    env: tuple[str, ...]  # "KEY=VALUE"
    cwd: str
    user: str  # "uid[:gid]" numeric, or "" for root
    hostname: str
    rootfs: str
    readonly_rootfs: bool = True
    mounts: tuple[BindMount, ...] = ()
    memory_limit_bytes: int | None = None
    pids_limit: int | None = None
    cpu_period: int | None = None  # microseconds; None: CPU_PERIOD
    cpu_shares: int | None = None
    cpuset: str | None = None  # `0-1,3`: cpuset.cpus
    oom_score_adj: int | None = None
    privileged: bool = False
    terminal: bool = False
    console_size: tuple[int, int] | None = None  # (rows, cols) of the terminal at start: the caller's, for `run`
    share_host_network: bool = False  # True: no network namespace
    netns_path: str | None = None  # join this network namespace (another container's) instead of a new one
    cgroups_path: str | None = None
    etc_dir: str | None = None  # folder holding the files etc_files() describes; bound read-only
    dns: tuple[str, ...] = (SLIRP_DNS,)  # nameservers for its resolv.conf: the environment network's first
    address: str | None = None  # its own address for /etc/hosts (None: 127.0.1.1, or user-mode networking's)
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, IPv4) more lines for /etc/hosts
    cap_add: tuple[str, ...] = ()  # CAP_X names, or "ALL"
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = True
    rlimits: tuple[tuple[str, int, int], ...] = ()  # (name like "nofile", soft, hard); -1 is unlimited
    sysctls: tuple[tuple[str, str], ...] = ()
    tmpfs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (target, mount options)
    cpus: float | None = None
    memory_reservation_bytes: int | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    init_path: str | None = None  # a static init (tini) in the runtime's file system: PID 1, then `args`
    dns_search: tuple[str, ...] = ()  # resolv.conf `search`
    dns_options: tuple[str, ...] = ()  # resolv.conf `options`
    domainname: str | None = None
    additional_gids: tuple[int, ...] = ()
    shm_bytes: int = 64 << 20  # the /dev/shm tmpfs
    stdin_open: bool = False  # the runtime's caller gives the process a pipe kept open as stdin (not config.json)
    files: tuple[FileData, ...] = ()  # written into `etc_dir` by the runtime (`file_name(i)`), bound at their targets
    log_rotation: tuple[int, int] | None = None  # (max bytes, files kept) of its log: the stamper's (not config.json)


def merge_command(
    entrypoint: Sequence[str] | None, command: Sequence[str] | None, image: ImageConfig
) -> tuple[str, ...]:
    """Compose semantics: a service `entrypoint` replaces the image's and drops the image's CMD;
    a service `command` replaces the image's CMD. `None` means "not set"; `[]` clears."""
    if entrypoint is not None:
        merged = (*entrypoint, *(command or ()))
    else:
        merged = (*image.entrypoint, *(image.cmd if command is None else command))
    if not merged:
        raise UsageError(
            "the container has no command: neither the service nor the image sets an entrypoint or command",
            hint="set `command:` (or `entrypoint:`) for the service",
        )
    return tuple(merged)


def merge_env(image_env: Sequence[str], service_env: Sequence[str]) -> tuple[str, ...]:
    """The image's environment overridden key by key by the service's, in first-seen order."""
    merged: dict[str, str] = {}
    for entry in (*image_env, *service_env):
        key, _, value = entry.partition("=")
        merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def etc_files(
    hostname: str, *, address: str | None = SLIRP_ADDRESS, dns: Sequence[str] = (SLIRP_DNS,),
    extra_hosts: Sequence[tuple[str, str]] = (), search: Sequence[str] = (), options: Sequence[str] = (),
) -> dict[str, str]:
    """Contents of /etc/hostname, /etc/hosts and /etc/resolv.conf for a container (pure)."""
    _check_hostname(hostname)
    for ip in (*dns, *(ip for _, ip in extra_hosts), *([address] if address else [])):
        _check_ipv4(ip)
    for name in (*(n for n, _ in extra_hosts), *search):
        _check_hostname(name)
    if any(not _RESOLV_OPTION.fullmatch(o) for o in options):
        raise UsageError(f"invalid resolver options {list(options)}", hint="e.g. `ndots:2`, `rotate`")
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    hosts.append(f"{address}\t{hostname}" if address else f"127.0.1.1\t{hostname}")
    hosts += [f"{ip}\t{name}" for name, ip in extra_hosts]
    return {
        "hostname": hostname + "\n",
        "hosts": "\n".join(hosts) + "\n",
        "resolv.conf": "".join(f"nameserver {d}\n" for d in dns)
        + (f"search {' '.join(search)}\n" if search else "") + (f"options {' '.join(options)}\n" if options else ""),
    }


def request_etc_files(req: ContainerRequest, *, fallback_address: str | None = None) -> dict[str, str]:
    """etc_files() of a request: its own address (or `fallback_address`), nameservers and extra hosts."""
    return etc_files(req.hostname, address=req.address or fallback_address, dns=req.dns, extra_hosts=req.extra_hosts,
                     search=req.dns_search, options=req.dns_options)


def _check_ipv4(text: str) -> None:
    try:
        ipaddress.IPv4Address(text)
    except ValueError as e:
        raise UsageError(f"invalid IPv4 address {text!r}") from e


def make_config(req: ContainerRequest) -> dict[str, Any]:
    """The OCI runtime config for `req`, as a JSON-ready dict. Raises UsageError on bad values."""
    _validate(req)
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": _process(req),
        "root": {"path": req.rootfs, "readonly": req.readonly_rootfs},
        "hostname": req.hostname,
        "mounts": _mounts(req),
        "linux": _linux(req),
    }
    if req.domainname:
        # as the UTS namespace's sysctl, not the config's `domainname`, which runc 1.1 ignores
        _check_hostname(req.domainname)
        config["linux"].setdefault("sysctl", {})["kernel.domainname"] = req.domainname
    if req.annotations:
        config["annotations"] = dict(req.annotations)
    return config


INIT_TARGET = "/sbin/docker-init"  # where docker puts its init too
UNLIMITED = 2**64 - 1


def capabilities(req: ContainerRequest) -> list[str]:
    """docker's rule: start from the default set (all when privileged), drop `cap_drop`, add `cap_add`."""
    caps = list(ALL_CAPS if req.privileged else DEFAULT_CAPS)
    if "ALL" in req.cap_drop:
        caps = []
    caps = [c for c in caps if c not in req.cap_drop]
    added = ALL_CAPS if "ALL" in req.cap_add else req.cap_add
    return caps + [c for c in added if c not in caps]


def _rlimits(req: ContainerRequest) -> list[dict[str, Any]]:
    limits = {"nofile": (1024, 1024)} | {name: (soft, hard) for name, soft, hard in req.rlimits}
    return [{"type": f"RLIMIT_{name.upper()}", "soft": UNLIMITED if soft < 0 else soft,
             "hard": UNLIMITED if hard < 0 else hard} for name, (soft, hard) in limits.items()]


def _process(req: ContainerRequest) -> dict[str, Any]:
    uid, gid = parse_user(req.user)
    env = list(req.env)
    keys = {e.partition("=")[0] for e in env}
    if "PATH" not in keys:
        env.insert(0, DEFAULT_PATH)
    if "HOSTNAME" not in keys:
        env.append(f"HOSTNAME={req.hostname}")
    if req.terminal and "TERM" not in keys:
        env.append("TERM=xterm")
    caps = capabilities(req)
    args = [INIT_TARGET, "--", *req.args] if req.init_path else list(req.args)
    return {
        "terminal": req.terminal,
        # the runtime sizes the terminal before the process starts: the relay that would copy our size
        # may not hold it yet when the first `stty size` or curses screen runs
        **({"consoleSize": {"height": req.console_size[0], "width": req.console_size[1]}}
           if req.terminal and req.console_size else {}),
        "user": {"uid": uid, "gid": gid, **({"additionalGids": list(req.additional_gids)}
                                            if req.additional_gids else {})},
        "args": args,
        "env": env,
        "cwd": req.cwd or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "rlimits": _rlimits(req),
        "noNewPrivileges": req.no_new_privileges and not req.privileged,
        **({"oomScoreAdj": req.oom_score_adj} if req.oom_score_adj is not None else {}),
    }


def _mounts(req: ContainerRequest) -> list[dict[str, Any]]:
    sys_opts = ["nosuid", "noexec", "nodev", "rw" if req.privileged else "ro"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        _tmpfs("/dev", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        _tmpfs("/dev/shm", ["nosuid", "noexec", "nodev", "mode=1777", f"size={req.shm_bytes >> 10}k"]),
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": [*sys_opts, "relatime"]},
    ]
    if req.readonly_rootfs:
        mounts.append(_tmpfs("/tmp", ["nosuid", "nodev", "mode=1777"]))
        mounts.append(_tmpfs("/run", ["nosuid", "nodev", "mode=755"]))
    if req.etc_dir is not None:
        for name in ETC_FILES:
            mounts.append(_bind(posixpath.join(req.etc_dir, name), f"/etc/{name}", read_only=True))
    mounts.extend(_bind(m.source, m.target, read_only=m.read_only) for m in req.mounts)
    if req.etc_dir is not None:
        mounts.extend(_bind(posixpath.join(req.etc_dir, file_name(i)), f.target, read_only=True)
                      for i, f in enumerate(req.files))
    mounts.extend(_tmpfs(target, ["nosuid", "nodev", *options]) for target, options in req.tmpfs)
    if req.init_path:
        mounts.append(_bind(req.init_path, INIT_TARGET, read_only=True))
    return mounts


def _tmpfs(destination: str, options: list[str]) -> dict[str, Any]:
    return {"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": options}


def _bind(source: str, target: str, *, read_only: bool) -> dict[str, Any]:
    options = ["rbind", "rprivate", "nosuid", "nodev", "ro" if read_only else "rw"]
    return {"destination": target, "type": "bind", "source": source, "options": options}


def _linux(req: ContainerRequest) -> dict[str, Any]:
    kinds = ["pid", "ipc", "uts", "mount", "cgroup"]
    if not req.share_host_network:
        kinds.insert(3, "network")
    resources: dict[str, Any] = {
        "devices": [{"allow": req.privileged, "access": "rwm"}],
    }
    memory = {"limit": req.memory_limit_bytes, "reservation": req.memory_reservation_bytes}
    if any(v is not None for v in memory.values()):
        resources["memory"] = {k: v for k, v in memory.items() if v is not None}
    period = req.cpu_period or CPU_PERIOD
    cpu = {**({"quota": round(req.cpus * period)} if req.cpus is not None else {}),
           **({"period": period} if req.cpus is not None or req.cpu_period else {}),
           **({"shares": req.cpu_shares} if req.cpu_shares is not None else {}),
           **({"cpus": req.cpuset} if req.cpuset else {})}
    if cpu:
        resources["cpu"] = cpu
    if req.pids_limit is not None:
        resources["pids"] = {"limit": req.pids_limit}
    linux: dict[str, Any] = {
        "namespaces": [{"type": k, **({"path": req.netns_path} if k == "network" and req.netns_path else {})}
                       for k in kinds],
        "resources": resources,
    }
    if req.cgroups_path is not None:
        linux["cgroupsPath"] = req.cgroups_path
    if req.sysctls:
        linux["sysctl"] = dict(req.sysctls)
    if not req.privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
    return linux


def parse_user(user: str) -> tuple[int, int]:
    """`""` -> root; `"uid"` -> (uid, uid); `"uid:gid"` -> (uid, gid). Names are refused (resolve them first)."""
    if user == "":
        return 0, 0
    m = _USER.fullmatch(user)
    if not m:
        raise UsageError(
            f"user `{user}` is not numeric `uid[:gid]`",
            hint='write the numeric uid (and gid), e.g. `user: "1000:1000"`',
        )
    uid = int(m.group(1))
    gid = int(m.group(3)) if m.group(3) is not None else uid
    if max(uid, gid) > 0xFFFFFFFE:
        raise UsageError(f"user `{user}` is out of range", hint="uids and gids are below 4294967295")
    return uid, gid


def _validate(req: ContainerRequest) -> None:
    if not _NAME.fullmatch(req.name):
        raise UsageError(f"container name `{req.name}` is invalid", hint="use letters, digits, `_`, `.`, `-`")
    if not req.args:
        raise UsageError(f"container `{req.name}` has no command", hint="set `command:` for the service")
    for arg in req.args:
        if "\0" in arg:
            raise UsageError(f"an argument of `{req.name}` contains a NUL byte: {arg!r}")
    for entry in req.env:
        key, eq, value = entry.partition("=")
        if not eq or not _ENV_KEY.fullmatch(key):
            raise UsageError(
                f"environment entry {entry!r} of `{req.name}` is not `KEY=VALUE` with a valid key",
                hint="keys start with a letter or `_` and hold letters, digits, `_`, `.`, `-`",
            )
        if "\0" in value:
            raise UsageError(f"the value of `{key}` in `{req.name}` contains a NUL byte")
    _check_hostname(req.hostname)
    parse_user(req.user)
    if req.cwd:
        _check_abs(req.cwd, "working directory")
    _check_abs(req.rootfs, "rootfs")
    if req.etc_dir is not None:
        _check_abs(req.etc_dir, "etc_dir")
    if req.cgroups_path is not None:
        _check_abs(req.cgroups_path, "cgroups path")
    for m in req.mounts:
        _check_abs(m.source, "mount source")
        _check_abs(m.target, "mount target")
        if posixpath.normpath(m.target) == "/":
            raise UsageError(f"mount target `{m.target}` would hide the container's root")
    limits: dict[str, int | None] = {"memory limit": req.memory_limit_bytes, "pids limit": req.pids_limit}
    for label, limit in limits.items():
        if limit is not None and limit <= 0:
            raise UsageError(f"{label} of `{req.name}` must be positive, not {limit}")


def _check_hostname(hostname: str) -> None:
    if len(hostname) > 253 or not _HOSTNAME.fullmatch(hostname):
        raise UsageError(f"hostname `{hostname}` is invalid", hint="use letters, digits and `-` (RFC 1123)")


def _check_abs(path: str, what: str) -> None:
    if not path.startswith("/") or "\0" in path or "\n" in path or ".." in path.split("/"):
        raise UsageError(f"{what} `{path}` must be an absolute path without `..`")


# Capability numbers (linux/capability.h), in order.
_CAP_ORDER = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip


def caps_in_mask(mask: int) -> frozenset[str]:
    """Capability names set in a kernel capability mask (as in /proc/PID/status `CapBnd:`)."""
    return frozenset(name for i, name in enumerate(_CAP_ORDER) if mask >> i & 1)


def limit_caps(config: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """Drop capabilities the runtime could not grant: runc refuses a set outside its own bounding set
    (a privileged container on a host where vmctl itself runs without, say, CAP_SYS_RESOURCE)."""
    caps = config.get("process", {}).get("capabilities", {})
    for kind, names in caps.items():
        caps[kind] = [c for c in names if c in allowed]
    return config
