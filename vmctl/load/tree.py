"""A YAML document as a tree of located values, so that merging files and interpolating keeps, for every
key, the file and line it came from (and the variables an interpolated value was built from)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vmctl.yamlpos import Document, KeyPath


@dataclass(frozen=True)
class Origin:
    file: str
    line: int | None
    variables: tuple[str, ...] = ()


@dataclass
class Node:
    """A value (a scalar, `dict[str, Node]` or `list[Node]`) and where it was written."""

    value: Any
    origin: Origin
    children: dict[str, Node] | list[Node] | None = field(default=None, repr=False)

    @property
    def is_map(self) -> bool:
        return isinstance(self.children, dict)

    @property
    def is_seq(self) -> bool:
        return isinstance(self.children, list)

    def get(self, key: str) -> Node | None:
        return self.children.get(key) if isinstance(self.children, dict) else None


def from_document(doc: Document) -> Node:
    return _build(doc.data, (), doc)


def _build(value: Any, path: KeyPath, doc: Document) -> Node:
    origin = Origin(str(doc.file), _line(doc, path))
    if isinstance(value, dict):
        return Node(None, origin, {k: _build(v, (*path, k), doc) for k, v in value.items()})
    if isinstance(value, list):
        return Node(None, origin, [_build(v, (*path, i), doc) for i, v in enumerate(value)])
    return Node(value, origin)


def _line(doc: Document, path: KeyPath) -> int | None:
    probe = path
    while probe and probe not in doc.lines:
        probe = probe[:-1]
    return doc.lines.get(probe)


def mapping(children: dict[str, Node], origin: Origin) -> Node:
    return Node(None, origin, children)


def sequence(children: list[Node], origin: Origin) -> Node:
    return Node(None, origin, children)


def plain(node: Node) -> Any:
    """The tree as plain Python values."""
    if isinstance(node.children, dict):
        return {k: plain(v) for k, v in node.children.items()}
    if isinstance(node.children, list):
        return [plain(v) for v in node.children]
    return node.value


def origins(node: Node, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Origin]]:
    yield path, node.origin
    if isinstance(node.children, dict):
        for k, v in node.children.items():
            yield from origins(v, (*path, k))
    elif isinstance(node.children, list):
        for i, v in enumerate(node.children):
            yield from origins(v, (*path, i))
