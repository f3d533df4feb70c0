from __future__ import annotations

import sys

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app, strip_dashes


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
               epilog="""\b
Examples:
  vmctl exec worker -- uname -r        the guest's kernel, not the host's
  vmctl exec worker -- sh -c 'exit 3'; echo $?    prints 3""")
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def command(app: App, name: str, argv: tuple[str, ...]) -> None:
    """Run a command inside a machine; its output streams back and its exit code becomes vmctl's."""
    argv = strip_dashes(argv)
    with lifecycle.guest(app.project(), name) as g:
        code = g.stream(list(argv), sys.stdout.buffer, sys.stderr.buffer,
                        stdin=None if sys.stdin.isatty() or sys.stdin.closed else sys.stdin.buffer)
    raise click.exceptions.Exit(code)
