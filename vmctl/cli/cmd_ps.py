from __future__ import annotations

from dataclasses import asdict

import click

from vmctl import workloads
from vmctl.cli.app import App, pass_app, table


def _ports(row: workloads.ServiceRow) -> str:
    return ", ".join(f"{p.host_ip}:{p.host_port}->{p.container_port}/{p.proto}" for p in row.ports)


def _state(row: workloads.ServiceRow) -> str:
    if row.state == "exited" and row.exit_code is not None:
        return f"exited ({row.exit_code})"
    return row.state


@click.command("ps", epilog="""\b
Examples:
  vmctl ps                    the services that run (or start, or restart)
  vmctl ps -a                 every service: exited, stopped and never started (`absent`) ones too
  vmctl ps web
  vmctl ps -a --json | jq '.services[] | {name, state, ports}'""")
@click.argument("services", nargs=-1)
@click.option("-a", "--all", "every", is_flag=True, help="Also show exited, stopped and never started services.")
@click.option("--json", "as_json", is_flag=True, help='Print JSON: {"services": [...]}.')
@pass_app
def command(app: App, services: tuple[str, ...], every: bool, as_json: bool) -> None:
    """Show the running services (every one with -a): where each runs (machine, isolation), its state and
    its published ports."""
    project = app.project()
    state = project.envdir.load(str(project.env.file))
    rows = workloads.rows(project.env, project.envdir, state, services, every=every)
    if as_json:
        hosts = {name: ms.host for name, ms in state.machines.items()}
        app.print_json({"services": [{**asdict(r), "host": hosts.get(r.machine or "")} for r in rows]})
        return
    headers = ["NAME", "MACHINE", "ISOLATION", "STATE", "PORTS"]
    cells = [[r.name, r.machine or "-", r.isolation, _state(r), _ports(r) or "-"] for r in rows]
    if project.env.hosts:  # the file spreads machines over hosts: say where each service runs
        headers.insert(2, "HOST")
        for r, row in zip(rows, cells, strict=True):
            ms = state.machines.get(r.machine or "")
            row.insert(2, (ms.host if ms else None) or ("local" if r.isolation == "container" else "-"))
    click.echo(table(headers, cells))
