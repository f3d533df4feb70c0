from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app, strip_dashes


@click.command("ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@pass_app
def command(app: App, name: str, argv: tuple[str, ...]) -> None:
    """Open an interactive shell in a machine (a real terminal), or run ARGV with a terminal."""
    argv = strip_dashes(argv)
    with lifecycle.guest(app.project(), name) as g:
        code = g.interactive(list(argv) or None)
    raise click.exceptions.Exit(code)
