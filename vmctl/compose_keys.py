"""The compose specification's keys that vmctl does not honour (yet), each with why and what to do instead.

Plain data, no parsing: `spec` turns each row into a `Setting` of its table (marked `ignored` or `refused`),
so the parser, the errors and the README reference all come from the one settings table. A key is
`ignored` only where leaving it out cannot change what the program does; everything else is `refused`.
The keys of the environment network (`networks`, `hostname`, `expose`, `extra_hosts`, ...) are rows of
`spec`'s tables, next to the parsers that honour them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unsupported:
    key: str
    kind: str
    reason: str  # why it is not honoured
    hint: str = ""  # what to do instead (refused keys); empty for ignored ones
    ignored: bool = False


TOP_LEVEL = (
    Unsupported("version", "string", "obsolete in the compose specification; compose ignores it too", ignored=True),
    Unsupported("models", "mapping", "AI models are not a thing vmctl runs", "remove it"),
)

SERVICE = (
    Unsupported("attach", "bool", "`vmctl up` never attaches to the containers' output (see `vmctl logs`)",
                ignored=True),
    Unsupported("develop", "mapping", "only `compose watch` uses it; vmctl has no watch mode", ignored=True),
    Unsupported("devices", "list", "passing host devices into a microVM is not implemented", "remove it"),
    Unsupported("device_cgroup_rules", "list", "device access rules are not implemented", "remove it"),
    Unsupported("gpus", "list|string", "GPUs are not passed to microVMs or containers", "remove it"),
    Unsupported("external_links", "list", "containers outside the environment are not reachable from it",
                "put the other service in this file, or reach it through a published port"),
    Unsupported("pid", "string", "containers always get their own PID namespace", "remove it"),
    Unsupported("uts", "string", "containers always get their own UTS namespace", "remove it"),
    Unsupported("cgroup_parent", "string", "vmctl places containers under its own `/vmctl` cgroup", "remove it"),
    Unsupported("runtime", "string", "the runtime is crun in a microVM and runc on the host",
                "choose with `isolation: microvm|container`"),
    Unsupported("cpu_count", "int", "Windows-only in compose", "use `cpus`"),
    Unsupported("cpu_percent", "int", "Windows-only in compose", "use `cpus`"),
    Unsupported("cpu_rt_runtime", "duration", "real-time scheduling is not implemented", "remove it"),
    Unsupported("cpu_rt_period", "duration", "real-time scheduling is not implemented", "remove it"),
    Unsupported("blkio_config", "mapping", "block I/O limits are not implemented", "remove it"),
    Unsupported("mem_swappiness", "int", "swap is not configurable (guests have no swap)", "remove it"),
    Unsupported("memswap_limit", "size", "swap is not configurable (guests have no swap)", "use `mem_limit`"),
    Unsupported("oom_kill_disable", "bool", "the OOM killer is not configurable", "remove it"),
    Unsupported("storage_opt", "mapping", "the writable layer is a tmpfs; storage options do not apply",
                "remove it"),
    Unsupported("credential_spec", "mapping", "Windows-only in compose", "remove it"),
    Unsupported("provider", "mapping", "provider services are not implemented", "remove it"),
    Unsupported("use_api_socket", "bool", "there is no container engine socket to share", "remove it"),
    Unsupported("models", "list", "AI models are not a thing vmctl runs", "remove it"),
)

# a service's settings on one of its networks (`networks: {NAME: {...}}`), beside `aliases` and `mac_address`
ATTACHMENT = (
    Unsupported("ipv6_address", "string", "environment networks are IPv4 only", "remove it"),
    Unsupported("link_local_ips", "list", "members get no link-local addresses", "remove it"),
    Unsupported("interface_name", "string", "NIC names are not configurable (ethN, in the order of the service's "
                "networks)", "remove it (`priority` orders the networks)"),
    Unsupported("driver_opts", "mapping", "the bridge driver of environment networks takes no options", "remove it"),
    Unsupported("gw_priority", "int", "environment networks have no gateway: the way out of the host is always "
                "user-mode networking's (none on internal networks)", ignored=True),
)

DEPLOY = (
    Unsupported("mode", "string", "Swarm's `global` and `replicated` modes; vmctl's instances come from `replicas`",
                "remove it (use `replicas`)"),
    Unsupported("endpoint_mode", "string", "Swarm-only", "remove it"),
    Unsupported("placement", "mapping", "Swarm-only: every service runs on this host", "remove it"),
    Unsupported("restart_policy", "mapping", "Swarm-only in this form", "use the service's `restart:`"),
    Unsupported("rollback_config", "mapping", "Swarm-only: there are no rolling updates", "remove it"),
    Unsupported("update_config", "mapping", "Swarm-only: there are no rolling updates", "remove it"),
    Unsupported("labels", "mapping", "Swarm service labels; vmctl has no Swarm services", "use the service's `labels`"),
)
