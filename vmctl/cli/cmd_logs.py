from __future__ import annotations

import sys

import click

from vmctl import lifecycle, workloads
from vmctl.cli.app import App, pass_app
from vmctl.errors import UsageError


@click.command("logs", epilog="""\b
Examples:
  vmctl logs web             the service's container output, lines prefixed `web | `
  vmctl logs -f -n 20 web    the last 20 lines, then follow (Ctrl-C to stop)
  vmctl logs worker          a machine: the guest's serial console""")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("-n", "--tail", "lines", type=click.IntRange(0), default=None, help="Only the last N lines.")
@pass_app
def command(app: App, name: str, follow: bool, lines: int | None) -> None:
    """Show a service's container output, or a machine's console output."""
    project = app.project()
    if project.env.service(name) is not None:
        state = project.envdir.load(str(project.env.file))
        workloads.service_logs(project.env, project.envdir, state, name, sys.stdout.buffer, tail=lines,
                               follow=follow)
        return
    if project.env.machine(name) is None:
        known = sorted({m.name for m in project.env.machines} | {s.name for s in project.env.services})
        raise UsageError(f"unknown machine or service `{name}`", hint=f"known: {', '.join(known) or 'none'}")
    ms = project.envdir.load(str(project.env.file)).machines.get(name)
    if ms is not None and ms.host is not None:  # the console is on that host: read it through libvirt
        lifecycle.remote_console(project, ms, sys.stdout.buffer, tail=lines, follow=follow)
        return
    path = project.envdir.machine_dir(name) / "console.log"
    if not path.exists():
        raise UsageError(f"machine `{name}` has no console log yet", hint="start it with `vmctl up`")
    workloads.copy_file(path, sys.stdout.buffer, tail=lines, follow=follow)
