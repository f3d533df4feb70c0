from __future__ import annotations

import time

import click

from vmctl import guest_image
from vmctl.cli.app import App, pass_app
from vmctl.errors import VmctlError
from vmctl.hypervisor import warm_capabilities
from vmctl.progress import Progress

KERNELS = {"cloud": "default", "minimal": "minimal"}  # --kernel -> recipe under guest_images/


def warm_libvirt(progress: Progress) -> None:
    """Have libvirt probe QEMU now, if its capability cache needs it, rather than in the first `up`."""
    progress.working("libvirt", "QEMU capabilities")
    start = time.monotonic()
    try:
        warm_capabilities("warm")
    except VmctlError as e:  # the image is built; `up` will say what is wrong with libvirt
        progress.warn("libvirt", f"could not cache QEMU's capabilities: {e.message}")
        return
    progress.done("libvirt", f"QEMU capabilities cached ({time.monotonic() - start:.1f}s)")


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
    warm_libvirt(progress)
    data = {"name": image.name, "kernel": str(image.kernel), "initrd": str(image.initrd),
            "kernel_release": image.kernel_release, "digest": image.digest, "directory": str(image.directory),
            "seconds": round(seconds, 3)}
    if as_json:
        app.print_json(data)
    else:
        click.echo(f"{image.name}: {image.kernel_release} ({image.digest[:16]}) at {image.directory}")
