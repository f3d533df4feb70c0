"""TCG translation-cache size sweep: bare QEMU boots of one kernel variant to READY for each tb-size,
reporting the boot time and the memory the cache (and QEMU as a whole) holds at idle. A smaller cache
costs retranslation (flushes) during boot; a larger one is host memory every idle VM keeps.

    .venv/bin/python -m bench.tb_cache --variant minimal --sizes 8,16,32,64,128 --runs 3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from bench.boot import bare_boot, variants
from bench.vmstats import add_out_option, fmt, median, results_file, table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.tb_cache", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="minimal", help="cloud, cloud-bzimage or minimal")
    parser.add_argument("--sizes", default="8,16,32,64,128", help="tb-size values in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    add_out_option(parser)
    args = parser.parse_args(argv)

    sizes = [int(x) for x in args.sizes.split(",") if x]
    rows = []
    with results_file(parser, args.out) as out:
        v = variants([args.variant])[0]
        for run in range(args.runs):  # interleaved, so drift in host load hits every size alike
            for size in sizes:
                print(f"tb_cache: run {run + 1}/{args.runs} tb-size {size} MiB", file=sys.stderr)
                rows.append({"tb_mib": size, **bare_boot(v, run, args.memory, size)})
                out.write({"kind": "run", "accel": "tcg", **rows[-1]})
    summary = []
    for size in sizes:
        mine = [r for r in rows if r["tb_mib"] == size]
        summary.append({"tb_mib": size, **{k: median([float(str(r[k])) for r in mine if r.get(k) is not None])
                                           for k in ("bare_ready_s", "bare_tcg_cache_mib", "bare_pss_mib",
                                                     "bare_qemu_overhead_mib")}})
    if args.json:
        print(json.dumps({"accel": "tcg", "variant": v.name, "runs": rows, "summary": summary}, indent=1))
        return 0
    print(f"accelerator = tcg; bare QEMU, {v.name} kernel, {args.memory} MiB guest; medians of {args.runs}")
    print(table(["tb-size", "->READY", "TCG cache", "PSS", "QEMU overhead"],
                [[f"{r['tb_mib']}M", fmt(r["bare_ready_s"], 2, "s"), fmt(r["bare_tcg_cache_mib"], 0, "M"),
                  fmt(r["bare_pss_mib"], 0, "M"), fmt(r["bare_qemu_overhead_mib"], 0, "M")] for r in summary]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
