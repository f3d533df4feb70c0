"""`.env` and `env_file:` files, as compose reads them: `KEY=VALUE` lines, `export KEY=VALUE`, `#` comments,
single quotes taken literally, double quotes with `\\n` `\\t` `\\"` `\\\\` escapes, and `${VAR}` interpolated in
unquoted and double-quoted values (from the variables before the line and the lookup)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vmctl.errors import SpecError, Where
from vmctl.load.interpolate import InterpolationError, Lookup, interpolate

_LINE = re.compile(r"^\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=\s*(?P<value>.*?))?\s*$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$$"}


@dataclass(frozen=True)
class Entry:
    key: str
    value: str | None  # None: a bare `KEY` line (take it from the environment, if it is set there)
    line: int


def read(file: Path, lookup: Lookup) -> list[Entry]:
    """The entries of `file` in order. Errors name the file and line."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read `{file}` ({e.__class__.__name__})",
                        hint="it must be a UTF-8 text file of KEY=VALUE lines") from None
    entries: list[Entry] = []
    known: dict[str, str] = {}

    def see(name: str) -> str | None:
        return known[name] if name in known else lookup(name)

    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = _LINE.match(raw)
        if not m:
            raise SpecError(f"invalid line {raw.strip()[:60]!r}", where=Where(str(file), number),
                            hint="write `KEY=VALUE` (keys use letters, digits, `_`, `.`, `-`)")
        value = m["value"]
        if value is not None:
            try:
                value = _value(value, see)
            except InterpolationError as e:
                raise SpecError(e.message, hint=e.hint, where=Where(str(file), number, m["key"])) from None
            except ValueError as e:
                raise SpecError(str(e), where=Where(str(file), number, m["key"]),
                                hint="close the quote on the same line") from None
            known[m["key"]] = value
        entries.append(Entry(m["key"], value, number))
    return entries


def _value(text: str, lookup: Lookup) -> str:
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise ValueError("unclosed single quote")
        return text[1:end]
    if text.startswith('"'):
        body = _double_quoted(text)
        return interpolate(body, lookup).text
    unquoted = re.split(r"\s+#", text, maxsplit=1)[0].strip()
    return interpolate(unquoted, lookup).text


def _double_quoted(text: str) -> str:
    out, i = [], 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(_ESCAPES.get(text[i + 1], "\\" + text[i + 1]))
            i += 2
            continue
        if c == '"':
            return "".join(out)
        out.append(c)
        i += 1
    raise ValueError("unclosed double quote")
