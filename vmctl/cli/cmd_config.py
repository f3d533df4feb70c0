from __future__ import annotations

import click
import yaml

from vmctl.cli.app import App, pass_app


@click.command("config", epilog="""\b
Examples:
  vmctl config                              the merged, interpolated model, as YAML
  vmctl -f compose.yaml -f prod.yaml config --json
  vmctl --profile debug config              with the services of profile `debug`""")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@pass_app
def command(app: App, as_json: bool) -> None:
    """Print the resolved model like `docker compose config`: the files merged, variables interpolated,
    `extends` and `include` resolved, `env_file:` read into `environment:`, inactive profiles left out;
    checked against the settings table first (a file `up` would refuse is refused here too). Warnings go
    to stderr."""
    model, env = app.load()
    for warning in env.warnings:
        app.progress.warn("config", warning)
    data = {"name": env.name, **{k: v for k, v in model.data.items() if k != "name"}}
    if as_json:
        app.print_json(data)
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
