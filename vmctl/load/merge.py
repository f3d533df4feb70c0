"""Several compose files merged by the compose specification's rules (`merge.md`):

- mappings merge key by key, the later file winning on conflicts;
- sequences append, except `command`, `entrypoint` and `healthcheck.test`, which the later file replaces;
- `ports` are unique by (host ip, target, published port, protocol) and `volumes` by target: a later entry
  with the same key replaces the earlier one;
- `environment`, `labels`, `sysctls`, `annotations` and `depends_on` may be written as a list or a mapping:
  both are read as a mapping first, so they merge key by key; `env_file` may be one path: read as a list;
- a scalar replaces whatever was there (and so does a value of another shape).
"""

from __future__ import annotations

from collections.abc import Callable

from vmctl.load.tree import Node, mapping, sequence

REPLACED = frozenset({"command", "entrypoint"})
AS_MAPPING = frozenset({"environment", "labels", "sysctls", "annotations"})


def merge_files(nodes: list[Node]) -> Node:
    merged = nodes[0]
    for over in nodes[1:]:
        merged = merge(merged, over, ())
    return merged


def merge(base: Node, over: Node, path: tuple[str, ...]) -> Node:
    if _service_key(path) in AS_MAPPING:
        base, over = as_mapping(base), as_mapping(over)
    elif _service_key(path) == "depends_on":
        base, over = depends_on_mapping(base), depends_on_mapping(over)
    elif _service_key(path) == "env_file":
        base, over = as_list(base), as_list(over)
    if base.is_map and over.is_map:
        return _merge_maps(base, over, path)
    if base.is_seq and over.is_seq and not _replaced(path):
        unique = _UNIQUE.get(_service_key(path) or "")
        return _append(base, over, unique)
    return over


def _merge_maps(base: Node, over: Node, path: tuple[str, ...]) -> Node:
    assert isinstance(base.children, dict) and isinstance(over.children, dict)
    children = dict(base.children)
    for key, value in over.children.items():
        children[key] = merge(children[key], value, (*path, key)) if key in children else value
    return mapping(children, base.origin)


def _append(base: Node, over: Node, unique: Callable[[Node], object] | None) -> Node:
    assert isinstance(base.children, list) and isinstance(over.children, list)
    items = list(base.children)
    for item in over.children:
        key = unique(item) if unique else None
        same = [i for i, old in enumerate(items) if key is not None and unique and unique(old) == key]
        if same:
            items[same[0]] = item
        else:
            items.append(item)
    return sequence(items, base.origin)


def _service_key(path: tuple[str, ...]) -> str | None:
    """`ports` for `services.web.ports`: the service attribute a path is, or None."""
    return path[2] if len(path) == 3 and path[0] == "services" else None


def _replaced(path: tuple[str, ...]) -> bool:
    return _service_key(path) in REPLACED or (len(path) == 4 and path[0] == "services" and path[2:] == (
        "healthcheck", "test"))


def as_mapping(node: Node) -> Node:
    """`["KEY=VALUE", "KEY"]` as the mapping `{KEY: VALUE, KEY: None}` (compose's list form)."""
    if not isinstance(node.children, list) or not all(c.children is None and isinstance(c.value, str)
                                                      for c in node.children):
        return node
    children: dict[str, Node] = {}
    for item in node.children:
        key, eq, value = str(item.value).partition("=")
        children[key] = Node(value if eq else None, item.origin)
    return mapping(children, node.origin)


def as_list(node: Node) -> Node:
    """One value as the list of it, so that a later file's entries append to it."""
    return node if node.children is not None else sequence([node], node.origin)


def depends_on_mapping(node: Node) -> Node:
    """`[db]` as `{db: {condition: service_started}}`, the long form compose normalises to."""
    if not isinstance(node.children, list):
        return node
    children = {}
    for item in node.children:
        if item.children is None and isinstance(item.value, str):
            condition = Node("service_started", item.origin)
            children[item.value] = mapping({"condition": condition}, item.origin)
        else:
            return node  # something odd: leave it for the settings table to refuse
    return mapping(children, node.origin)


def _port_key(item: Node) -> object:
    if isinstance(item.children, dict):
        ip, target, published, proto = (_scalar(item.get(k)) for k in ("host_ip", "target", "published", "protocol"))
        return (ip, target, published, proto or "tcp")
    text = str(item.value)
    spec, _, proto = text.partition("/")
    parts = spec.rsplit(":", 2)
    target = parts[-1]
    published = parts[-2] if len(parts) >= 2 else None
    ip = parts[-3] if len(parts) == 3 else None
    return (ip, target, published, proto or "tcp")


def _volume_key(item: Node) -> object:
    if isinstance(item.children, dict):
        return _scalar(item.get("target"))
    parts = str(item.value).split(":")
    return parts[1] if len(parts) >= 2 else parts[0]


def _scalar(node: Node | None) -> object:
    return None if node is None else str(node.value)


_UNIQUE: dict[str, Callable[[Node], object]] = {"ports": _port_key, "volumes": _volume_key}
