"""Loading, as compose loads: find the files, read `.env`, interpolate, merge, resolve `env_file:` and
profiles. What comes out (`Model`) is still plain data, with the file and line of every key; `spec` turns
it into the frozen environment, and nothing after `spec` sees this stage.

The steps, in order (each file is interpolated on its own, then the files are merged, as compose does):
1. files: `-f` as given, else `COMPOSE_FILE` (the environment's, else `.env`'s), else the first default
   name in the folder (`DEFAULT_FILES`),
   plus its `NAME.override.EXT` when there is one;
2. variables: the process environment over the project's `.env` (the first file's folder), or over the
   `--env-file` files instead of it (later files win);
3. interpolation of every string value (`interpolate.py`); unset variables become "" with a warning;
   then each file's `extends` (`extends.py`) and `include` (`include.py`: each entry a project of its own);
4. merging (`merge.py`); 5. `env_file:` read into `environment:` (`environment:` wins), bare `KEY`
   entries taken from the variables; 6. services whose `profiles` are not active dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmctl.errors import SpecError, UsageError, Where
from vmctl.load import dotenv, extends, include
from vmctl.load.interpolate import InterpolationError, interpolate
from vmctl.load.merge import as_mapping, merge_files
from vmctl.load.tree import Node, Origin, from_document, mapping, origins, plain
from vmctl.yamlpos import KeyPath, dotted, load

DEFAULT_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml", "vmctl.yaml")
DOTENV = ".env"


@dataclass(frozen=True)
class Model:
    """The resolved files: merged, interpolated data and where each key of it was written."""

    files: tuple[Path, ...]
    project_dir: Path
    data: dict[str, Any]
    origins: Mapping[KeyPath, Origin] = field(repr=False)
    project_name: str | None = None  # `-p`, else COMPOSE_PROJECT_NAME (both beat `name:`)
    warnings: tuple[str, ...] = ()
    # the shell's environment over `.env`: what interpolation used, and where `environment:` secrets come from
    variables: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def file(self) -> Path:
        return self.files[0]

    def where(self, path: KeyPath) -> Where:
        """The nearest known place for `path` (walking up to a parent when needed)."""
        probe = path
        while probe and probe not in self.origins:
            probe = probe[:-1]
        origin = self.origins.get(probe) or Origin(str(self.file), None)
        variables = origin.variables if probe == path else ()
        return Where(origin.file, origin.line, dotted(path) or None, variables)


def load_project(files: Sequence[Path] = (), *, cwd: Path | None = None, environ: Mapping[str, str] | None = None,
                 project_name: str | None = None, profiles: Sequence[str] = (),
                 env_files: Sequence[Path] = ()) -> Model:
    """`env_files` (`--env-file`, relative to `cwd`) replace the project's `.env`, as in compose."""
    environ = dict(os.environ if environ is None else environ)
    cwd = cwd or Path.cwd()
    warnings: list[str] = []
    # compose reads its own settings (COMPOSE_FILE, COMPOSE_PROJECT_NAME, COMPOSE_PROFILES) from `.env` too:
    # the working folder's for COMPOSE_FILE, the project's for the rest (the shell's environment wins)
    given = [_given_env_file(cwd / f) for f in env_files]
    chosen = [cwd / f for f in files] if files else discover(
        cwd, {**read_dotenvs(given or _default_dotenv(cwd), environ), **environ}, warnings)
    project_dir = chosen[0].resolve().parent
    dotenvs = given or _default_dotenv(project_dir)
    variables = {**read_dotenvs(dotenvs, environ), **environ}  # the shell's environment wins over `.env`
    trees = [_file_tree(f, variables, warnings) for f in chosen]
    tree = merge_files(trees)
    _resolve_environments(tree, project_dir, variables)
    active = {*profiles, *filter(None, variables.get("COMPOSE_PROFILES", "").split(","))}
    _drop_inactive(tree, active)
    if project_name is None:
        project_name = variables.get("COMPOSE_PROJECT_NAME")
    return Model(files=tuple(f.resolve() for f in chosen), project_dir=project_dir, data=plain(tree) or {},
                 origins=dict(origins(tree)), project_name=project_name, warnings=tuple(dict.fromkeys(warnings)),
                 variables=variables)


def discover(cwd: Path, environ: Mapping[str, str], warnings: list[str]) -> list[Path]:
    if environ.get("COMPOSE_FILE"):
        return [cwd / f for f in environ["COMPOSE_FILE"].split(os.pathsep) if f]
    found = [cwd / name for name in DEFAULT_FILES if (cwd / name).is_file()]
    if not found:
        raise UsageError(f"no environment file in `{cwd}` (looked for {', '.join(DEFAULT_FILES)})",
                         hint="pass one with `-f FILE`, or create `compose.yaml` (see examples/quickstart.yaml)")
    if len(found) > 1:
        warnings.append(f"found {', '.join(f.name for f in found)}: using `{found[0].name}`")
    base = found[0]
    override = base.with_name(f"{base.stem}.override{base.suffix}")
    return [base, override] if base.name != "vmctl.yaml" and override.is_file() else [base]


def _default_dotenv(project_dir: Path) -> list[Path]:
    file = project_dir / DOTENV
    return [file] if file.is_file() else []


def _given_env_file(file: Path) -> Path:
    if not file.is_file():
        raise UsageError(f"env file `{file}` does not exist (from `--env-file`)",
                         hint="pass an existing KEY=VALUE file; paths are relative to the current folder")
    return file


def read_dotenvs(files: Sequence[Path], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of `files` in order, a later file winning; each sees the values read before it."""
    values: dict[str, str] = {}
    for file in files:
        entries = dotenv.read(file, lambda name: values.get(name, environ.get(name)))
        values.update({e.key: e.value for e in entries if e.value is not None})
    return values


def _file_tree(file: Path, variables: Mapping[str, str], warnings: list[str], chain: tuple[Path, ...] = ()) -> Node:
    """One file, interpolated, with its services' `extends` and its `include` resolved (compose does all three
    per file); `chain`: the files that include this one."""
    def read(other: Path) -> Node:
        return _interpolated(from_document(load(other)), variables, warnings)

    def project(entry: include.Entry, including: tuple[Path, ...]) -> Node:
        return _included(entry, variables, warnings, including)

    tree = read(file)
    extends.resolve(tree, file, read)
    include.resolve(tree, file, project, chain, warnings)
    return tree


def _included(entry: include.Entry, variables: Mapping[str, str], warnings: list[str],
              chain: tuple[Path, ...]) -> Node:
    """An `include` entry as a project of its own: its `.env` (or `env_file`) fills in the variables the
    including project does not set (compose's order), its `env_file:` paths are relative to its folder."""
    own = read_dotenvs(entry.env_files or _default_dotenv(entry.project_dir), variables)
    scope = {**own, **variables}
    tree = merge_files([_file_tree(f, scope, warnings, chain) for f in entry.files])
    _resolve_environments(tree, entry.project_dir, scope)
    return tree


# ------------------------------------------------------------------------------------------------
# interpolation


def _interpolated(node: Node, variables: Mapping[str, str], warnings: list[str], path: KeyPath = ()) -> Node:
    if isinstance(node.children, dict):
        for key, child in node.children.items():
            node.children[key] = _interpolated(child, variables, warnings, (*path, key))
    elif isinstance(node.children, list):
        node.children[:] = [_interpolated(c, variables, warnings, (*path, i)) for i, c in enumerate(node.children)]
    elif isinstance(node.value, str) and "$" in node.value:
        try:
            result = interpolate(node.value, variables.get)
        except InterpolationError as e:
            where = Where(node.origin.file, node.origin.line, dotted(path) or None,
                          (e.variable,) if e.variable else ())
            raise SpecError(e.message, hint=e.hint, where=where) from None
        warnings += [f"the variable `{v}` is not set (`{dotted(path)}`, {node.origin.file}:{node.origin.line}):"
                     " using an empty string" for v in result.unset]
        origin = Origin(node.origin.file, node.origin.line, result.used)
        return Node(result.text, origin)
    return node


# ------------------------------------------------------------------------------------------------
# env_file and environment


def _resolve_environments(tree: Node, project_dir: Path, variables: Mapping[str, str]) -> None:
    services = tree.get("services")
    if services is None or not isinstance(services.children, dict):
        return
    for name, svc in services.children.items():
        if isinstance(svc.children, dict):
            _resolve_from_files(svc, ("services", name), project_dir, variables, "env_file", "environment")
            _resolve_from_files(svc, ("services", name), project_dir, variables, "label_file", "labels")


def _resolve_from_files(svc: Node, path: KeyPath, project_dir: Path, variables: Mapping[str, str], file_key: str,
                        key: str) -> None:
    """`file_key:`'s files (`env_file`, `label_file`: KEY=VALUE lines) first, the mapping `key` over them.
    In `environment` a value-less `KEY` comes from the variables (and is left out when they do not set
    it, as compose does); a value-less label is empty."""
    assert isinstance(svc.children, dict)
    declared = svc.children.get(key)
    own = as_mapping(declared) if declared is not None else None
    if own is not None and not isinstance(own.children, dict):
        return  # not a list of strings nor a mapping: the settings table says what it takes
    files = svc.children.pop(file_key, None)
    merged: dict[str, Node] = {}
    for file in _env_files(files, dotted((*path, file_key)), project_dir) if files is not None else []:
        for e in dotenv.read(file, variables.get):
            merged[e.key] = Node(e.value, Origin(str(file), e.line))
    merged.update(own.children if own is not None and isinstance(own.children, dict) else {})
    bare = [name for name, node in merged.items() if node.value is None and node.children is None]
    for name in bare if key == "environment" else []:
        if name in variables:
            node = merged[name]
            merged[name] = Node(variables[name], Origin(node.origin.file, node.origin.line, (name,)))
        else:
            del merged[name]
    if files is not None or own is not None:
        svc.children[key] = mapping(merged, (own or svc).origin)


def _env_files(node: Node, key: str, project_dir: Path) -> list[Path]:
    """The files of an `env_file:` (or `label_file:`, `key` says which): a path, a list, `{path, required}`."""
    name = key.rsplit(".", 1)[-1]
    items = node.children if isinstance(node.children, list) else [node]
    out = []
    for item in items:
        path_node, required = item, True
        if isinstance(item.children, dict):
            unknown = sorted(set(item.children) - {"path", "required"})
            if unknown:
                raise SpecError(f"`{name}` entries take `path` and `required`, not `{unknown[0]}`",
                                where=Where(item.origin.file, item.origin.line, key),
                                hint="write `{path: FILE, required: false}` (the `format` key is not supported)")
            path_node = item.children.get("path") or item
            flag = item.children.get("required")
            required = flag is None or flag.value is not False
        if not isinstance(path_node.value, str) or not path_node.value:
            raise SpecError(f"`{name}` takes a path, a list of paths, or `{{path: FILE, required: false}}`",
                            where=Where(item.origin.file, item.origin.line, key),
                            hint=f"write `{name}: ./FILE` or `{name}: [{{path: ./FILE, required: false}}]`")
        file = (project_dir / Path(path_node.value).expanduser()).resolve()
        if file.is_file():
            out.append(file)
        elif required:
            raise SpecError(f"{name.replace('_', ' ')} `{path_node.value}` does not exist (looked for `{file}`)",
                            where=Where(path_node.origin.file, path_node.origin.line, key),
                            hint="paths are relative to the project folder (the first file's); "
                                 "mark an optional one `{path: FILE, required: false}`")
    return out


# ------------------------------------------------------------------------------------------------
# profiles


def _drop_inactive(tree: Node, active: set[str]) -> None:
    """A service with `profiles:` runs only when one of them is active (`--profile`, COMPOSE_PROFILES;
    `*` activates all); one without runs always."""
    services = tree.get("services")
    if services is None or not isinstance(services.children, dict) or "*" in active:
        return
    for name, svc in list(services.children.items()):
        profiles = svc.get("profiles")
        listed = profiles.children if profiles is not None else None
        if isinstance(listed, list) and not {str(p.value) for p in listed} & active:
            del services.children[name]
