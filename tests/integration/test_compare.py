"""`vmctl compare` end to end: runc and a microVM, two runs, JSON + HTML, rendered in headless Chromium.

One CLI run (a few minutes under TCG) feeds every assertion. Needs root, runc, slirp4netns, QEMU and the
locally built `tools` image (built here when missing); the browser check needs `chromium`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from examples.build_images import build_image
from tests.conftest import ROOT, qemu_pids, run_vmctl

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
    pytest.mark.skipif(shutil.which("runc", path="/usr/sbin:/usr/bin") is None, reason="runc is not installed"),
]
EXAMPLE = ROOT / "examples" / "compare.yaml"


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    if not (ROOT / "examples" / "images" / "tools.tar").exists():
        build_image("tools", ROOT / "examples" / "images")
    out = tmp_path_factory.mktemp("compare-report")
    proc = run_vmctl("-f", str(EXAMPLE), "--progress", "plain", "compare", "--sandboxes", "runc,microvm",
                     "--runs", "2", "--perf-seconds", "1", "--json", "--out", str(out), timeout=720)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _compare_qemus(), "compare left a QEMU process behind"
    return json.loads(proc.stdout), out, proc.stderr


def _compare_qemus() -> list[int]:
    """QEMU processes of compare's own environment (other tests may run VMs of their own meanwhile)."""
    found = []
    for pid in qemu_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"guest=vmctl-vmctl-compare-" in argv or b"guest=vmctl-compare-" in argv:
            found.append(pid)
    return found


def _row(data: dict[str, Any], sandbox: str, workload: str, metric: str) -> dict[str, Any]:
    found = [r for r in data["results"] if (r["sandbox"], r["workload"], r["metric"]) == (sandbox, workload, metric)]
    assert found, f"no {workload}/{metric} row for {sandbox}"
    return found[0]


def _verdict(data: dict[str, Any], sandbox: str, probe: str) -> dict[str, Any]:
    found = [v for v in data["isolation"] if (v["sandbox"], v["probe"]) == (sandbox, probe)]
    assert found, f"no `{probe}` verdict for {sandbox}"
    return found[0]


def test_json_schema_and_context(result: tuple[dict[str, Any], Path, str]) -> None:
    data, _, stderr = result
    assert data["accel"] in ("kvm", "tcg") and data["sandboxes"] == ["runc", "microvm"]
    assert {"kernel", "cpu", "cpus"} <= set(data["host"])
    assert {"runc", "qemu", "libvirt"} <= set(data["versions"])
    for r in data["results"]:
        assert {"workload", "sandbox", "metric", "unit", "median", "min", "max", "samples", "accel"} <= set(r)
        assert r["min"] <= r["median"] <= r["max"] and r["samples"]
    for v in data["isolation"]:
        assert set(v) >= {"probe", "sandbox", "shared_with_host", "evidence", "meaning"}
    if data["accel"] == "tcg":
        assert data["emulated"] and "TCG" in data["warning"] and "TCG" in stderr


def test_start_times_and_phases(result: tuple[dict[str, Any], Path, str]) -> None:
    data, _, _ = result
    runc, vm = _row(data, "runc", "start", "start_seconds"), _row(data, "microvm", "start", "start_seconds")
    assert len(runc["samples"]) == 2 and len(vm["samples"]) == 2
    assert 0 < runc["median"] < vm["median"]
    assert {"firmware+kernel to init", "init to SSH-ready", "container create+start", "first output"} <= set(
        vm["phases"])
    assert {"runtime create", "start", "first output"} <= set(runc["phases"])
    assert abs(sum(vm["phases"].values()) - vm["median"]) < 0.25 * vm["median"]


def test_service_to_service_pairs(result: tuple[dict[str, Any], Path, str]) -> None:
    """Round trips and throughput by name on the environment network, for each pair, ratios to runc's."""
    data, out, _ = result
    for pair in ("runc -> runc", "microvm -> microvm", "runc -> microvm", "microvm -> runc"):
        rtt, thr = _row(data, pair, "peers", "rtt_ms"), _row(data, pair, "peers", "throughput_mbit")
        assert len(rtt["samples"]) == 2 and rtt["median"] > 0 and thr["median"] > 0
        assert rtt["accel"] == ("none" if pair == "runc -> runc" else data["accel"])
    assert _row(data, "runc -> runc", "peers", "throughput_mbit")["ratio"] == 1.0
    assert "Service to service" in (out / "index.html").read_text()


def test_portability_without_hosts_says_why(result: tuple[dict[str, Any], Path, str]) -> None:
    """examples/compare.yaml declares no hosts: the default run skips the move with a reason, and no row
    pretends to have moved (tests/hosts/test_migrate.py measures it on the bed)."""
    data, _, _ = result
    assert "needs two hosts" in data["skipped"]["portability/microvm"], data["skipped"]
    criu_rows = [r for r in data["results"] if r["workload"] == "portability" and r["sandbox"] == "runc"]
    assert bool(criu_rows) != ("portability/runc" in data["skipped"])  # measured, or skipped: never both
    assert criu_rows or "criu" in data["skipped"]["portability/runc"]
    assert not [r for r in data["results"] if r["workload"] == "portability" and r["sandbox"] == "microvm"]


def test_footprints_positive_and_microvm_includes_qemu(result: tuple[dict[str, Any], Path, str]) -> None:
    data, _, _ = result
    for sandbox in ("runc", "microvm"):
        assert _row(data, sandbox, "idle", "memory_mib")["median"] > 0
        assert _row(data, sandbox, "peak", "memory_mib")["median"] > 0
    vm = _row(data, "microvm", "idle", "memory_mib")
    assert "qemu-system" in vm["note"]
    assert vm["median"] > _row(data, "runc", "idle", "memory_mib")["median"]
    assert _row(data, "microvm", "config", "guest_ram_mib")["median"] == 256
    # Free page reporting: the guest's freed 64 MiB peak goes back to the host within seconds.
    peak, after = _row(data, "microvm", "peak", "memory_mib")["median"], _row(data, "microvm", "after_peak",
                                                                              "memory_mib")["median"]
    assert after < peak - 16, (peak, after)


def test_isolation_answers(result: tuple[dict[str, Any], Path, str]) -> None:
    data, _, _ = result
    assert _verdict(data, "runc", "kernel")["shared_with_host"] is True
    assert _verdict(data, "microvm", "kernel")["shared_with_host"] is False
    for probe in ("host_processes", "network_stack", "memory_limit", "fork_bomb", "sysctl_write", "kallsyms"):
        assert _verdict(data, "runc", probe)["shared_with_host"] is False, probe
    for probe in ("host_processes", "clock", "network_stack", "memory_limit", "fork_bomb", "kernel_log",
                  "kernel_modules", "kallsyms", "sysctl_write", "block_devices", "privileged"):
        assert _verdict(data, "microvm", probe)["shared_with_host"] is False, probe
    assert _verdict(data, "runc", "clock")["shared_with_host"] is True
    assert _verdict(data, "runc", "privileged")["shared_with_host"] is True


def test_perf_ratios(result: tuple[dict[str, Any], Path, str]) -> None:
    data, _, _ = result
    cpu = _row(data, "microvm", "cpu", "cpu_bogo_ops_per_s")
    assert cpu["ratio"] is not None and cpu["ratio"] > 0
    assert _row(data, "runc", "cpu", "cpu_bogo_ops_per_s")["ratio"] == 1.0


def test_html_report_renders(result: tuple[dict[str, Any], Path, str]) -> None:
    _, out, _ = result
    index = out / "index.html"
    text = index.read_text()
    assert "data:image/png;base64," in text and "Isolation matrix" in text
    assert json.loads((out / "compare.json").read_text())["results"]
    assert (out / "compare.csv").read_text().startswith("workload,sandbox,metric")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (`apt-get install chromium`)")
    shot = out / "screenshot.png"
    with tempfile.TemporaryDirectory(prefix="cmp-chromium-") as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={shot}",
                        index.as_uri()], capture_output=True, timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 50_000, "the page rendered (almost) empty"
    from PIL import Image  # matplotlib depends on Pillow

    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((120, 240)).getcolors(maxcolors=120 * 240)
    assert colours is not None and len(colours) > 50, "the screenshot is nearly uniform"
