"""`vmctl compare`'s portability: the running workload moved to another host, as a microVM (libvirt live
migration, `vmctl migrate`) and as a plain container (CRIU's checkpoint and restore).

microVM: needs two hosts in the compared file's `hosts:`. One environment, brought up through vmctl's
own CLI in a child process (as the peers measurement is): `mover`, the workload in a microVM on the
first host, and `probe`, a host container on the same environment network (this machine's end of the
network that spans the hosts). A client in the probe's network namespace sends an ICMP echo to the
mover every 5 ms (vmctl/compare/pinger.py). The mover goes to the second host and back, in turn; one
excluded warm-up move first (it uploads the image files to the target). Per move: `vmctl migrate`'s total
time, QEMU's downtime (the guest paused), the downtime the client saw (the longest time between two
replies while the move ran), the bytes moved (the memory QEMU sent, and the pool files the target
lacked), and what a cold move to a new host needs (the machine's image files).

runc: where `criu check` passes, the workload as vmctl's runc container is checkpointed to a folder
(`runc checkpoint`) and restored from it (`runc restore`): a stop-and-copy, so the downtime is the whole
move, and what would travel to another host is the checkpoint plus the image. This machine runs both
ends (there is no second host's runc to restore on); elsewhere it is skipped with CRIU's own reason.
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from vmctl.compare.footprint import dir_bytes
from vmctl.compare.network import accelerator, vmctl
from vmctl.compare.results import Row, row
from vmctl.compare.sandboxes import Runc, RuncInstance, Workload
from vmctl.errors import VmctlError
from vmctl.host_container import HostRuntime
from vmctl.hostspec import HostSpec
from vmctl.paths import private_dir, runtime_root
from vmctl.progress import Progress
from vmctl.runner import which
from vmctl.spec import Environment

WORKLOAD = "portability"
ENV_NAME = "vmctl-compare-move"
MOVER, PROBE = "mover", "probe"
PING_INTERVAL = 0.005
CRIU_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
Keep = Callable[[list[Row]], None]


def measure(env: Environment, workload: Workload, sandboxes: Sequence[str], runs: int, progress: Progress,
            keep: Keep) -> dict[str, str]:
    """Each of `sandboxes` ("microvm", "runc") moved `runs` times; `keep` gets the rows so far after each
    move. Returns the sandboxes that could not be measured, with the reason."""
    rows: dict[str, list[Row]] = {}  # sandbox -> its rows so far
    skipped: dict[str, str] = {}
    for name, run in (("microvm", _microvm), ("runc", _criu)):
        if name not in sandboxes:
            continue
        try:
            why = run(env, workload, runs, progress, functools.partial(_show, rows, name, keep))
        except VmctlError as e:
            why = e.message
        if why:
            skipped[name] = why
            progress.warn(WORKLOAD, f"{name}: {why}")
    progress.done(WORKLOAD, "moves: done")
    return skipped


def _show(rows: dict[str, list[Row]], sandbox: str, keep: Keep, latest: list[Row]) -> None:
    """`sandbox`'s rows so far replace its earlier ones; `keep` gets every sandbox's."""
    rows[sandbox] = latest
    keep([r for kept in rows.values() for r in kept])


# --------------------------------------------------------------------------------------------- microVM


def host_entry(h: HostSpec) -> dict[str, Any]:
    """A `hosts:` entry that says what `h` says (its paths are absolute: the file is written elsewhere)."""
    entry: dict[str, Any] = {"uri": h.uri}
    for key, value in (("user", h.user), ("key", h.key), ("known_hosts", h.known_hosts), ("port", h.port)):
        if value is not None:
            entry[key] = str(value) if isinstance(value, Path) else value
    capacity = {k: v for k, v in (("memory", f"{h.capacity.memory_mib}M" if h.capacity.memory_mib else None),
                                  ("vcpus", h.capacity.vcpus)) if v is not None}
    return {**entry, **({"capacity": capacity} if capacity else {})}


def environment(hosts: Sequence[HostSpec], workload: Workload) -> dict[str, Any]:
    def literal(s: str) -> str:  # the file is interpolated when it is read: the workload's `$` stay `$`
        return s.replace("$", "$$")

    env = dict(e.split("=", 1) for e in workload.env if "=" in e)
    return {"name": ENV_NAME, "hosts": {h.name: host_entry(h) for h in hosts}, "services": {
        MOVER: {"image": workload.source, "entrypoint": [literal(a) for a in workload.args[:1]],
                "command": [literal(a) for a in workload.args[1:]],
                "environment": {k: literal(v) for k, v in env.items()}, "host": hosts[0].name,
                "vm": {"vcpus": workload.vcpus, "memory": f"{workload.memory_mib}M"}},
        PROBE: {"image": workload.source, "isolation": "container", "entrypoint": ["sleep"], "command": ["1000000"]},
    }}


def _microvm(env: Environment, workload: Workload, runs: int, progress: Progress, show: Keep) -> str | None:
    if len(env.hosts) < 2:
        return f"needs two hosts in the `hosts:` of {env.file} (a live migration goes from one to another)"
    hosts = env.hosts[:2]
    with tempfile.TemporaryDirectory(prefix="compare-move-", dir=private_dir(runtime_root())) as tmp:
        file = Path(tmp) / "portability.yaml"
        file.write_text(yaml.safe_dump(environment(hosts, workload)))
        progress.working(WORKLOAD, f"bringing up the workload in a microVM on host `{hosts[0].name}`")
        try:
            vmctl(file, "up", "--timeout", "300", timeout=900)
            accel = accelerator(file)
            netns = _netns_of(f"{ENV_NAME}.{PROBE}")
            address = _address(file, MOVER)
            samples: dict[str, list[float]] = {}
            for i in range(runs + 1):
                target = hosts[(i + 1) % 2].name
                progress.working(WORKLOAD, f"microvm: move {i}/{runs} to `{target}`{' (warm-up)' if not i else ''}")
                moved = _one_move(file, netns, address, target, Path(tmp))
                if i:
                    for k, v in moved.items():
                        samples.setdefault(k, []).append(v)
                    show(_microvm_rows(samples, accel, hosts))
        finally:
            vmctl(file, "down", timeout=600)
    return None


def _microvm_rows(s: dict[str, list[float]], accel: str, hosts: Sequence[HostSpec]) -> list[Row]:
    ways = f"`vmctl migrate` between hosts `{hosts[0].name}` and `{hosts[1].name}`, both ways"
    return [row(WORKLOAD, "microvm", "total_seconds", "s", s["total"], accel, note=ways),
            row(WORKLOAD, "microvm", "downtime_ms", "ms", s["downtime"], accel, note="QEMU's: the guest paused"),
            row(WORKLOAD, "microvm", "client_downtime_ms", "ms", s["client"], accel,
                note=f"longest gap between replies to an ICMP echo every {PING_INTERVAL * 1000:.0f} ms "
                     "from a host container on the environment network"),
            row(WORKLOAD, "microvm", "moved_mib", "MiB", s["moved"], accel,
                note="guest memory QEMU sent, plus image files the target lacked"),
            row(WORKLOAD, "microvm", "cold_move_mib", "MiB", s["cold"], accel,
                note="what a move to a new host needs: the machine's image files (kernel, initramfs, image disk)")]


def _one_move(file: Path, netns: str, address: str, target: str, tmp: Path) -> dict[str, float]:
    answers = tmp / "answers.txt"
    with answers.open("wb") as out:
        pinger = subprocess.Popen([which("nsenter", package="util-linux"), f"--net={netns}", sys.executable, "-m",
                                   "vmctl.compare.pinger", address, str(PING_INTERVAL)],
                                  stdout=out, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        moved = json.loads(vmctl(file, "migrate", MOVER, "--to", target, "--json", timeout=600))
        t1 = time.monotonic()
        time.sleep(0.5)
    finally:
        end(pinger)
    replies = [float(x) for x in answers.read_text().split()]
    before, after = any(r < t0 for r in replies), any(r > t1 for r in replies)
    if not (before and after):
        raise VmctlError(f"the client in `{PROBE}` got no answer from `{MOVER}` ({address}) "
                         f"{'after' if before else 'before'} the move")
    return {"total": moved["seconds"], "downtime": moved["downtime_ms"] or 0.0,
            "client": seen_downtime_ms(replies, t0, t1) or 0.0,
            "moved": ((moved["memory_bytes"] or 0) + moved["copied_bytes"]) / 2**20,
            "cold": moved["image_bytes"] / 2**20}


def seen_downtime_ms(answers: Sequence[float], t0: float, t1: float) -> float | None:
    """The longest time a client went without an answer while a move ran (`t0`..`t1`)."""
    gaps = [b - a for a, b in zip(answers, answers[1:], strict=False) if b > t0 and a < t1]
    return round(max(gaps) * 1000, 1) if gaps else None


def _netns_of(container: str) -> str:
    st = HostRuntime().state(container)
    if st is None or st.pid <= 0:
        raise VmctlError(f"the client's container `{container}` is not running")
    return f"/proc/{st.pid}/ns/net"


def _address(file: Path, machine: str) -> str:
    status = json.loads(vmctl(file, "status", "--json"))["machines"]
    found = [n["address"] for m in status if m["name"] == machine for n in m.get("networks", []) if n.get("address")]
    if not found:
        raise VmctlError(f"`{machine}` has no address on the environment network")
    return str(found[0])


def end(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------- CRIU


def criu_unavailable() -> str | None:
    """Why CRIU cannot checkpoint here (its own words), or None."""
    criu = shutil.which("criu", path=CRIU_PATH)
    if criu is None:
        return "criu is not installed (Debian's `criu`)"
    proc = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode == 0:
        return None
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")] or proc.stderr.splitlines()
    version = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return (f"`criu check` fails ({version.stdout.split(chr(10))[0].strip()}, kernel {platform.release()}): "
            f"{errors[0] if errors else proc.returncode}")


def checkpoint_restore(runc_root: Path, name: str, bundle: Path, dump: Path, *,
                       tcp_established: bool = False) -> tuple[float, float]:
    """`runc checkpoint` of a running container into `dump`, then `runc restore` of it, detached, from the
    same bundle: the seconds each took."""
    tcp = ["--tcp-established"] if tcp_established else []
    runc = ["runc", "--root", str(runc_root)]
    t0 = time.monotonic()
    _run_runc([*runc, "checkpoint", *tcp, "--image-path", str(dump), name])
    t1 = time.monotonic()
    _run_runc([*runc, "restore", *tcp, "--detach", "--image-path", str(dump), "--bundle", str(bundle), name])
    return t1 - t0, time.monotonic() - t1


def _run_runc(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise VmctlError(f"`{' '.join(argv[3:5])}` failed: {proc.stderr.strip()[-400:]}")


def _criu(env: Environment, workload: Workload, runs: int, progress: Progress, show: Keep) -> str | None:
    why = criu_unavailable()
    if why:
        return why
    totals: list[float] = []
    moved: list[float] = []
    for i in range(runs + 1):
        progress.working(WORKLOAD, f"runc: checkpoint and restore {i}/{runs}{' (warm-up)' if not i else ''}")
        inst = Runc().start(workload, f"move-{i}")
        assert isinstance(inst, RuncInstance)
        dump = inst.cdir.parent / "checkpoint"
        try:
            checkpoint, restore = checkpoint_restore(inst.runtime.runc_root, inst.container.name,
                                                     inst.cdir / "bundle", dump)
            if i:
                totals.append(checkpoint + restore)
                moved.append(dir_bytes(dump) / 2**20)
        finally:
            inst.stop()
        if i:
            show(_criu_rows(totals, moved, workload))
    return None


def _criu_rows(totals: list[float], moved: list[float], workload: Workload) -> list[Row]:
    stop_and_copy = "checkpoint + restore: a stop-and-copy, the workload is stopped the whole time"
    return [row(WORKLOAD, "runc", "total_seconds", "s", totals, "none", note="`runc checkpoint` + `runc restore`"),
            row(WORKLOAD, "runc", "downtime_ms", "ms", [t * 1000 for t in totals], "none", note=stop_and_copy),
            row(WORKLOAD, "runc", "moved_mib", "MiB", moved, "none", note="the checkpoint's files (CRIU images)"),
            row(WORKLOAD, "runc", "cold_move_mib", "MiB", [workload.image.size_bytes / 2**20], "none",
                note="what a move to a new host needs besides: the image's root filesystem")]
