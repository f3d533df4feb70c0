"""The machinery of the settings tables: a parsing context, `Setting` rows with a `Support` mark, the
table parser, and the value parsers that do not depend on what vmctl builds from them.

Every parser takes (value, key path, context) and returns a typed value or fails through `ctx.fail`,
which names the file, line and key (and the variables of an interpolated value).
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from vmctl import cmdline, compose_keys
from vmctl.errors import SpecError
from vmctl.load import Model
from vmctl.paths import GUEST_IMAGES_DIR
from vmctl.yamlpos import KeyPath

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
NAME_RULE = "lowercase letters, digits and `-`, 1-32 characters, starting and ending with a letter or digit"


class Ctx:
    def __init__(self, model: Model) -> None:
        self.doc = model
        self.base_dir = model.project_dir
        self.warnings: list[str] = list(model.warnings)

    def fail(self, path: KeyPath, message: str, hint: str | None = None) -> NoReturn:
        raise SpecError(message, hint=hint, where=self.doc.where(path))

    def warn(self, path: KeyPath, message: str) -> None:
        self.warnings.append(f"{self.doc.where(path)}: {message}")


Parser = Callable[[Any, KeyPath, Ctx], Any]
REQUIRED: Any = object()


class Support(StrEnum):
    """What vmctl does with a key it knows: honours it, ignores it with a warning (only where that cannot
    change what the program does), or refuses it with the reason and a hint."""

    HONOURED = "honoured"
    IGNORED = "ignored"
    REFUSED = "refused"

    def apply(self, setting: Setting, value: Any, path: KeyPath, ctx: Ctx) -> Any:
        if self is Support.REFUSED:
            ctx.fail(path, f"`{setting.key}` is not supported: {setting.help}", setting.hint or "remove it")
        if self is Support.IGNORED:
            ctx.warn(path, f"`{setting.key}` is ignored: {setting.help}")
            return setting.default
        return setting.parse(value, path, ctx)


@dataclass(frozen=True)
class Setting:
    key: str
    parse: Parser
    default: Any
    kind: str  # what the README shows as the value type
    help: str  # what it does; for an ignored or refused key, why it is not honoured
    shown: str | None = None  # how the README shows the default, when `str(default)` would mislead
    support: Support = Support.HONOURED
    hint: str = ""  # what to do instead of a refused key


def unsupported(rows: Sequence[compose_keys.Unsupported]) -> tuple[Setting, ...]:
    """The compose keys vmctl knows but does not honour, as rows of a settings table."""
    return tuple(Setting(u.key, lambda v, p, c: None, None, u.kind, u.reason, hint=u.hint,
                         support=Support.IGNORED if u.ignored else Support.REFUSED) for u in rows)


def parse_table(table: Sequence[Setting], value: Any, path: KeyPath, ctx: Ctx,
                defaults: Mapping[str, Any] | None = None, *, extensible: bool = False) -> dict[str, Any]:
    """Parse a mapping against `table`: unknown keys are errors with a did-you-mean hint; with
    `extensible`, compose's `x-` extension keys are accepted and ignored."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a mapping of settings, not {typename(value)}",
                 f"write `key: value` lines; known keys: {', '.join(s.key for s in table)}")
    known = {s.key: s for s in table}
    for key in value:
        if key not in known and not (extensible and str(key).startswith("x-")):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(sorted(known))}"
            ctx.fail((*path, key), f"unknown key `{key}`", hint)
    out: dict[str, Any] = {}
    for s in table:
        if s.key in value:
            try:
                out[s.key] = s.support.apply(s, value[s.key], (*path, s.key), ctx)
            except SpecError as e:
                if e.hint is None:  # the table says what the setting takes: that is the fix
                    e.hint = f"`{s.key}` takes {s.kind}: {s.help}"
                raise
        elif defaults is not None and s.key in defaults:
            out[s.key] = defaults[s.key]
        elif s.default is REQUIRED:
            ctx.fail(path, f"missing required key `{s.key}` ({s.help})", f"add `{s.key}:` ({s.kind})")
        else:
            out[s.key] = s.default
    return out


def parse_named_tables(table: Sequence[Setting], value: Any, path: KeyPath, ctx: Ctx, what: str,
                       parse_name: Parser) -> dict[str, dict[str, Any]]:
    """A top-level mapping of named entries (`volumes:`, `secrets:`...): each name checked, each entry
    parsed against `table` (an empty entry, `data:`, takes the defaults; `x-` keys are allowed)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        ctx.fail(path, f"`{what}` must be a mapping from name to settings, not {typename(value)}")
    out = {}
    for key, raw in value.items():
        parse_name(key, (*path, key), ctx)
        out[key] = parse_table(table, raw, (*path, key), ctx, extensible=True)
    return out


def typename(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "empty"}.get(type(value), type(value).__name__)


def did_you_mean(word: str, choices: Any, what: str) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"did you mean `{close[0]}`?" if close else f"declared {what}: {', '.join(sorted(choices)) or 'none'}"


# ---------------------------------------------------------------------------------------------------
# Value parsers


def p_name(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        ctx.fail(path, f"invalid name {value!r}", f"names use {NAME_RULE}")
    return value


def p_image(value: Any, path: KeyPath, ctx: Ctx) -> str:
    name = p_name(value, path, ctx)
    if not (GUEST_IMAGES_DIR / name / "recipe.yaml").is_file():
        recipes = sorted(p.name for p in GUEST_IMAGES_DIR.iterdir() if (p / "recipe.yaml").is_file()) \
            if GUEST_IMAGES_DIR.is_dir() else []
        ctx.fail(path, f"no guest image recipe `{name}` (looked for `{GUEST_IMAGES_DIR / name / 'recipe.yaml'}`)",
                 did_you_mean(name, recipes, "recipes"))
    return name


def p_str(value: Any, path: KeyPath, ctx: Ctx) -> str:
    if not isinstance(value, str) or not value:
        ctx.fail(path, f"must be a non-empty string, not {typename(value)}")
    if any(ord(c) < 0x20 for c in value):
        ctx.fail(path, "must not contain control characters (newlines, tabs, ...)")
    return value


def p_bool(value: Any, path: KeyPath, ctx: Ctx) -> bool:
    if not isinstance(value, bool):
        ctx.fail(path, f"must be true or false, not {value!r}")
    return value


def p_int(lo: int, hi: int) -> Parser:
    def parse(value: Any, path: KeyPath, ctx: Ctx) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            ctx.fail(path, f"must be a whole number from {lo} to {hi}, not {value!r}")
        return value

    return parse


_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS_MIB = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "": 1}


def p_size_mib(lo: int, hi: int) -> Parser:
    def parse(value: Any, path: KeyPath, ctx: Ctx) -> int:
        m = _SIZE.match(str(value).strip()) if isinstance(value, str | int) and not isinstance(value, bool) else None
        mib = int(int(m.group(1)) * _UNITS_MIB[m.group(2).upper()]) if m else -1
        if not lo <= mib <= hi:
            ctx.fail(path, f"invalid size {value!r}",
                     f"write a size like `256M` or `1G` (bare numbers are MiB), from {lo}M to {hi}M")
        return mib

    return parse


_DURATION = re.compile(r"^(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def p_duration(value: Any, path: KeyPath, ctx: Ctx) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION.match(value) if isinstance(value, str) and value else None
    if not m or not any(m.groups()):
        ctx.fail(path, f"invalid duration {value!r}", "write durations like `500ms`, `5s` or `1m30s`")
    minutes, seconds, millis = m.groups()
    return int(minutes or 0) * 60 + float(seconds or 0) + int(millis or 0) / 1000


def p_enum(enum: type[StrEnum]) -> Parser:
    def parse(value: Any, path: KeyPath, ctx: Ctx) -> StrEnum:
        if value is False and "no" in enum._value2member_map_:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        try:
            return enum(value)
        except ValueError:
            ctx.fail(path, f"invalid value {value!r}", f"use one of: {', '.join(e.value for e in enum)}")

    return parse


def p_only(choices: str | tuple[str, ...], what: str, why: str) -> Parser:
    """A compose setting with the value(s) vmctl honours by what it always does (`driver: bridge`,
    `ipc: private`): anything else is refused, saying why."""
    allowed = (choices,) if isinstance(choices, str) else choices

    def parse(value: Any, path: KeyPath, ctx: Ctx) -> str:
        if value not in allowed:
            ctx.fail(path, f"{what} {value!r} is not supported",
                     f"{why}: remove `{path[-1]}` or write {' or '.join(f'`{c}`' for c in allowed)}")
        return str(value)

    return parse


def p_existing(kind: str, exists: Callable[[Path], bool]) -> Parser:
    """A path relative to the environment file's folder that must exist as a `kind` (file, folder)."""
    def parse(value: Any, path: KeyPath, ctx: Ctx) -> Path:
        text = p_str(value, path, ctx)
        resolved = (ctx.base_dir / Path(text).expanduser()).resolve()
        if not exists(resolved):
            ctx.fail(path, f"{kind} `{text}` does not exist (looked for `{resolved}`)",
                     "paths are relative to the environment file's folder")
        return resolved

    return parse


p_file = p_existing("file", Path.is_file)
p_dir = p_existing("folder", Path.is_dir)


_URI = re.compile(r"^[a-z][a-z0-9+]*:(//[^\s]*)?$")


def p_uri(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = p_str(value, path, ctx)
    if not _URI.match(text):
        ctx.fail(path, f"invalid libvirt URI {text!r}", "use e.g. `qemu:///system` or `qemu+ssh://host/system`")
    return text


def p_argv(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    """A command: a list of strings (taken as is) or a string (split like a shell would, never run by one)."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            ctx.fail(path, f"cannot split command {value!r}: {e}", "use a list of strings instead")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        ctx.fail(path, f"must be a string or a list of strings, not {typename(value)}")
    if not argv:
        ctx.fail(path, "must not be empty")
    return tuple(argv)


def p_cmdline(value: Any, path: KeyPath, ctx: Ctx) -> tuple[str, ...]:
    if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        ctx.fail(path, f"must be a string or a list of strings, not {typename(value)}")
    try:
        return cmdline.user_tokens(value)
    except cmdline.CmdlineError as e:
        ctx.fail(path, e.message, e.hint)


def p_abs_path(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = p_str(value, path, ctx)
    if not text.startswith("/") or "/../" in f"{text}/":
        ctx.fail(path, f"{text!r} must be an absolute path without `..`")
    return text
