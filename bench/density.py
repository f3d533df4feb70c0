"""Density benchmark (issue 6): start N idle microVMs with one `vmctl up`, for growing N, until a host
memory budget would be exceeded; report the start time and the host memory (PSS) per VM as N grows.

Each N is a fresh environment of N machines (`--memory` MiB each, default 64, the `minimal` image by
default), brought up in parallel by the real CLI, left idle `--settle` seconds, measured (every QEMU's
PSS split into guest RAM touched, TCG cache and QEMU's own, see bench/vmstats.py) and taken down. The next
N runs only if N x (PSS per VM so far) fits in the budget. Each N is measured for every start in
`--starts`: `cold` (`template: false`, each VM boots its kernel) and `template` (each VM is restored from
the shape's template, vmctl/template.py; built by an unmeasured `up` first), side by side.

    .venv/bin/python -m bench.density 4G                        # N = 1, 5, 10: a few minutes under TCG
    .venv/bin/python -m bench.density 12G --counts 1,5,10,20,30,40,50 --json    # the full curve
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.vmstats import Scratch, add_out_option, fmt, probed_accel, results_file, scratch, table, timed_up
from vmctl.guest_image import build_guest_image
from vmctl.hypervisor import qemu_pid
from vmctl.memory import memory_of
from vmctl.runner import output, which


def page_cache_mib(files: Sequence[Path]) -> float:
    """MiB of these files in the host's page cache, one copy however many VMs map them (mincore(2)
    through util-linux's fincore)."""
    out = output([fincore(), "--bytes", "--noheadings", "--raw", "--output", "RES",
                  *map(str, files)])
    return round(sum(int(line) for line in out.split()) / 2**20, 1)


def fincore() -> str:
    return which("fincore", package="util-linux")


def parse_size_mib(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([MG]i?B?)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"`{text}` is not a size such as 4G or 3000M")
    unit = (match.group(2) or "M")[0].upper()
    return int(match.group(1)) * (1024 if unit == "G" else 1)


KSM = Path("/sys/kernel/mm/ksm")
KSM_TUNING = {"pages_to_scan": "20000", "sleep_millisecs": "10"}  # ~2 GB/s of scanning: merged in seconds
KSM_SCANS = 2  # full passes over the mergeable memory: pages merge on the second sight of their content
KSM_TIMEOUT = 300.0


@contextlib.contextmanager
def ksm_merging() -> Iterator[dict[str, float]]:
    """Kernel samepage merging on for the block, fast, until it has scanned every mergeable page twice
    (QEMU marks guest RAM mergeable: `mem-merge`); the host's own settings afterwards, and pages it
    merged split again if it was off. The dict gets `seconds` (the wait) and `saving_mib` (pages_sharing)."""
    def read(name: str) -> str:
        return (KSM / name).read_text().strip()

    before = {name: read(name) for name in ("run", *KSM_TUNING)}
    facts: dict[str, float] = {}
    try:
        for name, value in KSM_TUNING.items():
            (KSM / name).write_text(value)
        (KSM / "run").write_text("1")
        t0, scans = time.monotonic(), int(read("full_scans"))
        while int(read("full_scans")) < scans + KSM_SCANS and time.monotonic() - t0 < KSM_TIMEOUT:
            time.sleep(0.5)
        facts.update(seconds=round(time.monotonic() - t0, 1),
                     saving_mib=round(int(read("pages_sharing")) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1))
        yield facts
    finally:
        (KSM / "run").write_text("2" if before["run"] == "0" else before["run"])  # 2: unmerge everything
        for name in KSM_TUNING:
            (KSM / name).write_text(before[name])
        if before["run"] == "0":
            (KSM / "run").write_text("0")


def measure(s: Scratch, image: str, boot_files: Sequence[Path], count: int, memory_mib: int, settle: float,
            timeout: float, start: str = "cold", accel: str = "tcg") -> dict[str, object]:
    """`start`: cold or template, `+ksm` for KSM merging before the measurement."""
    env = f"density-{start.replace('+', '-')}-{count}"
    kind, ksm = start.removesuffix("+ksm"), start.endswith("+ksm")
    machine = {"image": image, "memory": f"{memory_mib}M", "accel": accel, "template": kind == "template"}
    file = s.write_env(env, {f"d{i}": machine for i in range(count)})
    merged: dict[str, float] = {}
    try:
        wall = timed_up(s, file, timeout=timeout)
        boots = [float(m["boot_seconds"]) for m in s.machines(file) if m.get("boot_seconds") is not None]
        time.sleep(settle)
        pids = [qemu_pid(f"vmctl-{env}-d{i}") for i in range(count)]
        with ksm_merging() if ksm else contextlib.nullcontext(merged) as merged:
            mems = [m for p in pids if p and (m := memory_of(p, memory_mib))]
        cached = page_cache_mib(boot_files)
    finally:
        s.vmctl(file, "down", timeout=timeout)
    total = sum(m.pss for m in mems)
    return {"start": start, "machines": count, "measured": len(mems), "up_wall_s": round(wall, 2),
            "ksm_wait_s": merged.get("seconds"), "ksm_saving_mib": merged.get("saving_mib"),
            "boot_median_s": round(statistics.median(boots), 2) if boots else None,
            "boot_max_s": round(max(boots), 2) if boots else None,
            "pss_total_mib": round(total, 1), "pss_per_vm_mib": round(total / len(mems), 1) if mems else None,
            "guest_ram_per_vm_mib": round(statistics.mean(m.guest_ram for m in mems), 1) if mems else None,
            "tcg_cache_per_vm_mib": round(statistics.mean(m.tcg_cache for m in mems), 1) if mems else None,
            "files_per_vm_mib": round(statistics.mean(m.files for m in mems), 1) if mems else None,
            "private_per_vm_mib": round(statistics.mean(m.private for m in mems), 1) if mems else None,
            "overhead_per_vm_mib": round(statistics.mean(m.overhead for m in mems), 1) if mems else None,
            "overhead_without_tcg_per_vm_mib":
                round(statistics.mean(m.overhead - m.tcg_cache for m in mems), 1) if mems else None,
            "boot_files_cached_mib": cached}


def attempts(s: Scratch, args: argparse.Namespace, boot_files: Sequence[Path], count: int,
             start: str, accel: str) -> dict[str, object]:
    """`measure`, tried again (`--attempts`) after a failed `up` (which rolled itself back); the errors
    of failed tries are kept in the row: a failed `up` is a data point too."""
    errors: list[str] = []
    for attempt in range(args.attempts):
        print(f"density: {count} VMs, {start} (attempt {attempt + 1})", file=sys.stderr)
        try:
            row = measure(s, args.image, boot_files, count, args.memory, args.settle, args.timeout, start, accel)
            return {**row, "failed_tries": len(errors), "failed_attempts": errors}
        except RuntimeError as e:
            errors.append(" ".join(str(e).strip().splitlines()[-2:])[-200:])
            print(f"density: {count} VMs failed: {errors[-1]}", file=sys.stderr)
    return {"start": start, "machines": count, "error": errors[-1], "failed_tries": len(errors),
            "failed_attempts": errors}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.density", description=__doc__.splitlines()[0])
    parser.add_argument("budget", type=parse_size_mib, help="host memory the VMs may use, e.g. 4G")
    parser.add_argument("--counts", default="1,5,10", help="machine counts to try, ascending (full: ...,50)")
    parser.add_argument("--memory", type=int, default=64, help="guest RAM per VM in MiB")
    parser.add_argument("--image", default="minimal", help="guest image recipe")
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before measuring")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--attempts", type=int, default=3, help="tries per N when `up` fails")
    parser.add_argument("--starts", default="cold,template",
                        help="comma list of cold, template, cold+ksm, template+ksm (+ksm: KSM turned on for the "
                             "measurement, the host's setting restored after; needs root)")
    parser.add_argument("--json", action="store_true")
    add_out_option(parser)
    args = parser.parse_args(argv)

    counts = sorted({int(c) for c in args.counts.split(",") if c})
    rows: list[dict[str, object]] = []
    per_vm = float(args.memory)  # a first guess before anything was measured
    with results_file(parser, args.out, tools=[fincore]) as out, scratch() as s:
        image = build_guest_image(args.image, progress=lambda m: print(f"density: {m}", file=sys.stderr))
        boot_files = [image.kernel, image.initrd]
        accel = probed_accel(image, lambda m: print(f"density: {m}", file=sys.stderr))
        starts = [x for x in args.starts.split(",") if x]
        if any(x.startswith("template") for x in starts):  # the template is built here, not in a measured `up`
            measure(s, args.image, boot_files, 1, args.memory, 0.0, args.timeout, "template", accel)
        for count in counts:
            if count * per_vm > args.budget:
                print(f"density: stop before {count} VMs: ~{count * per_vm:.0f} MiB > budget {args.budget} MiB",
                      file=sys.stderr)
                break
            for start in starts:
                row = attempts(s, args, boot_files, count, start, accel)
                rows.append(row)
                out.write({"accel": accel, "memory_mib": args.memory, "image": args.image, **row})
                if "error" not in row:
                    per_vm = max(per_vm, float(str(row["pss_per_vm_mib"] or per_vm)))
    if args.json:
        print(json.dumps({"accel": accel, "budget_mib": args.budget, "memory_mib": args.memory, "rows": rows},
                         indent=1))
        return 0

    def f(row: dict[str, object], key: str, digits: int = 1, suffix: str = "") -> str:
        value = row.get(key)
        return fmt(float(str(value)) if value is not None else None, digits, suffix)

    print(f"accelerator = {accel}; {args.memory} MiB per VM; image {args.image}; budget {args.budget} MiB")
    print(table(["start", "VMs", "up wall", "boot median", "boot max", "PSS total", "PSS/VM", "guest RAM/VM",
                 "TCG cache/VM", "files/VM", "private/VM", "overhead/VM", "w/o TCG", "kernel+initrd cached",
                 "KSM saved", "failed tries"],
                [[str(r["start"]), str(r["machines"]), f(r, "up_wall_s", 2, "s"), f(r, "boot_median_s", 2, "s"),
                  f(r, "boot_max_s", 2, "s"), f(r, "pss_total_mib", 0, "M"), f(r, "pss_per_vm_mib", 1, "M"),
                  f(r, "guest_ram_per_vm_mib", 1, "M"), f(r, "tcg_cache_per_vm_mib", 1, "M"),
                  f(r, "files_per_vm_mib", 1, "M"), f(r, "private_per_vm_mib", 1, "M"),
                  f(r, "overhead_per_vm_mib", 1, "M"), f(r, "overhead_without_tcg_per_vm_mib", 1, "M"),
                  f(r, "boot_files_cached_mib", 1, "M"), f(r, "ksm_saving_mib", 0, "M"), str(r["failed_tries"])]
                 if "error" not in r else
                 [str(r["start"]), str(r["machines"]), "failed", *[""] * 12, str(r["failed_tries"])] for r in rows]))
    for r in rows:
        if "error" in r:
            print(f"{r['machines']} VMs failed: {r['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
