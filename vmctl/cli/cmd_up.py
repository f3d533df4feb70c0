from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app


@click.command("up", epilog="""\b
Examples:
  vmctl up                      build the guest image on first use, boot every machine, wait for SSH
  vmctl -f env.yaml up worker   only the machine `worker`
  vmctl up --timeout 300        allow slow (TCG) boots more time""")
@click.argument("machines", nargs=-1)
@click.option("--timeout", type=click.FloatRange(1, 3600), default=lifecycle.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds each machine may take to become ready.")
@pass_app
def command(app: App, machines: tuple[str, ...], timeout: float) -> None:
    """Create and boot the environment's machines; return when every guest answers SSH."""
    project = app.project()
    lifecycle.up(project, machines, timeout=timeout)
