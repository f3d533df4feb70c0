"""The YAML reference, generated from the settings tables in `spec` (the README embeds it; a test
keeps the two equal). Run `python -m vmctl.reference` to print it."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from vmctl import build, compose_values, file_mounts, fixed_nics, hooks, hostspec, settings, spec, volumes

SECTIONS: tuple[tuple[str, Sequence[settings.Setting]], ...] = (
    ("top level", spec.ENV_SETTINGS),
    ("`libvirt:`", spec.LIBVIRT_SETTINGS),
    ("`machines.NAME:` (and `defaults:`)", spec.MACHINE_SETTINGS),
    ("`machines.NAME.disks[]`", spec.DISK_SETTINGS),
    ("`services.NAME:`", spec.SERVICE_SETTINGS),
    ("`services.NAME.vm:`", spec.VM_SETTINGS),
    ("`services.NAME.build:`", build.BUILD_SETTINGS),
    ("`services.NAME.volumes[]` (the long form)", spec.MOUNT_SETTINGS),
    ("`services.NAME.healthcheck:`", spec.HEALTHCHECK_SETTINGS),
    ("`services.NAME.depends_on.NAME:`", spec.DEPENDENCY_SETTINGS),
    ("`networks.NAME:`", spec.NETWORK_SETTINGS),
    ("`networks.NAME.ipam:`", fixed_nics.IPAM_SETTINGS),
    ("`networks.NAME.ipam.config[]`", fixed_nics.IPAM_CONFIG_SETTINGS),
    ("`services.NAME.networks.NAME:`", spec.ATTACHMENT_SETTINGS),
    ("`volumes.NAME:`", volumes.VOLUME_SETTINGS),
    ("`secrets.NAME:`", file_mounts.SECRET_SETTINGS),
    ("`configs.NAME:`", file_mounts.CONFIG_SETTINGS),
    ("`services.NAME.secrets[]` and `configs[]` (the long form)", file_mounts.MOUNT_SETTINGS),
    ("`services.NAME.deploy:`", compose_values.DEPLOY_SETTINGS),
    ("`services.NAME.deploy.resources:`", compose_values.RESOURCES_SETTINGS),
    ("`services.NAME.deploy.resources.limits:` (and `reservations:`)", compose_values.LIMIT_SETTINGS),
    ("`services.NAME.ulimits.NAME:`", compose_values.ULIMIT_SETTINGS),
    ("`services.NAME.post_start[]` and `pre_stop[]`", hooks.HOOK_SETTINGS),
    ("`services.NAME.logging:`", compose_values.LOGGING_SETTINGS),
    ("`services.NAME.logging.options:`", compose_values.LOG_OPTION_SETTINGS),
    ("`hosts.NAME:`", hostspec.HOST_SETTINGS),
    ("`hosts.NAME.capacity:`", hostspec.CAPACITY_SETTINGS),
)
BEGIN, END = "<!-- reference:begin -->", "<!-- reference:end -->"


def _default(setting: settings.Setting) -> str:
    value = setting.default
    if setting.shown:
        return f"`{setting.shown}`"
    if value is settings.REQUIRED:
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


def _meaning(setting: settings.Setting) -> str:
    if setting.support is settings.Support.REFUSED:
        return f"**refused**: {setting.help}; {setting.hint}"
    if setting.support is settings.Support.IGNORED:
        return f"**ignored** (with a warning): {setting.help}"
    return setting.help


def counts() -> dict[settings.Support, int]:
    """How many keys of each mark the tables hold (each key once, however many sections show it)."""
    seen = {(id(table), s.key): s.support for _t, table in SECTIONS for s in table}
    return {mark: sum(1 for v in seen.values() if v is mark) for mark in settings.Support}


def markdown() -> str:
    parts = []
    for title, table in SECTIONS:
        rows = [f"| `{s.key}` | {_cell(s.kind)} | {_default(s)} | {_cell(_meaning(s))} |" for s in table]
        parts.append(f"#### {title}\n\n| key | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows))
    summary = ", ".join(f"{n} {mark.value}" for mark, n in counts().items())
    return f"Keys: {summary}.\n\n" + "\n\n".join(parts) + "\n"


def readme_block(readme: Path) -> str:
    text = readme.read_text()
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n") + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
