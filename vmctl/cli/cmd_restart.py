from __future__ import annotations

import click

from vmctl import lifecycle, workloads
from vmctl.cli.app import App, grace_option, pass_app, wait_option
from vmctl.spec import with_restart_dependents


@click.command("restart", epilog="""\b
Examples:
  vmctl restart               stop, then start every service; the machines keep running
  vmctl restart -t 2 web      `web` only, SIGKILL 2 s after its `stop_signal`""")
@click.argument("services", nargs=-1)
@grace_option
@wait_option
@pass_app
def command(app: App, services: tuple[str, ...], grace: float | None, wait_timeout: float) -> None:
    """Stop services (as `stop`), then start them again (as `start`), stopped ones included; with them,
    the services that depend on one of them with `restart: true`."""
    project = app.project()
    services = with_restart_dependents(project.env, services) if services else ()
    with lifecycle.locked_state(project) as state:
        workloads.stop_services(project.env, project.envdir, state, services, project.progress, grace=grace)
        workloads.start_stopped(project.env, project.envdir, state, services, project.progress, timeout=wait_timeout)
