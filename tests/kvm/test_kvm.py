"""vmctl's KVM branch, for real: the CLI inside the nested KVM test host L1 (bench/kvmhost.py).

L1 runs under TCG with an emulated SVM CPU, so KVM in it is real KVM at TCG speed: these tests check
that the KVM path works (probe, `type='kvm'`, host-passthrough, labels), never how fast it is. One L1 is
shared by the module; each test leaves L1 as it found it (`down`, no QEMU). On a host where L1 cannot
get KVM they fail, naming what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench import kvmhost
from examples.build_images import build_image
from tests.conftest import ROOT
from tests.kvm.conftest import KvmHost, qemus_in_l1, sh, vmctl, vmctl_env
from vmctl.guest_image import Cpio

pytestmark = [pytest.mark.kvm, pytest.mark.vm]
NESTED_LABEL = "kvm (nested under TCG: correctness only, not speed)"

ENV = """\
name: kvm-one
machines:
  box: {memory: 256M, accel: auto, template: false}   # the cold KVM boot users run first; `web` may restore
services:
  web:
    image: ./web.tar
    environment: {GREETING: from-kvm}
    ports: ["18080:8080"]
    vm: {memory: 256M, accel: kvm}
    healthcheck: {test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"], interval: 1s, retries: 90}
"""

HANGING = """\
name: kvm-hang
machines:
  stuck: {memory: 256M, accel: kvm, initrd: ./hang.cpio}
"""
HANG_INIT = b"#!/bin/busybox sh\necho L2-HANGS-ON-PURPOSE > /dev/console\nwhile :; do /bin/busybox sleep 60; done\n"

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=30).read().decode())"


def _env_dir(tmp_path_factory: pytest.TempPathFactory, name: str, text: str) -> Path:
    """An environment folder on the host; L1 sees it through virtiofs (the host's /tmp under its overlay)."""
    folder = tmp_path_factory.mktemp(name)
    (folder / "vmctl.yaml").write_text(text)
    return folder


def _hanging_initrd(path: Path) -> None:
    """An initramfs whose init says one line and then waits forever: a guest that never becomes READY."""
    cpio = Cpio()
    cpio.dir("dev")
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", Path(shutil.which("busybox") or "/bin/busybox").read_bytes(), 0o755)
    cpio.file("init", HANG_INIT, 0o755)
    path.write_bytes(cpio.serialize())


def _web_tar() -> Path:
    tar = ROOT / "examples" / "images" / "web.tar"
    if not tar.exists():
        build_image("web", tar.parent)
    return tar


def _json(result: kvmhost.Result) -> Any:
    return json.loads(result.check().stdout)


def _down_leaves_nothing(l1: kvmhost.L1, folder: Path) -> None:
    vmctl(l1, "-f", str(folder / "vmctl.yaml"), "down", cwd=folder).check()
    assert not qemus_in_l1(l1), "`down` left a QEMU running in L1"


def test_l1_has_kvm_from_the_emulated_svm_cpu(kvm_host: KvmHost) -> None:
    def body(l1: kvmhost.L1) -> str:
        return sh(l1, "ls -l /dev/kvm && dmesg | grep -E 'Nested (Virtualization|Paging) enabled'").check().stdout

    out = kvm_host.scenario(body)
    assert "crw-rw----" in out and "Nested Virtualization enabled" in out and "Nested Paging enabled" in out


def test_a_command_in_l1_passes_its_exit_code_and_output_through(kvm_host: KvmHost) -> None:
    result = kvm_host.scenario(lambda l1: sh(l1, 'echo "out $1"; echo err >&2; exit 3', "arg"))
    assert (result.returncode, result.stdout, result.stderr) == (3, "out arg\n", "err\n")
    with pytest.raises(AssertionError, match=r"exited 3[\s\S]*out arg[\s\S]*err"):
        result.check()


def test_doctor_reports_kvm_from_a_real_probe_and_the_nesting(kvm_host: KvmHost) -> None:
    def body(l1: kvmhost.L1) -> tuple[dict[str, Any], str]:
        return _json(vmctl(l1, "doctor", "--json")), vmctl(l1, "doctor").check().stdout

    data, text = kvm_host.scenario(body)
    assert data["kvm"]["usable"] is True, data["kvm"]
    assert data["kvm"]["reason"].startswith("a probe guest booted under KVM"), data["kvm"]
    assert data["kvm"]["module"] == "kvm_amd" and data["accel"] == "kvm"
    assert data["host"]["virtualization"]["emulated"] is True, data["host"]
    assert data["accel_label"] == NESTED_LABEL
    assert NESTED_LABEL.upper() in text and "emulated CPU" in text


def test_a_machine_with_accel_auto_and_a_service_with_accel_kvm_run_under_kvm(
        kvm_host: KvmHost, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One `up` in L1 (two L2 boots at TCG speed are the module's longest wait): `box` resolves `auto` by
    the probe, `web` asks for `kvm`; both are KVM domains with the host's CPU, say so in every view, and
    answer (exec in the guest, the service on its published port)."""
    folder = _env_dir(tmp_path_factory, "kvm-one", ENV)
    shutil.copy(_web_tar(), folder / "web.tar")
    file = str(folder / "vmctl.yaml")

    def body(l1: kvmhost.L1) -> dict[str, Any]:
        up = vmctl(l1, "-f", file, "up", "--timeout", "300", cwd=folder)
        try:
            up.check()
            xml = vmctl(l1, "-f", file, "render", cwd=folder).check().stdout  # `auto`: up's probe answer
            assert xml.count('<domain type="kvm"') == 2, xml
            assert xml.count('<cpu mode="host-passthrough" check="none"/>') == 2, xml
            assert "booting (kvm," in up.stderr and f"using {NESTED_LABEL}" in up.stderr, up.stderr
            status = _json(vmctl(l1, "-f", file, "status", "--json", cwd=folder))
            table = vmctl(l1, "-f", file, "status", cwd=folder).check()
            assert "kvm*" in table.stdout and NESTED_LABEL in table.stderr, table
            # one call for two checks: each vmctl command costs seconds of Python start-up in L1
            guest = vmctl(l1, "-f", file, "exec", "box", "--", "sh", "-c",
                          "dmesg | grep -m1 'Hypervisor detected'; exit 7", cwd=folder)
            ps = vmctl(l1, "-f", file, "ps", cwd=folder).check().stdout
            page = l1.run(["python3", "-c", FETCH, "http://127.0.0.1:18080/"], timeout=60).check().stdout
            return {"status": status, "guest": (guest.returncode, guest.stdout), "ps": ps, "page": page}
        finally:
            _down_leaves_nothing(l1, folder)

    found = kvm_host.scenario(body)
    machines = {m["name"]: m for m in found["status"]["machines"]}
    box, web = machines["box"], machines["web"]
    assert (box["state"], box["accel"], box["host_emulated"], box["accel_label"]) == (
        "running", "kvm", True, NESTED_LABEL), box
    assert (web["accel"], web["accel_label"], web["dedicated_to"]) == ("kvm", NESTED_LABEL, "web"), web
    code, out = found["guest"]
    assert code == 7 and "Hypervisor detected: KVM" in out, found["guest"]  # the guest's exit code passes through
    assert "127.0.0.1:18080->8080/tcp" in found["ps"] and "running" in found["ps"]
    assert "greeting: from-kvm" in found["page"]


def test_a_hanging_guest_is_a_bounded_failure_with_its_console(kvm_host: KvmHost,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = _env_dir(tmp_path_factory, "kvm-hang", HANGING)
    _hanging_initrd(folder / "hang.cpio")
    file = str(folder / "vmctl.yaml")

    def body(l1: kvmhost.L1) -> kvmhost.Result:
        try:
            return vmctl(l1, "-f", file, "up", "--timeout", "45", cwd=folder, timeout=240)
        finally:
            _down_leaves_nothing(l1, folder)

    up = kvm_host.scenario(body)
    assert up.returncode == 1, up
    assert "did not become ready within 45 s" in up.stderr and "L2-HANGS-ON-PURPOSE" in up.stderr, up.stderr


def test_compare_in_l1_flags_every_microvm_figure_as_nested(kvm_host: KvmHost) -> None:
    if not (ROOT / "examples" / "images" / "tools.tar").exists():
        build_image("tools", ROOT / "examples" / "images")

    def body(l1: kvmhost.L1) -> tuple[dict[str, Any], str]:
        args = ("-f", str(ROOT / "examples" / "compare.yaml"), "--progress", "plain", "compare",
                "--sandboxes", "runc,microvm", "--runs", "1", "--only", "start,isolation")
        result = vmctl(l1, *args, "--json", timeout=900).check()
        assert not qemus_in_l1(l1), "compare left a QEMU running in L1"
        return json.loads(result.stdout), result.stderr

    data, stderr = kvm_host.scenario(body)
    assert (data["accel"], data["accel_label"], data["emulated"], data["host_emulated"]) == (
        "kvm", NESTED_LABEL, True, True)
    vm_rows = [r for r in data["results"] if r["sandbox"] == "microvm"]
    assert vm_rows and all(r["accel"] == "kvm" and r["emulated"] for r in vm_rows), vm_rows
    assert all(not r["emulated"] for r in data["results"] if r["sandbox"] == "runc")
    assert {"runc", "microvm"} <= {v["sandbox"] for v in data["isolation"]}
    assert NESTED_LABEL in data["warning"] and NESTED_LABEL in stderr


def test_the_boot_benchmark_runs_unchanged_on_a_kvm_host_and_labels_its_rows_kvm(kvm_host: KvmHost) -> None:
    """bench.boot asks vmctl's probe, as `accel: auto` does: in L1 its vmctl boots, template restores and
    bare QEMU boots all run under KVM and say so (the figures themselves are TCG-slow: not read here)."""
    def body(l1: kvmhost.L1) -> dict[str, Any]:
        argv = [sys.executable, "-m", "bench.boot", "--variants", "cloud,cloud:template", "--runs", "1",
                "--parallel", "0", "--json"]
        result = l1.run(argv, env=vmctl_env(), cwd=str(ROOT), timeout=1200).check()
        assert not qemus_in_l1(l1), "bench.boot left a QEMU running in L1"
        return dict(json.loads(result.stdout))

    data = kvm_host.scenario(body)
    assert data["accel"] == "kvm", data["accel"]
    assert {r["variant"] for r in data["summary"]} == {"cloud", "cloud (template)"}
    assert data["runs"] and all(r["accel"] == "kvm" for r in [*data["runs"], *data["summary"]]), data["runs"]
    bare = [r for r in data["runs"] if "bare_ready_s" in r]
    assert bare and all(r["bare_ready_s"] > 0 for r in bare), bare
    templated = next(r for r in data["summary"] if r["variant"] == "cloud (template)")
    assert templated["up_restored_s"] is not None, templated  # restored, not booted


def test_l1_without_svm_fails_naming_it_with_the_kernel_log() -> None:
    with pytest.raises(kvmhost.NoKvmInL1) as failure, kvmhost.L1(kvmhost.Config(cpu="qemu64,-svm", memory_mib=512)):
        pass
    assert "without /dev/kvm" in str(failure.value) and "qemu64,-svm" in str(failure.value)
    assert "VMCTL-L1-KVM missing" in str(failure.value) and "kvm: no hardware support for 'kvm_amd'" in str(
        failure.value)


def test_a_hung_l1_is_bounded_and_the_scenario_retries_in_a_fresh_l1() -> None:
    attempts: list[int] = []

    def body(l1: kvmhost.L1) -> str:
        attempts.append(l1.pid or 0)
        if len(attempts) == 1:
            assert l1.pid is not None
            os.kill(l1.pid, signal.SIGSTOP)  # L1 freezes: its agent cannot answer
            l1.run(["true"], timeout=5, grace=5)
        return l1.run(["echo", "fresh"], timeout=30).check().stdout

    log: list[str] = []
    session = kvmhost.Session(kvmhost.Config(memory_mib=512), log=log.append)
    try:
        assert session.scenario(body) == "fresh\n"
    finally:
        session.close()
    assert len(attempts) == 2 and attempts[0] != attempts[1] and session.retries == 1
    assert "gave no answer within 10 s" in log[0]


def test_an_l1_that_stops_ticking_counts_as_hung_long_before_the_commands_deadline() -> None:
    """A long command keeps L1 alive by the agent's ticks; a frozen L1 is a fault after `stall` seconds,
    not at the command's timeout (which once cost CI 11 minutes)."""
    with kvmhost.L1(kvmhost.Config(memory_mib=512, tick=1, stall=6)) as l1:
        assert l1.run(["sleep", "10"], timeout=60).check().seconds >= 10  # silent output, ticking agent
        assert l1.pid is not None
        os.kill(l1.pid, signal.SIGSTOP)
        start = time.monotonic()
        with pytest.raises(kvmhost.L1Fault, match="sent nothing for 6 s"):
            l1.run(["sleep", "1"], timeout=600)
        assert time.monotonic() - start < 30
