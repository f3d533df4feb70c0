"""Plain containers on the host with runc: the baseline the microVMs are compared against.

One container = one directory the caller gives (`cdir`):

    cdir/bundle/config.json    from `oci_spec.make_config`
    cdir/bundle/rootfs/        overlay: lower = the prepared image's rootfs (shared, never written),
                               upper/work = cdir/overlay/ (catches mountpoints runc creates)
    cdir/bundle/etc/           hostname, hosts, resolv.conf (bound read-only into the container)
    cdir/container.log         the container's stdout and stderr (unless `start(log=...)` puts it elsewhere;
                               `start(stamped=...)` also writes them there with times: templates/logs/stamp.awk)
    cdir/slirp.log, state.json slirp4netns output; what `stop` needs (helper PID, socket, ports)

Networking mirrors the microVM's QEMU user-mode networking: the container gets its own network namespace
and `slirp4netns --configure` gives it tap0 = 10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3; published
ports are `add_hostfwd` calls on slirp4netns's API socket, bound to 127.0.0.1 only. slirp4netns runs in
its own session (it outlives the CLI call) and holds the read end of a pipe whose write end only the
container's processes hold (`runc create --preserve-fds 1`): when the container's last process exits,
slirp4netns exits too. `stop` kills it by its recorded PID anyway, checked against its start time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from vmctl.errors import CommandFailed, HostError, UsageError
from vmctl.oci_spec import (
    SLIRP_ADDRESS,
    ContainerRequest,
    caps_in_mask,
    file_name,
    limit_caps,
    make_config,
    request_etc_files,
)
from vmctl.paths import STAMP_AWK, private_dir, runtime_root
from vmctl.runner import log as run_log
from vmctl.runner import output, run, which

SLIRP_MTU = "65520"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class PortForward:
    """`host_ip:host_port` on the host -> `container_port` in the container's network namespace."""

    host_port: int
    container_port: int
    host_ip: str = "127.0.0.1"
    proto: str = "tcp"

    def validate(self) -> None:
        if not (self.host_ip.startswith("127.") and self.host_ip.count(".") == 3):
            raise UsageError(f"port {self.host_port}: host address `{self.host_ip}` is not loopback",
                             hint="published ports bind to 127.0.0.1 only")  # fmt: skip
        for port in (self.host_port, self.container_port):
            if not 1 <= port <= 65535:
                raise UsageError(f"port `{port}` is out of range 1-65535")
        if self.proto not in ("tcp", "udp"):
            raise UsageError(f"protocol `{self.proto}` is not tcp or udp")


@dataclass(frozen=True)
class ContainerState:
    name: str
    status: str  # created, running, stopped, paused
    pid: int  # 0 when stopped


@dataclass(frozen=True)
class HostContainer:
    """What `start` returns: enough to talk to the container and to clean up after it."""

    name: str
    cdir: Path
    pid: int
    log: Path
    slirp_pid: int | None
    ports: tuple[PortForward, ...]
    output_pids: tuple[int, ...] = ()  # what carries the output to `log`: the tty relay, busybox awk stamping it


class HostRuntime:
    """runc on the host, with its own state root so vmctl's containers never mix with anyone else's."""

    def __init__(self, runc_root: Path | None = None) -> None:
        if os.geteuid() != 0:
            raise HostError("host containers need root here (runc with overlay mounts and cgroups)",
                            hint="run vmctl as root, or compare with `podman --runtime runc` instead")  # fmt: skip
        self.runc_root = runc_root or runtime_root() / "runc"
        self.runc = which("runc")

    # ------------------------------------------------------------ lifecycle

    def start(
        self,
        req: ContainerRequest,
        cdir: Path,
        *,
        ports: Sequence[PortForward] = (),
        network: bool = True,
        ready_timeout: float = 10.0,
        log: Path | None = None,
        stamped: Path | None = None,
        on_created: Callable[[int], None] | None = None,
        attached: bool = False,
    ) -> HostContainer:
        """Create and start `req` detached. `req.rootfs` is the image's rootfs (the overlay's lower layer).

        Network: an own namespace (unless `req.share_host_network`); with `network`, slirp4netns gives it
        outbound access and `ports`. `on_created(pid)` runs after `runc create`, before the container's
        process starts (the environment network adds its NICs then). With `stamped`, the output goes
        through templates/logs/stamp.awk: to `log` as written, and to `stamped` with times. `attached`: the
        container's stdio is ours instead (its terminal, with `req.terminal`, relayed to ours), for a caller
        that waits for it as a child subreaper. On any failure everything made so far is removed again.
        """
        for p in ports:
            p.validate()
        if ports and (req.share_host_network or req.netns_path or not network):
            raise UsageError(f"`{req.name}`: published ports need the container's own network (slirp4netns)")
        if self.state(req.name) is not None:
            raise HostError(f"a host container `{req.name}` exists already",
                            hint=f"stop it first (`runc --root {self.runc_root} delete -f {req.name}`)")  # fmt: skip
        private_dir(self.runc_root)
        try:
            own_network = network and not req.share_host_network and req.netns_path is None
            output = ContainerOutput(log or cdir / "container.log", stamped, attached, req.log_rotation)
            return self._start(req, cdir, tuple(ports), own_network, ready_timeout, output, on_created)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop(req.name, cdir, grace=0)
            raise

    def _start(
        self, req: ContainerRequest, cdir: Path, ports: tuple[PortForward, ...], network: bool, ready_timeout: float,
        output: ContainerOutput, on_created: Callable[[int], None] | None = None,
    ) -> HostContainer:
        lower = Path(req.rootfs)
        if not lower.is_dir():
            raise UsageError(f"rootfs `{lower}` of `{req.name}` is not a directory", hint="prepare the image first")
        private_dir(cdir)
        bundle = cdir / "bundle"
        rootfs, etc = bundle / "rootfs", bundle / "etc"
        for d in (rootfs, etc, cdir / "overlay" / "upper", cdir / "overlay" / "work"):
            d.mkdir(parents=True, exist_ok=True)
        for name, text in request_etc_files(req, fallback_address=SLIRP_ADDRESS if network else None).items():
            (etc / name).write_text(text)
        for i, f in enumerate(req.files):  # secrets and configs (cdir is 0700: only the bind reaches them)
            target = etc / file_name(i)
            target.write_bytes(f.data)
            os.chown(target, f.uid, f.gid)
            target.chmod(f.mode)
        state: dict[str, Any] = {"name": req.name, "runc_root": str(self.runc_root), "rootfs": str(rootfs)}
        _write_state(cdir, state)
        self._mount_overlay(lower, cdir / "overlay", rootfs)
        cgroups = req.cgroups_path or f"/vmctl/{req.name}"
        config = make_config(dataclasses.replace(req, rootfs=str(rootfs), etc_dir=str(etc), cgroups_path=cgroups))
        limit_caps(config, bounding_caps())
        (bundle / "config.json").write_text(json.dumps(config, indent=1) + "\n")

        exit_r, exit_w = os.pipe()
        try:
            fifo = (req.stdin_open or req.terminal) and not output.attached
            carriers = self._create(req.name, bundle, output, exit_w, stdin=_stdin_fifo(cdir) if fifo else None,
                                    console=_socket_path(cdir, "tty") if req.terminal else None)
            os.close(exit_w)
            exit_w = -1
            if carriers:
                state["output_pids"] = list(carriers)
                _write_state(cdir, state)
            pid = self._pid(req.name)
            slirp_pid = None
            if network:
                slirp_pid = self._start_slirp(pid, cdir, exit_r, state, ready_timeout)
                for p in ports:
                    _add_hostfwd(Path(state["api_socket"]), p)
                state["ports"] = [dataclasses.asdict(p) for p in ports]
                _write_state(cdir, state)
            if on_created is not None:
                on_created(pid)
        finally:
            os.close(exit_r)
            if exit_w >= 0:
                os.close(exit_w)
        run([self.runc, "--root", self.runc_root, "start", req.name], timeout=30)
        return HostContainer(req.name, cdir, pid, output.log, slirp_pid, ports, carriers)

    def _mount_overlay(self, lower: Path, work: Path, target: Path) -> None:
        dirs = {"lowerdir": lower, "upperdir": work / "upper", "workdir": work / "work"}
        if any(c in str(p) for p in dirs.values() for c in ",:\\"):
            raise HostError(f"paths for the overlay of `{target}` may not contain `,`, `:` or `\\`")
        options = ",".join(f"{k}={v}" for k, v in dirs.items())
        run([which("mount", package="mount"), "-t", "overlay", "overlay", "-o", options, target], timeout=30)

    def _create(self, name: str, bundle: Path, output: ContainerOutput, exit_w: int, *,
                stdin: Path | None = None, console: Path | None = None) -> tuple[int, ...]:
        """`runc create`; returns the PIDs of what carries the output (the caller reaps them): with
        `console` (`tty`), the relay holding the terminal (vmctl/tty_relay.py), then, when the output is
        stamped, the stamper. Without a terminal runc hands its own stdio to the container: ours, when
        `output.attached`."""
        argv = [self.runc, "--root", str(self.runc_root), "create", "--bundle", str(bundle)]
        if console is not None:
            argv += ["--console-socket", str(console)]
        argv += ["--preserve-fds", "1", name]  # fd 3 = exit pipe: slirp4netns ends with the container
        keep, carriers, out_w = {3: exit_w}, [], -1
        try:
            if output.stamped is not None:
                output.stamped.touch(mode=0o600)  # both logs exist from the start, as the raw one always did
                out_r, out_w = os.pipe()
                try:
                    max_bytes, files = output.rotation or (0, 1)
                    carriers.append(_spawn([which("busybox", package="busybox-static"), "awk", "-v",
                                            f"raw={output.log}", "-v", f"stamped={output.stamped}", "-v",
                                            f"max={max_bytes}", "-v", f"keep={files}", "-f", str(STAMP_AWK)],
                                           out=Path(os.devnull), keep={0: out_r}))
                finally:
                    os.close(out_r)
            into = {1: out_w, 2: out_w} if out_w >= 0 else {}
            if output.attached:
                into = {0: 0, 1: 1, 2: 2}
            if console is not None:
                carriers.insert(0, _relay(console, output.log, into, stdin, forward=output.attached))
                stdin = None
            else:
                keep |= into
            try:  # runc hands its stdio to the container (or its terminal, to the relay)
                code = _wait_through_interrupts(_spawn(argv, out=output.log, keep=keep, stdin=stdin))
            finally:
                if out_w >= 0:
                    os.close(out_w)  # the container (or the relay) holds the pipe now; the stamper ends with it
                    out_w = -1
                if console is not None:
                    console.unlink(missing_ok=True)
            if code != 0:
                if console is not None:  # it waits for a terminal that will not come
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(carriers[0], signal.SIGTERM)
                for pid in carriers:  # runc's error went through them: let it reach the log
                    reap(pid, wait=2.0)
                tail = "\n    ".join(output.log.read_text(errors="replace").strip().splitlines()[-6:])
                raise CommandFailed(f"`{shlex.join(argv)}` failed with exit code {code}:\n    {tail}")
        finally:
            if out_w >= 0:
                os.close(out_w)
        return tuple(carriers)

    def _pid(self, name: str) -> int:
        st = self.state(name)
        if st is None or st.pid <= 0:
            raise HostError(f"runc created `{name}` but reports no process for it")
        return st.pid

    def _start_slirp(self, pid: int, cdir: Path, exit_r: int, state: dict[str, Any], timeout: float) -> int:
        api = _socket_path(cdir)
        ready_r, ready_w = os.pipe()
        argv = [which("slirp4netns"), "--configure", f"--mtu={SLIRP_MTU}", "--disable-host-loopback"]
        argv += ["--enable-sandbox", "--api-socket", str(api), "--exit-fd", "3", "--ready-fd", "4", str(pid), "tap0"]
        try:
            slirp_pid = _spawn(argv, out=cdir / "slirp.log", keep={3: exit_r, 4: ready_w})
            state.update(slirp_pid=slirp_pid, slirp_start=_start_time(slirp_pid), api_socket=str(api))
            _write_state(cdir, state)
            os.close(ready_w)
            ready_w = -1
            readable, _, _ = select.select([ready_r], [], [], timeout)
            if not readable or os.read(ready_r, 1) != b"1":
                tail = (cdir / "slirp.log").read_text(errors="replace").strip()[-400:]
                raise HostError(f"slirp4netns did not configure the container's network within {timeout:.0f} s",
                                hint=f"its log says: {tail or '(nothing)'}")  # fmt: skip
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)
        deadline = time.monotonic() + timeout
        while not api.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return slirp_pid

    # ------------------------------------------------------------ operations

    def state(self, name: str) -> ContainerState | None:
        """runc's view of `name`, or None when runc does not know it."""
        proc = run([self.runc, "--root", self.runc_root, "state", name], check=False, timeout=30)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)
        return ContainerState(name, str(data.get("status", "")), int(data.get("pid") or 0))

    def exec(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Sequence[str] = (),
        user: str | None = None,
        cwd: str | None = None,
        capture: bool = True,
        timeout: float | None = None,
        tty: bool = False,
    ) -> CompletedProcess[bytes]:
        """Run `args` in the running container; the returncode is the process's own exit code. With `tty`
        (not captured), on a terminal runc makes and relays to ours in the foreground."""
        if not args:
            raise UsageError("exec needs a command")
        argv: list[str] = [self.runc, "--root", str(self.runc_root), "exec"]
        for entry in env:
            argv += ["--env", entry]
        if user:
            argv += ["--user", user]
        if cwd:
            argv += ["--cwd", cwd]
        if tty:
            argv += ["--tty"]
        return run([*argv, "--", name, *args], check=False, capture=capture, timeout=timeout)

    def kill(self, name: str, sig: str = "TERM") -> None:
        run([self.runc, "--root", self.runc_root, "kill", name, sig], timeout=30)

    def stop(self, name: str, cdir: Path, *, grace: float = STOP_GRACE_SECONDS, signal: str = "SIGTERM") -> None:
        """`halt`, then remove `cdir`."""
        self.halt(name, cdir, grace=grace, signal=signal)
        _rmtree(cdir)
        _remove_empty_cgroup_parents("vmctl")

    def halt(self, name: str, cdir: Path, *, grace: float = STOP_GRACE_SECONDS, signal: str = "SIGTERM") -> None:
        """`signal` (SIGTERM), then SIGKILL after `grace` s; delete; end slirp4netns; unmount. `cdir` stays
        (the overlay's upper layer, the log): `start` over it runs the container again with its files."""
        state = _read_state(cdir)
        st = self.state(name)
        if st is not None:
            if st.status in ("running", "created", "paused"):
                with contextlib.suppress(CommandFailed):
                    self.kill(name, signal.removeprefix("SIG") if grace > 0 and st.status == "running" else "KILL")
                self._wait_stopped(name, grace)
            run([self.runc, "--root", self.runc_root, "delete", "--force", name], check=False, timeout=30)
        _end_process(state.get("slirp_pid"), state.get("slirp_start"))
        for pid in state.get("output_pids", ()):  # they end once the container's output closes; collected
            reap(pid, wait=1.0)                      # where they are ours
        rootfs = Path(state.get("rootfs") or cdir / "bundle" / "rootfs")
        if _is_mountpoint(rootfs):
            run([which("umount", package="mount"), rootfs], timeout=30)
        api = state.get("api_socket")
        if api:
            Path(api).unlink(missing_ok=True)

    def _wait_stopped(self, name: str, grace: float) -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            st = self.state(name)
            if st is None or st.status == "stopped":
                return
            time.sleep(0.05)
        with contextlib.suppress(CommandFailed):
            self.kill(name, "KILL")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = self.state(name)
            if st is None or st.status == "stopped":
                return
            time.sleep(0.05)

    def leftovers(self, name: str, cdir: Path) -> list[str]:
        """Everything `name` may have left behind: runc state, processes, mounts, files, cgroups."""
        found: list[str] = []
        if (self.runc_root / name).exists():
            found.append(f"runc state {self.runc_root / name}")
        state = _read_state(cdir)
        pid = state.get("slirp_pid")
        if pid and _alive(pid, state.get("slirp_start")):
            found.append(f"slirp4netns process {pid}")
        marker = str(cdir)
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if (marker in cmdline or f" {name}" in cmdline) and ("runc" in cmdline or "slirp" in cmdline):
                        found.append(f"process {proc.name}: {cmdline.strip()}")
        for mountpoint in _mountpoints():
            if mountpoint == marker or mountpoint.startswith(marker + "/"):
                found.append(f"mount {mountpoint}")
        if cdir.exists():
            found.append(f"directory {cdir}")
        api = state.get("api_socket")
        if api and Path(api).exists():
            found.append(f"socket {api}")
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if (hierarchy / "vmctl" / name).exists():
                found.append(f"cgroup {hierarchy / 'vmctl' / name}")
        return found


# ---------------------------------------------------------------- helpers


def _wait_through_interrupts(pid: int) -> int:
    """The exit code of `pid`, waited for even through Ctrl-C (raised again afterwards): `runc create`
    cut short by an exception here would go on creating the container after the clean-up had found none,
    and leave it (and its busy rootfs mount) behind. It ends within a second either way."""
    interrupted: BaseException | None = None
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt included, on purpose
            interrupted = interrupted or e
    if interrupted is not None:
        raise interrupted
    return os.waitstatus_to_exitcode(status)


@dataclass(frozen=True)
class ContainerOutput:
    log: Path  # the container's stdout and stderr, as written
    stamped: Path | None = None  # the same lines after their UTC time (templates/logs/stamp.awk), or none
    attached: bool = False  # instead: the caller's own stdin, stdout and stderr (`vmctl run` in the foreground)
    rotation: tuple[int, int] | None = None  # (max bytes, files kept): the stamper rotates both logs


def reap(pid: int, *, wait: float = 0.0) -> bool:
    """Collect `pid` if it is our own child and has ended (within `wait` seconds); True once it is gone
    (or not ours: tests start and stop in one process, the CLI leaves its children to init)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            return True
        if done or time.monotonic() >= deadline:
            return bool(done)
        time.sleep(0.02)


def _spawn(argv: Sequence[str], *, out: Path, keep: Mapping[int, int], stdin: Path | None = None,
           session: bool = True) -> int:
    """Start `argv` (in a new session, unless not `session`): stdin /dev/null (or `stdin`, opened
    read-write), stdout+stderr appended to `out`, and each `keep[child_fd] = our_fd` at that number.
    Returns the PID (the caller waits or records it).

    Not `runner.run`: that one waits and captures; here the program (runc's container, slirp4netns)
    must outlive the call with its output in a file and an inherited pipe at a fixed fd number.
    """
    args = [os.fspath(a) for a in argv]
    run_log.debug("+ %s", shlex.join(args))
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.fspath(stdin or os.devnull), os.O_RDWR if stdin else os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(out), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    spare: list[int] = []
    try:
        for child_fd, our_fd in keep.items():
            src = our_fd
            while src == child_fd or src in keep:  # dup2 onto itself would keep close-on-exec
                src = os.dup(src)
                spare.append(src)
            actions.append((os.POSIX_SPAWN_DUP2, src, child_fd))
        try:
            return os.posix_spawn(args[0], args, dict(os.environ), file_actions=actions, setsid=session)
        except FileNotFoundError as e:
            raise HostError(f"`{args[0]}` is not installed") from e
    finally:
        for fd in spare:
            os.close(fd)


def _relay(console: Path, log: Path, into: Mapping[int, int], stdin: Path | None, *, forward: bool = False) -> int:
    """The process that will hold a `tty` container's terminal (vmctl/tty_relay.py), listening on
    `console` before runc looks for it; its output goes to `into` (the stamper's pipe, or with `forward`
    the caller's own stdio, whose input it copies to the terminal) or `log`."""
    console.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(console))
        os.chmod(console, 0o600)
        listener.listen(1)
        argv = [sys.executable, "-m", "vmctl.tty_relay", *(["--stdin"] if stdin or forward else [])]
        # forwarding to our terminal, it stays in our process group: the kernel's SIGWINCH reaches it
        return _spawn(argv, out=log, keep={3: listener.fileno(), **into}, stdin=stdin, session=not forward)


def _stdin_fifo(cdir: Path) -> Path:
    """`stdin_open`: a FIFO the container opens read-write, so its stdin never reaches EOF (its own
    descriptor is a writer that never closes) and nobody else needs to hold it open."""
    path = cdir / "stdin"
    if not path.is_fifo():
        os.mkfifo(path, 0o600)
    return path


def _socket_path(cdir: Path, kind: str = "slirp") -> Path:
    """`cdir/KIND.sock`, or a short name in /run/vmctl/sockets where that is too long for sun_path."""
    path = cdir / f"{kind}.sock"
    if len(os.fsencode(path)) < SOCKET_PATH_MAX:
        return path
    short = Path("/run/vmctl/sockets")
    short.mkdir(parents=True, exist_ok=True)
    return short / (hashlib.sha256(os.fsencode(cdir)).hexdigest()[:16] + f".{kind}.sock")


def _add_hostfwd(api: Path, p: PortForward) -> None:
    request = {
        "execute": "add_hostfwd",
        "arguments": {
            "proto": p.proto,
            "host_addr": p.host_ip,
            "host_port": p.host_port,
            "guest_port": p.container_port,
        },
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(api))
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    answer = json.loads(reply or b"{}")
    if "error" in answer or "return" not in answer:
        detail = answer.get("error", {}).get("desc", reply.decode(errors="replace"))
        raise HostError(f"cannot publish {p.host_ip}:{p.host_port} -> {p.container_port}: {detail}",
                        hint="is the host port already in use? pick another one")  # fmt: skip


def _write_state(cdir: Path, state: Mapping[str, Any]) -> None:
    tmp = cdir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(cdir / "state.json")


def _read_state(cdir: Path) -> dict[str, Any]:
    try:
        data = json.loads((cdir / "state.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): guards against PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()
    return fields[0] != "Z" and (start is None or int(fields[19]) == start)


def _end_process(pid: int | None, start: int | None, grace: float = 2.0) -> None:
    if not pid or not _alive(pid, start):
        if pid:
            reap(pid)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pid)
            if not _alive(pid, start):
                return
            time.sleep(0.02)


def _mountpoints() -> list[str]:
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            raw = line.split()[4]
            points.append(raw.encode().decode("unicode_escape"))
    return points


def _is_mountpoint(path: Path) -> bool:
    return str(path) in _mountpoints()


def _rmtree(path: Path) -> None:
    """Remove `path`, refusing to cross into anything still mounted below it."""
    if not path.exists():
        return
    mounted = [m for m in _mountpoints() if m.startswith(str(path) + "/")]
    if mounted:
        raise HostError(f"cannot remove `{path}`: still mounted below it: {', '.join(mounted)}")
    shutil.rmtree(path)


def _remove_empty_cgroup_parents(parent: str) -> None:
    with contextlib.suppress(OSError):
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (hierarchy / parent).rmdir()  # fails while another container uses it: fine


def runc_version() -> str:
    return output([which("runc"), "--version"]).splitlines()[0]


def bounding_caps(status: Path = Path("/proc/self/status")) -> frozenset[str]:
    """The capabilities this process can hand to a container (its bounding set)."""
    line = next(x for x in status.read_text().splitlines() if x.startswith("CapBnd:"))
    return caps_in_mask(int(line.split()[1], 16))
