from __future__ import annotations

import time

import click

from vmctl import guest_image, host_files, template, template_ahead
from vmctl.cli.app import App, pass_app, table
from vmctl.errors import UsageError, VmctlError
from vmctl.hypervisor import Hypervisor, warm_capabilities
from vmctl.progress import Progress

WARM_ROOT = "warm"  # the embedded root `image build` opens (one per process): capabilities, then templates
KERNELS = {"cloud": "default", "minimal": "minimal"}  # --kernel -> recipe under guest_images/


def warm_libvirt(progress: Progress) -> None:
    """Have libvirt probe QEMU now, if its capability cache needs it, rather than in the first `up`."""
    progress.working("libvirt", "QEMU capabilities")
    start = time.monotonic()
    try:
        warm_capabilities(WARM_ROOT)
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
  vmctl image build --kernel minimal   the image with vmctl's own microVM kernel
  vmctl image build --template the image, and templates for a machine and a service VM of it""")
@click.option("--name", default=None, help="Recipe under guest_images/ (default: `default`).")
@click.option("--kernel", type=click.Choice(sorted(KERNELS)), default=None,
              help="Shorthand for the recipe: `cloud` (Debian's kernel, no compile) or `minimal` (our own).")
@click.option("--force", is_flag=True, help="Rebuild even when the cached image is up to date.")
@click.option("--template", "templates", is_flag=True,
              help="Also boot and save the templates `up` restores machines of this image from.")
@click.option("--json", "as_json", is_flag=True, help="Print the built image as JSON.")
@pass_app
def build(app: App, name: str | None, kernel: str | None, force: bool, templates: bool, as_json: bool) -> None:
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
    built = template_ahead.build(image, progress, WARM_ROOT) if templates else []
    data = {"name": image.name, "kernel": str(image.kernel), "initrd": str(image.initrd),
            "kernel_release": image.kernel_release, "digest": image.digest, "directory": str(image.directory),
            "seconds": round(seconds, 3), "templates": [t.name for t in built]}
    if as_json:
        app.print_json(data)
    else:
        click.echo(f"{image.name}: {image.kernel_release} ({image.digest[:16]}) at {image.directory}")
        for t in built:
            click.echo(f"template {t.name}: {t.size / 2**20:.0f} MiB at {t.directory}")


@command.command("ls", epilog="""\b
Examples:
  vmctl image ls
  vmctl image ls --json | jq '.templates[] | {name, size}'""")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {images: [...], templates: [...]}.")
@pass_app
def ls(app: App, as_json: bool) -> None:
    """List the cached guest images and the templates made from them, with their sizes."""
    images, templates = template_ahead.images(), template.listing()
    if as_json:
        app.print_json({"images": images, "templates": templates})
        return
    click.echo(table(["IMAGE", "KERNEL", "DIGEST", "SIZE"],
                     [[i["name"], i["kernel_release"], i["digest"][:16], _mib(i["size"])] for i in images]))
    click.echo()
    click.echo(table(["TEMPLATE", "IMAGE", "MEMORY", "VCPUS", "ACCEL", "NICS", "IMAGE DISKS", "SIZE"],
                     [[t["name"], t["image"], f"{t['shape']['memory_mib']}M", str(t["shape"]["vcpus"]),
                       t["shape"]["accel"], str(t["shape"]["nics"]), str(t["shape"]["image_disks"]), _mib(t["size"])]
                      for t in templates]))


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


@command.command("prune", epilog="""\b
Examples:
  vmctl image prune --host h1     empty vmctl's pool on host `h1` of what no domain there uses""")
@click.option("--host", "host_name", required=True, help="A host of the file's `hosts:`.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
@pass_app
def prune(app: App, host_name: str, as_json: bool) -> None:
    """Remove the kernels, initramfs and image disks `up` sent to a host, except what a domain there uses."""
    env = app.environment()
    host = env.host(host_name)
    if host is None:
        known = ", ".join(h.name for h in env.hosts) or "none"
        raise UsageError(f"unknown host `{host_name}` in {env.file}", hint=f"hosts: {known}")
    freed: list[tuple[str, int]] = []
    with Hypervisor(host.connection_uri) as hv:
        host_files.prune(hv.conn, lambda name, size: freed.append((name, size)))
    if as_json:
        app.print_json({"host": host.name, "removed": [{"volume": n, "bytes": s} for n, s in freed]})
        return
    for name, size in freed:
        click.echo(f"{name}\t{size / 2**20:.1f} MiB")
    click.echo(f"host `{host.name}`: removed {len(freed)} volumes, {sum(s for _, s in freed) / 2**20:.1f} MiB",
               err=True)
