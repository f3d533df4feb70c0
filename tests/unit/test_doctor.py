"""`doctor`'s host facts that need no VM."""

from __future__ import annotations

from pathlib import Path

from vmctl import doctor


def test_ksm_facts(tmp_path: Path) -> None:
    assert doctor.ksm_facts(tmp_path / "none") == {"available": False, "on": False, "saving_mib": None}
    (tmp_path / "run").write_text("1\n")
    (tmp_path / "pages_sharing").write_text("2560\n")
    assert doctor.ksm_facts(tmp_path) == {"available": True, "on": True, "saving_mib": 10.0}
