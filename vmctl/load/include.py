"""Top-level `include`, as compose resolves it in each file (after `extends`, before the files are merged):

- entries are paths, or `{path: FILE | [FILES], project_directory: DIR, env_file: FILE | [FILES]}`, relative
  to the including file's folder; several paths of one entry merge as `-f` files do;
- each entry is loaded as a project of its own (the caller's `Loader`): its folder (`project_directory`,
  default the first path's) for relative paths, its `.env` (or `env_file`) for variables the including
  project does not set, its own `extends`, `include` and `env_file`;
- its `services`, `networks` and `volumes` are added to the including file's; a name that is already
  there (written in this file or by an earlier entry) is an error naming both places: compose never
  merges across `include` (an override file given with `-f` can change an included service).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmctl.errors import SpecError, Where
from vmctl.load.anchor import anchored
from vmctl.load.tree import Node, Origin, mapping
from vmctl.yamlpos import dotted

SECTIONS = ("services", "networks", "volumes")
_DROPPED_QUIETLY = frozenset({"name", "version"})  # an included project's own name means nothing here
_KEYS = ("path", "project_directory", "env_file")
_FORMS = "write `include: [other/compose.yaml]` or `include: [{path: other/compose.yaml, env_file: other/.env}]`"


@dataclass(frozen=True)
class Entry:
    files: tuple[Path, ...]
    project_dir: Path
    env_files: tuple[Path, ...]  # empty: the project folder's `.env`, when there is one
    origin: Origin  # where the entry is written


Loader = Callable[[Entry, tuple[Path, ...]], Node]  # an entry's project tree (given the files including it)


def resolve(tree: Node, file: Path, load: Loader, chain: tuple[Path, ...], warnings: list[str]) -> None:
    """`tree`'s `include` entries loaded and added to it, in place; `chain`: the files including `file`."""
    if not isinstance(tree.children, dict) or "include" not in tree.children:
        return
    chain = (*chain, file.resolve())
    for entry in entries(tree.children.pop("include"), file.parent):
        looped = next((f for f in entry.files if f in chain), None)
        if looped is not None:
            raise _error(entry.origin, f"`include` cycle: {' -> '.join(f.name for f in (*chain, looped))}",
                         "a file cannot include itself, directly or through the files it includes")
        included = load(entry, chain)
        _warn_dropped(included, entry, warnings)
        for section in SECTIONS:
            _add(tree, section, included.get(section), entry)


def entries(node: Node, folder: Path) -> list[Entry]:
    items = node.children if isinstance(node.children, list) else None
    if items is None:
        raise _error(node.origin, "`include` takes a list of files", _FORMS)
    return [_entry(item, folder) for item in items]


def _entry(item: Node, folder: Path) -> Entry:
    keys = item.children if isinstance(item.children, dict) else {"path": item}
    unknown = sorted(set(keys) - set(_KEYS))
    if unknown:
        raise _error(item.origin, f"`include` entries take {', '.join(f'`{k}`' for k in _KEYS)}, not `{unknown[0]}`",
                     _FORMS)
    files = _paths(keys.get("path"), item, folder)
    if not files:
        raise _error(item.origin, "an `include` entry needs a `path`", _FORMS)
    for file in files:
        if not file.is_file():
            raise _error(item.origin, f"included file `{file}` does not exist",
                         "paths are relative to the folder of the file that writes `include`")
    directory = keys.get("project_directory")
    project_dir = _paths(directory, item, folder)[0] if directory is not None else files[0].parent
    return Entry(files, project_dir, _paths(keys.get("env_file"), item, folder), item.origin)


def _paths(node: Node | None, item: Node, folder: Path) -> tuple[Path, ...]:
    """One path or a list of them, relative to `folder`."""
    if node is None:
        return ()
    values = node.children if isinstance(node.children, list) else [node]
    if not values or not all(isinstance(v.value, str) and v.value for v in values):
        raise _error(node.origin if node.origin.line else item.origin, "`include` paths are strings", _FORMS)
    return tuple((folder / Path(v.value).expanduser()).resolve() for v in values)


def _add(tree: Node, section: str, theirs: Node | None, entry: Entry) -> None:
    if theirs is None or not isinstance(theirs.children, dict) or not isinstance(tree.children, dict):
        return
    ours = tree.children.get(section)
    if ours is None or ours.children is None:  # absent, or `services:` with nothing under it
        ours = tree.children[section] = mapping({}, ours.origin if ours else entry.origin)
    if not isinstance(ours.children, dict):
        return  # not a mapping: the settings table refuses it
    for name, node in theirs.children.items():
        if name in ours.children:
            raise _conflict(section, name, ours.children[name], node)
        ours.children[name] = anchored(node, entry.project_dir) if section == "services" else node


def _warn_dropped(included: Node, entry: Entry, warnings: list[str]) -> None:
    keys = included.children if isinstance(included.children, dict) else {}
    for key in keys:
        if key not in SECTIONS and key not in _DROPPED_QUIETLY and not key.startswith("x-"):
            warnings.append(f"`{key}` of the included `{entry.files[0]}` is not added ({entry.origin.file}:"
                            f"{entry.origin.line}): `include` takes services, networks and volumes")


def _conflict(section: str, name: str, ours: Node, theirs: Node) -> SpecError:
    key = dotted((section, name))
    return SpecError(f"`{key}` is defined both here and in the included `{theirs.origin.file}`:"
                     f"{theirs.origin.line}", where=Where(ours.origin.file, ours.origin.line, key),
                     hint="rename one of them: compose does not merge across `include` (to change an included "
                          "service, give an override file with `-f`)")


def _error(origin: Origin, message: str, hint: str) -> SpecError:
    return SpecError(message, hint=hint, where=Where(origin.file, origin.line, "include"))
