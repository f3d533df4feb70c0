from __future__ import annotations

from dataclasses import asdict

import click

from vmctl import lifecycle
from vmctl.cli.app import App, pass_app, table


def _accel(row: lifecycle.MachineStatus) -> str:
    """`kvm*` marks KVM nested in a host whose CPU is emulated (the note below the table says what it means)."""
    return (row.accel or "-") + ("*" if row.accel == "kvm" and row.host_emulated else "")


def _ports(row: lifecycle.MachineStatus) -> str:
    return ", ".join(f"{p['host_ip']}:{p['host_port']}->{p['guest_port']}/{p['proto']}" for p in row.ports)


@click.command("status", epilog="""\b
Examples:
  vmctl status
  vmctl status --json | jq '.machines[] | {name, state, boot_seconds}'""")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {environment, machines: [...]}.")
@pass_app
def command(app: App, as_json: bool) -> None:
    """Show every declared machine: state, accelerator, SSH port, forwarded ports, measured boot time."""
    project = app.project()
    rows = lifecycle.status(project)
    if as_json:
        app.print_json({"environment": project.env.name, "file": str(project.env.file),
                        "machines": [asdict(r) for r in rows]})
        return
    click.echo(table(
        ["NAME", "STATE", "ACCEL", "VCPUS", "MEMORY", "SSH", "PORTS", "BOOT"],
        [[r.name, r.state, _accel(r), str(r.vcpus), f"{r.memory_mib}M",
          f"127.0.0.1:{r.ssh['port']}" if r.ssh else "-", _ports(r) or "-",
          f"{r.boot_seconds:.2f}s" if r.boot_seconds is not None else "-"] for r in rows]))
    accels = {r.accel for r in rows if r.accel}
    if "tcg" in accels:
        click.echo("note: TCG is software emulation; KVM hosts boot and run much faster.", err=True)
    nested = next((r.accel_label for r in rows if r.accel == "kvm" and r.host_emulated), None)
    if nested:
        click.echo(f"note: kvm* = {nested}: this host's own CPU is emulated.", err=True)
