from __future__ import annotations

from dataclasses import asdict

import click

from vmctl import placement
from vmctl.cli.app import App, pass_app, table


@click.command("hosts", epilog="""\b
Examples:
  vmctl hosts
  vmctl hosts --json | jq '.hosts[] | {name, answers, free_mib}'""")
@click.option("--json", "as_json", is_flag=True, help='Print JSON: {"hosts": [...]}.')
@pass_app
def command(app: App, as_json: bool) -> None:
    """Show each of the file's `hosts:`: whether it answers, its CPUs and memory, and what runs there."""
    project = app.project()
    if project.envdir.state_file.exists():
        project.remember(project.envdir.load(str(project.env.file)))
    ours = {m.name: project.placed.get(m.name, m.host) for m in project.env.machines}
    rows = [{**asdict(load), "machines": sorted(n for n, h in ours.items() if h == load.name)}
            for load in placement.survey(project.env.hosts)]
    if as_json:
        app.print_json({"environment": project.env.name, "hosts": rows})
        return
    if not rows:
        click.echo("the file declares no `hosts:`: machines run on this machine", err=True)
        return
    click.echo(table(
        ["NAME", "URI", "ANSWERS", "CPUS", "MEMORY", "FREE", "RUNNING", "MACHINES"],
        [[r["name"], r["uri"], "yes" if r["answers"] else f"no: {r['error']}",
          str(r["cpus"]) if r["answers"] else "-", f"{r['memory_mib']}M" if r["answers"] else "-",
          f"{r['free_mib']}M" if r["answers"] else "-", str(len(r["running"])) if r["answers"] else "-",
          ", ".join(r["machines"]) or "-"] for r in rows]))
