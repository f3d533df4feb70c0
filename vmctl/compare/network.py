"""`vmctl compare`'s service-to-service networking: one sandbox reaching another by name on the
environment network, for each pair of a plain container (vmctl's runc) and a microVM.

One environment, brought up through vmctl's own CLI in a child process (libvirt's embedded driver
serves one root per process, and compare's microVM sandbox holds its own): two host containers and two
microVMs on the `default` network, each serving redis and iperf3. From the client, by the server's name:
- round-trip latency: `redis-benchmark -t ping_inline -c 1` (one connection: p50 of the round trip);
- throughput: `iperf3 -c NAME -t SECONDS` (one TCP stream).
Rows: workload `peers`, sandbox `CLIENT -> SERVER`, ratios to `runc -> runc` (results.with_ratios).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from vmctl.compare.results import Row, row
from vmctl.compare.sandboxes import Workload
from vmctl.errors import VmctlError
from vmctl.paths import private_dir, runtime_root
from vmctl.progress import Progress

SERVE = "redis-server --bind 0.0.0.0 --protected-mode no --save '' --daemonize yes; exec iperf3 -s"
MEMBERS = {"ct-a": "container", "ct-b": "container", "vm-a": "microvm", "vm-b": "microvm"}
SANDBOX = {"container": "runc", "microvm": "microvm"}  # vmctl's host containers are runc containers
PAIRS = (("ct-a", "ct-b"), ("vm-a", "vm-b"), ("ct-a", "vm-b"), ("vm-a", "ct-b"))
WORKLOAD = "peers"


def pair_label(client: str, server: str) -> str:
    return f"{SANDBOX[MEMBERS[client]]} -> {SANDBOX[MEMBERS[server]]}"


def environment(workload: Workload) -> dict[str, object]:
    return {"name": "vmctl-compare-net", "services": {
        name: {"image": workload.source, "isolation": isolation, "command": ["sh", "-c", SERVE],
               **({"vm": {"vcpus": workload.vcpus, "memory": f"{workload.memory_mib}M"}}
                  if isolation == "microvm" else {})}
        for name, isolation in MEMBERS.items()}}


def vmctl(file: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "vmctl", "--progress", "quiet", "-f", str(file), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise VmctlError(f"`vmctl {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc.stdout


def latency_ms(file: Path, client: str, server: str) -> float:
    out = vmctl(file, "exec", client, "--", "redis-benchmark", "-h", server, "-t", "ping_inline", "-c", "1",
                "-n", "2000", "-q")
    m = re.search(r"p50=([0-9.]+) msec", out)
    if not m:
        raise VmctlError(f"no p50 in redis-benchmark's output: {out.strip()!r}")
    return float(m.group(1))


def throughput_mbit(file: Path, client: str, server: str, seconds: float) -> float:
    out = vmctl(file, "exec", client, "--", "iperf3", "-c", server, "-t", str(max(1, round(seconds))), "-J")
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6


def accelerator(file: Path) -> str:
    machines = json.loads(vmctl(file, "status", "--json"))["machines"]
    return ",".join(sorted({m["accel"] for m in machines if m.get("accel")})) or "none"


def measure(workload: Workload, runs: int, seconds: float, progress: Progress,
            save: Callable[[list[Row]], None]) -> list[Row]:
    """Every pair, `runs` times each after a warm-up; `save` gets the rows so far after each pair."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="compare-net-", dir=private_dir(runtime_root())) as tmp:
        file = Path(tmp) / "network.yaml"
        file.write_text(yaml.safe_dump(environment(workload)))
        progress.working(WORKLOAD, "bringing up 2 host containers and 2 microVMs on one network")
        try:
            vmctl(file, "up", "--timeout", "300", timeout=600)
            accel = accelerator(file)
            for client, server in PAIRS:
                label = pair_label(client, server)
                progress.working(WORKLOAD, f"{label}: round trips and throughput by name")
                latency_ms(file, client, server)  # warm-up, not counted
                lat = [latency_ms(file, client, server) for _ in range(runs)]
                thr = [throughput_mbit(file, client, server, seconds) for _ in range(runs)]
                pair_accel = accel if "microvm" in label else "none"
                rows += [row(WORKLOAD, label, "rtt_ms", "ms", lat, pair_accel,
                             note=f"{client} -> {server} by name: redis-benchmark PING_INLINE, 1 connection, p50"),
                         row(WORKLOAD, label, "throughput_mbit", "Mbit/s", thr, pair_accel, higher_is_better=True,
                             note=f"{client} -> {server} by name: iperf3, one TCP stream")]
                save(rows)
        finally:
            vmctl(file, "down", timeout=300)
    progress.done(WORKLOAD, "service to service: done")
    return rows
