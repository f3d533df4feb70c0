"""The row model every measurement ends in, and the report object the renderers read.

One `Row` is one metric of one workload on one sandbox, with its raw samples; the terminal table,
JSON, CSV and HTML are all views of a list of rows (plus isolation verdicts and the host context).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vmctl import virt

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Row:
    workload: str  # e.g. "start", "footprint", "cpu"
    sandbox: str  # runc, docker, podman, microvm
    metric: str  # start_seconds, memory_mib, ...
    unit: str
    median: float
    min: float
    max: float
    samples: tuple[float, ...]
    accel: str  # the accelerator the sandbox ran on: "kvm", "tcg", or "none" for host containers
    emulated: bool = False  # ran under emulation: TCG, or KVM nested in a host whose CPU is emulated
    higher_is_better: bool = False
    ratio: float | None = None  # median / the baseline's median (perf), when a baseline ran
    phases: dict[str, float] = field(default_factory=dict)  # start: median seconds per phase
    note: str = ""

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the samples disagree, 0 for a single sample."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = list(self.samples)
        data["spread"] = round(self.spread, 4)
        return data


def row(workload: str, sandbox: str, metric: str, unit: str, samples: Sequence[float], accel: str,
        **extra: Any) -> Row:
    """A row summarising `samples` (median, min, max); rounding keeps the JSON readable."""
    if not samples:
        raise ValueError(f"{workload}/{sandbox}/{metric}: no samples")
    values = tuple(round(float(s), 6) for s in samples)
    return Row(workload=workload, sandbox=sandbox, metric=metric, unit=unit,
               median=round(statistics.median(values), 6), min=min(values), max=max(values),
               samples=values, accel=accel, **extra)


@dataclass(frozen=True)
class Verdict:
    """One isolation probe in one sandbox: is what it looked at the host's own (shared) or not."""

    probe: str
    sandbox: str
    shared_with_host: bool | None  # None: the probe could not decide (evidence says why)
    evidence: str
    meaning: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    accel: str  # the microVMs' accelerator: "kvm" or "tcg" ("none" when no microVM ran)
    accel_reason: str
    host: dict[str, Any]
    versions: dict[str, str]
    sandboxes: list[str]
    runs: int
    results: list[Row] = field(default_factory=list)
    isolation: list[Verdict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "sandbox/measurement" -> why
    host_emulated: bool = False  # vmctl's host itself has an emulated CPU (vmctl/virt.py)
    complete: bool = True  # False in what a run writes while it still measures (`compare --out`)

    @property
    def emulated(self) -> bool:
        """The microVMs' figures are emulation figures: TCG, or KVM nested under an emulated CPU."""
        return self.accel == "tcg" or (self.accel == "kvm" and self.host_emulated)

    @property
    def accel_label(self) -> str:
        return virt.accel_label(self.accel, self.host_emulated)

    def banner(self) -> str | None:
        if not self.emulated:
            return None
        if self.accel == "kvm":
            return (f"microVMs ran under {self.accel_label}: vmctl's host is itself a VM whose CPU is emulated, "
                    "so KVM works here but every instruction is still emulated underneath; the figures check "
                    "that the KVM path works and say nothing about KVM's speed")
        return ("microVMs ran under TCG (software emulation, no KVM): their start times and performance "
                "are far below what KVM gives; read the ratios as emulation cost, not virtualization cost")

    def rows(self, *, workload: str | None = None, metric: str | None = None,
             sandbox: str | None = None) -> list[Row]:
        return [r for r in self.results if (workload is None or r.workload == workload)
                and (metric is None or r.metric == metric) and (sandbox is None or r.sandbox == sandbox)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "accel": self.accel,
            "accel_reason": self.accel_reason,
            "accel_label": self.accel_label,
            "emulated": self.emulated,
            "host_emulated": self.host_emulated,
            "warning": self.banner(),
            "host": self.host,
            "versions": self.versions,
            "sandboxes": self.sandboxes,
            "runs": self.runs,
            "results": [r.to_json() for r in self.results],
            "isolation": [v.to_json() for v in self.isolation],
            "warnings": self.warnings,
            "skipped": self.skipped,
            "complete": self.complete,
        }


def with_ratios(rows: Iterable[Row], baseline: str) -> list[Row]:
    """Each row gets `ratio` = its median / the baseline's median of the same workload+metric. For a pair
    of sandboxes (`CLIENT -> SERVER`, the network rows) the baseline is the baseline's own pair."""
    rows = list(rows)
    pair = f"{baseline} -> {baseline}"
    base = {(r.workload, r.metric): r.median for r in rows if r.sandbox in (baseline, pair)}
    out = []
    for r in rows:
        b = base.get((r.workload, r.metric))
        ratio = round(r.median / b, 4) if b else None
        out.append(Row(**{**asdict(r), "samples": r.samples, "ratio": ratio}))
    return out
