"""Containers inside a guest: crun driven over SSH, one small supervisor script per guest.

The host does the thinking: it generates `config.json` with `oci_spec.make_config` (the same generator
the host runtime uses) and sends it, with the container's /etc files, as a tar on the SSH channel's
stdin. The guest only runs `templates/guest/supervise.sh`, uploaded at each start, with validated names
as arguments (argv lists, quoted by `Guest.run`; no shell line is built from user values).

In the guest, per service (see supervise.sh): the image's ext4 disk (found by its `<serial>`) mounted
read-only once at /run/vmctl/images/SERIAL, an overlay with a tmpfs upper layer at
/run/vmctl/svc/NAME/rootfs, `crun run` in the foreground under a supervisor that records exit codes and
restarts on failure, and the output in /run/vmctl/svc/NAME/container.log.

Volumes: each distinct host folder the machine's services mount is one virtio-9p device of the domain, its
tag `vol-` + 12 hex digits of a hash of the folder's path (`volume_tag`). The guest mounts a tag once at
/run/vmctl/volumes/TAG (read-only when every use is), and the OCI config bind-mounts that folder into the
container, read-only unless the volume says `:rw`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import secrets
import shlex
import sys
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmctl.container_image import PreparedImage
from vmctl.errors import GuestError, HostError, UsageError
from vmctl.oci_spec import ContainerRequest, file_name, make_config, merge_env, request_etc_files
from vmctl.paths import STAMP_AWK, TEMPLATES_DIR
from vmctl.spec import ServiceSpec
from vmctl.ssh import Guest

SCRIPT = "/run/vmctl/supervise.sh"
# what `_helper` uploads to /run/vmctl at its first call: name -> (source, mode)
HELPERS = {"supervise.sh": (TEMPLATES_DIR / "guest" / "supervise.sh", 0o755), "stamp.awk": (STAMP_AWK, 0o644)}
SVC_ROOT = "/run/vmctl/svc"
SERIAL_PREFIX = "img-"
SERIAL_HEX = 16  # virtio-blk serials hold at most 20 bytes
STOP_GRACE_SECONDS = 5
INIT_FILE = "init"  # the static init in the bundle, bound at /sbin/docker-init
STDIN_OPEN_FILE = "stdin_open"
TTY_FILE = "tty"  # a marker: supervise.sh runs crun on a terminal of its own (util-linux's script)
LOG_ROTATION_FILE = "log_rotation"  # "MAX_BYTES KEEP": supervise.sh has stamp.awk rotate the log
TINI = Path("/usr/bin/tini-static")  # Debian's `tini` package: static, so it runs in any image
_SERIAL = re.compile(rf"{SERIAL_PREFIX}[0-9a-f]{{{SERIAL_HEX}}}")
VOLUME_ROOT = "/run/vmctl/volumes"
VOLUME_PREFIX = "vol-"
VOLUME_HEX = 12
_VOLUME_TAG = re.compile(rf"{VOLUME_PREFIX}[0-9a-f]{{{VOLUME_HEX}}}")


@dataclass(frozen=True)
class Live:
    """What a runtime reports about one container right now."""

    state: str  # starting, running, restarting, exited, absent
    exit_code: int | None = None
    restarts: int = 0


@dataclass(frozen=True)
class ExecOptions:
    """`exec -u/-w/-e`: who runs the command, in which folder, with which more variables, on a terminal
    (`tty`: the caller's is one, and no `-T`) or not."""

    user: str = ""  # uid[:gid], numeric: crun and runc take no names
    cwd: str = ""
    env: tuple[str, ...] = ()  # K=V
    tty: bool = False

    def flags(self) -> list[str]:
        """As `crun exec` and `runc exec` both spell them."""
        out = [part for entry in self.env for part in ("--env", entry)]
        out += ["--user", self.user] if self.user else []
        out += ["--tty"] if self.tty else []
        return out + (["--cwd", self.cwd] if self.cwd else [])


def host_init() -> Path:
    if not TINI.is_file():
        raise HostError(f"`init: true` needs a static init at `{TINI}`", hint="install it: `apt-get install tini`")
    return TINI


def image_serial(digest: str) -> str:
    """The disk serial of an image in every guest: `img-` + 16 hex digits of its manifest digest."""
    return SERIAL_PREFIX + digest.split(":", 1)[-1][:SERIAL_HEX]


def volume_tag(source: Path | str) -> str:
    """The 9p mount tag of a host folder in every guest: `vol-` + 12 hex digits of its path's SHA-256."""
    return VOLUME_PREFIX + hashlib.sha256(str(source).encode()).hexdigest()[:VOLUME_HEX]


def volume_path(tag: str) -> str:
    """Where the guest mounts the 9p device with this tag."""
    return f"{VOLUME_ROOT}/{tag}"


def service_dir(name: str) -> str:
    return f"{SVC_ROOT}/{name}"


def bundle_tar(req: ContainerRequest) -> bytes:
    """config.json plus etc/{hostname,hosts,resolv.conf}, as the tar `supervise.sh prepare` unpacks."""
    files = {"config.json": (json.dumps(make_config(req), indent=1) + "\n").encode()}
    files |= {f"etc/{k}": v.encode() for k, v in request_etc_files(req).items()}
    if req.init_path is not None:  # `init: true`: the host's static tini travels with the bundle
        files[INIT_FILE] = host_init().read_bytes()
    if req.stdin_open:  # a marker: supervise.sh then gives `crun run` a FIFO it holds open as stdin
        files[STDIN_OPEN_FILE] = b""
    if req.terminal:
        files[TTY_FILE] = b""
    if req.log_rotation is not None:
        files[LOG_ROTATION_FILE] = "{} {}\n".format(*req.log_rotation).encode()
    owned = {f"etc/{file_name(i)}": f for i, f in enumerate(req.files)}  # secrets and configs
    files |= {path: f.data for path, f in owned.items()}
    # busybox tar, run by root, keeps the owner and the mode
    return tar_of({path: (data, *((owned[path].mode, owned[path].uid, owned[path].gid) if path in owned else
                                  (0o755 if path == INIT_FILE else 0o644, 0, 0)))
                   for path, data in files.items()})


def tar_of(files: Mapping[str, tuple[bytes, int, int, int]]) -> bytes:
    """A tar of path -> (data, mode, uid, gid)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, (data, mode, uid, gid) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parse_status(text: str) -> Live:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    code = fields.get("exit_code", "")
    restarts = fields.get("restarts", "0")
    return Live(state=fields.get("state", "absent"), exit_code=int(code) if code.isdigit() else None,
                restarts=int(restarts) if restarts.isdigit() else 0)


class GuestRuntime:
    """crun in one guest, through an open SSH connection (`Guest`)."""

    isolation = "microvm"
    stop_grace = float(STOP_GRACE_SECONDS)  # without `stop_grace_period`
    share_network = True  # the container uses the guest's network stack: guest port == container port

    def __init__(self, guest: Guest, volumes: Mapping[str, bool] | None = None,
                 names: Mapping[str, str] | None = None) -> None:
        """`volumes`: tag -> read-only, for every 9p device of the machine (`workloads.machine_volumes`);
        `names`: service -> its `container_name`, where the file sets one."""
        self.guest = guest
        self.volumes = dict(volumes or {})
        self.names = dict(names or {})
        self._uploaded = False

    def rootfs(self, name: str, image: PreparedImage) -> str:
        return f"{service_dir(self.container_name(name))}/rootfs"

    def etc_dir(self, name: str) -> str | None:
        return f"{service_dir(self.container_name(name))}/bundle/etc"

    def init_path(self, name: str) -> str:
        return f"{service_dir(self.container_name(name))}/bundle/{INIT_FILE}"

    def volume_source(self, source: Path) -> str:
        return volume_path(volume_tag(source))

    def _upload(self) -> None:
        """supervise.sh and stamp.awk into the guest's /run/vmctl, once per process (they are small)."""
        if not self._uploaded:
            helpers = tar_of({name: (source.read_bytes(), mode, 0, 0) for name, (source, mode) in HELPERS.items()})
            self.guest.run(["sh", "-c", "mkdir -p /run/vmctl && tar -x -f - -C /run/vmctl"], stdin=helpers,
                           timeout=30, check=True)
            self._uploaded = True

    def _helper(self, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> str:
        return self._helpers([args], stdin=stdin, timeout=timeout)

    def _helpers(self, calls: Sequence[Sequence[str]], *, stdin: bytes | None = None, timeout: float = 60.0) -> str:
        """supervise.sh once per call, in one SSH command (each costs a round trip and, under TCG, a
        fresh shell in the guest); the first failure ends the chain. Only the first reads `stdin`."""
        self._upload()
        argv = ["sh", SCRIPT, *calls[0]] if len(calls) == 1 else \
            ["sh", "-c", " && ".join(shlex.join(["sh", SCRIPT, *c]) for c in calls)]
        _, out, _ = self.guest.run(argv, stdin=stdin, timeout=timeout, check=True)
        return out.decode(errors="replace")

    def container_name(self, service: str) -> str:
        # one guest belongs to one environment: the service name is unique in it
        return self.names.get(service, service)

    def start(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage,
              ports: Sequence[object] = ()) -> None:
        """Prepare the bundle and the overlay root, then start the supervised `crun run`.

        `ports` are already forwarded by the VM (the container shares the guest's network)."""
        self._helpers([*self._prepare(req, svc, image), ("start", req.name, _policy(svc))], stdin=bundle_tar(req))

    def attach(self, service: str, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage) -> int:
        """`vmctl run`'s one-off in the foreground; its exit code. Prepared as `start` prepares, then `crun
        run` on the SSH channel itself: its stdin and output are this process's, and with `req.terminal`
        the channel is a terminal (a pty of the guest's sshd, which crun hands on to the container)."""
        self._helpers(self._prepare(req, svc, image), stdin=bundle_tar(req))
        argv = ["sh", SCRIPT, "attach", req.name]
        if req.terminal:
            token = secrets.token_hex(4)
            return self.guest.interactive([*argv, token], on_resize=self._resizer(token))
        stdin = None if sys.stdin.closed else sys.stdin.buffer
        return self.guest.stream(argv, sys.stdout.buffer, sys.stderr.buffer, stdin=stdin)

    def _resizer(self, token: str) -> Callable[[int, int], None]:
        """What gives crun's terminal of `attach`/`on-tty` TOKEN our new size (supervise.sh `resize`)."""
        def resize(rows: int, cols: int) -> None:
            self._helper("resize", token, str(rows), str(cols))

        return resize

    def _prepare(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage) -> list[tuple[str, ...]]:
        """The helper calls that make the bundle, the overlay and the guest's sysctls (the bundle comes on
        stdin)."""
        serial = image_serial(image.digest)
        if not _SERIAL.fullmatch(serial):
            raise UsageError(f"invalid image digest `{image.digest}`")
        volumes: list[str] = []
        for tag in sorted({volume_tag(v.source) for v in svc.volumes}):
            readonly = self.volumes.get(tag, all(v.readonly for v in svc.volumes if volume_tag(v.source) == tag))
            volumes += [tag, "ro" if readonly else "rw"]
        if not all(_VOLUME_TAG.fullmatch(t) for t in volumes[::2]):
            raise UsageError(f"invalid volume tags {volumes[::2]}")
        calls = [("prepare", req.name, serial, *volumes)]
        # the container shares the guest's network stack (its own VM: spec refuses net.* in a shared one),
        # so its net.* sysctls are the guest's; crun refuses them without a network namespace of its own
        net = [part for key, value in svc.sysctls if key.startswith("net.") for part in (key, value)]
        if net:
            calls.append(("sysctl", *net))
        return calls

    def resume(self, req: ContainerRequest, svc: ServiceSpec, image: PreparedImage,
               ports: Sequence[object] = ()) -> None:
        """Run a halted (or exited) container again: the bundle, the overlay and the log are still there."""
        self._helper("start", req.name, _policy(svc))

    def wait_output(self, name: str, timeout: float) -> None:
        """Return once the container has written to its log (waited for in the guest, not polled)."""
        seconds = max(1, math.ceil(timeout))
        self._helper("wait-output", self.container_name(name), str(seconds), timeout=seconds + 10)

    def live(self, name: str) -> Live:
        return parse_status(self._helper("status", self.container_name(name)))

    def exec(self, name: str, argv: Sequence[str], *, capture: bool = True, timeout: float | None = None,
             options: ExecOptions | None = None) -> tuple[int, bytes]:
        """`crun exec` in the container; (exit code, output). Not captured: streams to this terminal."""
        options = options or ExecOptions()
        if options.env:  # `crun exec --env` replaces the container's environment (runc's adds to it)
            options = dataclasses.replace(options, env=merge_env(self._env(name), options.env))
        cmd = ["crun", "exec", *options.flags(), self.container_name(name), *argv]
        token = secrets.token_hex(4) if not capture and options.tty else None
        if token:  # on a terminal crun makes, behind a pty of the guest's sshd: supervise.sh sizes it
            cmd = ["sh", SCRIPT, "on-tty", token, *cmd[1:]]
        if timeout is not None:
            cmd = ["timeout", str(max(1, math.ceil(timeout))), *cmd]
        if token:
            return self.guest.interactive(cmd, on_resize=self._resizer(token)), b""
        if not capture:
            stdin = None if sys.stdin.isatty() or sys.stdin.closed else sys.stdin.buffer
            return self.guest.stream(cmd, sys.stdout.buffer, sys.stderr.buffer, stdin=stdin), b""
        try:
            code, out, err = self.guest.run(cmd, timeout=None if timeout is None else timeout + 10)
        except GuestError as e:
            return 124, str(e).encode()
        return code, out + err

    def _env(self, name: str) -> list[str]:
        """The environment the container's process runs with, from its bundle's config.json."""
        _, out, _ = self.guest.run(["cat", f"{service_dir(self.container_name(name))}/bundle/config.json"],
                                   timeout=30, check=True)
        return [str(e) for e in json.loads(out)["process"]["env"]]

    def logs(self, name: str, out: BinaryIO, *, tail: int | None, follow: bool, timestamps: bool = False) -> None:
        """The container's log, its rotated files first (supervise.sh `logs`): all of it or its last `tail`
        lines; with `timestamps`, the stamped copy (each line after its UTC time: templates/logs/stamp.awk)."""
        self._upload()
        argv = ["sh", SCRIPT, "logs", self.container_name(name), "t" if timestamps else "raw",
                "all" if tail is None else str(tail), "f" if follow else "-"]
        code = self.guest.stream(argv, out, out)
        if code != 0:
            raise GuestError(f"cannot read the log of `{name}` in machine `{self.guest.name}` "
                             f"(`{shlex.join(argv)}` exited {code})")

    def stop(self, name: str, grace: float = STOP_GRACE_SECONDS, signal: str = "SIGTERM") -> int | None:
        """End and remove the container; its exit code, when it had one (it tells whether `signal` ended
        it, or SIGKILL)."""
        return self._end("stop", name, grace, signal)

    def halt(self, name: str, grace: float = STOP_GRACE_SECONDS, signal: str = "SIGTERM") -> int | None:
        """End the container but keep it (`vmctl stop`): `resume` runs it again; its exit code, as `stop`."""
        return self._end("halt", name, grace, signal)

    def _end(self, how: str, name: str, grace: float, signal: str) -> int | None:
        out = self._helper(how, self.container_name(name), str(max(0, math.ceil(grace))),
                           signal.removeprefix("SIG"), timeout=grace + 30)
        return parse_status(out).exit_code


def _policy(svc: ServiceSpec) -> str:
    """compose's `restart` as supervise.sh takes it: `no`, `always`, `on-failure:N`..."""
    retries = f":{svc.restart_retries}" if svc.restart_retries is not None else ""
    return f"{svc.restart.value}{retries}"
