"""Where vmctl keeps things. Everything lives under two roots the user can move with env variables.

- state (`VMCTL_STATE_DIR`, default `$XDG_STATE_HOME/vmctl` or `~/.local/state/vmctl`): per-environment
  keys, console logs, state files, the embedded libvirt root. Created 0700.
- cache (`VMCTL_CACHE_DIR`, default `$XDG_CACHE_HOME/vmctl` or `~/.cache/vmctl`): guest images and
  container disk images, keyed by content hash, safe to delete.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
STAMP_AWK = TEMPLATES_DIR / "logs" / "stamp.awk"  # a container's output, line by line, with times
GUEST_IMAGES_DIR = PROJECT_ROOT / "guest_images"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def state_root() -> Path:
    explicit = os.environ.get("VMCTL_STATE_DIR")
    return Path(explicit) if explicit else _xdg("XDG_STATE_HOME", ".local/state") / "vmctl"


def cache_root() -> Path:
    explicit = os.environ.get("VMCTL_CACHE_DIR")
    return Path(explicit) if explicit else _xdg("XDG_CACHE_HOME", ".cache") / "vmctl"


def runtime_root() -> Path:
    """Short-lived, short paths (`VMCTL_RUNTIME_DIR`, default /run/vmctl for root, else
    $XDG_RUNTIME_DIR/vmctl): libvirt puts UNIX sockets under the embedded root, and a socket path
    may not exceed 108 bytes, which a path under ~/.local/state easily would."""
    explicit = os.environ.get("VMCTL_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    if os.getuid() == 0:
        return Path("/run/vmctl")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "vmctl" if xdg else Path(f"/tmp/vmctl-{os.getuid()}")


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: it holds keys and state."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
