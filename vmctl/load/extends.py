"""`extends` in a service, resolved in one file's tree as compose does (before the files are merged):

- `extends: NAME` or `extends: {service: NAME}` takes a service of the same file, `extends: {file: F,
  service: NAME}` one of F (relative to the extending file's folder), whose relative paths are then made
  absolute against F's folder (`anchor.py`);
- the base is resolved first (chains), then the extending service is merged over it by the rules of
  override files (`merge.py`);
- `depends_on`, `volumes_from` and `links` are not inherited: they tie the base to its own neighbours;
- a cycle, a missing file or an unknown service is an error at the `extends` key that names it.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from dataclasses import dataclass, field
from pathlib import Path

from vmctl.errors import SpecError, Where
from vmctl.load.anchor import anchored
from vmctl.load.merge import merge
from vmctl.load.tree import Node, mapping
from vmctl.yamlpos import dotted

NOT_INHERITED = frozenset({"depends_on", "volumes_from", "links"})
Reader = Callable[[Path], Node]  # a file's interpolated tree
_Ref = tuple[Path, str]  # (file, service)


@dataclass(frozen=True)
class Target:
    file: Path
    service: str


def resolve(tree: Node, file: Path, read: Reader) -> None:
    """Every service of `tree` (the file `file`) with its `extends` resolved, in place."""
    resolver = _Resolver(read, {file.resolve(): tree})
    for name in list(_services(tree)):
        resolver.service(file.resolve(), name, ())


@dataclass
class _Resolver:
    read: Reader
    trees: dict[Path, Node]
    done: set[_Ref] = field(default_factory=set)

    def service(self, file: Path, name: str, chain: tuple[_Ref, ...]) -> Node:
        services = _services(self.trees[file])
        svc = services[name]
        extends = svc.get("extends")
        if (file, name) in self.done or extends is None:
            self.done.add((file, name))
            return svc
        target = _target(extends, file, name)
        ref = (target.file, target.service)
        if ref in chain or ref == (file, name):
            raise _error(extends, name, f"`extends` cycle: {_cycle([*chain, (file, name), ref])}",
                         "a service cannot extend itself, directly or through others")
        self._check(target, extends, name)
        base = _without(self.service(target.file, target.service, (*chain, (file, name))), NOT_INHERITED)
        if target.file != file:
            base = anchored(base, target.file.parent)
        merged = merge(base, _without(svc, {"extends"}), ("services", name))
        services[name] = Node(None, svc.origin, merged.children)  # the service is where it is written
        self.done.add((file, name))
        return services[name]

    def _check(self, target: Target, extends: Node, name: str) -> None:
        if target.file not in self.trees:
            if not target.file.is_file():
                raise _error(extends, name, f"`extends` file `{target.file}` does not exist",
                             "paths are relative to the folder of the file that writes `extends`")
            self.trees[target.file] = self.read(target.file)
        known = _services(self.trees[target.file])
        if target.service not in known:
            listed = ", ".join(f"`{s}`" for s in known) or "none"
            raise _error(extends, name, f"`extends`: no service `{target.service}` in `{target.file}`",
                         f"extend one of its services: {listed}")


def _services(tree: Node) -> dict[str, Node]:
    """The file's services that are mappings (anything else is the settings table's to refuse)."""
    services = tree.get("services")
    if services is None or not isinstance(services.children, dict):
        return {}
    return services.children


def _target(extends: Node, file: Path, name: str) -> Target:
    if isinstance(extends.value, str) and extends.value:
        return Target(file, extends.value)
    keys = extends.children if isinstance(extends.children, dict) else {}
    service, other = keys.get("service"), keys.get("file")
    unknown = sorted(set(keys) - {"service", "file"})
    if unknown or service is None or not isinstance(service.value, str) or not service.value:
        raise _error(extends, name, "`extends` takes a service name, or `{service: NAME, file: FILE}`"
                     + (f", not `{unknown[0]}`" if unknown else ""),
                     "write `extends: base` or `extends: {file: common.yaml, service: base}`")
    if other is None:
        return Target(file, service.value)
    if not isinstance(other.value, str) or not other.value:
        raise _error(other, name, "`extends.file` takes a path", "write `file: common.yaml`", "extends.file")
    return Target((file.parent / Path(other.value).expanduser()).resolve(), service.value)


def _without(svc: Node, keys: Set[str]) -> Node:
    own = svc.children if isinstance(svc.children, dict) else {}  # `base:` with nothing under it
    return mapping({k: v for k, v in own.items() if k not in keys}, svc.origin)


def _cycle(refs: list[_Ref]) -> str:
    """`a -> b (`other.yaml`) -> a`: files named where they differ from the first one's."""
    return " -> ".join(name if f == refs[0][0] else f"{name} (`{f.name}`)" for f, name in refs)


def _error(node: Node, service: str, message: str, hint: str, key: str = "extends") -> SpecError:
    path = dotted(("services", service, *key.split(".")))
    return SpecError(message, hint=hint, where=Where(node.origin.file, node.origin.line, path))
