"""Views of one Report: a terminal table (one column per sandbox), JSON, CSV and a self-contained HTML
page with matplotlib plots embedded as base64 PNG (templates/report/index.html.j2)."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from vmctl.compare.footprint import AFTER_PEAK_S
from vmctl.compare.results import Report, Row
from vmctl.errors import HostError, UsageError
from vmctl.outputs import Requirement, writable_dir, write_atomic
from vmctl.paths import TEMPLATES_DIR

SHARED, ISOLATED, UNKNOWN = "SHARED", "isolated", "?"
METRIC_LABELS = {
    ("start", "start_seconds"): "start: cold start to first output",
    ("idle", "memory_mib"): "memory idle (PSS, host processes)",
    ("peak", "memory_mib"): "memory at peak (PSS)",
    ("idle", "cgroup_memory_mib"): "memory idle (cgroup charge)",
    ("peak", "cgroup_memory_mib"): "memory at peak (cgroup charge)",
    ("after_peak", "memory_mib"): f"memory {AFTER_PEAK_S:.0f} s after the peak (PSS)",
    ("config", "guest_ram_mib"): "guest RAM configured",
    ("disk", "image_mib"): "disk: image",
    ("disk", "boot_files_mib"): "disk: guest kernel+initramfs",
    ("disk", "writable_mib"): "disk: writable, per instance",
    ("peers", "rtt_ms"): "round trip by name (redis PING, p50)",
    ("peers", "throughput_mbit"): "throughput by name (iperf3)",
    ("portability", "total_seconds"): "move to another host: total",
    ("portability", "downtime_ms"): "move: downtime (paused or stopped)",
    ("portability", "client_downtime_ms"): "move: downtime a client saw (ICMP)",
    ("portability", "moved_mib"): "move: bytes moved",
    ("portability", "cold_move_mib"): "move: what a cold move needs",
}


def _fmt(value: float, unit: str) -> str:
    if unit == "bit/s":
        return f"{value / 1e9:.2f} Gbit/s" if value >= 1e9 else f"{value / 1e6:.1f} Mbit/s"
    if unit in ("s", "ms"):
        return f"{value:.3f} {unit}"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    if abs(value) < 10:
        return f"{value:.2f} {unit}"
    return f"{value:.1f} {unit}"


def cell(r: Row) -> str:
    text = _fmt(r.median, r.unit)
    if len(r.samples) > 1:
        text += f" ±{r.spread * 100:.0f}%"
    if r.ratio is not None and (r.higher_is_better or " -> " in r.sandbox):  # a pair: both metrics are ratios
        text += f" ({r.ratio:.2f}x)"
    return text


def label(r: Row) -> str:
    return METRIC_LABELS.get((r.workload, r.metric), f"{r.workload}: {r.metric}")


def verdict_text(shared: bool | None) -> str:
    return UNKNOWN if shared is None else SHARED if shared else ISOLATED


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def metric_grid(report: Report) -> tuple[list[str], list[list[str]]]:
    sandboxes = report.sandboxes
    keys = list(dict.fromkeys((r.workload, r.metric) for r in report.results if " -> " not in r.sandbox))
    grid = []
    for workload, metric in keys:
        by = {r.sandbox: r for r in report.rows(workload=workload, metric=metric)}
        first = next(iter(by.values()))
        grid.append([label(first), *(cell(by[s]) if s in by else "-" for s in sandboxes)])
    return ["measurement", *sandboxes], grid


def network_grid(report: Report) -> tuple[list[str], list[list[str]]]:
    """One line per pair of sandboxes: the network rows, whose `sandbox` is `CLIENT -> SERVER`."""
    rows = [r for r in report.results if " -> " in r.sandbox]
    metrics = list(dict.fromkeys(r.metric for r in rows))
    grid = []
    for pair in dict.fromkeys(r.sandbox for r in rows):
        by = {r.metric: r for r in rows if r.sandbox == pair}
        grid.append([pair, *(cell(by[m]) if m in by else "-" for m in metrics)])
    return ["pair", *(label(next(r for r in rows if r.metric == m)) for m in metrics)], grid


def isolation_grid(report: Report) -> tuple[list[str], list[list[str]]]:
    columns = list(dict.fromkeys(v.sandbox for v in report.isolation))
    probes = list(dict.fromkeys(v.probe for v in report.isolation))
    found = {(v.probe, v.sandbox): v for v in report.isolation}
    grid = [[p, *(verdict_text(found[(p, c)].shared_with_host) if (p, c) in found else "-" for c in columns)]
            for p in probes]
    return ["probe", *columns], grid


def terminal(report: Report) -> str:
    out = []
    banner = report.banner()
    if banner:
        out += ["!" * 100, f"!! {banner}", "!" * 100, ""]
    host = report.host
    out.append(f"accelerator: {report.accel_label.upper()} ({report.accel_reason})")
    out.append(f"host: {host.get('cpu')} x{host.get('cpus')}, kernel {host.get('kernel')}, "
               f"cgroups {host.get('cgroups')}")
    out.append("versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()))
    out.append(f"runs: {report.runs} (+1 warm-up, excluded); ratios (Nx) are to the plain container (runc); "
               "±% is the spread (max-min)/median")
    grid = metric_grid(report)
    if grid[1]:
        out += ["", _table(*grid)]
        phases = [r for r in report.rows(metric="start_seconds", workload="start") if r.phases]
        for r in phases:
            parts = ", ".join(f"{k} {v:.3f}" for k, v in r.phases.items())
            out.append(f"  {r.sandbox} start phases (s): {parts}")
            if r.note:
                out.append(f"  {r.sandbox} {r.note}")
    pairs = network_grid(report)
    if pairs[1]:
        out += ["", "service to service, by name on the environment network (ratios to runc -> runc):",
                _table(*pairs)]
    if report.isolation:
        out += ["", "isolation (SHARED = the sandbox reached the host's own; see --json for evidence):",
                _table(*isolation_grid(report))]
    for key, why in report.skipped.items():
        out.append(f"skipped {key}: {why}")
    return "\n".join(out)


def to_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2)


CSV_FIELDS = ("workload", "sandbox", "metric", "unit", "median", "min", "max", "spread", "ratio", "accel",
              "emulated", "samples", "note")


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_FIELDS)
    for r in report.results:
        data = r.to_json()
        data["samples"] = " ".join(str(s) for s in r.samples)
        writer.writerow([data.get(k, "") for k in CSV_FIELDS])
    for v in report.isolation:
        shared = int(bool(v.shared_with_host)) if v.shared_with_host is not None else ""
        data = {"workload": "isolation", "sandbox": v.sandbox, "metric": v.probe, "median": shared,
                "accel": report.accel, "emulated": report.emulated, "note": v.evidence}
        writer.writerow([data.get(k, "") for k in CSV_FIELDS])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- plots


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (7.5, 3.6)) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_start(report: Report) -> str | None:
    rows = [r for r in report.rows(workload="start", metric="start_seconds")]
    if not rows:
        return None

    def draw(ax: Any) -> None:
        phases = list(dict.fromkeys(p for r in rows for p in r.phases))
        colours = {p: f"C{i % 10}" for i, p in enumerate(phases)}
        hatches = {p: "" if i < 10 else "//" for i, p in enumerate(phases)}
        drawn: set[str] = set()
        for r in rows:  # each sandbox stacks its own phases in the order they happened
            left = 0.0
            for phase, value in r.phases.items():
                ax.barh(r.sandbox, value, left=left, color=colours[phase], hatch=hatches[phase],
                        label=None if phase in drawn else phase)
                drawn.add(phase)
                left += value
        ax.set_xlabel(f"seconds (median of {report.runs} runs)")
        ax.set_title("Cold start to first output, by phase")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))

    return _png(draw, size=(9.5, 3.6))


def plot_footprint(report: Report) -> str | None:
    idle = {r.sandbox: r.median for r in report.rows(workload="idle", metric="memory_mib")}
    peak = {r.sandbox: r.median for r in report.rows(workload="peak", metric="memory_mib")}
    after = {r.sandbox: r.median for r in report.rows(workload="after_peak", metric="memory_mib")}
    ram = {r.sandbox: r.median for r in report.rows(metric="guest_ram_mib")}
    if not idle:
        return None

    def draw(ax: Any) -> None:
        names = list(idle)
        xs = range(len(names))
        bars = [("idle", idle), ("peak", peak), (f"{AFTER_PEAK_S:.0f} s after the peak", after)]
        width = 0.8 / len(bars)
        for k, (label, values) in enumerate(bars):
            ax.bar([x + (k - 1) * width for x in xs], [values.get(n, 0) for n in names], width=width, label=label)
        for i, n in enumerate(names):
            if n in ram:
                ax.plot([i - 0.45, i + 0.45], [ram[n]] * 2, "k--", linewidth=1)
                ax.annotate(f"guest RAM {ram[n]:.0f}", (i, ram[n]), fontsize=7, ha="center", va="bottom")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("MiB (PSS of the sandbox's host processes)")
        ax.set_title("Host memory per sandbox")
        ax.legend(fontsize=8)

    return _png(draw)


def plot_perf(report: Report) -> str | None:
    rows = [r for r in report.results if r.higher_is_better and r.ratio is not None]
    if not rows:
        return None

    def draw(ax: Any) -> None:
        workloads = list(dict.fromkeys(r.workload for r in rows))
        sandboxes = list(dict.fromkeys(r.sandbox for r in rows))
        width = 0.8 / max(1, len(sandboxes))
        for j, s in enumerate(sandboxes):
            vals = [next((r.ratio or 0.0 for r in rows if r.workload == w and r.sandbox == s), 0.0) for w in workloads]
            ax.bar([i + j * width for i in range(len(workloads))], vals, width=width, label=s)
        ax.axhline(1.0, color="k", linewidth=0.8)
        ax.set_xticks([i + width * (len(sandboxes) - 1) / 2 for i in range(len(workloads))], workloads)
        ax.set_ylabel("ratio to runc (higher is better)")
        ax.set_title("Workload performance" + (f" — microVM under {report.accel_label}" if report.emulated else ""))
        ax.legend(fontsize=8)

    return _png(draw)


def html(report: Report) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "report"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    headers, grid = metric_grid(report)
    iso_headers, iso_grid = isolation_grid(report)
    net_headers, net_grid = network_grid(report)
    evidence = {(v.probe, v.sandbox): v.evidence for v in report.isolation}
    meaning = {v.probe: v.meaning for v in report.isolation}
    return env.get_template("index.html.j2").render(
        report=report, data=report.to_json(), headers=headers, grid=grid, iso_headers=iso_headers,
        iso_grid=iso_grid, net_headers=net_headers, net_grid=net_grid, evidence=evidence, meaning=meaning,
        plots={"Start time": plot_start(report), "Footprint": plot_footprint(report),
               "Performance": plot_perf(report)},
    )


HTML_NEEDS = Requirement("matplotlib", "report", "`--out` (index.html and its plots)",
                         instead="or leave `--out` away: `--json > FILE` needs nothing more")


class ReportDir:
    """`compare --out DIR`: compare.json and compare.csv, rewritten whole after every measurement, and
    index.html (plots: matplotlib) last, so a failure there, or an interrupted run, keeps the data."""

    DATA = ("compare.json", "compare.csv")
    PAGE = "index.html"

    def __init__(self, out: Path) -> None:
        HTML_NEEDS.check()  # before anything is measured
        self.out = writable_dir(out, "--out")
        for name in (*self.DATA, self.PAGE):
            if (out / name).is_dir():
                raise UsageError(f"`--out`: {out / name} is a folder")

    def save_data(self, report: Report) -> list[Path]:
        # compare.json last: whoever sees it (a user after Ctrl-C, a test waiting for it) finds
        # compare.csv of the same update already there, also when an interrupt falls between the two
        texts = {"compare.csv": to_csv(report), "compare.json": to_json(report) + "\n"}
        for name, text in texts.items():
            write_atomic(self.out / name, text)
        return [self.out / name for name in self.DATA]

    def save_page(self, report: Report) -> Path:
        path = self.out / self.PAGE
        try:
            write_atomic(path, html(report))
        except Exception as e:  # optional output: whatever breaks in it, the data files stay and say so
            raise HostError(f"writing {path} failed: {type(e).__name__}: {e}",
                            hint=f"the measurements are in {', '.join(str(self.out / n) for n in self.DATA)}"
                            ) from e
        return path
