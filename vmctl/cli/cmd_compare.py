from __future__ import annotations

import sys
from pathlib import Path

import click

from vmctl.cli.app import App, pass_app
from vmctl.compare import report as views
from vmctl.compare.run import EXTRA_SANDBOXES, MEASUREMENTS, SANDBOXES, Options, compare
from vmctl.errors import UsageError


def _csv(value: str | None, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    if not value:
        return ()
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad:
        raise UsageError(f"`{flag}`: unknown value `{bad[0]}`", hint=f"choose from {', '.join(allowed)}")
    return items


@click.command("compare", epilog="""\b
Examples:
  vmctl -f examples/compare.yaml compare                         table on the terminal
  vmctl -f examples/compare.yaml compare --runs 10 --json > r.json
  vmctl -f examples/compare.yaml compare --out report/           index.html with plots, JSON, CSV
  vmctl -f examples/compare.yaml compare --sandboxes runc,microvm --only start,isolation""")
@click.option("--runs", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Measured runs per sandbox (plus one warm-up run, excluded).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), help="Write index.html, JSON and CSV here.")
@click.option("--sandboxes", metavar="LIST", help=f"Comma-separated, from {','.join(SANDBOXES)} "
              f"(default: every one this host has) and {','.join(EXTRA_SANDBOXES)} (the microVM restored from "
              "its template; not in one run with microvm).")
@click.option("--only", metavar="LIST", help=f"Comma-separated, from {','.join(MEASUREMENTS)} (default: all).")
@click.option("--density", type=click.IntRange(0, 64), default=0,
              help="Also start N idle instances of each sandbox side by side: memory and start time as N grows.")
@click.option("--perf-seconds", type=click.FloatRange(0.5, 600), default=3.0, show_default=True,
              help="Duration of each performance sample.")
@click.option("--service", help="The service of the file to run (default: the first one).")
@pass_app
def command(app: App, runs: int, as_json: bool, out: Path | None, sandboxes: str | None, only: str | None,
            density: int, perf_seconds: float, service: str | None) -> None:
    """Run the same workload in a plain container and in a microVM: start time, memory, isolation, speed."""
    options = Options(runs=runs, only=_csv(only, MEASUREMENTS, "--only") or MEASUREMENTS,
                      sandboxes=_csv(sandboxes, (*SANDBOXES, *EXTRA_SANDBOXES), "--sandboxes"), density=density,
                      perf_seconds=perf_seconds, service=service)
    report_dir = views.ReportDir(out) if out is not None else None  # can every output be written? Before measuring
    progress = app.progress
    result = compare(app.environment(), options, progress, on_update=report_dir.save_data if report_dir else None)
    if result.emulated:
        progress.warn("accel", result.banner() or "")
    if report_dir is not None:
        paths = report_dir.save_data(result)
        progress.done("report", f"wrote {', '.join(str(p) for p in paths)}")
    click.echo(views.to_json(result) if as_json else views.terminal(result))
    sys.stdout.flush()
    if report_dir is not None:  # last: the only output that needs more than vmctl (matplotlib)
        progress.done("report", f"wrote {report_dir.save_page(result)}")
