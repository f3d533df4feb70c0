from __future__ import annotations

import click

from vmctl import lifecycle, workloads
from vmctl.cli.app import App, grace_option, pass_app


@click.command("stop", epilog="""\b
Examples:
  vmctl stop                  stop every service's container; the machines keep running
  vmctl stop web              only `web`; `vmctl start web` runs it again
  vmctl stop -t 0 web         SIGKILL at once, without waiting for `stop_signal` to work""")
@click.argument("services", nargs=-1)
@grace_option
@pass_app
def command(app: App, services: tuple[str, ...], grace: float | None) -> None:
    """Stop services' containers (their `stop_signal`, SIGKILL after the grace period) but keep them:
    no restart policy brings them back, `ps -a` shows them exited, `start` runs them again."""
    project = app.project()
    with lifecycle.locked_state(project) as state:
        stopped = workloads.stop_services(project.env, project.envdir, state, services, project.progress, grace=grace)
    if not stopped:
        project.progress.info("stop", "nothing was running")
