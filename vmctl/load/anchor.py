"""Relative paths of a service made absolute against the folder of the file that wrote them.

Compose resolves the paths of a service taken from another file (`extends: {file: ...}`, `include:`) against
that file's folder, not the project's: the extending project's folder means nothing to the file that was
written for its own. The paths: `build` (or `build.context`, "." when left out), host folders of `volumes`
(compose's rule: a short-form source starting with `.`; a long-form `bind` source), `env_file`, and an
`image` written as a relative path (vmctl reads archives and layouts from files).
Nodes are copied, never changed in place: the service may still be extended from its own file elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from vmctl.load.tree import Node, mapping, sequence

_URL = re.compile(r"^([a-z][a-z0-9+.-]*://|git@)")  # a remote build context: not a path


def anchored(svc: Node, folder: Path) -> Node:
    if not isinstance(svc.children, dict):
        return svc
    children = dict(svc.children)
    for key, rewrite in _KEYS.items():
        if key in children:
            children[key] = rewrite(children[key], folder)
    return mapping(children, svc.origin)


def _path(node: Node, folder: Path) -> Node:
    """A scalar path as an absolute one (`~` and absolute paths are left as written)."""
    text = node.value
    if not isinstance(text, str) or not text or text.startswith(("/", "~")) or _URL.match(text):
        return node
    return Node(str((folder / text).resolve()), node.origin)


def _build(node: Node, folder: Path) -> Node:
    if not isinstance(node.children, dict):
        return _path(node, folder)
    context = node.children.get("context") or Node(".", node.origin)
    return mapping({**node.children, "context": _path(context, folder)}, node.origin)


def _volumes(node: Node, folder: Path) -> Node:
    return _each(node, lambda item: _volume(item, folder))


def _volume(item: Node, folder: Path) -> Node:
    if isinstance(item.children, dict):
        source, kind = item.children.get("source"), item.children.get("type")
        if source is None or kind is None or kind.value != "bind":
            return item
        return mapping({**item.children, "source": _path(source, folder)}, item.origin)
    if not isinstance(item.value, str) or not item.value.startswith("."):
        return item  # a named volume, or a path that is already absolute
    host, sep, rest = item.value.partition(":")
    return Node(f"{_path(Node(host, item.origin), folder).value}{sep}{rest}", item.origin)


def _env_file(node: Node, folder: Path) -> Node:
    return _each(node, lambda item: _env_file_entry(item, folder))


def _env_file_entry(item: Node, folder: Path) -> Node:
    if isinstance(item.children, dict) and "path" in item.children:
        return mapping({**item.children, "path": _path(item.children["path"], folder)}, item.origin)
    return _path(item, folder)


def _image(node: Node, folder: Path) -> Node:
    text = node.value
    local = isinstance(text, str) and (text.startswith(("./", "../")) or (folder / text).exists())
    return _path(node, folder) if local else node


def _each(node: Node, rewrite: Callable[[Node], Node]) -> Node:
    """`rewrite` applied to every item of a list, or to the node itself when it is not one."""
    if isinstance(node.children, list):
        return sequence([rewrite(item) for item in node.children], node.origin)
    return rewrite(node)


_KEYS: dict[str, Callable[[Node, Path], Node]] = {"build": _build, "volumes": _volumes, "env_file": _env_file,
                                                  "image": _image}
