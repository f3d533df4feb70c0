"""Cold start to first output, N runs per sandbox after one excluded warm-up run."""

from __future__ import annotations

import statistics

from vmctl.compare.results import Row, row
from vmctl.compare.sandboxes import Instance, Sandbox, Workload
from vmctl.progress import Progress


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each phase over the runs, in the order the phases happened."""
    names = list(dict.fromkeys(name for phases in runs for name in phases))
    return {name: round(statistics.median([p.get(name, 0.0) for p in runs]), 4) for name in names}


def measure(sandbox: Sandbox, workload: Workload, runs: int, progress: Progress) -> list[Row]:
    samples: list[float] = []
    phases: list[dict[str, float]] = []
    guest: list[dict[str, float]] = []
    for i in range(runs + 1):
        label = "warm-up" if i == 0 else f"run {i}/{runs}"
        progress.working(sandbox.name, f"start time: {label}")
        inst: Instance = sandbox.start(workload, f"start{i}")
        try:
            if i > 0:
                samples.append(inst.start_seconds)
                phases.append(inst.phases)
                guest.append(inst.notes().get("guest_clock", {}))
        finally:
            inst.stop()
    med = statistics.median(samples)
    progress.done(sandbox.name, f"start time: median {med:.3f}s over {runs} runs")
    note = ""
    if guest and all(guest):
        ready = statistics.median([g.get("ready_uptime", 0.0) for g in guest])
        note = f"guest clock: SSH-ready at {ready:.2f}s of guest uptime"
        if all("init_uptime" in g for g in guest):  # a clone has no init of its own: its template's ran
            init = statistics.median([g["init_uptime"] for g in guest])
            note = f"guest clock: init at {init:.2f}s, SSH-ready at {ready:.2f}s of guest uptime"
        else:
            note += " (restored from a template: the uptime continues the template's)"
    return [row("start", sandbox.name, "start_seconds", "s", samples, sandbox.accel,
                phases=median_phases(phases), note=note)]
