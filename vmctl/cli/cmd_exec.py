from __future__ import annotations

import sys

import click

from vmctl import lifecycle, workloads
from vmctl.cli.app import App, index_option, instance, pass_app, strip_dashes, wants_tty
from vmctl.errors import UsageError


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
               epilog="""\b
Examples:
  vmctl exec web -- cat /etc/hostname            inside the service's container (crun exec in its VM)
  vmctl exec baseline -- uname -r                 a host container: the host's kernel
  vmctl exec worker -- uname -r                   a machine: the guest's kernel, not the host's
  vmctl exec worker -- sh -c 'exit 3'; echo $?    prints 3
  vmctl exec -u nobody -w /tmp -e A=1 web -- id    as a user of the image, in a folder, with a variable
  vmctl exec web -- sh                            a shell on a terminal (when this one is a terminal)
  vmctl exec --index 2 api -- hostname            the second instance of a service with replicas (api-2)""")
@click.option("-u", "--user", default="", help="USER[:GROUP], names from the image's /etc/passwd (services only).")
@click.option("-w", "--workdir", default="", help="Folder the command runs in (services only).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE",
              help="Set a variable for the command (repeatable; services only).")
@click.option("-T", "--no-tty", "no_tty", is_flag=True,
              help="No terminal, even when this one is one: plain pipes (stdout and stderr apart).")
@index_option
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def command(app: App, user: str, workdir: str, env: tuple[str, ...], no_tty: bool, index: int | None, name: str,
            argv: tuple[str, ...]) -> None:
    """Run a command in a service's container, or in a machine; its exit code becomes vmctl's. On a
    terminal (unless -T) the command gets a terminal too, as with compose.

    Services and machines share one namespace; a service's dedicated microVM is reached with `vmctl ssh`."""
    argv = strip_dashes(argv)
    tty = wants_tty(no_tty)
    project = app.project()
    name = instance(project.env, name, index)
    if project.env.service(name) is not None:
        state = project.envdir.load(str(project.env.file))
        request = workloads.ExecRequest(user=user, workdir=workdir, env=env, tty=tty)
        code = workloads.exec_service(project.env, project.envdir, state, name, argv, request)
        raise click.exceptions.Exit(code)
    if user or workdir or env:
        raise UsageError("`-u`, `-w` and `-e` are for a service's container", hint=f"`{name}` is a machine: use "
                         f"`vmctl exec {name} -- env K=V sh -c 'cd DIR && ...'`")
    with lifecycle.guest(project, name) as g:
        stdin = None if sys.stdin.isatty() or sys.stdin.closed else sys.stdin.buffer
        code = g.interactive(list(argv)) if tty else g.stream(list(argv), sys.stdout.buffer, sys.stderr.buffer,
                                                               stdin=stdin)
    raise click.exceptions.Exit(code)
