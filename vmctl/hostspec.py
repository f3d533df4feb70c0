"""The `hosts:` settings of an environment file: the libvirt hosts its machines may run on.

    hosts:
      h1: {uri: "qemu+ssh://root@10.0.0.2/system", key: ~/.ssh/id_ed25519, known_hosts: ~/.ssh/known_hosts}
      h2: {uri: "qemu+ssh://10.0.0.3/system", user: admin, port: 2222, capacity: {memory: 8G, vcpus: 4}}

A machine or service says `host: NAME`, or vmctl places it (vmctl/placement.py). Kept apart from
`spec.py`, which only has the two settings that point here.

How vmctl connects: libvirt 9.0's `qemu+ssh` transport runs the `ssh` binary and takes no known-hosts
file (its `known_hosts=` parameter belongs to the libssh/libssh2 transports; the ssh binary asks the
user's own `~/.ssh/known_hosts` and fails with `Host key verification failed` when it does not know the
host). So a `qemu+ssh://` host is reached through libvirt's in-process libssh2 transport
(`qemu+libssh2://`), with the key and the known-hosts file given here: the host's key must be in that
file (an unknown or a different key is refused, never accepted), and only the key file is offered.
Not the libssh transport (`qemu+libssh://`): in libvirt 9.0 it hangs on any reply of a few KiB (a domain's
XML, the capabilities), as seen on the test bed and reported in exordos/exordos_core#135.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl.settings import Ctx, Setting, p_int, p_name, p_size_mib, p_uri, parse_table
from vmctl.spec import _named_mapping
from vmctl.yamlpos import KeyPath

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
SSH_SCHEMES = ("qemu+ssh", "qemu+libssh", "qemu+libssh2")


@dataclass(frozen=True)
class Capacity:
    """What vmctl may use of a host, instead of what libvirt reports (None: libvirt's figure)."""

    memory_mib: int | None = None
    vcpus: int | None = None


@dataclass(frozen=True)
class HostSpec:
    name: str
    uri: str
    user: str | None = None
    key: Path | None = None
    known_hosts: Path | None = None
    port: int | None = None
    capacity: Capacity = Capacity()

    @property
    def connection_uri(self) -> str:
        """The URI vmctl opens: the file's, or for SSH its libssh2 form with the key and known hosts."""
        parts = urllib.parse.urlsplit(self.uri)
        if parts.scheme not in SSH_SCHEMES:
            return self.uri
        user = self.user or parts.username or "root"
        port = self.port or parts.port
        netloc = f"{user}@{parts.hostname}" + (f":{port}" if port else "")
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["known_hosts"] = str(self.known_hosts or DEFAULT_KNOWN_HOSTS.expanduser())
        query["known_hosts_verify"] = "normal"  # unknown keys are refused: libvirt has no one to ask
        if self.key:
            query.update(keyfile=str(self.key), sshauth="privkey")
        return urllib.parse.urlunsplit(("qemu+libssh2", netloc, parts.path, urllib.parse.urlencode(query, safe="/"),
                                        ""))

    @property
    def address(self) -> str | None:
        """The host's SSH address, for SSH to its guests (None: not an SSH host)."""
        parts = urllib.parse.urlsplit(self.uri)
        return parts.hostname if parts.scheme in SSH_SCHEMES else None

    @property
    def ssh_user(self) -> str:
        return self.user or urllib.parse.urlsplit(self.uri).username or "root"

    @property
    def ssh_port(self) -> int:
        return self.port or urllib.parse.urlsplit(self.uri).port or 22

    def fingerprint_command(self) -> str:
        """What shows the host's key, for a user who must decide whether to trust it."""
        port = f"-p {self.ssh_port} " if self.ssh_port != 22 else ""
        return f"ssh-keyscan {port}{self.address} | ssh-keygen -lf -"


def p_path(value: Any, path: KeyPath, ctx: Ctx) -> Path:
    """A file path, `~` expanded, relative to the environment file's folder; it must exist."""
    if not isinstance(value, str) or not value:
        ctx.fail(path, f"must be a path, not {value!r}")
    found = (ctx.base_dir / os.path.expanduser(value)).resolve()
    if not found.is_file():
        ctx.fail(path, f"no such file `{found}`")
    return found


def p_user(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if not isinstance(value, str) or not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        ctx.fail(path, f"invalid user name {value!r}")
    return value


def p_host_uri(value: Any, path: KeyPath, ctx: Ctx) -> str:
    uri = p_uri(value, path, ctx)
    parts = urllib.parse.urlsplit(uri)
    if uri.startswith("qemu:///embed") or not parts.path:
        ctx.fail(path, f"`{uri}` is not a libvirt host's URI",
                 hint="e.g. `qemu+ssh://root@10.0.0.2/system`, or `qemu:///system` for this machine's daemon")
    return uri


def p_capacity(value: Any, path: KeyPath, ctx: Ctx) -> Capacity:
    v = parse_table(CAPACITY_SETTINGS, value, path, ctx)
    return Capacity(memory_mib=v["memory"], vcpus=v["vcpus"])


CAPACITY_SETTINGS = (
    Setting("memory", p_size_mib(64, 64 * 1024 * 1024), None, "size", "memory vmctl may fill (default: libvirt's)"),
    Setting("vcpus", p_int(1, 4096), None, "int", "vCPUs one machine may have there (default: the host's CPUs)"),
)

HOST_SETTINGS = (
    Setting("uri", p_host_uri, None, "uri", "the host's libvirt, e.g. `qemu+ssh://root@10.0.0.2/system`"),
    Setting("user", p_user, None, "name", "SSH user (default: the URI's, else root)"),
    Setting("key", p_path, None, "path", "SSH private key offered to the host (default: ssh-agent's)"),
    Setting("known_hosts", p_path, None, "path", "known-hosts file that must hold the host's key",
            shown="~/.ssh/known_hosts"),
    Setting("port", p_int(1, 65535), None, "int", "SSH port (default: the URI's, else 22)"),
    Setting("capacity", p_capacity, None, "mapping", "`memory`, `vcpus`: limits instead of libvirt's figures"),
)


def parse_hosts(value: Any, path: KeyPath, ctx: Ctx) -> tuple[HostSpec, ...]:
    hosts = []
    for name, raw in _named_mapping(value, path, ctx, "hosts", p_name).items():
        v = parse_table(HOST_SETTINGS, raw, (*path, name), ctx)
        if v["uri"] is None:
            ctx.fail((*path, name), f"host `{name}` has no `uri`", "add `uri: qemu+ssh://USER@ADDRESS/system`")
        hosts.append(HostSpec(name=name, uri=v["uri"], user=v["user"], key=v["key"], known_hosts=v["known_hosts"],
                              port=v["port"], capacity=v["capacity"] or Capacity()))
    return tuple(hosts)
