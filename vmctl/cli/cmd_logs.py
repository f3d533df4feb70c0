from __future__ import annotations

import sys
import time

import click

from vmctl.cli.app import App, pass_app
from vmctl.errors import UsageError


@click.command("logs", epilog="""\b
Examples:
  vmctl logs worker          the guest's serial console
  vmctl logs -f worker       follow it (Ctrl-C to stop)""")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("-n", "--tail", "lines", type=int, default=None, help="Only the last N lines.")
@pass_app
def command(app: App, name: str, follow: bool, lines: int | None) -> None:
    """Show a machine's console output."""
    project = app.project()
    if project.env.machine(name) is None:
        raise UsageError(f"unknown machine `{name}`",
                         hint=f"machines: {', '.join(m.name for m in project.env.machines) or 'none'}")
    path = project.envdir.machine_dir(name) / "console.log"
    if not path.exists():
        raise UsageError(f"machine `{name}` has no console log yet", hint="start it with `vmctl up`")
    out = sys.stdout.buffer
    with path.open("rb") as f:
        data = f.read()
        if lines is not None:
            data = b"\n".join(data.splitlines()[-lines:]) + b"\n"
        out.write(data)
        out.flush()
        while follow:
            chunk = f.read()
            if chunk:
                out.write(chunk)
                out.flush()
            else:
                time.sleep(0.1)
