"""`vmctl`: the root command, global options and the one place errors become exit codes."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from pathlib import Path

import click

from vmctl import __version__
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


# Each command lives in vmctl/cli/cmd_NAME.py and is imported only when it runs, so a command pays for its own
# imports, not for compare's report and every other command's. Every test and script calls the CLI, and in the
# nested KVM host one call cost ~10 s of imports (TCG): with the lazy jinja2 and no invoke (vmctl/cli/__init__),
# `vmctl status -h` here went from 0.54 s to 0.43 s (median of 5).
COMMANDS = ("build", "compare", "config", "doctor", "down", "exec", "hosts", "image", "images", "logs", "migrate",
            "port", "ps", "pull", "render", "restart", "run", "ssh", "start", "status", "stop", "up")


class LazyGroup(click.Group):
    """click's documented lazy-loading group: names are known up front, modules load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command = importlib.import_module(f"vmctl.cli.cmd_{cmd_name}").command
        assert isinstance(command, click.Command) and command.name == cmd_name, cmd_name
        return command


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
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
