from __future__ import annotations

import sys

import click

from vmctl import lifecycle, workloads
from vmctl.cli.app import App, index_option, instance, pass_app
from vmctl.errors import UsageError


@click.command("logs", epilog="""\b
Examples:
  vmctl logs                 every started service's container output, lines prefixed `NAME | `
  vmctl logs web cache       these two services
  vmctl logs -f -n 20 web    the last 20 lines, then follow (Ctrl-C to stop); -f with several follows all
  vmctl logs -t web          each line after the UTC time it was written, to the second
  vmctl logs --index 2 api   only instance api-2 of a service with replicas (without: every instance)
  vmctl logs worker          a machine: the guest's serial console""")
@click.argument("names", nargs=-1)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output.")
@click.option("-n", "--tail", "lines", type=click.IntRange(0), default=None, help="Only the last N lines.")
@click.option("-t", "--timestamps", is_flag=True,
              help="Show the UTC time each line was written (RFC 3339, to the second); services only.")
@index_option
@pass_app
def command(app: App, names: tuple[str, ...], follow: bool, lines: int | None, timestamps: bool,
            index: int | None) -> None:
    """Show services' container output (all started services by default), or a machine's console output."""
    project = app.project()
    env = project.env
    if index is not None:
        if not names:
            raise UsageError("`--index` picks an instance of the services named", hint="`vmctl logs --index 2 SERVICE`")
        names = tuple(instance(env, n, index) for n in names)
    unknown = [n for n in names if env.service(n) is None and env.machine(n) is None]
    if unknown:
        known = sorted({m.name for m in env.machines} | {s.name for s in env.services})
        raise UsageError(f"unknown machine or service `{unknown[0]}`", hint=f"known: {', '.join(known) or 'none'}")
    if len(names) == 1 and env.service(names[0]) is None:
        if timestamps:
            raise UsageError(f"`{names[0]}` is a machine: its console has no timestamps",
                             hint=f"`vmctl logs {names[0]}` without -t")
        _console(app, names[0], follow=follow, lines=lines)
        return
    machines = [n for n in names if env.service(n) is None]
    if machines:
        raise UsageError(f"`{machines[0]}` is a machine: its console is shown on its own",
                         hint=f"`vmctl logs {machines[0]}`")
    state = project.envdir.load(str(env.file))
    workloads.services_logs(env, project.envdir, state, names, sys.stdout.buffer, tail=lines, follow=follow,
                            timestamps=timestamps)


def _console(app: App, name: str, *, follow: bool, lines: int | None) -> None:
    project = app.project()
    ms = project.envdir.load(str(project.env.file)).machines.get(name)
    if ms is not None and ms.host is not None:  # the console is on that host: read it through libvirt
        lifecycle.remote_console(project, ms, sys.stdout.buffer, tail=lines, follow=follow)
        return
    path = project.envdir.machine_dir(name) / "console.log"
    if not path.exists():
        raise UsageError(f"machine `{name}` has no console log yet", hint="start it with `vmctl up`")
    workloads.copy_file(path, sys.stdout.buffer, tail=lines, follow=follow)
