"""The object every command gets through `ctx.obj`: options, the loaded environment, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from vmctl.errors import UsageError, VmctlError
from vmctl.lifecycle import DEFAULT_TIMEOUT, Project
from vmctl.load import Model, load_project
from vmctl.progress import Progress, json_renderer, plain_renderer, quiet_renderer
from vmctl.spec import Environment, environment_from


def wants_tty(no_tty: bool) -> bool:
    """compose's rule for `run` and `exec`: a terminal for the command when ours is one, unless `-T`."""
    return not no_tty and sys.stdin.isatty() and sys.stdout.isatty()


@dataclass
class App:
    files: tuple[Path, ...] = ()  # empty: compose's default names (`vmctl.load.DEFAULT_FILES`)
    project_name: str | None = None
    profiles: tuple[str, ...] = ()
    env_files: tuple[Path, ...] = ()  # `--env-file`: instead of the project's `.env`
    connect: str | None = None
    progress_mode: str = "auto"
    debug: bool = False
    _project: Project | None = field(default=None, repr=False)

    @property
    def progress(self) -> Progress:
        mode = self.progress_mode
        renderer = {"json": json_renderer(sys.stderr), "quiet": quiet_renderer}.get(mode, plain_renderer(sys.stderr))
        return Progress(renderer)

    def environment(self) -> Environment:
        return self.project().env

    def project(self) -> Project:
        if self._project is None:
            _, env = self.load()
            progress = self.progress
            for warning in env.warnings:
                progress.warn("config", warning)
            self._project = Project(env=env, progress=progress, connect=self.connect)
        return self._project

    def load(self) -> tuple[Model, Environment]:
        """The resolved files (what `config` prints) and the environment checked against the table."""
        model = load_project(self.files, project_name=self.project_name, profiles=self.profiles,
                             env_files=self.env_files)
        return model, environment_from(model)

    # -- output -------------------------------------------------------------------------------------

    @staticmethod
    def print_json(data: Any) -> None:
        click.echo(json.dumps(data, indent=2, default=str))

    @staticmethod
    def abort(message: str, code: int = 1, hint: str | None = None) -> NoReturn:
        raise VmctlError(message, hint=hint) if code == 1 else _coded(message, code, hint)


def _coded(message: str, code: int, hint: str | None) -> VmctlError:
    err = VmctlError(message, hint=hint)
    err.exit_code = code
    return err


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table, the way `docker compose ps` prints one."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def strip_dashes(argv: tuple[str, ...]) -> tuple[str, ...]:
    """`vmctl exec NAME -- CMD`: click passes the `--` through when unknown options are allowed."""
    return argv[1:] if argv[:1] == ("--",) else argv


def grace_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """compose's `-t/--timeout` of `stop` and `restart`: seconds from the stop signal to SIGKILL."""
    return click.option("-t", "--timeout", "grace", type=click.FloatRange(0, 3600), default=None, metavar="SECONDS",
                        help="Seconds between each service's `stop_signal` and SIGKILL (default: its "
                             "`stop_grace_period`, else 5 in a microVM, 10 on the host).")(f)


def wait_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--wait-timeout", type=click.FloatRange(1, 3600), default=DEFAULT_TIMEOUT, show_default=True,
                        help="Seconds the services may take to run again (or be healthy, with a healthcheck).")(f)


def index_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """compose's `--index N` of `exec`, `port` and `logs`: which instance of a replicated service."""
    return click.option("--index", type=click.IntRange(min=1), default=None, metavar="N",
                        help="The Nth instance of a service with replicas (its own name is NAME-N; default 1).")(f)


def instance(env: Environment, name: str, index: int | None) -> str:
    """The name `--index` picks: `NAME-N` of a replicated service; 1 is the only index of any other."""
    if index is None:
        return name
    found = env.instances(name)
    if not found:
        raise UsageError(f"`--index {index}`: `{name}` is not a service of {env.file}",
                         hint=f"services: {', '.join(s.replica_of or s.name for s in env.services) or 'none'}")
    if index > len(found):
        raise UsageError(f"`--index {index}`: service `{name}` has {len(found)} instance(s)",
                         hint=f"use 1..{len(found)}, or the instance's own name: "
                              f"{', '.join(s.name for s in found)}")
    return found[index - 1].name


pass_app = click.make_pass_decorator(App)
