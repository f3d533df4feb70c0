"""The row model, ratios, and the report views (terminal, JSON, CSV, HTML) on a hand-made report."""

from __future__ import annotations

import csv
import io
import json

import pytest

from vmctl.compare import report as views
from vmctl.compare.results import Report, Verdict, row, with_ratios
from vmctl.compare.start_time import median_phases


def _report(accel: str = "tcg") -> Report:
    rows = [
        row("start", "runc", "start_seconds", "s", [0.05, 0.07, 0.06], "none",
            phases={"runtime create": 0.03, "start": 0.01, "first output": 0.02}),
        row("start", "microvm", "start_seconds", "s", [4.1, 4.3], accel,
            phases={"define": 0.01, "firmware+kernel to init": 2.0, "first output": 0.5}),
        row("idle", "runc", "memory_mib", "MiB", [2.0], "none"),
        row("idle", "microvm", "memory_mib", "MiB", [240.0], accel,
            note="PSS of host processes: qemu-system-x86[1] 240"),
        row("cpu", "runc", "cpu_bogo_ops_per_s", "bogo-ops/s", [3000, 2900], "none", higher_is_better=True),
        row("cpu", "microvm", "cpu_bogo_ops_per_s", "bogo-ops/s", [300, 310], accel, higher_is_better=True),
    ]
    return Report(accel=accel, accel_reason="test", host={"cpu": "x", "cpus": 2, "kernel": "6.1", "cgroups": "v2",
                                                           "memory_mib": 1, "workload": {"service": "b", "image": "i"}},
                  versions={"runc": "1"}, sandboxes=["runc", "microvm"], runs=2, results=with_ratios(rows, "runc"),
                  isolation=[Verdict("kernel", "runc", True, "same boot_id", "m"),
                             Verdict("kernel", "microvm", False, "own kernel", "m"),
                             Verdict("block_devices", "runc", None, "undecided", "m")])


def test_row_summarises_samples() -> None:
    r = row("w", "s", "m", "s", [3, 1, 2], "none")
    assert (r.median, r.min, r.max, r.samples) == (2, 1, 3, (3.0, 1.0, 2.0))
    assert r.spread == pytest.approx(1.0)
    with pytest.raises(ValueError):
        row("w", "s", "m", "s", [], "none")


def test_ratios_are_to_the_baseline() -> None:
    rep = _report()
    vm = rep.rows(workload="cpu", sandbox="microvm")[0]
    assert vm.ratio == pytest.approx(305 / 2950, abs=1e-3)
    assert rep.rows(workload="cpu", sandbox="runc")[0].ratio == 1.0


def test_median_phases_keep_order() -> None:
    assert list(median_phases([{"a": 1.0, "b": 3.0}, {"a": 2.0, "b": 1.0, "c": 4.0}])) == ["a", "b", "c"]


def test_json_has_the_documented_shape() -> None:
    data = json.loads(views.to_json(_report()))
    assert data["accel"] == "tcg" and data["emulated"] and "TCG" in data["warning"]
    assert {"workload", "sandbox", "metric", "unit", "median", "samples", "accel"} <= set(data["results"][0])
    assert data["isolation"][0] == {"probe": "kernel", "sandbox": "runc", "shared_with_host": True,
                                    "evidence": "same boot_id", "meaning": "m"}
    assert json.loads(views.to_json(_report("kvm")))["warning"] is None


def test_terminal_table_one_column_per_sandbox_and_tcg_banner() -> None:
    text = views.terminal(_report())
    assert "TCG" in text.splitlines()[1]
    header = next(line for line in text.splitlines() if line.startswith("measurement"))
    assert header.split() == ["measurement", "runc", "microvm"]
    assert "(0.10x)" in text and "SHARED" in text and "isolated" in text and " ? " in text + " "
    assert "TCG" not in views.terminal(_report("kvm")).splitlines()[0]


def test_csv_rows() -> None:
    rows = list(csv.reader(io.StringIO(views.to_csv(_report()))))
    assert rows[0][:3] == ["workload", "sandbox", "metric"]
    assert any(r[0] == "isolation" and r[2] == "kernel" for r in rows)


def test_html_is_self_contained_with_plots() -> None:
    pytest.importorskip("matplotlib")
    page = views.html(_report())
    assert page.count("data:image/png;base64,") == 3
    assert "software emulation" in page and 'class="SHARED"' in page and 'class="isolated"' in page
    assert "<script src" not in page and "http://" not in page and "https://" not in page


def test_kvm_nested_under_an_emulated_cpu_is_flagged_in_every_view() -> None:
    """KVM in a host whose CPU is emulated (the nested test host): `kvm`, and flagged as emulation figures."""
    rep = _report("kvm")
    rep.host_emulated = True
    label = "kvm (nested under TCG: correctness only, not speed)"
    assert rep.emulated and rep.accel_label == label
    text = views.terminal(rep)
    assert f"accelerator: {label.upper()}" in text and "correctness" in (rep.banner() or "")
    data = json.loads(views.to_json(rep))
    assert (data["accel"], data["accel_label"], data["host_emulated"], data["emulated"]) == ("kvm", label, True, True)
    assert "emulated" in next(csv.reader(io.StringIO(views.to_csv(rep))))
    plain = _report("kvm")
    assert not plain.emulated and plain.banner() is None and plain.accel_label == "kvm"


def test_pairs_get_ratios_to_the_baseline_pair_and_a_table_of_their_own() -> None:
    from vmctl.compare.report import metric_grid, network_grid
    from vmctl.compare.results import Report, row, with_ratios

    rows = with_ratios([row("peers", "runc -> runc", "rtt_ms", "ms", [0.05], "none"),
                        row("peers", "microvm -> microvm", "rtt_ms", "ms", [1.0], "tcg"),
                        row("start", "runc", "start_seconds", "s", [0.1], "none")], "runc")
    assert [r.ratio for r in rows] == [1.0, 20.0, 1.0]
    report = Report(accel="tcg", accel_reason="", host={}, versions={}, sandboxes=["runc", "microvm"], runs=1,
                    skipped={}, results=rows)
    headers, grid = network_grid(report)
    assert headers == ["pair", "round trip by name (redis PING, p50)"]
    assert grid == [["runc -> runc", "0.050 ms (1.00x)"], ["microvm -> microvm", "1.000 ms (20.00x)"]]
    assert [g[0] for g in metric_grid(report)[1]] == ["start: cold start to first output"]  # pairs stay out
