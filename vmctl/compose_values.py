"""The compose service keys vmctl honours beyond its own: their typed values and their value parsers
(`environment`, `user`, `restart`, `container_name`, `labels`, `tmpfs`, capabilities, `security_opt`,
signals, `ulimits`, `sysctls`, memory/CPU/pids limits, `cpuset`, `cpu_shares`, `deploy.resources`,
`logging` (rotation), `profiles`, `platform`, `pull_policy`).

The rows that use them are in `spec.SERVICE_SETTINGS`; the keys vmctl does not honour are in
`compose_keys`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vmctl import compose_keys
from vmctl.container_image import PullPolicy
from vmctl.oci_spec import ALL_CAPS
from vmctl.settings import (
    REQUIRED,
    Ctx,
    Parser,
    Setting,
    Support,
    did_you_mean,
    p_abs_path,
    p_duration,
    p_int,
    p_str,
    parse_table,
    typename,
    unsupported,
)
from vmctl.yamlpos import KeyPath

GUEST_OVERHEAD_MIB = 192  # what a service's own guest needs beside the container (see docs/design.md)


class Restart(StrEnum):
    """compose's `restart:`; the supervisor (supervise.sh in a guest) applies it after each exit."""

    NO = "no"
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"  # = always here: nothing restarts a stopped service by itself

    def restarts(self, exit_code: int) -> bool:
        return self in (Restart.ALWAYS, Restart.UNLESS_STOPPED) or (self is Restart.ON_FAILURE and exit_code != 0)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one container (compose's `mem_limit`, `cpus`, `pids_limit`, `deploy.resources`,
    `cpu_shares`, `cpuset`)."""

    memory_mib: int | None = None
    memory_reservation_mib: int | None = None
    cpus: float | None = None
    pids: int | None = None
    cpu_period_us: int | None = None  # the CFS period `cpus` is a share of (compose's `cpu_period`; default 100 ms)
    cpu_shares: int | None = None  # a relative weight (docker's 2..262144; the runtime maps it to cpu.weight)
    cpuset: tuple[int, ...] = ()  # the CPUs it may run on (empty: any)

    @property
    def cpuset_text(self) -> str | None:
        return ",".join(map(str, self.cpuset)) if self.cpuset else None


@dataclass(frozen=True)
class Ulimit:
    name: str  # nofile, nproc, ... (RLIMIT_ + upper case)
    soft: int
    hard: int


@dataclass(frozen=True)
class TmpfsSpec:
    target: str
    options: tuple[str, ...] = ()  # mount options from a closed set (`size=64m`, `mode=1777`, `noexec`, ...)


def p_restart(value: Any, path: KeyPath, ctx: Ctx) -> tuple[Restart, int | None]:
    """`no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N` (at most N restarts)."""
    text = "no" if value is False else value
    mode, _, retries = str(text).partition(":") if isinstance(text, str) else ("", "", "")
    if mode in Restart._value2member_map_ and (not retries or (mode == "on-failure" and retries.isdigit())):
        return Restart(mode), int(retries) if retries else None
    ctx.fail(path, f"invalid value {value!r}", 'use one of: "no", always, on-failure, on-failure:N, unless-stopped')


_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def p_container_name(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if not isinstance(value, str) or not _CONTAINER_NAME.match(value):
        ctx.fail(path, f"invalid container name {value!r}", "use letters, digits, `_`, `.` and `-` (1-63)")
    return value


_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")


def p_labels(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    """A mapping or a list of `key=value` (compose's two forms); values are strings."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = dict(v.partition("=")[::2] for v in value)
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a mapping or a list of key=value strings, not {typename(value)}")
    out = []
    for key, val in value.items():
        if not _LABEL_KEY.match(key) or isinstance(val, dict | list):
            ctx.fail((*path, key), f"invalid label {key!r}", "keys like `com.example.tier`, plain values")
        text = "" if val is None else str(val).lower() if isinstance(val, bool) else str(val)
        if any(ord(c) < 0x20 for c in text):
            ctx.fail((*path, key), "label values must not contain control characters")
        out.append((key, text))
    return tuple(out)


_TMPFS_FLAGS = frozenset({"rw", "ro", "noexec", "exec", "nosuid", "suid", "nodev", "dev"})
_TMPFS_OPTION = re.compile(r"^(size=\d+[kmgKMG]?|mode=[0-7]{3,4}|uid=\d+|gid=\d+)$")


def p_tmpfs(value: Any, path: KeyPath, ctx: Ctx) -> tuple[TmpfsSpec, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        ctx.fail(path, f"must be a path or a list of paths, not {typename(value)}")
    out = []
    for i, item in enumerate(items):
        target, _, opts = item.partition(":")
        options = tuple(o for o in opts.split(",") if o)
        bad = [o for o in options if o not in _TMPFS_FLAGS and not _TMPFS_OPTION.match(o)]
        if bad:
            ctx.fail((*path, i), f"invalid tmpfs option `{bad[0]}`",
                     "write `/path` or `/path:size=64m,mode=1777,noexec` (size, mode, uid, gid, rw/ro, "
                     "noexec, nosuid, nodev)")
        out.append(TmpfsSpec(p_abs_path(target, (*path, i), ctx), options))
    return tuple(out)


def p_caps(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    """Capability names with or without `CAP_`, any case, or `ALL`."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        ctx.fail(path, f"must be a list of capability names, not {typename(value)}")
    out = []
    for i, name in enumerate(value):
        cap = name.upper() if name.upper() == "ALL" or name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
        if cap != "ALL" and cap not in ALL_CAPS:
            ctx.fail((*path, i), f"unknown capability {name!r}", did_you_mean(cap, ALL_CAPS, "capabilities"))
        out.append(cap)
    return tuple(out)


def p_security_opt(value: Any, path: KeyPath, ctx: Ctx) -> bool:
    """Only `no-new-privileges[:true|false]`; returns whether it is on (vmctl's default: on)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        ctx.fail(path, f"must be a list of strings, not {typename(value)}")
    on = True
    for i, opt in enumerate(value):
        key, _, flag = opt.replace("=", ":", 1).partition(":")
        if key != "no-new-privileges" or flag not in ("", "true", "false"):
            ctx.fail((*path, i), f"`security_opt: {opt}` is not supported: seccomp, AppArmor and SELinux "
                     "profiles are not implemented", "only `no-new-privileges[:true|false]` is honoured")
        on = flag != "false"
    return on


_SIGNALS = {f"SIG{n}" for n in ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "STOP", "WINCH", "PWR")}


def p_signal(value: Any, path: KeyPath, ctx: Ctx) -> str:
    name = str(value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if name not in _SIGNALS:
        ctx.fail(path, f"invalid signal {value!r}", f"use one of: {', '.join(sorted(_SIGNALS))}")
    return name


ULIMITS = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
           "rss", "rtprio", "rttime", "sigpending", "stack")


def p_ulimits(value: Any, path: KeyPath, ctx: Ctx) -> tuple[Ulimit, ...]:
    """`nofile: 1024` or `nofile: {soft: 1024, hard: 2048}`."""
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a mapping of limit names, not {typename(value)}")
    out = []
    number = p_int(-1, 2**62)
    for name, limit in value.items():
        if name not in ULIMITS:
            ctx.fail((*path, name), f"unknown ulimit `{name}`", did_you_mean(name, ULIMITS, "ulimits"))
        if isinstance(limit, dict):
            raw = parse_table(ULIMIT_SETTINGS, limit, (*path, name), ctx)
            soft, hard = raw["soft"], raw["hard"]
        else:
            soft = hard = number(limit, (*path, name), ctx)
        if soft > hard and hard >= 0:
            ctx.fail((*path, name), f"soft limit {soft} is above the hard limit {hard}", "lower `soft`")
        out.append(Ulimit(name, soft, hard))
    return tuple(out)


# The sysctls a container's own namespaces isolate (docker's rule): nothing that would change the host or guest.
_NAMESPACED_SYSCTL = re.compile(r"^(net\.[a-z0-9_.-]+|kernel\.(shm[a-z_]+|msg[a-z_]+|sem)|fs\.mqueue\.[a-z_]+)$")


def p_sysctls(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    pairs = p_labels(value, path, ctx)
    for key, val in pairs:
        if not _NAMESPACED_SYSCTL.match(key):
            ctx.fail((*path, key), f"sysctl `{key}` is not namespaced: it would change the whole kernel, not the "
                     "container's", "only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* are allowed")
        if not re.match(r"^[A-Za-z0-9 ._-]*$", val):
            ctx.fail((*path, key), f"invalid sysctl value {val!r}", "write a number or a word")
    return pairs


_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _bytes(value: Any) -> int:
    """compose sizes: a number of bytes, or `512m`, `1g`, `1024k`, `100b`; 0 for anything else."""
    m = _BYTES.match(str(value).strip()) if isinstance(value, str | int) and not isinstance(value, bool) else None
    return int(float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()]) if m else 0


def p_bytes_mib(value: Any, path: KeyPath, ctx: Ctx) -> int:
    """A compose size in MiB (at least 4)."""
    mib = _bytes(value) >> 20
    if not 4 <= mib <= 1024 * 1024:
        ctx.fail(path, f"invalid memory size {value!r}", "write e.g. `512m` or `1g` (a bare number is bytes), "
                 "at least 4m")
    return mib


def p_environment(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, Any]]
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        pairs = [tuple(v.split("=", 1)) if "=" in v else (v, None) for v in value]
    else:
        ctx.fail(path, f"must be a mapping or a list of KEY=VALUE strings, not {typename(value)}")
    out = []
    for key, val in pairs:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            ctx.fail((*path, key), f"invalid variable name {key!r}", "use letters, digits and `_`")
        if val is None or isinstance(val, dict | list):
            ctx.fail((*path, key), f"`{key}` needs a plain value", 'write KEY: "value"')
        text = str(val).lower() if isinstance(val, bool) else str(val)
        if "\0" in text:
            ctx.fail((*path, key), "values must not contain NUL bytes")
        out.append((key, text))
    return tuple(out)


def p_user(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else p_str(value, path, ctx)
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$", text):
        ctx.fail(path, f"invalid user {value!r}",
                 'write "UID[:GID]" or "NAME[:GROUP]" (names are looked up in the image\'s /etc/passwd and /etc/group)')
    return text


def p_cpus(value: Any, path: KeyPath, ctx: Ctx) -> float:
    try:
        cpus = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        cpus = -1.0
    if not 0.01 <= cpus <= 64:
        ctx.fail(path, f"invalid cpus {value!r}", "write a number of CPUs like `0.5` or `2` (0.01 to 64)")
    return cpus


def p_pids_limit(value: Any, path: KeyPath, ctx: Ctx) -> int | None:
    limit = p_int(-1, 4_194_304)(value, path, ctx)
    if limit == 0:
        ctx.fail(path, "a pids limit of 0 would not even start the container", "use -1 for no limit")
    return None if limit == -1 else limit


def p_cpu_micros(low: int, high: int) -> Parser:
    """compose's `cpu_period` / `cpu_quota`: microseconds as a number, or a duration (`50ms`)."""
    def parse(value: Any, path: KeyPath, ctx: Ctx) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            micros = value
        elif isinstance(value, str) and not value.strip().isdigit():
            micros = round(p_duration(value, path, ctx) * 1_000_000)
        else:
            micros = int(value) if isinstance(value, str) else -1
        if not low <= micros <= high:
            ctx.fail(path, f"invalid {path[-1]} {value!r}", f"from {low} to {high} microseconds (or `{low // 1000}ms` "
                     f"to `{high // 1000}ms`)")
        return micros

    return parse


_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def p_cpuset(value: Any, path: KeyPath, ctx: Ctx) -> tuple[int, ...]:
    """`0-2,5` as the CPU numbers (0, 1, 2, 5): one list for the cgroup and for a microVM's size."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not _CPUSET.match(text.replace(" ", "")):
        ctx.fail(path, f"invalid cpuset {value!r}", "write CPU numbers and ranges like `0`, `0-1` or `0,2-3`")
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, _, high = part.partition("-")
        if int(high or low) < int(low) or int(high or low) >= 64:
            ctx.fail(path, f"invalid CPU range `{part}` in cpuset", "CPUs 0 to 63, the lower number first")
        cpus.update(range(int(low), int(high or low) + 1))
    return tuple(sorted(cpus))


def p_resources(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    return parse_table(RESOURCES_SETTINGS, value, path, ctx)


def p_limits(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    return parse_table(LIMIT_SETTINGS, value, path, ctx)


@dataclass(frozen=True)
class Deploy:
    limits: Limits = Limits()
    replicas: int | None = None  # None: not said (one, or what `scale` says)


def p_deploy(value: Any, path: KeyPath, ctx: Ctx) -> Deploy:
    """`deploy.resources` (limits, reservations) and `deploy.replicas`: the rest is Swarm's or not built yet."""
    raw = parse_table(DEPLOY_SETTINGS, value, path, ctx)
    resources = raw["resources"] or {}
    limits, reservations = resources.get("limits") or {}, resources.get("reservations") or {}
    for key in ("cpus", "pids"):
        if reservations.get(key) is not None:  # only a scheduler placing services on hosts could keep them
            ctx.warn((*path, "resources", "reservations", key),
                     f"`{key}` is ignored in `reservations`: there is no scheduler to reserve it on one host")
    return Deploy(Limits(memory_mib=limits.get("memory"), memory_reservation_mib=reservations.get("memory"),
                         cpus=limits.get("cpus"), pids=limits.get("pids")), raw["replicas"])


_PROFILE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def p_profiles(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and _PROFILE.match(v) for v in value):
        ctx.fail(path, f"must be a list of profile names, not {value!r}", "names use letters, digits, `_`, `.`, `-`")
    return tuple(value)


def p_platform(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if value not in ("linux/amd64", "linux/x86_64", "linux/amd64/v1", "linux/amd64/v2", "linux/amd64/v3"):
        ctx.fail(path, f"platform {value!r} is not supported: guests and host containers run x86_64 Linux only",
                 "use an image built for linux/amd64 (and drop `platform`)")
    return "linux/amd64"


PULL_POLICIES = {"always": PullPolicy.ALWAYS, "missing": PullPolicy.MISSING, "if_not_present": PullPolicy.MISSING,
                 "never": PullPolicy.NEVER, "build": PullPolicy.BUILD}


def p_pull_policy(value: Any, path: KeyPath, ctx: Ctx) -> PullPolicy:
    if isinstance(value, str) and (value in ("daily", "weekly") or value.startswith("every_")):
        ctx.fail(path, f"`pull_policy: {value}` is not supported: vmctl does not record when it last pulled",
                 "use `always` (ask the registry at every `up`) or `missing`")
    if not isinstance(value, str) or value not in PULL_POLICIES:
        ctx.fail(path, f"invalid pull_policy {value!r}", "use one of always, missing (or if_not_present), never, build")
    return PULL_POLICIES[value]


ULIMIT_SETTINGS = (
    Setting("soft", p_int(-1, 2**62), REQUIRED, "int", "the soft limit (-1: unlimited)"),
    Setting("hard", p_int(-1, 2**62), REQUIRED, "int", "the hard limit (-1: unlimited)"),
)

LIMIT_SETTINGS = (
    Setting("memory", p_bytes_mib, None, "size", "as `mem_limit` (in `reservations`: as `mem_reservation`)"),
    Setting("cpus", p_cpus, None, "number", "as `cpus` (in `reservations`: ignored with a warning)"),
    Setting("pids", p_pids_limit, None, "int", "as `pids_limit` (in `reservations`: ignored with a warning)"),
    Setting("devices", lambda v, p, c: None, None, "list", "device reservations (GPUs) are not implemented",
            support=Support.REFUSED, hint="remove it"),
    Setting("generic_resources", lambda v, p, c: None, None, "list", "Swarm-only", support=Support.REFUSED,
            hint="remove it"),
)

RESOURCES_SETTINGS = (
    Setting("limits", p_limits, None, "mapping", "cpus, memory, pids"),
    Setting("reservations", p_limits, None, "mapping", "memory"),
)

# -- logging: vmctl keeps each container's output in one log file of its own (`vmctl logs`), which is what
# compose's default `json-file` driver (and `local`) does, rotated as theirs are; drivers that ship the
# output elsewhere are refused.

KEPT_LOG_DRIVERS = ("json-file", "local")
MAX_LOG_FILES = 20
LOCAL_DRIVER_ROTATION = (20 << 20, 5)  # docker's `local` driver rotates by default: 20m per file, 5 files


@dataclass(frozen=True)
class LogRotation:
    """json-file's `max-size` and `max-file`: once the log would pass `max_bytes`, it becomes LOG.1 (LOG.1
    becomes LOG.2, ...) and a new one starts; `keep` files in all (1: the log starts again, empty)."""

    max_bytes: int
    keep: int = 1


def p_log_driver(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if value == "none":
        ctx.warn(path, "`driver: none` is ignored: vmctl still keeps the container's output (`vmctl logs`)")
        return "none"
    if value not in KEPT_LOG_DRIVERS:
        ctx.fail(path, f"log driver {value!r} is not supported: the output goes to vmctl's own log file, as with "
                 "`json-file`", "remove it, or use `driver: json-file` (and ship the log from the host if you need to)")
    return str(value)


def p_log_size(value: Any, path: KeyPath, ctx: Ctx) -> int:
    """docker's `max-size`: `10m`, `512k`, `1g`, or bytes; at least 1k (a line longer than it is kept whole)."""
    size = _bytes(value)
    if size < 1024:
        ctx.fail(path, f"invalid log size {value!r}", "write e.g. `10m` or `512k`, at least `1k`")
    return size


def p_log_files(value: Any, path: KeyPath, ctx: Ctx) -> int:
    """docker's `max-file`, a string in most compose files (`"3"`)."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= MAX_LOG_FILES:
        ctx.fail(path, f"invalid max-file {value!r}", f'write a number of files from 1 to {MAX_LOG_FILES}, e.g. "3"')
    return int(text)


_NOT_SHIPPED = "vmctl's log files carry the output only (no metadata, no shipping, no compression)"

LOG_OPTION_SETTINGS = (
    Setting("max-size", p_log_size, None, "size", "rotate the log once it would pass this size (about: lines are "
            "kept whole and counted in characters); without it the log grows as long as the container runs"),
    Setting("max-file", p_log_files, None, "int", "how many log files are kept, the current one included (default "
            "1: the log starts again, empty); needs `max-size`"),
    *(Setting(key, lambda v, p, c: None, None, kind, _NOT_SHIPPED, support=Support.IGNORED)
      for key, kind in (("compress", "bool"), ("mode", "string"), ("max-buffer-size", "size"), ("tag", "string"),
                        ("labels", "string"), ("labels-regex", "string"), ("env", "string"),
                        ("env-regex", "string"))),
)

LOGGING_SETTINGS = (
    Setting("driver", p_log_driver, "json-file", "string", "`json-file` or `local`: the output goes to the "
            "container's log file (`vmctl logs`), as theirs do (`local`: rotated at 20m, 5 files, unless its options "
            "say otherwise); `none`: ignored with a warning (the log is kept); any other driver is refused"),
    Setting("options", lambda v, p, c: parse_table(LOG_OPTION_SETTINGS, v, p, c), None, "mapping",
            "`max-size` and `max-file` rotate the log; the other `json-file` options are ignored with a warning"),
)


def p_logging(value: Any, path: KeyPath, ctx: Ctx) -> LogRotation | None:
    """The log's rotation, where `max-size` (or the `local` driver) asks for one; None: one whole log."""
    v = parse_table(LOGGING_SETTINGS, value, path, ctx)
    options = v["options"] or {}
    size, files = options.get("max-size"), options.get("max-file")
    if v["driver"] == "local":  # each option it is not given takes the driver's default
        size, files = size or LOCAL_DRIVER_ROTATION[0], files or LOCAL_DRIVER_ROTATION[1]
    if size is None:
        if files is not None:
            ctx.warn((*path, "options", "max-file"), "`max-file` is ignored without `max-size`: the log is not rotated")
        return None
    return LogRotation(size, files or 1)


MAX_REPLICAS = 32

DEPLOY_SETTINGS = (
    Setting("resources", p_resources, None, "mapping", "`limits` and `reservations`"),
    Setting("replicas", p_int(1, MAX_REPLICAS), None, "int", "as the service's `scale`"),
    *unsupported(compose_keys.DEPLOY),
)


# -- names and resolution in the container (/etc/resolv.conf, /etc/hosts, the UTS domain name)

DOMAIN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_RESOLV_OPTION = re.compile(r"^[a-z][a-z0-9-]*(:\d{1,3})?$")  # resolv.conf(5): `ndots:2`, `rotate`, `edns0`


def _strings(value: Any, path: KeyPath, ctx: Ctx, what: str) -> list[str]:
    """compose's `x` or `[x, y]`."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        ctx.fail(path, f"must be {what} or a list of them, not {typename(value)}")
    return list(items)


def p_dns(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    out = []
    for i, text in enumerate(_strings(value, path, ctx, "an IPv4 address")):
        if not re.match(r"^\d{1,3}(\.\d{1,3}){3}$", text) or any(int(b) > 255 for b in text.split(".")):
            ctx.fail((*path, i), f"invalid nameserver {text!r}", "use IPv4 addresses, e.g. `dns: [10.0.2.3]`")
        out.append(text)
    return tuple(out)


def p_domains(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    out = _strings(value, path, ctx, "a domain name")
    for i, text in enumerate(out):
        if len(text) > 253 or not DOMAIN.match(text):
            ctx.fail((*path, i), f"invalid domain {text!r}", "use letters, digits, `-` and `.`")
    return tuple(out)


def p_domainname(value: Any, path: KeyPath, ctx: Ctx) -> str:
    return p_domains(p_str(value, path, ctx), path, ctx)[0]


def p_dns_opt(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    out = _strings(value, path, ctx, "a resolver option")
    for i, text in enumerate(out):
        if not _RESOLV_OPTION.match(text):
            ctx.fail((*path, i), f"invalid resolver option {text!r}", "e.g. `ndots:2`, `timeout:1`, `rotate`")
    return tuple(out)


def p_links(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    """compose's legacy `links: [SERVICE, "SERVICE:ALIAS"]`: (service, the name it is found by here)."""
    out = []
    for i, text in enumerate(_strings(value, path, ctx, "`SERVICE[:ALIAS]`")):
        service, _, alias = text.partition(":")
        for name in (service, alias or service):
            if not DOMAIN.match(name):
                ctx.fail((*path, i), f"invalid link {text!r}", 'write "SERVICE" or "SERVICE:ALIAS"')
        out.append((service, alias or service))
    return tuple(out)


def p_group_add(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    """Group names (looked up in the image's /etc/group when the container is made) or numbers."""
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
        if not isinstance(text, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", text):
            ctx.fail((*path, i), f"invalid group {item!r}", "use group names of the image or numbers")
        out.append(text)
    return tuple(out)
