"""Benchmark: moving a running redis between hosts, as a microVM (libvirt live migration on the test bed)
and as a plain container (CRIU's checkpoint and restore, `runc checkpoint` / `runc restore`).

    .venv/bin/python -m bench.migrate [--runs 5] [--memory 256M] [--out FILE]

On a bed of its own: `cache`, a microVM running redis-server, starts on h1; `probe`, a host container on
the same environment network, is where the clients run (their processes enter its network namespace):
a pinger that sends redis PING on one connection every 5 ms and notes each answer, and, for the loaded
rows, `redis-benchmark` writing 4 KiB values over 16,384 keys on 4 connections. Each run moves `cache`
idle and under load, in turn (h1 -> h2 -> h1 ...; the order swaps each run, so each load goes both
ways); one excluded warm-up run first (it uploads the files to h2). Per move: `vmctl migrate`'s total
time, QEMU's downtime (the guest paused), the downtime the client saw (the longest time between two
answers while the move ran), the bytes QEMU sent, and what a cold move would need (the machine's image
files). Medians of N; every figure carries the accelerator.

The container row runs where `criu check` passes; elsewhere it is reported as skipped with CRIU's own
reason. There, the same redis runs as a runc container (loopback only; the load runs inside it, so CRIU
takes the connections with it: `--tcp-established`), is checkpointed to a folder and restored from it:
a stop-and-copy, so the downtime is the whole time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import hostbed
from bench.hosts import vmctl
from bench.vmstats import add_out_option, results_file
from examples.build_images import IMAGES_DIR, build_image
from vmctl.compare.footprint import dir_bytes
from vmctl.compare.portability import checkpoint_restore, criu_unavailable, end, seen_downtime_ms

TOOLS = IMAGES_DIR / "tools.tar"
REDIS = ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]
LOAD = ["redis-benchmark", "-c", "4", "-n", "2000000000", "-t", "set", "-d", "4096", "-r", "16384", "-q"]
LOAD_WARM_SECONDS = 3.0  # the load fills the keyspace before the move starts
PING_INTERVAL = 0.005
# The client: one connection, PING every 5 ms, the monotonic time of every answer on stdout; reconnects
# after an error (a live migration keeps the connection: it should not need to).
PINGER = """\
import socket, sys, time
addr, sock = (sys.argv[1], 6379), None
while True:
    try:
        if sock is None:
            sock = socket.create_connection(addr, timeout=1)
        sock.sendall(b"PING\\r\\n")
        if not sock.recv(64).startswith(b"+PONG"):
            raise OSError("no PONG")
        print(f"{time.monotonic():.6f}", flush=True)
    except OSError:
        if sock is not None:
            sock.close()
        sock = None
    time.sleep(float(sys.argv[2]))
"""


def env_text(bed: hostbed.HostBed, memory: str) -> str:
    block = bed.hosts_block()
    lines = ["name: migbench", "hosts:"]
    for h in ("h1", "h2"):
        lines += [f"  {h}:"] + [f"    {k}: {v}" for k, v in block[h].items()]
    lines += ["services:",
              f"  cache: {{image: {TOOLS}, command: {json.dumps(REDIS)}, host: h1, vm: {{memory: {memory}}}}}",
              f"  probe: {{image: {TOOLS}, command: [sleep, '1000000'], isolation: container}}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- clients


def probe_netns(runc_root: Path) -> str:
    """The network namespace of the `probe` host container, for the clients to enter."""
    listed = json.loads(subprocess.run(["runc", "--root", str(runc_root), "list", "-f", "json"], check=True,
                                       capture_output=True, text=True, timeout=30).stdout or "[]")
    pid = next(c["pid"] for c in listed if c["id"].endswith("probe") and c["status"] == "running")
    return f"/proc/{pid}/ns/net"


def address_of(bed: hostbed.HostBed, file: Path, name: str) -> str:
    out = vmctl(bed, "-f", str(file), "exec", "probe", "--", "getent", "hosts", name).stdout
    return out.split()[0]


def client(netns: str, argv: Sequence[str], out: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nsenter", f"--net={netns}", *argv], stdout=out.open("wb") if out else subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def load_rate(text: str) -> float | None:
    """redis-benchmark -q's last progress figure (`SET: rps=12345.6 (overall: ...)`): the load it kept up."""
    rates = [float(m) for m in re.findall(r"\(overall: ([0-9.]+)\) avg_msec", text)]
    return rates[-1] if rates else None


# --------------------------------------------------------------------------------------------- microVM


def one_move(bed: hostbed.HostBed, file: Path, netns: str, address: str, target: str, loaded: bool,
             tmp: Path) -> dict[str, Any]:
    answers = tmp / "answers.txt"
    pinger = client(netns, [sys.executable, "-c", PINGER, address, str(PING_INTERVAL)], answers)
    load = client(netns, [*LOAD, "-h", address], tmp / "load.txt") if loaded else None
    try:
        time.sleep(LOAD_WARM_SECONDS if loaded else 1.0)
        t0 = time.monotonic()
        moved = json.loads(vmctl(bed, "-f", str(file), "migrate", "cache", "--to", target, "--json").stdout)
        t1 = time.monotonic()
        time.sleep(0.5)
    finally:
        if load is not None:
            end(load)
        end(pinger)
    times = [float(x) for x in answers.read_text().split()]
    return {"load": "redis-benchmark SET 4 KiB" if loaded else "idle", "to": target,
            "load_rps": load_rate((tmp / "load.txt").read_text(errors="replace")) if loaded else None,
            "total_seconds": moved["seconds"], "qemu_downtime_ms": moved["downtime_ms"],
            "client_downtime_ms": seen_downtime_ms(times, t0, t1), "answers": len(times),
            "memory_mib": round(moved["memory_bytes"] / 2**20, 1) if moved["memory_bytes"] else None,
            "copied_mib": round(moved["copied_bytes"] / 2**20, 1),
            "cold_move_mib": round(moved["image_bytes"] / 2**20, 1)}


def microvm_rows(bed: hostbed.HostBed, runs: int, memory: str, tmp: Path, out: Any) -> list[dict[str, Any]]:
    file = tmp / "migbench.yaml"
    file.write_text(env_text(bed, memory))
    vmctl(bed, "-f", str(file), "up", "--timeout", "300")
    rows = []
    try:
        status = json.loads(vmctl(bed, "-f", str(file), "status", "--json").stdout)["machines"]
        accel = sorted({m["accel"] for m in status})
        netns = probe_netns(Path(os.environ["VMCTL_RUNTIME_DIR"]) / "runc")
        address = address_of(bed, file, "cache")
        where = "h1"
        for i in range(runs + 1):
            for loaded in ((False, True) if i % 2 else (True, False)):  # each load goes both ways
                where = "h2" if where == "h1" else "h1"
                row = {"sandbox": "microvm", "accel": accel, "run": i,
                       **one_move(bed, file, netns, address, where, loaded, tmp)}
                print(f"{row['load']:26} run {i}{' (warm-up)' if i == 0 else ''}: {row}", file=sys.stderr)
                if i:
                    rows.append(row)
                    out.write(row)
    finally:
        vmctl(bed, "-f", str(file), "down")
    return rows


# --------------------------------------------------------------------------------------------- CRIU


def criu_rows(runs: int, tmp: Path, out: Any) -> list[dict[str, Any]]:
    from vmctl import host_container
    from vmctl.compare.sandboxes import Workload, request
    from vmctl.container_image import prepare_image

    image = prepare_image(str(TOOLS), TOOLS.parent)
    runtime = host_container.HostRuntime(tmp / "runc")
    rows = []
    for i in range(runs + 1):
        name, cdir, dump = f"vmctl-criu-{i}", tmp / f"c{i}", tmp / f"dump{i}"
        workload = Workload(name="cache", image_ref=str(TOOLS), base_dir=TOOLS.parent, image=image,
                            args=tuple(REDIS), env=(), ports=(), vcpus=1, memory_mib=256)
        runtime.start(request(workload, name, str(image.rootfs), None, share_network=False), cdir, network=False)
        load = subprocess.Popen(["runc", "--root", str(runtime.runc_root), "exec", name, *LOAD, "-h", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(LOAD_WARM_SECONDS)
            checkpoint, restore = checkpoint_restore(runtime.runc_root, name, cdir / "bundle", dump,
                                                     tcp_established=True)
        finally:
            end(load)
            runtime.stop(name, cdir, grace=0)
        row = {"sandbox": "runc + CRIU", "accel": ["none"], "run": i, "load": "redis-benchmark SET 4 KiB",
               "total_seconds": round(checkpoint + restore, 3), "checkpoint_seconds": round(checkpoint, 3),
               "restore_seconds": round(restore, 3), "client_downtime_ms": round((checkpoint + restore) * 1000, 1),
               "memory_mib": round(dir_bytes(dump) / 2**20, 1), "cold_move_mib": round(image.size_bytes / 2**20, 1)}
        shutil.rmtree(dump, ignore_errors=True)
        print(f"runc + CRIU run {i}{' (warm-up)' if i == 0 else ''}: {row}", file=sys.stderr)
        if i:
            rows.append(row)
            out.write(row)
    return rows


# --------------------------------------------------------------------------------------------- summary


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['sandbox']}, {r['load']}", []).append(r)
    keys = ("total_seconds", "qemu_downtime_ms", "client_downtime_ms", "memory_mib", "cold_move_mib", "load_rps")
    return {label: {"accel": rs[0]["accel"], "runs": len(rs),
                    **{f"{k}_median": statistics.median(vals) for k in keys
                       if (vals := [r[k] for r in rs if r.get(k) is not None])}}
            for label, rs in groups.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", default="256M", help="the microVM's memory (default: 256M)")
    add_out_option(parser)
    args = parser.parse_args(argv)
    out = results_file(parser, args.out)
    build_image("tools", IMAGES_DIR)
    with tempfile.TemporaryDirectory(prefix="migrate-bench-") as tmp, out:
        os.environ.setdefault("VMCTL_STATE_DIR", str(Path(tmp) / "state"))
        os.environ.setdefault("VMCTL_RUNTIME_DIR", str(Path(tmp) / "rt"))
        skipped = criu_unavailable()
        out.write({"sandbox": "runc + CRIU", "skipped": skipped} if skipped else {"sandbox": "runc + CRIU"})
        rows = [] if skipped else criu_rows(args.runs, Path(tmp), out)
        with hostbed.running(Path(tmp) / "bed") as bed:
            rows = microvm_rows(bed, args.runs, args.memory, Path(tmp), out) + rows
        result = {"summary": summary(rows), **({"skipped": {"runc + CRIU": skipped}} if skipped else {})}
        out.write(result)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
