"""vmctl: containers inside real microVMs, through libvirt, side by side with plain containers."""

import os as _os

__version__ = "0.1.0"

# libvirt logs warnings (domain taints, ...) to stderr from the moment it is imported, and the embedded
# driver runs in this process: send its log to a file before any module of ours imports libvirt.
if "LIBVIRT_LOG_OUTPUTS" not in _os.environ:
    from vmctl.paths import private_dir as _private_dir
    from vmctl.paths import state_root as _state_root

    _os.environ["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{_private_dir(_state_root()) / 'libvirt.log'}"
