from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app


@click.command("down", epilog="""\b
Examples:
  vmctl down                    remove the machines and containers; named volumes stay
  vmctl down -v                 and remove the environment's named volumes too (never external ones)""")
@click.option("-v", "--volumes", "remove_volumes", is_flag=True,
              help="Also remove the named volumes of the file's top-level `volumes:` (not external ones).")
@click.option("--remove-orphans", is_flag=True,
              help="Accepted for compose's sake: `down` always removes every machine and container the "
                   "environment's state records, in the file or not.")
@pass_app
def command(app: App, remove_volumes: bool, remove_orphans: bool) -> None:
    """Stop and remove every machine of the environment, and its state, keys and logs."""
    removed = lifecycle.down(app.project(), remove_volumes=remove_volumes)
    if not removed:
        app.progress.info("down", "nothing was running")
