"""Named volumes: compose's top-level `volumes:`, each a folder vmctl keeps under its state root.

A named volume is a folder `STATE/volumes/NAME` (NAME is compose's `PROJECT_KEY`, or the volume's
`name:`), so it reaches a workload the way a host folder does: bound by runc on the host, shared over
virtio-9p into a microVM (one device per folder, so several services and machines can mount it at
once, as compose allows). Plain folders need no driver, no image format and no size, and survive
`down`; `down -v` removes them. A new, empty volume is first filled from the image's content at the
mount point, as docker does ("copy-up"), so an image's files and their owners are there on first use.

Pure parsing (the settings of `volumes.NAME:`) and the host side (create, fill, remove) live here
together; `spec` parses the file with this table, and `lifecycle` calls `ensure` and `remove`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl.errors import HostError
from vmctl.paths import state_root
from vmctl.runner import run, which
from vmctl.settings import Ctx, Setting, Support, p_bool, p_only, p_str, parse_named_tables
from vmctl.yamlpos import KeyPath

# docker's rule for volume names (and what may become one folder's name: never `/` or `..`)
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NamedVolume:
    key: str  # its key under top-level `volumes:`
    name: str  # compose's name: `PROJECT_KEY`, or its `name:`
    external: bool = False  # made by the user beforehand: vmctl never creates nor removes it

    @property
    def path(self) -> Path:
        return volumes_root() / self.name


def volumes_root() -> Path:
    return state_root() / "volumes"


def p_volume_name(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = p_str(value, path, ctx)
    if not VOLUME_NAME.match(text) or len(text) > 128:
        ctx.fail(path, f"invalid volume name {text!r}",
                 "use letters, digits, `_`, `.` and `-` (starting with a letter or digit), up to 128")
    return text


p_volume_driver = p_only("local", "volume driver", "every named volume is a folder vmctl keeps")


VOLUME_SETTINGS = (
    Setting("name", p_volume_name, None, "string", "the volume's name (default: `PROJECT_KEY`, as compose)"),
    Setting("external", p_bool, False, "bool",
            "made beforehand (`STATE/volumes/NAME` must exist): never created, nor removed by `down -v`"),
    Setting("driver", p_volume_driver, "local", "local", "a folder under vmctl's state root (the only driver)"),
    Setting("driver_opts", lambda v, p, c: None, None, "mapping",
            "driver options are the docker `local` driver's mount options; vmctl's volumes are plain folders",
            support=Support.REFUSED, hint="remove `driver_opts`, or mount the device or share as a host folder"),
    Setting("labels", lambda v, p, c: None, None, "mapping|list", "volume metadata; nothing reads it",
            support=Support.IGNORED),
)


def p_top_volumes(value: Any, path: KeyPath, ctx: Ctx) -> dict[str, Any]:
    """The top-level mapping: key -> its settings (an empty entry, `data:`, is a plain volume)."""
    return parse_named_tables(VOLUME_SETTINGS, value, path, ctx, "volumes", p_volume_name)


def declared(project: str, top: Mapping[str, Mapping[str, Any]]) -> tuple[NamedVolume, ...]:
    return tuple(NamedVolume(key, raw["name"] or f"{project}_{key}", bool(raw["external"])) for key, raw in top.items())


# ------------------------------------------------------------------------------------------------
# the host side


def ensure(volumes: Iterable[NamedVolume], seeds: Sequence[tuple[Path, Path, str]] = ()) -> list[str]:
    """Create the volumes that do not exist yet; return their names. `seeds`: (volume's folder, an
    image's rootfs, the mount point) for copy-up, done only into a volume this call created, as docker
    fills only a new, empty volume. An external volume must exist."""
    made: list[str] = []
    for vol in volumes:
        if vol.external:
            if not vol.path.is_dir():
                raise HostError(f"external volume `{vol.name}` does not exist (no folder `{vol.path}`)",
                                hint=f"create it (`mkdir -p {vol.path}`), or drop `external: true`")
            continue
        if vol.path.is_dir():
            continue
        volumes_root().mkdir(parents=True, exist_ok=True)
        partial = vol.path.with_name(f".{vol.name}.new")  # complete, or not there at all
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o755)
        source = next((_in_image(rootfs, target) for folder, rootfs, target in seeds if folder == vol.path), None)
        if source is not None:
            _copy_up(source, partial)
        os.rename(partial, vol.path)
        made.append(vol.name)
    return made


def _in_image(rootfs: Path, target: str) -> Path | None:
    """The folder at `target` inside the image, or None: never through a symlink, which would name a
    folder of this machine (an image's `/data -> /etc` is the host's /etc when followed here)."""
    path = rootfs
    for part in Path(target).relative_to("/").parts:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def _copy_up(source: Path, target: Path) -> None:
    """The image's files at the mount point, with their owners and modes (the folder's own too)."""
    run([which("cp", package="coreutils"), "-a", "--", f"{source}/.", str(target)], timeout=600)
    st = source.stat()
    os.chown(target, st.st_uid, st.st_gid)
    target.chmod(st.st_mode & 0o7777)


def remove(volumes: Iterable[NamedVolume]) -> list[str]:
    """Remove the environment's own volumes (never an external one); return the names removed."""
    removed = []
    for vol in volumes:
        if not vol.external and vol.path.exists():
            shutil.rmtree(vol.path)
            removed.append(vol.name)
    return removed
