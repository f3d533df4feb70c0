"""Compose's variable interpolation in one string: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` for a literal `$`.

Pure: a lookup function goes in, the text and the variables it used come out. Defaults and alternatives
may themselves hold `${...}` (compose allows nesting) and are only expanded when they are used.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Lookup = Callable[[str], str | None]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")  # two-character ones first


class InterpolationError(Exception):
    def __init__(self, message: str, hint: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.variable = message, hint, variable


@dataclass(frozen=True)
class Result:
    text: str
    used: tuple[str, ...]  # every variable looked up, in order
    unset: tuple[str, ...]  # those that were unset and had no default (compose warns, then uses "")


def interpolate(text: str, lookup: Lookup) -> Result:
    out = _Expander(text, lookup)
    return Result(out.expand(), tuple(dict.fromkeys(out.used)), tuple(dict.fromkeys(out.unset)))


class _Expander:
    def __init__(self, text: str, lookup: Lookup) -> None:
        self.text, self.lookup = text, lookup
        self.used: list[str] = []
        self.unset: list[str] = []

    def expand(self) -> str:
        parts: list[str] = []
        i = 0
        while (j := self.text.find("$", i)) >= 0:
            parts.append(self.text[i:j])
            text, i = self._dollar(j)
            parts.append(text)
        parts.append(self.text[i:])
        return "".join(parts)

    def _dollar(self, j: int) -> tuple[str, int]:
        """The expansion of the `$` at `j`, and where the text goes on."""
        rest = self.text[j + 1:]
        if rest.startswith("$"):
            return "$", j + 2
        if rest.startswith("{"):
            end = _closing_brace(self.text, j + 2)
            if end < 0:
                raise InterpolationError(f"unclosed `${{` in {self.text!r}",
                                         "close it with `}`, or write `$$` for a `$`")
            return self._braced(self.text[j + 2:end]), end + 1
        m = _NAME.match(rest)
        if not m:
            raise InterpolationError(f"invalid `$` in {self.text!r}", "write `$$` for a literal `$`, or `${NAME}`")
        return self._value(m.group(0)) or "", j + 1 + m.end()

    def _braced(self, inner: str) -> str:
        m = _NAME.match(inner)
        if not m:
            raise InterpolationError(f"invalid variable `${{{inner}}}`",
                                     "names use letters, digits and `_` and do not start with a digit")
        name, tail = m.group(0), inner[m.end():]
        if not tail:
            return self._value(name) or ""
        op = next((o for o in _OPERATORS if tail.startswith(o)), None)
        if op is None:
            raise InterpolationError(f"invalid variable `${{{inner}}}`",
                                     "use `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?message}` "
                                     "or `${NAME?message}`", name)
        return self._operator(name, op, tail[len(op):])

    def _operator(self, name: str, op: str, arg: str) -> str:
        value = self._raw(name)
        set_ = value is not None and (value != "" or ":" not in op)  # `:` also treats empty as unset
        if op.endswith("-"):
            return value if set_ and value is not None else self._nested(arg)
        if op.endswith("+"):
            return self._nested(arg) if set_ else ""
        if not set_ or value is None:  # `?`: a required variable
            message = self._nested(arg) or ("is empty" if value == "" else "is not set")
            raise InterpolationError(f"required variable `{name}` {message}" if not arg else
                                     f"required variable `{name}`: {message}",
                                     f"set `{name}` in the environment or in the project's `.env`", name)
        return value

    def _nested(self, text: str) -> str:
        inner = _Expander(text, self.lookup)
        result = inner.expand()
        self.used += inner.used
        self.unset += inner.unset
        return result

    def _raw(self, name: str) -> str | None:
        self.used.append(name)
        return self.lookup(name)

    def _value(self, name: str) -> str | None:
        value = self._raw(name)
        if value is None:
            self.unset.append(name)
        return value


def _closing_brace(text: str, start: int) -> int:
    """The index of the `}` that closes a `${` whose body starts at `start` (nested `${...}` counted)."""
    depth, i = 1, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1
