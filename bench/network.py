"""Benchmark: service-to-service networking on the environment network, side by side in one run.

    .venv/bin/python -m bench.network [--runs 5] [--seconds 3] [--out FILE.json]

One environment, brought up through the real CLI: two host containers and two microVMs on the
`default` network. For each pair (container -> container, microVM -> microVM, container -> microVM,
microVM -> container) it measures, from the client by the server's name:
- round-trip latency: `redis-benchmark -t ping_inline -c 1` (one connection: p50 of the round trip);
- throughput: `iperf3 -c NAME -t SECONDS` (one TCP stream).
Medians of `--runs`, ratios to the container pair. Every figure carries the accelerator the microVMs
ran on (TCG here: software emulation, far slower than KVM). The JSON is written as soon as each pair is
measured, before the table is printed, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVE = "redis-server --bind 0.0.0.0 --protected-mode no --save '' --daemonize yes; exec iperf3 -s"
PAIRS = (("ct-a", "ct-b", "container -> container"), ("vm-a", "vm-b", "microVM -> microVM"),
         ("ct-a", "vm-b", "container -> microVM"), ("vm-a", "ct-b", "microVM -> container"))


def env_text(images: Path) -> str:
    services = []
    for name, isolation in (("ct-a", "container"), ("ct-b", "container"), ("vm-a", "microvm"), ("vm-b", "microvm")):
        services.append(f"  {name}:\n    image: {images / 'tools.tar'}\n    isolation: {isolation}\n"
                        f"    command: [sh, -c, {json.dumps(SERVE)}]\n")
    return "name: bench-net\nservices:\n" + "".join(services)


def vmctl(file: Path, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, "-m", "vmctl", "-f", str(file), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"vmctl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout


def latency_ms(file: Path, client: str, server: str) -> float:
    out = vmctl(file, "exec", client, "--", "redis-benchmark", "-h", server, "-t", "ping_inline", "-c", "1",
                "-n", "2000", "-q")
    m = re.search(r"p50=([0-9.]+) msec", out)
    if not m:
        raise RuntimeError(f"no p50 in redis-benchmark's output: {out!r}")
    return float(m.group(1))


def throughput_mbit(file: Path, client: str, server: str, seconds: int) -> float:
    out = vmctl(file, "exec", client, "--", "iperf3", "-c", server, "-t", str(seconds), "-J")
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6


def accelerator(file: Path) -> str:
    machines = json.loads(vmctl(file, "status", "--json"))["machines"]
    return ",".join(sorted({m["accel"] for m in machines if m.get("accel")})) or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3, help="iperf3 duration per run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here (as they are measured)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-net-") as tmp:
        file = Path(tmp) / "bench-net.yaml"
        file.write_text(env_text(ROOT / "examples" / "images"))
        vmctl(file, "up", "--timeout", "300", timeout=600)
        try:
            results = measure(file, args.runs, args.seconds, args.out)
        finally:
            vmctl(file, "down")
    print_table(results)
    return 0


def measure(file: Path, runs: int, seconds: int, out: Path | None) -> dict[str, Any]:
    results: dict[str, Any] = {"accel": accelerator(file), "runs": runs, "pairs": []}
    for client, server, label in PAIRS:
        latency_ms(file, client, server)  # warm-up, not counted
        lat = [latency_ms(file, client, server) for _ in range(runs)]
        thr = [throughput_mbit(file, client, server, seconds) for _ in range(runs)]
        results["pairs"].append({"pair": label, "client": client, "server": server,
                                 "latency_p50_ms": statistics.median(lat), "latency_runs": lat,
                                 "throughput_mbit": statistics.median(thr), "throughput_runs": thr})
        if out:
            out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"bench.network: {label}: measured", file=sys.stderr, flush=True)
    return results


def print_table(results: dict[str, Any]) -> None:
    base = results["pairs"][0]
    print(f"accelerator of the microVMs: {results['accel']} (medians of {results['runs']})")
    print(f"{'pair':<24} {'RTT p50':>10} {'ratio':>7} {'iperf3':>12} {'ratio':>7}")
    for p in results["pairs"]:
        print(f"{p['pair']:<24} {p['latency_p50_ms']:>8.3f}ms {p['latency_p50_ms'] / base['latency_p50_ms']:>6.2f}x "
              f"{p['throughput_mbit']:>8.0f}Mb/s {p['throughput_mbit'] / base['throughput_mbit']:>6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
