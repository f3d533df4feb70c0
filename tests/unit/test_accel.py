"""The accelerator probe's cache: one answer per kernel and initramfs, so images used in turn never re-probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import accel


def test_answers_are_kept_per_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(accel, "_cache_key", lambda kernel, initrd: f"{kernel}|{initrd}")
    probes: list[str] = []

    def probe(kernel: Path, initrd: Path, key: str = "") -> accel.AccelReport:
        probes.append(key)
        return accel.AccelReport(False, "probed", None, 0.1, key)

    monkeypatch.setattr(accel, "probe", probe)
    for _ in range(3):
        for image in ("a", "b"):
            assert accel.host_report(Path(image), Path("i")).key == f"{image}|i"
    assert probes == ["a|i", "b|i"]
    (tmp_path / "accel.json").write_text('{"kvm_usable": false}')  # the one-answer format of before
    accel.host_report(Path("a"), Path("i"))
    assert probes == ["a|i", "b|i", "a|i"]

