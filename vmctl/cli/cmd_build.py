from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app


@click.command("build", epilog="""\b
Examples:
  vmctl build                   build every service that has `build:` (podman, else docker)
  vmctl build web               only `web`'s image
  vmctl build --no-cache web    without the builder's layer cache""")
@click.argument("services", nargs=-1)
@click.option("--no-cache", is_flag=True, help="Build without the builder's layer cache.")
@pass_app
def command(app: App, services: tuple[str, ...], no_cache: bool) -> None:
    """Build the images of services with `build:` and keep them in vmctl's cache, as `docker compose
    build` does; `up` builds only what is not built yet (or everything, with `up --build`)."""
    project = app.project()
    if not lifecycle.build(project, services, no_cache=no_cache):
        project.progress.info("build", "no service has `build:`")
