from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app


@click.command("up", epilog="""\b
Examples:
  vmctl up                      boot every machine, start every service, wait until all are ready
  vmctl -f env.yaml up worker   only the machine `worker` (and the services that run in it)
  vmctl up web                  only the service `web` (and its microVM)
  vmctl up --no-wait            return once services are started, without waiting for healthchecks
  vmctl up --timeout 300        allow slow (TCG) boots more time
  vmctl up --no-template        boot every kernel, even where a machine's shape has a template
  vmctl up --build              build the images of services with `build:` again first
  vmctl up --force-recreate web make `web`'s container anew, even though it runs""")
@click.argument("names", nargs=-1)
@click.option("--timeout", type=click.FloatRange(1, 3600), default=lifecycle.DEFAULT_TIMEOUT, show_default=True,
              help="Seconds each machine may take to become ready, and all services to become healthy.")
@click.option("--no-wait", is_flag=True, help="Do not wait for services to be running or healthy.")
@click.option("--no-template", is_flag=True,
              help="Cold-boot every machine instead of restoring a booted template of its shape.")
@click.option("--build", "rebuild", is_flag=True,
              help="Build the images of services with `build:` even when their context is unchanged.")
@click.option("--force-recreate", "recreate", is_flag=True,
              help="Stop and make anew the containers of services that already run (their machines keep running).")
@click.option("-d", "--detach", is_flag=True, help="Accepted for compose's sake: `vmctl up` always returns once "
              "everything runs, and never attaches to the containers' output (see `vmctl logs -f`).")
@pass_app
def command(app: App, names: tuple[str, ...], timeout: float, no_wait: bool, no_template: bool,
            rebuild: bool, recreate: bool, detach: bool) -> None:
    """Boot the machines and start the services; return when every guest answers SSH and every
    service runs (or is healthy, when it has a healthcheck). A failure rolls back what this `up` made."""
    project = app.project()
    lifecycle.up(project, names, timeout=timeout, wait=not no_wait, templates=not no_template, rebuild=rebuild,
                 recreate=recreate)
