"""Benchmark: the environment network between two guests on one host vs on two hosts (the VXLAN mesh).

    .venv/bin/python -m bench.span [--runs 5] [--out FILE]

On a bed of its own: `a` and `b` on h1, `c` on h2, each a microVM running redis-server. From `a`, by
name: redis PING_INLINE round trip (redis-benchmark, 1 connection, p50 of 2000) and a 2 s iperf3 stream,
to `b` (same host: one bridge) and to `c` (through the tunnel: h1's bridge, VXLAN to this machine's
namespace bridge and on to h2's, as the mesh floods; then learned directly h1 -> h2). The two
targets alternate in each run; medians of N. Every figure carries the guests' accelerator.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import hostbed
from bench.hosts import vmctl
from bench.vmstats import add_out_option, results_file
from examples.build_images import IMAGES_DIR, build_image

REDIS = '["sh", "-c", "iperf3 -s -D && exec redis-server --bind 0.0.0.0 --protected-mode no --save \'\'"]'


def env_text(bed: hostbed.HostBed) -> str:
    block = bed.hosts_block()
    lines = ["name: spanbench", "hosts:"]
    for h in ("h1", "h2"):
        lines += [f"  {h}:"] + [f"    {k}: {v}" for k, v in block[h].items()]
    lines.append("services:")
    for name, host in (("a", "h1"), ("b", "h1"), ("c", "h2")):
        lines.append(f"  {name}: {{image: {IMAGES_DIR / 'tools.tar'}, command: {REDIS}, host: {host}, "
                     "vm: {memory: 256M}}")
    return "\n".join(lines) + "\n"


def probe(bed: hostbed.HostBed, file: Path, target: str) -> dict[str, Any]:
    line = (f"redis-benchmark -h {target} -c 1 -n 2000 -t ping_inline --csv; "
            f"iperf3 -c {target} -t 2 -J")
    out = vmctl(bed, "-f", str(file), "exec", "a", "--", "sh", "-c", line).stdout
    csv_line = next(x for x in out.splitlines() if x.startswith('"PING_INLINE"'))
    fields = [f.strip('"') for f in csv_line.split(",")]
    iperf = json.loads(out[out.index("{"):])
    return {"rtt_p50_ms": float(fields[4]), "mbit_s": round(iperf["end"]["sum_received"]["bits_per_second"] / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.span", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    add_out_option(parser)
    args = parser.parse_args(argv)
    out = results_file(parser, args.out)
    build_image("tools", IMAGES_DIR)
    with tempfile.TemporaryDirectory(prefix="span-bench-") as tmp, hostbed.running(Path(tmp) / "bed") as bed, out:
        os.environ.setdefault("VMCTL_STATE_DIR", str(Path(tmp) / "state"))
        os.environ.setdefault("VMCTL_RUNTIME_DIR", str(Path(tmp) / "rt"))
        file = Path(tmp) / "span.yaml"
        file.write_text(env_text(bed))
        vmctl(bed, "-f", str(file), "up", "--timeout", "300")
        try:
            accel = sorted({m["accel"] for m in json.loads(vmctl(bed, "-f", str(file), "status", "--json").stdout)
                            ["machines"]})
            labels = {"b": "same host (h1 -> h1)", "c": "two hosts (h1 -> h2, VXLAN)"}
            rows: dict[str, list[dict[str, Any]]] = {t: [] for t in labels}
            for i in range(args.runs + 1):
                for target, label in labels.items():
                    row = probe(bed, file, target)
                    print(f"{label:28} run {i}{' (warm-up)' if i == 0 else ''}: {row}", file=sys.stderr)
                    if i:
                        rows[target].append(row)
                        out.write({"pair": label, "run": i, "accel": accel, **row})
            summary = {labels[t]: {"rtt_p50_ms_median": statistics.median(r["rtt_p50_ms"] for r in rs),
                                   "mbit_s_median": statistics.median(r["mbit_s"] for r in rs),
                                   "runs": len(rs), "accel": accel} for t, rs in rows.items()}
            out.write({"summary": summary})
            print(json.dumps(summary, indent=2))
        finally:
            vmctl(bed, "-f", str(file), "down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
