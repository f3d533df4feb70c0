"""Boot benchmark (issues 2 and 6): `vmctl up` vs a bare QEMU, per kernel, side by side in one run.

For each kernel variant, `--runs` times, interleaved (variant A, B, ..., then again): `vmctl up` of one
machine to SSH-ready through the real CLI, then a bare `qemu-system-x86_64` (bench/bare_qemu.py) booting
the same kernel and initramfs to the same `VMCTL-READY` line. While each machine idles after READY, its
QEMU's memory is split into guest RAM touched, TCG cache and QEMU's own overhead (bench/vmstats.py).
Then `--parallel` machines are brought up by one `vmctl up`, beside the floor: the CPU-seconds the boots
cost (every QEMU, and the vmctl process) divided by the host's cores.

Variants: `cloud` (the default image: Debian's cloud kernel, its vmlinux extracted from the bzImage and
entered through PVH), `cloud-bzimage` (the same kernel booted as the bzImage: real-mode setup +
decompression), `minimal` (our own kernel, guest_images/minimal, PVH vmlinux, no modules). Each is booted
cold (`template: false`); `NAME:template` is the same machine restored from its template
(vmctl/template.py), shown as `NAME (template)`. A template variant's template is built (one `up`)
before anything is measured; the bare QEMU baseline is the cold boot's, once per kernel.

    .venv/bin/python -m bench.boot                     # cloud, minimal, cold and templated, 5 runs, 10 in parallel
    .venv/bin/python -m bench.boot --variants cloud,cloud-bzimage,minimal --runs 7 --json
    .venv/bin/python -m bench.boot --tb-cache 32 --parallel 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import bare_qemu
from bench.vmstats import (
    Scratch,
    add_out_option,
    cpu_seconds,
    fmt,
    median,
    probed_accel,
    results_file,
    scratch,
    table,
    timed_up,
)
from vmctl.guest_image import BZIMAGE_FILE, GuestImage, build_guest_image
from vmctl.hypervisor import qemu_pid
from vmctl.memory import memory_of

SETTLE = 2.0  # seconds of idling after READY before memory is read
DEFAULT_TB_MIB = 64  # what templates/domain/domain.xml.j2 gives libvirt's <tb-cache>


@dataclass(frozen=True)
class Variant:
    kernel_name: str  # cloud, cloud-bzimage, minimal
    image: GuestImage
    kernel: Path  # what both vmctl and bare QEMU boot
    accel: str  # what `accel: auto` gives this image here (bench.vmstats.probed_accel): kvm or tcg
    template: bool = False

    @property
    def name(self) -> str:
        return f"{self.kernel_name} (template)" if self.template else self.kernel_name

    @property
    def slug(self) -> str:  # for environment and domain names
        return f"{self.kernel_name}-t" if self.template else self.kernel_name

    def machine(self, memory_mib: int) -> dict[str, object]:
        spec: dict[str, object] = {"image": self.image.name, "memory": f"{memory_mib}M", "accel": self.accel,
                                   "template": self.template}
        if self.kernel != self.image.kernel:
            spec["kernel"] = str(self.kernel)
        return spec


def variants(names: Sequence[str], progress: bool = True) -> list[Variant]:
    def say(msg: str) -> None:
        if progress:
            print(f"bench: {msg}", file=sys.stderr)

    out = []
    accels: dict[str, str] = {}  # per image: a KVM host may run one guest kernel and not the other
    for spec in names:
        name, _, how = spec.partition(":")
        if how not in ("", "template") or (how and name == "cloud-bzimage"):
            raise SystemExit(f"unknown variant `{spec}` (cloud, minimal, cloud-bzimage, cloud:template, "
                             "minimal:template)")
        image = build_guest_image("minimal" if name == "minimal" else "default", progress=say)
        kernel = image.kernel
        if name == "cloud-bzimage":
            kernel = image.directory / BZIMAGE_FILE
        elif name not in ("cloud", "minimal"):
            raise SystemExit(f"unknown variant `{name}` (cloud, cloud-bzimage, minimal)")
        if image.name not in accels:
            accels[image.name] = probed_accel(image, say)
        out.append(Variant(name, image, kernel, accels[image.name], template=how == "template"))
    return out


def build_templates(s: Scratch, chosen: Sequence[Variant], memory_mib: int) -> None:
    """One unmeasured `up` per template variant, which builds its template if the cache has none."""
    for v in chosen:
        if v.template:
            print(f"bench: template for {v.name}", file=sys.stderr)
            file = s.write_env(f"bench-warm-{v.slug}", {"m": v.machine(memory_mib)})
            try:
                s.vmctl(file, "up")
            finally:
                s.vmctl(file, "down")


# ---------------------------------------------------------------------------------------------- one boot each

def vmctl_boot(s: Scratch, v: Variant, run: int, memory_mib: int) -> dict[str, object]:
    env = f"bench-{v.slug}"
    file = s.write_env(env, {"m": v.machine(memory_mib)})
    try:
        wall = timed_up(s, file)
        machine = s.machines(file)[0]
        timeline = machine["timeline"]
        if (machine["template"] is not None) != v.template:
            raise RuntimeError(f"{v.name}: expected template={v.template}, got {machine['template']}")
        pid = qemu_pid(f"vmctl-{env}-m")
        time.sleep(SETTLE)
        found = memory_of(pid, memory_mib) if pid else None
        memory = found.as_dict() if found else {}
    finally:
        s.vmctl(file, "down")
    if machine["accel"] != v.accel:
        raise RuntimeError(f"{v.name}: expected accel {v.accel}, vmctl used {machine['accel']}")
    return {"variant": v.name, "accel": v.accel, "run": run, "up_wall_s": round(wall, 3),
            "boot_s": machine["boot_seconds"],
            "qemu_started_s": timeline.get("qemu_started"), "restored_s": timeline.get("restored"),
            "ready_s": timeline.get("ready"),
            "ssh_s": timeline.get("ssh"),
            "guest_ready_uptime_s": machine["guest"].get("ready_uptime"), **memory}


def bare_boot(v: Variant, run: int, memory_mib: int, tb_mib: int) -> dict[str, object]:
    key = bare_qemu.throwaway_key_blob()
    with bare_qemu.running_vm(v.kernel, v.image.initrd, "bench", key, memory_mib=memory_mib,
                              tb_size_mib=tb_mib, accel=v.accel) as vm:
        if vm.wait_for("VMCTL-READY", timeout=120) != "VMCTL-READY":
            raise RuntimeError(f"bare boot of {v.name} failed: {vm.console[-10:]}")
        time.sleep(SETTLE)
        found = memory_of(vm.process.pid, memory_mib)
        memory = found.as_dict() if found else {}
        timings = vm.timings()
    return {"variant": v.name, "accel": v.accel, "run": run, "bare_ready_s": timings["wall_ready_s"],
            "bare_guest_ready_uptime_s": timings["uptime_ready_s"],
            **{f"bare_{k}": val for k, val in memory.items()}}


# ---------------------------------------------------------------------------------------------- parallel

def parallel_up(s: Scratch, v: Variant, count: int, memory_mib: int) -> dict[str, object]:
    env = f"bench-par-{v.slug}"
    file = s.write_env(env, {f"m{i}": v.machine(memory_mib) for i in range(count)})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        wall = timed_up(s, file, timeout=600)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        pids = [qemu_pid(f"vmctl-{env}-m{i}") for i in range(count)]
        qemu_cpu = sum(cpu_seconds(p) for p in pids if p)
        boots = [m["boot_seconds"] for m in s.machines(file)]
    finally:
        s.vmctl(file, "down", timeout=600)
    vmctl_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    cores = os.cpu_count() or 1
    floor = (qemu_cpu + vmctl_cpu) / cores
    return {"variant": v.name, "accel": v.accel, "machines": count, "wall_s": round(wall, 2), "cores": cores,
            "qemu_cpu_s": round(qemu_cpu, 2), "vmctl_cpu_s": round(vmctl_cpu, 2), "floor_s": round(floor, 2),
            "wall_over_floor": round(wall / floor, 2) if floor else None,
            "slowest_boot_s": max(b for b in boots if b is not None)}


def parallel_attempts(s: Scratch, v: Variant, count: int, memory_mib: int, attempts: int) -> dict[str, object]:
    """`parallel_up`, tried again after a failed `up` (which rolled itself back); failures are reported."""
    errors: list[str] = []
    for attempt in range(attempts):
        print(f"bench: {count} x {v.name} in parallel (attempt {attempt + 1})", file=sys.stderr)
        try:
            return {**parallel_up(s, v, count, memory_mib), "failed_tries": len(errors), "failed_attempts": errors}
        except RuntimeError as e:
            errors.append(" ".join(str(e).strip().splitlines()[-2:])[-200:])
            print(f"bench: parallel up failed: {errors[-1]}", file=sys.stderr)
    return {"variant": v.name, "accel": v.accel, "machines": count, "cores": os.cpu_count() or 1,
            "failed_tries": len(errors),
            "failed_attempts": errors}


# ---------------------------------------------------------------------------------------------- report

def summarize(rows: Sequence[dict[str, object]], chosen: Sequence[Variant]) -> list[dict[str, object]]:
    out = []
    for v in chosen:
        name = v.name
        mine = [r for r in rows if r["variant"] == name]
        # a templated start is compared with the bare boot of the same kernel
        baseline = [r for r in rows if r["variant"] == name.removesuffix(" (template)")]

        def med(key: str, rows_: Sequence[dict[str, object]] = mine) -> float | None:
            return median([float(str(r[key])) for r in rows_ if r.get(key) is not None])

        ready, bare, wall = med("ready_s"), med("bare_ready_s", baseline), med("up_wall_s")
        out.append({"variant": name, "accel": v.accel, "runs": len([r for r in mine if "up_wall_s" in r]),
                    "up_wall_s": wall, "up_qemu_started_s": med("qemu_started_s"),
                    "up_restored_s": med("restored_s"), "up_ready_s": ready,
                    "up_ssh_s": med("ssh_s"),
                    "guest_ready_uptime_s": med("guest_ready_uptime_s"), "bare_ready_s": bare,
                    "ratio_ready": ready / bare if ready and bare else None,
                    "ratio_wall": wall / bare if wall and bare else None,
                    "pss_mib": med("pss_mib"), "guest_ram_mib": med("guest_ram_touched_mib"),
                    "tcg_cache_mib": med("tcg_cache_mib"), "overhead_mib": med("qemu_overhead_mib"),
                    "files_mib": med("mapped_files_mib"), "private_mib": med("qemu_private_mib"),
                    "bare_pss_mib": med("bare_pss_mib", baseline),
                    "bare_overhead_mib": med("bare_qemu_overhead_mib", baseline)})
    return out


def render(summary: Sequence[dict[str, object]], parallel: Sequence[dict[str, object]], accel: str,
           tb_mib: int, memory_mib: int) -> str:
    def f(row: dict[str, object], key: str, digits: int = 2, suffix: str = "") -> str:
        value = row.get(key)
        return fmt(float(str(value)) if value is not None else None, digits, suffix)

    head = ["variant", "runs", "up wall", "up->QEMU", "up->restored", "up->READY", "up->SSH", "bare->READY",
            "ready/bare", "wall/bare",
            "guest uptime@READY", "PSS", "guest RAM", "TCG cache", "files", "private", "overhead",
            "bare overhead"]
    rows = [[str(r["variant"]), str(r["runs"]), f(r, "up_wall_s", 2, "s"), f(r, "up_qemu_started_s", 2, "s"),
             f(r, "up_restored_s", 2, "s"), f(r, "up_ready_s", 2, "s"),
             f(r, "up_ssh_s", 2, "s"), f(r, "bare_ready_s", 2, "s"), f(r, "ratio_ready", 2, "x"),
             f(r, "ratio_wall", 2, "x"), f(r, "guest_ready_uptime_s", 2, "s"), f(r, "pss_mib", 0, "M"),
             f(r, "guest_ram_mib", 0, "M"), f(r, "tcg_cache_mib", 0, "M"), f(r, "files_mib", 0, "M"),
             f(r, "private_mib", 0, "M"), f(r, "overhead_mib", 0, "M"),
             f(r, "bare_overhead_mib", 0, "M")] for r in summary]
    text = [f"accelerator = {accel}; guest RAM {memory_mib} MiB; tb-cache {tb_mib} MiB; medians", "",
            table(head, rows)]
    if parallel:
        text += ["", table(["parallel", "machines", "wall", "QEMU CPU", "vmctl CPU", "cores", "floor", "wall/floor",
                            "slowest boot", "failed tries"],
                           [[str(p["variant"]), str(p["machines"]), f(p, "wall_s", 2, "s"), f(p, "qemu_cpu_s", 2, "s"),
                             f(p, "vmctl_cpu_s", 2, "s"), str(p["cores"]), f(p, "floor_s", 2, "s"),
                             f(p, "wall_over_floor", 2, "x"), f(p, "slowest_boot_s", 2, "s"),
                             str(p.get("failed_tries", 0))] for p in parallel])]
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.boot", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="cloud,cloud:template,minimal,minimal:template",
                        help="comma list of cloud, cloud-bzimage, minimal, and cloud:template, minimal:template")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", type=int, default=256, help="guest RAM in MiB")
    parser.add_argument("--tb-cache", type=int, default=DEFAULT_TB_MIB,
                        help="TCG cache (MiB) for the bare boots and the memory split; vmctl's comes from its "
                             "domain template")
    parser.add_argument("--parallel", type=int, default=10, help="machines in the parallel `up` (0: skip)")
    parser.add_argument("--parallel-variants", default="minimal,minimal:template,cloud,cloud:template")
    parser.add_argument("--json", action="store_true", help="print every run and the summary as JSON")
    add_out_option(parser)
    args = parser.parse_args(argv)

    rows: list[dict[str, object]] = []
    parallel: list[dict[str, object]] = []
    with results_file(parser, args.out) as out, scratch() as s:
        chosen = variants([n for n in args.variants.split(",") if n])
        in_parallel = variants([n for n in args.parallel_variants.split(",") if n], progress=False) \
            if args.parallel else []
        build_templates(s, list({v.name: v for v in [*chosen, *in_parallel]}.values()), args.memory)
        for run in range(args.runs):
            for v in chosen:
                print(f"bench: run {run + 1}/{args.runs} {v.name}", file=sys.stderr)
                boots = [vmctl_boot(s, v, run, args.memory)]
                if not v.template:  # the bare baseline is the kernel's, not the start's
                    boots.append(bare_boot(v, run, args.memory, args.tb_cache))
                for row in boots:
                    rows.append(row)
                    out.write({"kind": "run", **row})
        if args.parallel:
            for v in in_parallel:
                parallel.append(parallel_attempts(s, v, args.parallel, args.memory, attempts=3))
                out.write({"kind": "parallel", **parallel[-1]})
        summary = summarize(rows, chosen)
        for row in summary:
            out.write({"kind": "summary", **row})
    accel = ", ".join(sorted({v.accel for v in chosen}))  # each row carries its own too
    if args.json:
        print(json.dumps({"accel": accel, "runs": rows, "summary": summary, "parallel": parallel}, indent=1))
    else:
        print(render(summary, parallel, accel, args.tb_cache, args.memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
