"""vmctl: containers inside real microVMs, through libvirt, side by side with plain containers."""

__version__ = "0.1.0"
