"""`vmctl compare`: the same workload in every sandbox, measured the same way, into one Report."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from vmctl import doctor, virt
from vmctl.compare import footprint, isolation, network, perf, portability, start_time
from vmctl.compare.microvm import MicroVM
from vmctl.compare.results import Report, Row, Verdict, row, with_ratios
from vmctl.compare.sandboxes import Instance, Runc, Sandbox, Workload
from vmctl.container_image import prepare_image
from vmctl.errors import UsageError, VmctlError
from vmctl.oci_spec import merge_command, merge_env
from vmctl.progress import Progress
from vmctl.spec import Environment, ServiceSpec

MEASUREMENTS = ("start", "footprint", "isolation", "perf", "peers", "portability")
SANDBOXES = ("runc", "docker", "podman", "microvm")
# Selectable, not in the default set: libvirt 9.0 registers its embedded QEMU driver again at every open
# (`Too many drivers, cannot register QEMU` after ~20 in one process), and two microVM sandboxes of
# `--runs 5` open it more often than that. `compare --sandboxes microvm-template` runs it on its own.
EXTRA_SANDBOXES = ("microvm-template",)
BASELINE = "runc"
PEAK_MIB = 64  # the footprint's peak workload: a 64 MiB resident allocation, under every limit


@dataclass(frozen=True)
class Options:
    runs: int = 5
    only: tuple[str, ...] = MEASUREMENTS
    sandboxes: tuple[str, ...] = ()  # empty: every one this host has
    density: int = 0
    perf_seconds: float = 3.0
    service: str | None = None


def pick_service(env: Environment, name: str | None) -> ServiceSpec:
    if name is not None:
        svc = env.service(name)
        if svc is None:
            raise UsageError(f"unknown service `{name}` in {env.file}",
                             hint=f"services: {', '.join(s.name for s in env.services) or 'none'}")
        return svc
    if not env.services:
        raise UsageError(f"{env.file} declares no service to compare",
                         hint="add a service whose image has busybox, stress-ng, fio and iperf3 "
                              "(see examples/compare.yaml)")
    return env.services[0]


def workload_for(env: Environment, svc: ServiceSpec, progress: Progress) -> Workload:
    progress.working(f"image {svc.image}", "preparing")
    image = prepare_image(svc.image, env.base_dir, policy=svc.pull_policy,
                          progress=progress.callback(f"image {svc.image}"))
    progress.done(f"image {svc.image}", image.digest[:19])
    machine = env.machine(svc.machine or svc.name)
    return Workload(
        name=svc.name, image_ref=svc.image, base_dir=env.base_dir, image=image,
        args=merge_command(svc.entrypoint, svc.command, image.config),
        env=merge_env(image.config.env, [f"{k}={v}" for k, v in svc.environment]),
        ports=tuple(p.target for p in svc.ports),
        vcpus=machine.vcpus if machine else 1, memory_mib=machine.memory_mib if machine else 256,
    )


def all_sandboxes(env: Environment) -> dict[str, Sandbox]:
    from vmctl.compare.engines import Docker, Podman

    return {"runc": Runc(), "docker": Docker(), "podman": Podman(), "microvm": MicroVM(env.base_dir),
            "microvm-template": MicroVM(env.base_dir, template=True)}


def select(env: Environment, wanted: Sequence[str]) -> tuple[list[Sandbox], dict[str, str]]:
    known = all_sandboxes(env)
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"unknown sandbox `{unknown[0]}`",
                         hint=f"choose from {', '.join((*SANDBOXES, *EXTRA_SANDBOXES))}")
    if {"microvm", "microvm-template"} <= set(wanted):  # found after the first one's runs otherwise
        raise UsageError("`microvm` and `microvm-template` cannot run in one compare: libvirt 9.0's embedded "
                         "QEMU driver stops registering after ~20 opens in one process",
                         hint="run them one after the other: `--sandboxes runc,microvm`, then "
                         "`--sandboxes runc,microvm-template`")
    chosen, skipped = [], {}
    for name in wanted or SANDBOXES:
        why = known[name].unavailable()
        if why is None:
            chosen.append(known[name])
        elif wanted:
            raise UsageError(f"sandbox `{name}` cannot run here: {why}")
        else:
            skipped[name] = why
    return chosen, skipped


Save = Callable[[], None]


def compare(env: Environment, options: Options, progress: Progress,
            on_update: Callable[[Report], object] | None = None) -> Report:
    """Measure every sandbox; `on_update` gets the report so far (`complete=False`, ratios as far as the
    baseline ran) after each measurement, so a caller can put it on disk as the run goes."""
    svc = pick_service(env, options.service)
    sandboxes, skipped = select(env, options.sandboxes)
    workload = workload_for(env, svc, progress)
    report = Report(accel="none", accel_reason="no microVM ran", host=doctor.host_facts(), versions={},
                    sandboxes=[s.name for s in sandboxes], runs=options.runs, skipped=skipped,
                    host_emulated=virt.host().emulated)
    report.host["workload"] = {"service": svc.name, "image": svc.image, "digest": workload.image.digest,
                               "command": list(workload.args), "guest_ram_mib": workload.memory_mib,
                               "vcpus": workload.vcpus, "container_memory_limit_mib": workload.memory_limit_mib,
                               "container_pids_limit": workload.pids_limit}

    def save() -> None:
        if on_update is not None:
            on_update(dataclasses.replace(report, results=with_ratios(report.results, BASELINE), complete=False))

    for sb in sandboxes:
        try:
            sb.prepare(workload)
            if isinstance(sb, MicroVM):
                report.accel, report.accel_reason = sb.accel, sb.accel_reason
            report.versions.update(sb.versions())
            _measure_one(sb, workload, options, report, progress, save)
        finally:
            sb.close()
    if "peers" in options.only:
        _measure_network(sandboxes, workload, options, report, progress, save)
    if "portability" in options.only:
        _measure_portability(env, sandboxes, workload, options, report, progress, save)
    report.results = [replace(r, emulated=r.accel == "tcg" or (r.accel == "kvm" and report.host_emulated))
                      for r in with_ratios(report.results, BASELINE)]
    if report.emulated:
        report.warnings.insert(0, report.banner() or "")
    return report


def _measure_one(sb: Sandbox, workload: Workload, options: Options, report: Report, progress: Progress,
                 save: Save) -> None:
    if "start" in options.only:
        report.results += start_time.measure(sb, workload, options.runs, progress)
        save()
    if not {"footprint", "isolation", "perf"} & set(options.only) and not options.density:
        return
    progress.working(sb.name, "starting the long-lived instance")
    inst = sb.start(workload, "main")
    try:
        if "footprint" in options.only:
            report.results += measure_footprint(sb, inst, workload, progress)
            save()
        if "perf" in options.only:
            report.results += measure_perf(sb, inst, options, report, progress)
            save()
        if "isolation" in options.only:
            report.isolation += measure_isolation(sb, inst, workload, progress)
            save()
    finally:
        inst.stop()
    if options.density:
        report.results += measure_density(sb, workload, options.density, progress)
        save()


def _rows_after(report: Report, save: Save) -> Callable[[list[Row]], None]:
    """For a measurement that hands over all its rows so far each time: they follow the report's rows of
    now, replacing what it handed over before, and the report is saved."""
    before = list(report.results)

    def keep(rows: list[Row]) -> None:
        report.results = before + rows
        save()

    return keep


def _measure_network(sandboxes: Sequence[Sandbox], workload: Workload, options: Options, report: Report,
                     progress: Progress, save: Save) -> None:
    """Service to service on the environment network: needs both of vmctl's own kinds of member."""
    names = {sb.name for sb in sandboxes}
    if not {"runc", "microvm"} <= names:
        report.skipped[network.WORKLOAD] = "needs the runc and microvm sandboxes (vmctl's two kinds of member)"
        return
    keep = _rows_after(report, save)
    try:
        network.measure(workload, options.runs, options.perf_seconds, progress, keep)
    except VmctlError as e:
        report.skipped[network.WORKLOAD] = e.message
        progress.warn(network.WORKLOAD, f"failed: {e.message}")


def _measure_portability(env: Environment, sandboxes: Sequence[Sandbox], workload: Workload, options: Options,
                         report: Report, progress: Progress, save: Save) -> None:
    """The running workload moved to another host: live migration (microvm), CRIU (runc)."""
    skipped = portability.measure(env, workload, [sb.name for sb in sandboxes], options.runs, progress,
                                  _rows_after(report, save))
    report.skipped.update({f"{portability.WORKLOAD}/{name}": why for name, why in skipped.items()})


def measure_footprint(sb: Sandbox, inst: Instance, workload: Workload, progress: Progress) -> list[Row]:
    progress.working(sb.name, "footprint: idle")
    time.sleep(1.0)
    idle = []
    for _ in range(3):
        idle.append(footprint.snapshot(inst.pids(), inst.cgroup()))
        time.sleep(0.3)
    progress.working(sb.name, f"footprint: peak ({PEAK_MIB} MiB resident in the sandbox)")
    argv = ["sh", "-c", 'cd /tmp && exec "$@"', "sh", "stress-ng", "--vm", "1", "--vm-bytes", f"{PEAK_MIB}M",
            "--vm-keep", "--vm-populate", "--timeout", "4s"]
    with footprint.PeakSampler(inst.pids, inst.cgroup) as sampler:
        inst.exec(argv, timeout=120)
    time.sleep(footprint.AFTER_PEAK_S)
    after = footprint.snapshot(inst.pids(), inst.cgroup())
    procs = ", ".join(f"{k} {v:.1f}" for k, v in idle[-1].processes.items())
    rows = [row("idle", sb.name, "memory_mib", "MiB", [s.pss_mib for s in idle], sb.accel,
                note=f"PSS of host processes: {procs}"),
            row("peak", sb.name, "memory_mib", "MiB", [sampler.peak_pss], sb.accel),
            row("after_peak", sb.name, "memory_mib", "MiB", [after.pss_mib], sb.accel,
                note="what the sandbox gave back once the peak's process had exited")]
    if all(s.cgroup_mib is not None for s in idle):
        rows.append(row("idle", sb.name, "cgroup_memory_mib", "MiB", [s.cgroup_mib or 0.0 for s in idle], sb.accel))
    if sampler.peak_cgroup is not None:
        rows.append(row("peak", sb.name, "cgroup_memory_mib", "MiB", [sampler.peak_cgroup], sb.accel))
    if sb.kind == "microvm":
        rows.append(row("config", sb.name, "guest_ram_mib", "MiB", [workload.memory_mib], sb.accel))
    for what, size in sb.image_bytes(workload).items():
        rows.append(row("disk", sb.name, "image_mib" if what == "image" else "boot_files_mib", "MiB",
                        [size / 2**20], sb.accel, note=what))
    rows.append(row("disk", sb.name, "writable_mib", "MiB", [inst.writable_bytes() / 2**20], sb.accel,
                    note="per instance, on the host's disk"))
    progress.done(sb.name, f"footprint: {idle[-1].pss_mib:.1f} MiB idle, {sampler.peak_pss:.1f} MiB peak (PSS)")
    return rows


def measure_perf(sb: Sandbox, inst: Instance, options: Options, report: Report, progress: Progress) -> list[Row]:
    rows = []
    for bench in perf.BENCHES:
        progress.working(sb.name, f"perf: {bench.workload} ({bench.describe})")
        try:
            samples = [bench.measure(inst, options.perf_seconds) for _ in range(options.runs)]
        except VmctlError as e:
            report.skipped[f"{sb.name}/{bench.workload}"] = e.message
            progress.warn(sb.name, f"perf: {bench.workload} failed: {e.message}")
            continue
        rows.append(row(bench.workload, sb.name, bench.metric, bench.unit, samples, sb.accel,
                        higher_is_better=True, note=bench.describe))
    progress.done(sb.name, "perf: done")
    return rows


def measure_isolation(sb: Sandbox, inst: Instance, workload: Workload, progress: Progress) -> list[Verdict]:
    progress.working(sb.name, "isolation probes")
    with isolation.marker_process() as marker:
        host = isolation.host_view(marker)
        verdicts = isolation.probe_instance(inst, host, sb.name)
        same_kernel = any(v.probe == "kernel" and v.shared_with_host for v in verdicts)
        progress.working(sb.name, "isolation: memory hog")
        bound = workload.memory_mib if sb.kind == "microvm" else float(workload.memory_limit_mib or 0)
        hog = max(2 * (workload.memory_limit_mib or 128), workload.memory_mib + 64)
        verdicts.append(isolation.hog_instance(inst, sb.name, bound_mib=bound, hog_mib=hog))
        progress.working(sb.name, "isolation: bounded fork bomb")
        verdicts.append(isolation.forks_instance(inst, sb.name, same_kernel=same_kernel))
        progress.working(sb.name, "isolation: privileged variant")
        priv = inst.privileged_sibling()
        try:
            priv_verdicts = isolation.probe_instance(priv, host, f"{sb.name} (privileged)")
        finally:
            priv.stop()
    verdicts.append(isolation.judge_privileged(sb.name, priv_verdicts))
    verdicts += [v for v in priv_verdicts if v.probe in isolation.PRIVILEGED_PROBES]
    shared = [v.probe for v in verdicts if v.shared_with_host and v.sandbox == sb.name]
    progress.done(sb.name, f"isolation: shared with the host: {', '.join(shared) or 'nothing'}")
    return verdicts


def measure_density(sb: Sandbox, workload: Workload, n: int, progress: Progress) -> list[Row]:
    progress.working(sb.name, f"density: {n} instances side by side")
    instances = sb.start_many(workload, "dens", n)
    try:
        starts = [x.start_seconds for x in instances]
        time.sleep(1.0)
        per = [footprint.snapshot(x.pids(), x.cgroup()).pss_mib for x in instances]
    finally:
        for x in reversed(instances):
            with contextlib.suppress(Exception):
                x.stop()
    progress.done(sb.name, f"density: {sum(per) / n:.1f} MiB per instance with {n} running")
    return [row("density", sb.name, "start_seconds", "s", starts, sb.accel,
                note=f"start time of instance 1..{n} (microVMs boot in parallel)"),
            row("density", sb.name, "memory_mib", "MiB", per, sb.accel, note=f"PSS per instance with {n} running")]
