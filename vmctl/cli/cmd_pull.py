from __future__ import annotations

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app


@click.command("pull", epilog="""\b
Examples:
  vmctl pull                    pull every service's image (each registry is asked for its current digest)
  vmctl pull web cache          only these services' images
  vmctl -f env.yaml pull        then `up` finds them cached, with `pull_policy: never` too""")
@click.argument("services", nargs=-1)
@click.option("-q", "--quiet", is_flag=True, help="Show no progress (errors only).")
@pass_app
def command(app: App, services: tuple[str, ...], quiet: bool) -> None:
    """Pull the services' images into vmctl's cache and prepare them (unpacked, ext4 disk), as
    `docker compose pull` does; `pull_policy: never` services are skipped. Archives and local engine
    images are prepared in place."""
    if quiet:
        app.progress_mode = "quiet"
    project = app.project()
    if not lifecycle.pull(project, services) and not quiet:
        project.progress.info("pull", "no image to pull")
