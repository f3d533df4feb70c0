from __future__ import annotations

from dataclasses import asdict

import click

from vmctl import workloads
from vmctl.cli.app import App, pass_app, table

SHORT_DIGEST = 19  # "sha256:" + 12 hex digits, as `up` prints it


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f}MB"  # compose's unit


@click.command("images", epilog="""\b
Examples:
  vmctl images
  vmctl images --json | jq -r '.images[] | "\\(.service) \\(.digest)"'""")
@click.argument("services", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help='Print JSON: {"images": [...]}, with full digests.')
@pass_app
def command(app: App, services: tuple[str, ...], as_json: bool) -> None:
    """Each service's image: the reference in the file, the digest it runs from (or is cached as) and the
    size of its root filesystem. Nothing is pulled: `-` means it was never prepared."""
    project = app.project()
    state = project.envdir.load(str(project.env.file))
    rows = workloads.image_rows(project.env, state, services)
    if as_json:
        app.print_json({"images": [asdict(r) for r in rows]})
        return
    cells = [[r.service, r.image, (r.digest or "-")[:SHORT_DIGEST], _size(r.size_bytes)] for r in rows]
    click.echo(table(["SERVICE", "IMAGE", "DIGEST", "SIZE"], cells))
