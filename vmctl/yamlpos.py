"""Line-aware YAML loading: plain Python values plus the line of every key, and no duplicate keys.

PyYAML silently keeps the last of two equal keys and forgets where values came from; an error that
names `file:line: key` needs both, so this walks the composed node tree itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vmctl.errors import SpecError, Where

KeyPath = tuple[str | int, ...]
MAX_VALUES = 100_000  # YAML aliases can expand a small file exponentially ("billion laughs")


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dotted(path: KeyPath) -> str:
    """`machines.web.ports[0]`; a key that is not plain is shown quoted (`machines["a<b"]`), never raw,
    so a hostile key cannot forge a path or put control characters on the user's terminal."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


@dataclass
class Document:
    """A loaded file: its data and a line for every key path seen."""

    file: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    values: int = 0

    def where(self, path: KeyPath) -> Where:
        """The nearest known line for `path` (walking up to a parent when needed)."""
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        return Where(str(self.file), self.lines.get(probe), dotted(path) or None)


def load(file: Path) -> Document:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            f"environment file `{file}` does not exist",
            hint="pass one with `-f FILE`, or create `vmctl.yaml` (see examples/quickstart.yaml)",
        ) from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise SpecError(f"`{file}` is not a UTF-8 text file ({e.__class__.__name__})",
                        hint="pass a YAML environment file with `-f FILE`") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise SpecError(
            f"invalid YAML: {e.problem}", where=Where(str(file), line), hint="check indentation and quoting"
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", where=Where(str(file)), hint="check indentation and quoting") from None
    doc = Document(file, None)
    doc.data = {} if node is None else _convert(node, (), doc)
    return doc


def _convert(node: yaml.Node, path: KeyPath, doc: Document) -> Any:
    doc.lines.setdefault(path, node.start_mark.line + 1)
    doc.values += 1
    if doc.values > MAX_VALUES:
        raise SpecError(f"the file expands to more than {MAX_VALUES} values (YAML aliases?)", where=doc.where(path),
                        hint="write the values out instead of repeating `*alias` references")
    if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_TAGS:
        raise SpecError(f"invalid YAML value: unsupported tag `{node.tag}`", where=doc.where(path),
                        hint="write plain strings, numbers, lists and mappings")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("a key must be a plain string, not a list or mapping",
                                where=Where(str(doc.file), key_node.start_mark.line + 1, dotted(path) or None),
                                hint="write `name: value`")
            if key_node.tag == "tag:yaml.org,2002:merge":
                merged += _merge_sources(value_node, doc, path)
                continue
            key = _scalar(key_node, doc, path)
            if not isinstance(key, str):
                where = Where(str(doc.file), key_node.start_mark.line + 1, dotted(path))
                raise SpecError(f"key {key!r} must be a string", where=where,
                                hint=f'quote it: "{key}"')
            child = (*path, key)
            if key in out:
                raise SpecError(
                    f"duplicate key `{key}` (first at line {doc.lines[child]})",
                    where=Where(str(doc.file), key_node.start_mark.line + 1, dotted(child)),
                    hint="each key may appear once; remove or rename one of them",
                )
            doc.lines[child] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, child, doc)
        for key_node, value_node in merged:  # `<<:` fills in only what the mapping does not set itself
            key = _scalar(key_node, doc, path)
            if isinstance(key, str) and key not in out:
                doc.lines[(*path, key)] = key_node.start_mark.line + 1  # where the anchor defines it
                out[key] = _convert(value_node, (*path, key), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*path, i), doc) for i, item in enumerate(node.value)]
    return _scalar(node, doc, path)


def _merge_sources(node: yaml.Node, doc: Document, path: KeyPath) -> list[tuple[yaml.Node, yaml.Node]]:
    """The pairs a merge key brings in: one `*alias` mapping, or a list of them (earlier ones win)."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    pairs: list[tuple[yaml.Node, yaml.Node]] = []
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise SpecError("a merge key (`<<`) takes a mapping or a list of mappings (`*alias`)",
                            where=Where(str(doc.file), source.start_mark.line + 1, dotted(path) or None),
                            hint="write `<<: *name` where `&name` marks a mapping")
        pairs += [(k, v) for k, v in source.value if k.tag != "tag:yaml.org,2002:merge"]
        nested = [v for k, v in source.value if k.tag == "tag:yaml.org,2002:merge"]
        for inner in nested:
            pairs += _merge_sources(inner, doc, path)
    return pairs


def _scalar(node: yaml.Node, doc: Document, path: KeyPath) -> Any:
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.YAMLError as e:  # an unknown `!!tag`, a bad `!!binary`...
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"invalid YAML value: {problem}", hint="write plain strings, numbers, lists and mappings",
                        where=Where(str(doc.file), node.start_mark.line + 1, dotted(path) or None)) from None
