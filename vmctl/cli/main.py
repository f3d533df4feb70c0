"""`vmctl`: the root command, global options and the one place errors become exit codes."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import click

from vmctl import __version__
from vmctl.cli import (
    cmd_build,
    cmd_compare,
    cmd_config,
    cmd_doctor,
    cmd_down,
    cmd_exec,
    cmd_hosts,
    cmd_image,
    cmd_images,
    cmd_logs,
    cmd_migrate,
    cmd_port,
    cmd_ps,
    cmd_pull,
    cmd_render,
    cmd_restart,
    cmd_run,
    cmd_ssh,
    cmd_start,
    cmd_status,
    cmd_stop,
    cmd_up,
)
from vmctl.cli.app import App
from vmctl.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, VmctlError

EPILOG = """\b
Examples:
  vmctl -f examples/quickstart.yaml up          boot the machines, wait until SSH answers
  vmctl pull                                    pull the services' images from their registries
  vmctl -f examples/quickstart.yaml status      one line per machine (--json for scripts)
  vmctl -f examples/quickstart.yaml ps          one line per running service (-a: every one, --json)
  vmctl stop web && vmctl start web             stop a service's container, keep it, run it again
  vmctl exec web -- cat /etc/hostname           run a command in a service's container
  vmctl exec worker -- uname -r                 run a command in a guest
  vmctl down                                    remove everything the environment created

Exit codes: 0 ok, 1 runtime failure, 2 usage error (bad file, flag or name), 130 interrupted.
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-f", "--file", "files", type=click.Path(path_type=Path), multiple=True,
              help="Environment file; several are merged by compose's rules (default: compose.yaml, compose.yml, "
                   "docker-compose.yaml, docker-compose.yml, then vmctl.yaml).")
@click.option("-p", "--project-name", help="Environment name (default: COMPOSE_PROJECT_NAME, `name` in the file, "
                                           "else its folder).")
@click.option("--profile", "profiles", multiple=True, help="Activate services of this profile (repeatable).")
@click.option("--env-file", "env_files", type=click.Path(path_type=Path), multiple=True,
              help="Variables for interpolation instead of the project's .env (repeatable; later files win).")
@click.option("-c", "--connect", metavar="URI", help="libvirt URI (default: an embedded driver, no daemon).")
@click.option("--progress", type=click.Choice(["auto", "plain", "json", "quiet"]), default="auto",
              help="How progress is shown on stderr.")
@click.option("--debug", is_flag=True, help="Log every command vmctl runs, and show tracebacks.")
@click.version_option(__version__, prog_name="vmctl")
@click.pass_context
def cli(ctx: click.Context, files: tuple[Path, ...], project_name: str | None, profiles: tuple[str, ...],
        env_files: tuple[Path, ...], connect: str | None, progress: str, debug: bool) -> None:
    """Run containers inside real microVMs (libvirt + QEMU/KVM, TCG where KVM cannot run the guest)."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")
    ctx.obj = App(files=files, project_name=project_name, profiles=profiles, env_files=env_files, connect=connect,
                  progress_mode=progress, debug=debug)


for module in (cmd_up, cmd_down, cmd_stop, cmd_start, cmd_restart, cmd_pull, cmd_build, cmd_status, cmd_ps, cmd_port,
               cmd_images, cmd_exec, cmd_ssh, cmd_logs, cmd_render, cmd_config, cmd_doctor, cmd_image, cmd_hosts,
               cmd_migrate, cmd_run):
    cli.add_command(module.command)
cli.add_command(cmd_compare.command)


def main() -> None:
    debug = "--debug" in sys.argv
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except VmctlError as e:
        click.echo(f"error: {e.render()}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: what this command had started was rolled back", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(EXIT_RUNTIME)
    except Exception as e:  # a bug: say so plainly, trace only on request
        if debug:
            traceback.print_exc()
        click.echo(f"internal error: {type(e).__name__}: {e} (run with --debug for a traceback)", err=True)
        sys.exit(EXIT_RUNTIME)
    sys.exit(code if isinstance(code, int) else 0)
