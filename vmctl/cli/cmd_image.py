from __future__ import annotations

import time

import click

from vmctl import guest_image
from vmctl.cli.app import App, pass_app

KERNELS = {"cloud": "default", "minimal": "minimal"}  # --kernel -> recipe under guest_images/


@click.group("image")
def command() -> None:
    """Guest images: the kernel and initramfs microVMs boot."""


@command.command("build", epilog="""\b
Examples:
  vmctl image build            build (or confirm) the default image
  vmctl image build --force    rebuild even if nothing changed
  vmctl image build --kernel minimal   the image with vmctl's own microVM kernel""")
@click.option("--name", default=None, help="Recipe under guest_images/ (default: `default`).")
@click.option("--kernel", type=click.Choice(sorted(KERNELS)), default=None,
              help="Shorthand for the recipe: `cloud` (Debian's kernel, no compile) or `minimal` (our own).")
@click.option("--force", is_flag=True, help="Rebuild even when the cached image is up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print the built image as JSON.")
@pass_app
def build(app: App, name: str | None, kernel: str | None, force: bool, as_json: bool) -> None:
    """Build or refresh a guest image from Debian packages (cached by the hash of its inputs).

    The `minimal` kernel is compiled from Debian's linux-source on first use (about 10 minutes on 2 cores).
    """
    if name and kernel:
        raise click.UsageError("`--name` and `--kernel` both choose the recipe: give one of them")
    name = name or KERNELS.get(kernel or "cloud", "default")
    progress = app.progress
    start = time.monotonic()
    image = guest_image.build_guest_image(name, force=force, progress=progress.callback(f"image {name}"))
    seconds = time.monotonic() - start
    progress.done(f"image {name}", f"{image.kernel_release} in {seconds:.1f}s")
    data = {"name": image.name, "kernel": str(image.kernel), "initrd": str(image.initrd),
            "kernel_release": image.kernel_release, "digest": image.digest, "directory": str(image.directory),
            "seconds": round(seconds, 3)}
    if as_json:
        app.print_json(data)
    else:
        click.echo(f"{image.name}: {image.kernel_release} ({image.digest[:16]}) at {image.directory}")
