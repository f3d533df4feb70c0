"""compose's lifecycle hooks, `post_start` and `pre_stop`: commands run in a service's container, as
`vmctl exec` runs them, right after the container starts and right before it is sent its stop signal.

Plain values and their parser (the spec stage); `workloads` runs them. A `post_start` that fails fails the
start (`up` rolls back, as compose's does); a `pre_stop` that fails is a warning, and the stop goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmctl.compose_values import p_environment, p_user
from vmctl.settings import REQUIRED, Ctx, Setting, p_abs_path, p_argv, p_bool, parse_table, typename
from vmctl.yamlpos import KeyPath

HOOK_SECONDS = 60.0  # a hook that runs longer is ended and counts as failed


@dataclass(frozen=True)
class Hook:
    command: tuple[str, ...]
    user: str = ""  # as the service's `user`: numbers, or names from the image
    working_dir: str = ""
    environment: tuple[tuple[str, str], ...] = ()  # added to the container's


def _p_privileged(value: Any, path: KeyPath, ctx: Ctx) -> bool:
    if p_bool(value, path, ctx):
        ctx.fail(path, "a privileged hook is not supported: hooks run with the container's own capabilities",
                 "remove it; a hook that runs as `user: root` can already chown the container's files")
    return False


HOOK_SETTINGS = (
    Setting("command", p_argv, REQUIRED, "list|string", "the command, run in the container as `vmctl exec` runs it"),
    Setting("user", p_user, None, "USER[:GROUP]", "who runs it (default: the service's `user`)"),
    Setting("working_dir", p_abs_path, None, "path", "the folder it runs in (default: the service's)"),
    Setting("environment", p_environment, (), "mapping|list", "variables added to the container's"),
    Setting("privileged", _p_privileged, False, "bool", "only `false`: hooks run with the container's capabilities"),
)


def p_hooks(value: Any, path: KeyPath, ctx: Ctx) -> tuple[Hook, ...]:
    if not isinstance(value, list):
        ctx.fail(path, f"must be a list of hooks (`- command: ...`), not {typename(value)}")
    hooks = []
    for i, item in enumerate(value):
        v = parse_table(HOOK_SETTINGS, item, (*path, i), ctx)
        hooks.append(Hook(command=v["command"], user=v["user"] or "", working_dir=v["working_dir"] or "",
                          environment=v["environment"]))
    return tuple(hooks)
