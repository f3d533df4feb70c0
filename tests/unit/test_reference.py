"""The README's YAML reference is generated from the settings table; this keeps them equal."""

from __future__ import annotations

from tests.conftest import ROOT
from vmctl import reference


def test_readme_reference_matches_the_settings_table() -> None:
    assert reference.readme_block(ROOT / "README.md") == reference.markdown(), (
        "README.md's reference is stale: regenerate it with `python -m vmctl.reference`")


def test_every_setting_has_help_and_a_type() -> None:
    for _title, table in reference.SECTIONS:
        for setting in table:
            assert setting.help and setting.kind, setting.key
