from __future__ import annotations

import click

from vmctl import guest_image, lifecycle, ports, render
from vmctl.accel import AccelReport
from vmctl.cli.app import App, pass_app
from vmctl.spec import Accel


@click.command("render", epilog="""\b
Examples:
  vmctl render                 the domain XML of every machine
  vmctl render web | virt-xml-validate /dev/stdin domain""")
@click.argument("machines", nargs=-1)
@click.option("--accel", type=click.Choice(["kvm", "tcg"]), default=None,
              help="Render for this accelerator (default: each machine's `accel`; auto means TCG here).")
@pass_app
def command(app: App, machines: tuple[str, ...], accel: str | None) -> None:
    """Print the libvirt domain XML that `up` would define, without touching libvirt or building images.

    Host ports written as "GUEST" only, and the SSH port, are picked at `up`; here they are examples.
    This is a cold boot's domain: a machine restored from a template gets the same, plus a ttyS1 socket,
    `<genid/>`, SeaBIOS and `-incoming defer` (vmctl/template.py).
    """
    project = app.project()
    no_probe = AccelReport(False, "not probed by `render`", None, None, "")
    for m in project.select(machines):
        image = guest_image.find_guest_image(m.image)
        files = (lifecycle.boot_files(m, image) if image else
                 lifecycle.BootFiles(m.kernel or guest_image.image_dir(m.image) / "vmlinuz",
                                     m.initrd or guest_image.image_dir(m.image) / "initramfs.cpio", None))
        chosen = accel or no_probe.choose(m.accel if m.accel is not Accel.KVM else Accel.TCG)
        if m.accel is Accel.KVM and accel is None:
            chosen = "kvm"
        view = lifecycle.domain_view(project, m, files, chosen, ports.resolve(m.name, m.ports, check=False),
                                     ports.free_port())
        click.echo(render.render_domain(view), nl=False)
