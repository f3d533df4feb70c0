from __future__ import annotations

from dataclasses import asdict

import click

from vmctl import migration
from vmctl.cli.app import App, pass_app


@click.command("migrate", epilog="""\b
Examples:
  vmctl migrate web --to h2          move the running machine `web` to host `h2`, live
  vmctl migrate web --to h2 --json
  vmctl migrate web --to h2 --bandwidth 100   at most 100 MiB/s on the network""")
@click.argument("machine")
@click.option("--to", "target", required=True, help="A host of the file's `hosts:`.")
@click.option("--bandwidth", type=click.IntRange(min=0), default=0, metavar="MIB",
              help="Limit the move to MIB MiB/s (default: no limit).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def command(app: App, machine: str, target: str, bandwidth: int, as_json: bool) -> None:
    """Move a running machine to another host by libvirt live migration; its name and ports stay."""
    project = app.project()
    app.progress.working(machine, f"migrating to `{target}`")
    moved = migration.migrate(project, machine, target, bandwidth_mib=bandwidth)
    downtime = f", downtime {moved.downtime_ms} ms" if moved.downtime_ms is not None else ""
    app.progress.done(machine, f"on `{moved.target}` in {moved.seconds:.2f}s{downtime}")
    if as_json:
        app.print_json(asdict(moved))
