"""`.dockerignore`: which files of a build context the builder leaves out, so they are not in the build's key.

docker and podman read the file themselves when they build; vmctl only needs the same answer for its
cache key (vmctl/build.py): a change to an ignored file must not make a new build. The rules, as the
builders apply them: one pattern per line, `#` lines and blank lines skipped, a leading `/` and `./`
dropped; `*` and `?` stay within one path part, `**` spans any number of parts, `[...]` is a class; a
pattern that matches a folder excludes everything under it; `!PATTERN` takes paths back; the last
pattern that matches a path decides. The Dockerfile and `.dockerignore` are always sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FILE = ".dockerignore"


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    keep: bool  # a `!` exception


def _regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            body = body.replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + "(?:/.*)?")  # a matching folder takes its contents with it


def parse(text: str) -> tuple[Rule, ...]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line[1:].strip() if keep else line
        while pattern.startswith(("./", "/")):
            pattern = pattern[2:] if pattern.startswith("./") else pattern[1:]
        pattern = pattern.rstrip("/")
        if pattern:
            rules.append(Rule(_regex(pattern), keep))
    return tuple(rules)


def load(context: Path) -> tuple[Rule, ...]:
    path = context / FILE
    return parse(path.read_text(errors="replace")) if path.is_file() else ()


def ignored(rules: tuple[Rule, ...], rel: str, *, dockerfile: str = "Dockerfile") -> bool:
    """Whether the builder leaves `rel` (a /-separated path in the context) out."""
    if rel in (dockerfile, FILE):
        return False
    verdict = False
    for rule in rules:
        if rule.regex.fullmatch(rel):
            verdict = not rule.keep
    return verdict
