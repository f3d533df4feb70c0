from __future__ import annotations

import click

from vmctl import doctor
from vmctl.cli.app import App, pass_app


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-probe", is_flag=True, help="Do not boot a probe guest under KVM.")
@pass_app
def command(app: App, as_json: bool, no_probe: bool) -> None:
    """Report what this host offers: KVM (by a real probe boot) or TCG, libvirt, QEMU, tools, cgroups."""
    rep = doctor.report(probe=not no_probe)
    if as_json:
        app.print_json(rep)
        return
    kvm = rep["kvm"]
    click.echo(f"accelerator:  {rep['accel_label'].upper()}  ({kvm['reason']})")
    click.echo(f"kvm module:   {kvm['module'] or '-'}   /dev/kvm: {'yes' if kvm['dev_kvm'] else 'no'}")
    if kvm["cpuid_varies_by_cpu"]:
        click.echo("kvm cpuid:    differs per CPU: this host makes libvirt re-probe QEMU (seconds) whenever its "
                   "driver starts on another CPU; vmctl opens libvirt from one CPU so the cache stays valid")
    versions = rep.get("versions", {})
    click.echo(f"libvirt:      {versions.get('libvirt', '?')} (embedded driver {rep['libvirt_embedded']})")
    click.echo(f"qemu:         {versions.get('qemu', '?')}")
    host = rep["host"]
    click.echo(f"host:         {host['cpu']}, {host['cpus']} CPUs, {host['memory_mib']} MiB, kernel {host['kernel']}, "
               f"cgroups {host['cgroups']}")
    hv = host["virtualization"]
    kind = "bare metal" if not hv["nested"] else f"a {hv['hypervisor']} guest" + (
        " with an emulated CPU: guests under KVM here run at emulation speed" if hv["emulated"] else "")
    click.echo(f"host is:      {kind} ({hv['evidence']})")
    ksm = rep["ksm"]
    click.echo("ksm:          " + ("not in this kernel" if not ksm["available"] else
                                   f"on, saving {ksm['saving_mib']} MiB now" if ksm["on"] else
                                   "off (identical guest pages of VMs, a template's clones' most of all, are kept "
                                   "once each when on: echo 1 > /sys/kernel/mm/ksm/run; `python -m bench.density "
                                   "BUDGET --starts template,template+ksm` measures what it saves here)"))
    image = rep["guest_image"]
    click.echo(f"guest image:  {image['kernel_release'] + ' ' + image['digest'][:12] if image else 'not built'}")
    for name, path in rep["tools"].items():
        click.echo(f"  {'✔' if path else '✘'} {name:<20} {path or 'apt-get install ' + doctor.TOOLS[name]}")
