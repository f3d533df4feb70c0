from __future__ import annotations

import shlex

import click

from vmctl import lifecycle, oneoff
from vmctl.cli.app import App, pass_app, strip_dashes, wants_tty
from vmctl.errors import UsageError


@click.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
               epilog="""\b
Examples:
  vmctl run --rm web -- sh -c 'echo $GREETING'    the service's container once more, with another command
  vmctl run --rm api -- ./manage.py migrate        a task beside a running service: same image, env, volumes
  vmctl run --rm -e DEBUG=1 -w /tmp web -- env     with a variable added, in another folder
  vmctl run --rm --entrypoint 'wget -q -O-' web -- http://cache:8080/   reaches what the service reaches
  vmctl run --rm web -- sh                         a shell on a terminal (when this one is a terminal)
  vmctl run --rm -T db -- psql < dump.sql          its stdin is yours: input ends where the file does""")
@click.option("--rm", "remove", is_flag=True,
              help="Remove the one-off when it ends (always done: vmctl keeps no one-off containers).")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable (repeatable).")
@click.option("-u", "--user", default="", help="USER[:GROUP], names from the image's /etc/passwd.")
@click.option("-w", "--workdir", default="", help="Folder the command runs in.")
@click.option("--entrypoint", default=None, metavar="CMD", help="Replace the image's entrypoint (split like a shell).")
@click.option("-T", "--no-tty", "no_tty", is_flag=True,
              help="No terminal, even when this one is one: plain pipes (stdout and stderr apart).")
@click.argument("service")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@pass_app
def command(app: App, remove: bool, env: tuple[str, ...], user: str, workdir: str, entrypoint: str | None,
            no_tty: bool, service: str, argv: tuple[str, ...]) -> None:
    """Run a one-off container of a service, print its output, exit with its exit code.

    It is the service's container once more (image, environment, volumes, user, limits), with CMD as its
    command, no published ports and no restart, where the service runs: in its microVM, or in its network
    namespace for a host container (in its place on the environment network when it is not running), so
    it finds the other services by name. A service that was never started gets its place first, as
    compose's `run` does: its machine, the network and what it depends on come up (and stay up for
    `vmctl down`), the service itself does not. It runs attached: its stdin is yours, and on a terminal
    (unless -T) it gets a terminal too. The one-off is removed when it ends."""
    project = app.project()
    if project.env.service(service) is None:
        raise UsageError(f"`{service}` is not a service of {project.env.file}",
                         hint=f"services: {', '.join(s.name for s in project.env.services) or 'none'}")
    try:
        split = tuple(shlex.split(entrypoint)) if entrypoint is not None else None
    except ValueError as e:
        raise UsageError(f"`--entrypoint {entrypoint}`: {e}") from None
    tty = wants_tty(no_tty)
    opts = oneoff.OneOff(command=strip_dashes(argv), entrypoint=split, env=env, user=user, workdir=workdir, tty=tty)
    image = lifecycle.up_for_one_off(project, service)
    state = project.envdir.load(str(project.env.file))
    code = oneoff.run(project.env, project.envdir, state, service, opts, image=image)
    raise click.exceptions.Exit(code)
