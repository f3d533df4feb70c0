"""Per-environment state on the host: a 0700 folder with a lock, the SSH key pair and `state.json`.

`state_root()/locks/<environment>.lock` (flock): one vmctl command changes an environment at a time.
Layout under `state_root()/envs/<environment>/`:
  id_ed25519(.pub)     the environment's SSH key (0600)
  state.json           what `up` created, written atomically (write, fsync, rename)
The embedded libvirt root (domains, QEMU logs, sockets) is under `runtime_root()`, where paths are short.
  machines/<name>/     console.log, scratch disks, container bundles
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmctl.errors import VmctlError
from vmctl.paths import private_dir, runtime_root, state_root

STATE_VERSION = 1


@dataclass
class ForwardState:
    host_ip: str
    host_port: int
    guest_port: int
    proto: str = "tcp"


@dataclass
class MachineState:
    name: str
    domain: str
    uri: str
    accel: str
    ssh_port: int
    forwards: list[ForwardState] = field(default_factory=list)
    hostkey: str | None = None  # "ssh-ed25519 BASE64", pinned from this boot's console READY line
    memory_mib: int = 0
    vcpus: int = 0
    kernel_release: str | None = None
    timeline: dict[str, float] = field(default_factory=dict)  # phase -> seconds since define
    guest: dict[str, float] = field(default_factory=dict)  # guest uptime stamps (init, ready)
    boot_seconds: float | None = None  # domain start to SSH handshake done, measured
    host: str | None = None  # the `hosts:` entry it runs on (None: the file names no hosts)
    template: str | None = None  # name of the template it was restored from (vmctl/template.py), None: cold
    host_emulated: bool = False  # booted in a host whose own CPU is emulated (vmctl/virt.py): KVM at TCG speed

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> MachineState:
        raw = dict(raw)
        raw["forwards"] = [ForwardState(**f) for f in raw.get("forwards", [])]
        return cls(**raw)


@dataclass
class EnvState:
    environment: str
    file: str
    machines: dict[str, MachineState] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)  # {"subnets", "addresses"}: network.plan keeps them
    # Hosts that may hold tunnel ends of the network (vmctl/network/span.py): recorded before they are made.
    tunnel_hosts: list[str] = field(default_factory=list)
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EnvState:
        return cls(
            environment=raw["environment"],
            file=raw["file"],
            machines={k: MachineState.from_json(v) for k, v in raw.get("machines", {}).items()},
            services=raw.get("services", {}),
            network=raw.get("network", {}),
            tunnel_hosts=raw.get("tunnel_hosts", []),
            version=raw.get("version", STATE_VERSION),
        )


class EnvDir:
    """The state folder of one environment."""

    def __init__(self, environment: str, root: Path | None = None) -> None:
        self.environment = environment
        self.path = (root or state_root()) / "envs" / environment

    @property
    def exists(self) -> bool:
        return self.path.exists()

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def libvirt_root(self) -> Path:
        """The embedded libvirt root: under the short runtime folder, named by a hash of this folder."""
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:12]
        return runtime_root() / "libvirt" / digest

    @property
    def key_file(self) -> Path:
        return self.path / "id_ed25519"

    def machine_dir(self, machine: str) -> Path:
        return self.path / "machines" / machine

    def create(self) -> None:
        private_dir(self.path.parent)
        private_dir(self.path)

    # -- state ------------------------------------------------------------------------------------

    def load(self, file: str = "") -> EnvState:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return EnvState(environment=self.environment, file=file)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise VmctlError(f"state file `{self.state_file}` is unreadable: {e}",
                             hint="run `vmctl down` to clean up by libvirt tags, then `up` again") from None
        return EnvState.from_json(raw)

    def save(self, state: EnvState) -> None:
        self.create()
        write_atomic(self.state_file, json.dumps(state.to_json(), indent=2, sort_keys=True).encode())

    # -- key --------------------------------------------------------------------------------------

    def ssh_key(self) -> Ed25519PrivateKey:
        """The environment's key, created on first use (0600, never readable by others)."""
        if self.key_file.exists():
            key = serialization.load_ssh_private_key(self.key_file.read_bytes(), password=None)
            assert isinstance(key, Ed25519PrivateKey)
            return key
        self.create()
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        write_atomic(self.key_file, pem)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        write_atomic(self.key_file.with_suffix(".pub"), pub + b" vmctl-" + self.environment.encode() + b"\n")
        return key

    def ssh_key_blob(self) -> str:
        pub = self.ssh_key().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH)
        return pub.decode().split()[1]

    # -- lock -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, wait: float = 600.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the environment's lock; wait for another vmctl command that holds it, up to `wait`."""
        # The lock lives outside the environment's folder, which `down` removes while holding it.
        locks = private_dir(self.path.parent.parent / "locks")
        fd = os.open(locks / f"{self.environment}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    if time.monotonic() >= deadline:
                        raise VmctlError(
                            f"environment `{self.environment}` is busy: another vmctl command (pid {holder}) "
                            "holds its lock", hint="wait for it to finish, or stop it") from None
                    if on_wait and not told:
                        on_wait(f"waiting for another vmctl command (pid {holder}) on `{self.environment}`")
                        told = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` so that `path` is either the old or the new content, never a torn mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per call: threads of one process write the same file (two hosts' uploads
    # hashing one image), and a shared `.PID.tmp` lets one rename the other's file away.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def known_environments(root: Path | None = None) -> list[str]:
    base = (root or state_root()) / "envs"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []
