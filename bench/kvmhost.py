"""A nested KVM test host ("L1"), so vmctl's KVM branch runs on machines whose own /dev/kvm cannot.

L1 is a QEMU guest under TCG with an emulated AMD CPU that has SVM and nested paging
(`-cpu EPYC,+svm,+npt`): its kernel (Debian's cloud kernel, guest image `l1`) loads kvm_amd, so
/dev/kvm in L1 runs standard guests (L2) under KVM, at TCG speed underneath: correctness, not speed.
TCG emulates that CPU on Intel and AMD hosts alike; QEMU 7.2's TCG has no VMX, so `+vmx` is never used.
L1 sees the host's root read-only through virtiofs with a tmpfs overlay (the host's QEMU, libvirt,
Python and this tree, unchanged), and its PID 1 is templates/l1/agent.py, which runs commands sent on a
virtio-serial port and answers with their exit code and output. Nothing of the host's /dev/kvm is used.

    with L1() as l1:
        result = l1.run(["vmctl", "doctor"])

CLI (by hand):  .venv/bin/python -m bench.kvmhost [--smp N] [--single-thread] [-- CMD...]
  boots L1, runs CMD in it (default: a look at /dev/kvm), prints its output, exits with its code.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vmctl import guest_image
from vmctl.paths import TEMPLATES_DIR, runtime_root
from vmctl.runner import spawn, which

IMAGE = "l1"
AGENT = TEMPLATES_DIR / "l1" / "agent.py"
PORT_NAME = "vmctl.l1"  # the agent finds its virtio-serial port by this name
QBOOT = Path("/usr/share/qemu/qboot.rom")
VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")  # Debian's qemu-system-x86 7.2 ships it here
# The virtiofsd wrapper: a private mount namespace in which / is bound read-only, so L1 can write
# nothing of the host's and the host never sees the bind. Values arrive as "$1".. only, never as text.
_READONLY_ROOT = 'mount --bind / "$1" && mount -o remount,bind,ro "$1" && exec "$2" --socket-path="$3" ' \
                 '-o source="$1" -o cache=always -o log_level=warn'
KERNEL_ARGS = ("console=ttyS0", "panic=-1", "quiet")  # panic=-1 + -no-reboot: a panicking L1 ends QEMU
T = TypeVar("T")


class L1Fault(Exception):
    """L1 itself failed (it panicked, hung, or never came up): a fresh L1 may do better."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(f"{message}\n--- L1 console (last lines) ---\n{console_tail}" if console_tail else message)


class NoKvmInL1(Exception):
    """L1 came up without /dev/kvm: a missing piece, not bad luck, so no retry helps."""


@dataclass(frozen=True)
class Config:
    memory_mib: int = 2048  # one L2 machine, one L2 service and the TCG caches of their QEMUs
    # One vCPU: the only L1 fault seen here was with two (`-smp 2`: L1 stopped after its 4th KVM probe
    # boot of a 30-boot loop, both vCPU threads busy, console silent; 20 more boots in a second L1 were
    # fine). With one: 60 of 60 probe boots and the whole kvm module, no fault; each boot as fast.
    smp: int = 1
    tcg_thread: str = "multi"  # "single": one host thread runs every vCPU of L1
    cpu: str = "EPYC,+svm,+npt"
    boot_timeout: float = 180.0  # measured here: L1's agent answers 5-10 s after QEMU starts
    # While a command runs, L1's agent ticks every `tick` s; `stall` s without a byte from it is a hung L1
    # (the one hang seen in CI waited out a 660 s deadline). A busy L1 (two L2 boots) still ticks on time.
    tick: float = 10.0
    stall: float = 90.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        """`VMCTL_L1_SMP`, `VMCTL_L1_TCG_THREAD` (multi|single), `VMCTL_L1_MEMORY` (MiB): to try another L1
        in the tests without editing them (for instance whether one vCPU avoids L1's rare panic)."""
        base = cls()
        return cls(memory_mib=int(env.get("VMCTL_L1_MEMORY", base.memory_mib)),
                   smp=int(env.get("VMCTL_L1_SMP", base.smp)),
                   tcg_thread=env.get("VMCTL_L1_TCG_THREAD", base.tcg_thread))


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def check(self) -> Result:
        """This result, or an AssertionError naming the command, its code and its output."""
        if self.returncode != 0:
            raise AssertionError(f"in L1: `{' '.join(self.argv)}` exited {self.returncode}\n"
                                 f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")
        return self


def qemu_argv(cfg: Config, image: guest_image.GuestImage, vfs_sock: Path, agent_sock: Path,
              console: Path) -> list[str]:
    """L1's QEMU: TCG, the emulated SVM CPU, memfd RAM (virtiofs needs shared memory), no network."""
    mem = f"{cfg.memory_mib}M"
    return [which("qemu-system-x86_64", package="qemu-system-x86"),
            "-accel", f"tcg,thread={cfg.tcg_thread}", "-cpu", cfg.cpu, "-smp", str(cfg.smp), "-m", mem,
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-machine", "q35,memory-backend=mem",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-monitor", "none",
            *(["-bios", str(QBOOT)] if QBOOT.is_file() else []),
            "-chardev", f"socket,id=vfs,path={vfs_sock}",
            "-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot,queue-size=1024",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={agent_sock},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={PORT_NAME}",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", " ".join([*KERNEL_ARGS, f"vmctl.l1.agent={AGENT}"]),
            "-serial", f"file:{console}"]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_for(what: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return what()


@contextlib.contextmanager
def _process(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A background process for the block, killed (its whole session) when the block ends."""
    with log.open("wb") as out:
        proc = spawn(argv, stdout=out.fileno(), stderr=subprocess.STDOUT, new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def _virtiofsd(work: Path) -> Iterator[Path]:
    """virtiofsd exporting a read-only view of the host's / ; yields its socket."""
    sock, mnt = work / "vfs.sock", work / "rootro"
    mnt.mkdir()
    argv = [which("unshare", package="util-linux"), "-m", "--propagation", "private", "sh", "-c", _READONLY_ROOT,
            "vmctl-l1-virtiofsd", str(mnt), str(VIRTIOFSD), str(sock)]
    with _process(argv, work / "virtiofsd.log") as proc:
        if not _wait_for(lambda: sock.exists() or proc.poll() is not None, 15) or not sock.exists():
            raise L1Fault(f"virtiofsd did not start (is {VIRTIOFSD} there? it comes with qemu-system-x86 7.2)",
                          _tail(work / "virtiofsd.log"))
        yield sock


class L1:
    """One L1 for the block: `with L1() as l1: l1.run([...])`. Leaves no process, socket or mount behind."""

    def __init__(self, config: Config | None = None, *, workdir: Path | None = None) -> None:
        self.config = config or Config()
        self._parent = workdir or runtime_root()
        self._stack = contextlib.ExitStack()
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._qemu: subprocess.Popen[bytes] | None = None
        self.work = Path()
        self.boot_seconds = 0.0

    @property
    def pid(self) -> int | None:
        """L1's QEMU process (tests stop it to make L1 hang)."""
        return self._qemu.pid if self._qemu is not None else None

    @property
    def console(self) -> Path:
        return self.work / "console.log"

    def console_tail(self, lines: int = 40) -> str:
        return _tail(self.console, lines)

    def __enter__(self) -> L1:
        try:
            self._boot()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, L1Fault):
            if self._sock is not None and self._qemu is not None and self._qemu.poll() is None:
                self._send({"op": "poweroff"})
                _wait_for(lambda: self._qemu is not None and self._qemu.poll() is not None, 15)
        self._stack.close()

    def _boot(self) -> None:
        if not VIRTIOFSD.is_file():
            raise NoKvmInL1(f"{VIRTIOFSD} is missing: install qemu-system-x86 7.2 (Debian 12), which ships it")
        if any(c.isspace() for c in str(AGENT)):
            raise NoKvmInL1(f"L1's agent path has whitespace, which a kernel argument cannot carry: {AGENT}")
        image = guest_image.build_guest_image(IMAGE)
        self._parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="l1-", dir=self._parent)))
        start = time.monotonic()
        vfs = self._stack.enter_context(_virtiofsd(self.work))
        agent_sock = self.work / "agent.sock"
        argv = qemu_argv(self.config, image, vfs, agent_sock, self.console)
        self._qemu = self._stack.enter_context(_process(argv, self.work / "qemu.log"))
        if not _wait_for(lambda: agent_sock.exists() or self._qemu_gone(), 15) or not agent_sock.exists():
            raise L1Fault("L1's QEMU did not start", _tail(self.work / "qemu.log"))
        self._sock = self._stack.enter_context(contextlib.closing(socket.socket(socket.AF_UNIX)))
        self._sock.connect(str(agent_sock))
        self._wait_until_up()
        self.boot_seconds = time.monotonic() - start

    def _qemu_gone(self) -> bool:
        return self._qemu is None or self._qemu.poll() is not None

    def _wait_until_up(self) -> None:
        """Ping the agent until it answers; fail early on what the console already says."""
        deadline = time.monotonic() + self.config.boot_timeout
        while time.monotonic() < deadline:
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            if "VMCTL-L1-KVM missing" in text:
                raise NoKvmInL1("L1 booted without /dev/kvm: its kernel did not get SVM from the emulated CPU "
                                f"`{self.config.cpu}` (kvm_amd gave no /dev/kvm; its kernel lines follow)\n"
                                "--- L1 console ---\n" + self.console_tail(30))
            if "VMCTL-L1-FAIL" in text:
                raise L1Fault("L1's init failed", self.console_tail())
            if "VMCTL-L1-AGENT ready" in text:
                with contextlib.suppress(L1Fault):
                    self._request({"op": "ping"}, 2.0)
                    return
            if self._qemu_gone():
                raise L1Fault("L1's QEMU ended during boot", self.console_tail() + "\n" +
                              _tail(self.work / "qemu.log", 10))
            time.sleep(0.2)
        raise L1Fault(f"L1 did not come up within {self.config.boot_timeout:.0f} s", self.console_tail())

    def _send(self, request: Mapping[str, Any]) -> None:
        assert self._sock is not None
        self._sock.sendall(json.dumps(request).encode() + b"\n")

    def _request(self, request: Mapping[str, Any], seconds: float, stall: float | None = None) -> dict[str, Any]:
        """Send one request and wait, bounded, for its answer (answers to earlier pings and ticks are
        skipped); with `stall`, L1 counts as hung once it has sent nothing for that long."""
        assert self._sock is not None
        rid = next(self._ids)
        self._send({**request, "id": rid})
        deadline, buf = time.monotonic() + seconds, b""
        heard = time.monotonic()
        while (left := deadline - time.monotonic()) > 0:
            if self._qemu_gone():
                raise L1Fault("L1 ended (kernel panic?) while running a command", self.console_tail())
            if stall is not None and time.monotonic() - heard > stall:
                raise L1Fault(f"L1 sent nothing for {stall:.0f} s while running a command (hung?)",
                              self.console_tail())
            self._sock.settimeout(min(left, 1.0))
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                raise L1Fault("L1's agent channel closed", self.console_tail())
            heard = time.monotonic()
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                answer: dict[str, Any] = json.loads(line)
                if answer.get("id") == rid:
                    return answer
        raise L1Fault(f"L1 gave no answer within {seconds:.0f} s (hung?)", self.console_tail())

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
            timeout: float = 600.0, grace: float = 60.0) -> Result:
        """Run `argv` in L1 and return its exit code and output. The agent kills it after `timeout`
        (exit 124); L1 itself gets `grace` seconds more before it counts as hung (L1Fault), and counts as
        hung sooner when its agent's ticks stop for `config.stall` seconds."""
        answer = self._request({"op": "run", "argv": list(argv), "env": dict(env or {}), "cwd": cwd,
                                "timeout": timeout, "tick": self.config.tick}, timeout + grace, self.config.stall)
        def text(key: str) -> str:
            return base64.b64decode(answer[key]).decode(errors="replace")

        return Result(tuple(argv), int(answer["returncode"]), text("stdout"), text("stderr"),
                      float(answer.get("seconds", 0)))


class Session:
    """L1s for a series of scenarios: one is booted on first use and shared; when L1 itself fails in a
    scenario (panic, hang), the scenario runs once more in a fresh L1. A failure that is not L1's (a
    command's own exit code, an assertion) is never retried, and the L1 stays for the next scenario."""

    def __init__(self, config: Config | None = None, *, log: Callable[[str], None] = print) -> None:
        self.config, self.log = config or Config(), log
        self.l1: L1 | None = None
        self.retries = 0

    def current(self) -> L1:
        if self.l1 is None:
            self.l1 = L1(self.config).__enter__()
        return self.l1

    def scenario(self, body: Callable[[L1], T]) -> T:
        try:
            return body(self.current())
        except L1Fault as fault:
            self.retries += 1
            self.log(f"L1 failed, running the scenario once more in a fresh L1: {fault}")
            self.close()
        try:
            return body(self.current())
        except L1Fault:
            self.close()
            raise

    def close(self) -> None:
        if self.l1 is not None:
            l1, self.l1 = self.l1, None
            l1.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kvmhost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smp", type=int, default=Config.smp, help="L1's vCPUs")
    parser.add_argument("--single-thread", action="store_true", help="one TCG thread for all of L1's vCPUs")
    parser.add_argument("--memory", type=int, default=Config.memory_mib, help="L1's memory in MiB")
    parser.add_argument("--timeout", type=float, default=900, help="seconds CMD may take")
    parser.add_argument("command", nargs="*", default=["sh", "-c", "ls -l /dev/kvm; dmesg | grep -i -E 'kvm|svm'"])
    args = parser.parse_args(argv)
    cfg = Config(memory_mib=args.memory, smp=args.smp, tcg_thread="single" if args.single_thread else "multi")
    env = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "VMCTL_CACHE_DIR")}
    def body(l1: L1) -> Result:
        print(f"L1 up in {l1.boot_seconds:.1f} s (-cpu {cfg.cpu}, -smp {cfg.smp}, tcg thread={cfg.tcg_thread})",
              file=sys.stderr)
        return l1.run(args.command, env=env, cwd=os.getcwd(), timeout=args.timeout)

    session = Session(cfg, log=lambda text: print(text, file=sys.stderr))
    try:
        result = session.scenario(body)
    finally:
        session.close()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    print(f"exit {result.returncode} after {result.seconds:.1f} s in L1", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
