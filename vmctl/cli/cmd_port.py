from __future__ import annotations

import click

from vmctl import workloads
from vmctl.cli.app import App, index_option, instance, pass_app


@click.command("port", epilog="""\b
Examples:
  vmctl port web 8080                     prints 127.0.0.1:32768
  vmctl port --protocol udp dns 53
  vmctl port --index 2 api 8080            the second instance of a service with replicas
  curl "http://$(vmctl port web 8080)/\"""")
@click.argument("service")
@click.argument("private_port", type=click.IntRange(1, 65535))
@click.option("--protocol", type=click.Choice(["tcp", "udp"]), default="tcp", show_default=True)
@index_option
@pass_app
def command(app: App, service: str, private_port: int, protocol: str, index: int | None) -> None:
    """Print the host address a service's port is published on, as HOST_IP:HOST_PORT (exit 1: not published)."""
    project = app.project()
    state = project.envdir.load(str(project.env.file))
    found = workloads.published_port(project.env, state, instance(project.env, service, index), private_port,
                                     protocol)
    click.echo(f"{found.host_ip}:{found.host_port}")
