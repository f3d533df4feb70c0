"""Benchmark: `vmctl up` of N machines placed over two hosts vs the same N on one host, on the test bed.

    .venv/bin/python -m bench.hosts [--machines 6] [--runs 5] [--memory 128M] [--out FILE]

Both layouts run side by side in one run (alternating, after one excluded warm-up each, so the files
are already on the hosts: no upload is measured), through the bed's real libvirtds and sshds. Medians
of N. The bed's hosts are this machine's CPUs, so two hosts add no CPU: what differs is the work per
libvirtd and per sshd. Every figure carries the accelerator the guests ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import hostbed
from bench.vmstats import add_out_option, results_file

ROOT = Path(__file__).resolve().parent.parent


def env_text(bed: hostbed.HostBed, name: str, hosts: tuple[str, ...], machines: int, memory: str) -> str:
    block = bed.hosts_block()
    lines = [f"name: {name}", "hosts:"]
    for h in hosts:
        lines += [f"  {h}:"] + [f"    {k}: {v}" for k, v in block[h].items()]
    lines += ["machines:"] + [f"  m{i}: {{memory: {memory}}}" for i in range(machines)]
    return "\n".join(lines) + "\n"


def vmctl(bed: hostbed.HostBed, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(bed.in_client([sys.executable, "-m", "vmctl", *args]), cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`vmctl {' '.join(args)}` failed: {proc.stderr[-800:]}")
    return proc


def one_up(bed: hostbed.HostBed, file: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    vmctl(bed, "-f", str(file), "up", "--timeout", "300")
    seconds = time.monotonic() - t0
    status = json.loads(vmctl(bed, "-f", str(file), "status", "--json").stdout)["machines"]
    vmctl(bed, "-f", str(file), "down")
    return {"up_seconds": round(seconds, 3), "accel": sorted({m["accel"] for m in status}),
            "hosts": sorted({m["host"] for m in status}),
            "boot_seconds_median": statistics.median(m["boot_seconds"] for m in status)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=6)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", default="128M")
    add_out_option(parser)
    args = parser.parse_args(argv)
    out = results_file(parser, args.out)
    with tempfile.TemporaryDirectory(prefix="hostbed-bench-") as tmp, hostbed.running(Path(tmp) / "bed") as bed, out:
        os.environ.setdefault("VMCTL_STATE_DIR", str(Path(tmp) / "state"))
        os.environ.setdefault("VMCTL_RUNTIME_DIR", str(Path(tmp) / "rt"))
        layouts = {"two hosts": ("h1", "h2"), "one host": ("h1",)}
        files = {}
        for label, hosts in layouts.items():
            files[label] = Path(tmp) / f"{label.replace(' ', '-')}.yaml"
            files[label].write_text(env_text(bed, label.replace(" ", "-"), hosts, args.machines, args.memory))
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label in layouts}
        for i in range(args.runs + 1):
            for label in layouts:
                row = one_up(bed, files[label])
                print(f"{label:10} run {i}{' (warm-up)' if i == 0 else ''}: up {row['up_seconds']:.2f}s "
                      f"({row['accel']}, hosts {row['hosts']})", file=sys.stderr)
                if i:
                    rows[label].append(row)
                    out.write({"layout": label, "run": i, **row})
        summary = {label: {"up_seconds_median": statistics.median(r["up_seconds"] for r in rs),
                           "boot_seconds_median": statistics.median(r["boot_seconds_median"] for r in rs),
                           "accel": rs[0]["accel"], "runs": len(rs), "machines": args.machines}
                   for label, rs in rows.items()}
        out.write({"summary": summary})
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
