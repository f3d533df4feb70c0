"""compose's `secrets` and `configs`: single files a service sees at a path of its choice.

Top level, each is a file of this machine (`file:`), a variable of the project's environment
(`environment:`, read when the file is loaded: the shell's environment, then `.env`), or, for a config,
the text itself (`content:`). A service lists the ones it uses, by name (secrets appear at
`/run/secrets/NAME`, configs at `/NAME`) or as `{source, target, uid, gid, mode}`.

How they reach the container: their bytes travel with the container's bundle, as its /etc/hosts does
(`ContainerRequest.files`), into the folder of files vmctl writes for it, and `config.json` binds each one
read-only at its target. On the host that folder is the container's own (vmctl's state, 0700); in a guest
it is the service's folder under /run/vmctl (a tmpfs), reached over the SSH connection: a secret is never
written to a disk of the guest, and never into vmctl's state, a domain's XML or a kernel command line.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl.settings import (
    REQUIRED,
    Ctx,
    Setting,
    Support,
    did_you_mean,
    p_str,
    parse_named_tables,
    parse_table,
    typename,
)
from vmctl.yamlpos import KeyPath

KINDS = {"secrets": "/run/secrets", "configs": "/"}  # top-level key -> where a bare name appears
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # compose's names (`db_password`): also a file's name


def p_key(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = p_str(value, path, ctx)
    if not KEY.match(text) or text in (".", ".."):
        ctx.fail(path, f"invalid name {text!r}", "letters, digits, `_`, `.` and `-`, starting with a letter or digit")
    return text


@dataclass(frozen=True)
class FileSource:
    """One entry of top-level `secrets:` or `configs:`: where its bytes come from."""

    key: str
    file: Path | None = None
    value: str | None = None  # `content:`, or the variable `environment:` names


@dataclass(frozen=True)
class FileMount:
    """A secret or config as one service sees it (its source resolved)."""

    kind: str  # "secrets" | "configs"
    source: str
    target: str  # absolute, in the container
    uid: int = 0
    gid: int = 0
    mode: int = 0o444
    file: Path | None = None
    value: str | None = None

    def data(self) -> bytes:
        """The bytes, read now (a file is read at each container start, as compose binds it)."""
        return self.value.encode() if self.value is not None else self.file.read_bytes() if self.file else b""


def _refused_external(what: str) -> Setting:
    return Setting("external", lambda v, p, c: None, None, "bool", f"external {what} live in a swarm's store",
                   support=Support.REFUSED, hint="use `file:` (or `environment:`) instead")


def _source_settings(what: str, *, content: bool) -> tuple[Setting, ...]:
    rows = [
        Setting("file", p_str, None, "path", f"the {what}'s file on this machine (relative to the project folder)"),
        Setting("environment", p_name_var, None, "name",
                f"a variable of the project's environment (the shell's, then `.env`) holding the {what}"),
    ]
    if content:
        rows.append(Setting("content", p_text, None, "string", "the config's text itself"))
    rows += [
        _refused_external(what + "s"),
        Setting("name", lambda v, p, c: None, None, "string", "the name in a swarm's store; nothing reads it",
                support=Support.IGNORED),
        Setting("driver", lambda v, p, c: None, None, "string", f"{what} drivers are a swarm's",
                support=Support.REFUSED, hint="use `file:` instead"),
        Setting("labels", lambda v, p, c: None, None, "mapping|list", "metadata; nothing reads it",
                support=Support.IGNORED),
    ]
    return tuple(rows)


def p_text(value: Any, path: KeyPath, ctx: Ctx) -> str:
    """Any text, newlines included: it only ever becomes a file's bytes."""
    if not isinstance(value, str):
        ctx.fail(path, f"must be a string, not {typename(value)}")
    return value


def p_name_var(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = p_str(value, path, ctx)
    if not text.replace("_", "a").isalnum() or text[0].isdigit():
        ctx.fail(path, f"invalid variable name {text!r}", "letters, digits and `_`, not starting with a digit")
    return text


SECRET_SETTINGS = _source_settings("secret", content=False)
CONFIG_SETTINGS = _source_settings("config", content=True)


def p_mode(value: Any, path: KeyPath, ctx: Ctx) -> int:
    """compose writes modes as octal numbers (`0440`, which YAML 1.1 reads as 288) or strings (`"0440"`)."""
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            ctx.fail(path, f"invalid mode {value!r}", "an octal file mode such as `0440`")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        ctx.fail(path, f"invalid mode {value!r}", "an octal file mode such as `0440`")
    return int(value)


def p_id(value: Any, path: KeyPath, ctx: Ctx) -> int:
    """compose writes uid and gid as strings (`"1000"`); numbers are taken too."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isdigit() or int(text) >= 2**31:
        ctx.fail(path, f"invalid id {value!r}", "a number such as \"1000\" (names are not looked up here)")
    return int(text)


MOUNT_SETTINGS = (
    Setting("source", p_key, REQUIRED, "name", "the top-level secret or config"),
    Setting("target", p_str, None, "path", "where it appears (secrets: relative to /run/secrets; default: "
            "/run/secrets/SOURCE for a secret, /SOURCE for a config)"),
    Setting("uid", p_id, 0, "string", "the file's owner in the container (a number)"),
    Setting("gid", p_id, 0, "string", "the file's group in the container (a number)"),
    Setting("mode", p_mode, 0o444, "octal", "the file's mode", shown="0444"),
)


def p_top(kind: str) -> Any:
    """Top-level `secrets:` or `configs:`: name -> its parsed settings (`declared` makes them sources)."""
    table = SECRET_SETTINGS if kind == "secrets" else CONFIG_SETTINGS
    return lambda value, path, ctx: parse_named_tables(table, value, path, ctx, kind, p_key)


def declared(kind: str, top: Mapping[str, Mapping[str, Any]], ctx: Ctx,
             variables: Mapping[str, str]) -> dict[str, FileSource]:
    """The parsed top-level entries as sources; exactly one of file/environment/content each, a file that
    exists."""
    out = {}
    for key, v in top.items():
        path: KeyPath = (kind, key)
        given = [k for k in ("file", "environment", "content") if v.get(k) is not None]
        if len(given) != 1:
            choices = "`file`, `environment` or `content`" if kind == "configs" else "`file` or `environment`"
            ctx.fail(path, f"{kind[:-1]} `{key}` needs one of {choices}"
                     + (f", not {' and '.join(given)} together" if given else ""), "write `file: ./path`")
        if v["file"] is not None:
            file = (ctx.base_dir / v["file"]).resolve()
            if not file.is_file():
                ctx.fail((*path, "file"), f"{kind[:-1]} file `{v['file']}` does not exist (looked for `{file}`)",
                         "create it, or correct the path (relative to the project folder)")
            out[key] = FileSource(key, file=file)
        elif v["environment"] is not None:
            if v["environment"] not in variables:
                ctx.fail((*path, "environment"), f"variable `{v['environment']}` is not set",
                         "set it in the shell or in the project's `.env`")
            out[key] = FileSource(key, value=variables[v["environment"]])
        else:
            out[key] = FileSource(key, value=v["content"])
    return out


def p_service(kind: str) -> Any:
    """A service's list: names, or mappings (MOUNT_SETTINGS); sources are resolved by `resolve`."""

    def parse(value: Any, path: KeyPath, ctx: Ctx) -> tuple[FileMount, ...]:
        if not isinstance(value, list):
            ctx.fail(path, f"must be a list of {kind} names or `{{source, target}}` mappings, not {typename(value)}")
        out = []
        for i, item in enumerate(value):
            v = parse_table(MOUNT_SETTINGS, {"source": item} if isinstance(item, str) else item, (*path, i), ctx)
            out.append(FileMount(kind, v["source"], _target(kind, v["source"], v["target"], (*path, i), ctx),
                                 v["uid"], v["gid"], v["mode"]))
        return tuple(out)

    return parse


def _target(kind: str, source: str, target: str | None, path: KeyPath, ctx: Ctx) -> str:
    base = KINDS[kind]
    raw = target if target else source
    full = posixpath.normpath(posixpath.join(base, raw))
    if full == "/" or ".." in raw.split("/") or "\0" in raw:
        ctx.fail((*path, "target"), f"invalid target {target!r}", "an absolute path, or a file name")
    return full


def resolve(service: str, mounts: Sequence[FileMount], sources: Mapping[str, Mapping[str, FileSource]],
            ctx: Ctx) -> tuple[FileMount, ...]:
    """Each mount with its source's bytes; an undeclared source fails, as in compose."""
    out = []
    for i, m in enumerate(mounts):
        found = sources[m.kind].get(m.source)
        if found is None:
            ctx.fail(("services", service, m.kind, i), f"undeclared {m.kind[:-1]} `{m.source}`",
                     did_you_mean(m.source, sources[m.kind], m.kind) + f" (declare it under top-level `{m.kind}:`)")
        out.append(FileMount(m.kind, m.source, m.target, m.uid, m.gid, m.mode, found.file, found.value))
    targets = [m.target for m in out]
    if len(set(targets)) != len(targets):
        ctx.fail(("services", service), f"two secrets or configs of `{service}` have the same target",
                 "give one of them another `target`")
    return tuple(out)
