"""The YAML reference, generated from the settings tables in `spec` (the README embeds it; a test
keeps the two equal). Run `python -m vmctl.reference` to print it."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from vmctl import spec

SECTIONS: tuple[tuple[str, Sequence[spec.Setting]], ...] = (
    ("top level", spec.ENV_SETTINGS),
    ("`libvirt:`", spec.LIBVIRT_SETTINGS),
    ("`machines.NAME:` (and `defaults:`)", spec.MACHINE_SETTINGS),
    ("`machines.NAME.disks[]`", spec.DISK_SETTINGS),
    ("`services.NAME:`", spec.SERVICE_SETTINGS),
    ("`services.NAME.vm:`", spec.VM_SETTINGS),
    ("`services.NAME.healthcheck:`", spec.HEALTHCHECK_SETTINGS),
    ("`networks.NAME:`", spec.NETWORK_SETTINGS),
    ("`services.NAME.networks.NAME:`", spec.ATTACHMENT_SETTINGS),
)
BEGIN, END = "<!-- reference:begin -->", "<!-- reference:end -->"


def _default(setting: spec.Setting) -> str:
    value = setting.default
    if setting.shown:
        return f"`{setting.shown}`"
    if value is spec.REQUIRED:
        return "**required**"
    if value is None or value == ():
        return "-"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    parts = []
    for title, table in SECTIONS:
        rows = [f"| `{s.key}` | {_cell(s.kind)} | {_default(s)} | {_cell(s.help)} |" for s in table]
        parts.append(f"#### {title}\n\n| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"


def readme_block(readme: Path) -> str:
    text = readme.read_text()
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n") + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
