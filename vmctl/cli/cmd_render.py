from __future__ import annotations

import click

from vmctl import guest_image, lifecycle, ports, render
from vmctl.accel import cached_report
from vmctl.cli.app import App, pass_app
from vmctl.spec import Accel


def _accel_without_probe(requested: Accel, image: guest_image.GuestImage | None) -> str:
    """What `up` would choose, as far as it is known without booting a probe: `auto` follows this boot's
    cached probe answer (it used to be TCG always, so a KVM host was shown XML that `up` never defines)."""
    if requested is not Accel.AUTO:
        return requested.value
    report = cached_report(image.kernel, image.initrd) if image else None
    if report is None:
        click.echo("note: `accel: auto` not probed yet on this boot: rendered for TCG (`vmctl doctor` probes)",
                   err=True)
        return "tcg"
    return report.choose(requested)


@click.command("render", epilog="""\b
Examples:
  vmctl render                 the domain XML of every machine
  vmctl render web | virt-xml-validate /dev/stdin domain""")
@click.argument("machines", nargs=-1)
@click.option("--accel", type=click.Choice(["kvm", "tcg"]), default=None,
              help="Render for this accelerator (default: each machine's `accel`; `auto` is this boot's "
                   "probe answer if `up` or `doctor` probed already, else TCG).")
@pass_app
def command(app: App, machines: tuple[str, ...], accel: str | None) -> None:
    """Print the libvirt domain XML that `up` would define, without touching libvirt or building images.

    Host ports written as "GUEST" only, and the SSH port, are picked at `up`; here they are examples.
    This is a cold boot's domain: a machine restored from a template gets the same, plus a ttyS1 socket,
    `<genid/>`, SeaBIOS and `-incoming defer` (vmctl/template.py).
    """
    project = app.project()
    for m in project.select(machines):
        image = guest_image.find_guest_image(m.image)
        files = (lifecycle.boot_files(m, image) if image else
                 lifecycle.BootFiles(m.kernel or guest_image.image_dir(m.image) / "vmlinuz",
                                     m.initrd or guest_image.image_dir(m.image) / "initramfs.cpio", None))
        chosen = accel or _accel_without_probe(m.accel, image)
        view = lifecycle.domain_view(project, m, files, chosen, ports.resolve(m.name, m.ports, check=False),
                                     ports.free_port(), net=lifecycle.machine_network(project, m.name))
        click.echo(render.render_domain(view), nl=False)
