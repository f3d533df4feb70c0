from __future__ import annotations

import click

from vmctl import lifecycle, workloads
from vmctl.cli.app import App, pass_app, wait_option


@click.command("start", epilog="""\b
Examples:
  vmctl start                 start every stopped service again
  vmctl start web             only `web`: the same container, its machine must be running""")
@click.argument("services", nargs=-1)
@wait_option
@pass_app
def command(app: App, services: tuple[str, ...], wait_timeout: float) -> None:
    """Start stopped (or exited) services again, from the containers `up` created, and wait until they
    run (or are healthy). A microVM service's machine must be running: `vmctl up` boots it."""
    project = app.project()
    with lifecycle.locked_state(project) as state:
        workloads.start_stopped(project.env, project.envdir, state, services, project.progress, timeout=wait_timeout)
