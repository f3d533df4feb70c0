"""Kernel command lines, built from tokens by one quoting function that refuses what it cannot quote.

The kernel splits its command line on spaces; double quotes group a value with spaces, and there is
no escape character. So a token with a double quote, a control character or a non-ASCII character
cannot be represented faithfully and is refused rather than mangled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from vmctl.errors import UsageError

MAX_CMDLINE = 2048  # COMMAND_LINE_SIZE on x86_64
RESERVED_PREFIXES = ("vmctl.",)
RESERVED_KEYS = frozenset({"init", "rdinit", "console", "--"})
_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


class CmdlineError(UsageError):
    """A kernel argument that cannot be passed safely."""


def quote_karg(token: str) -> str:
    """Return `token` as one kernel argument, quoting its value when it contains spaces."""
    if not token or not token.isascii() or any(ord(c) < 0x20 or c == "\x7f" for c in token):
        raise CmdlineError(f"kernel argument {token!r} is empty or has control or non-ASCII characters")
    if '"' in token:
        raise CmdlineError(f"kernel argument {token!r} contains a double quote, which the kernel cannot escape")
    key, sep, value = token.partition("=")
    if not _KEY.match(key):
        raise CmdlineError(
            f"kernel argument {token!r} has an invalid name `{key}`",
            hint="names use letters, digits, `_`, `.` and `-`; spaces are only allowed inside a value",
        )
    if " " in value:
        return f'{key}{sep}"{value}"'
    return token


def check_user_karg(token: str) -> str:
    """Quote a user-supplied argument, refusing the ones vmctl itself owns."""
    key = token.partition("=")[0]
    if key in RESERVED_KEYS or key.startswith(RESERVED_PREFIXES):
        raise CmdlineError(
            f"kernel argument `{key}` is set by vmctl and cannot be overridden",
            hint="remove it from `cmdline`; use `hostname`, ports and disks settings instead",
        )
    return quote_karg(token)


def join(tokens: Iterable[str]) -> str:
    line = " ".join(quote_karg(t) for t in tokens)
    if len(line) > MAX_CMDLINE:
        raise CmdlineError(f"kernel command line is {len(line)} bytes, more than the kernel's {MAX_CMDLINE}")
    return line


def split(line: str) -> list[str]:
    """Split a command line the way the kernel does (lib/cmdline.c), quotes removed. For tests and audits."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        buf, quoted = [], False
        while i < n and (quoted or line[i] != " "):
            if line[i] == '"':
                quoted = not quoted
            else:
                buf.append(line[i])
            i += 1
        tokens.append("".join(buf))
    return tokens


def user_tokens(value: str | Sequence[str]) -> tuple[str, ...]:
    """A `cmdline` setting: a string is split on spaces (quotes group), a list is taken as tokens."""
    if isinstance(value, str) and value.count('"') % 2:
        raise CmdlineError(f"kernel arguments {value!r} have an unbalanced double quote",
                           hint='quote a value with spaces as key="a b", or write `cmdline` as a list')
    tokens = split(value) if isinstance(value, str) else list(value)
    for token in tokens:
        check_user_karg(token)
    return tuple(tokens)
