from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app


@click.command("down")
@pass_app
def command(app: App) -> None:
    """Stop and remove every machine of the environment, and its state, keys and logs."""
    removed = lifecycle.down(app.project())
    if not removed:
        app.progress.info("down", "nothing was running")
