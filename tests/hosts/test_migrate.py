"""`vmctl migrate`: a running service's microVM moved live between the bed's hosts; its name, key and
ports stay, and the ports are on the target afterwards. A client calls the service in a loop meanwhile."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench import hostbed
from tests.conftest import ROOT
from tests.hosts.conftest import hosts_yaml, pool_volumes, vmctl_in, write_env

pytestmark = [pytest.mark.vm, pytest.mark.daemon]

WEB = ROOT / "examples" / "images" / "web.tar"


def _answers(host: hostbed.BedHost) -> bool:
    proc = subprocess.run(["nsenter", f"--net={host.netns}", "wget", "-T", "1", "-q", "-O-", "http://127.0.0.1:8080/"],
                          capture_output=True, text=True, timeout=10, check=False)
    return "hostname: web" in proc.stdout


def test_migrate_moves_a_running_service_and_its_ports(bed: hostbed.HostBed, tmp_path: Path) -> None:
    env = write_env(tmp_path, "name: mig\n" + hosts_yaml(bed) + f"""\
services:
  web:
    image: {WEB}
    ports: ["8080:8080"]
    host: h1
    healthcheck: {{test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"], interval: 1s,
                  retries: 30}}
""")
    h1, h2 = bed.hosts
    up = vmctl_in(bed, "-f", str(env), "up", "--timeout", "180")
    try:
        assert up.returncode == 0, up.stderr
        same = vmctl_in(bed, "-f", str(env), "migrate", "web", "--to", "h1")
        assert same.returncode == 2 and "already runs on host `h1`" in same.stderr
        # A client on h1 calls the service until the migration returns, then one on h2 until it answers.
        stop, served = threading.Event(), []

        def client() -> None:
            while not stop.is_set():
                if _answers(h1):
                    served.append(time.monotonic())
                time.sleep(0.05)

        caller = threading.Thread(target=client)
        caller.start()
        t0 = time.monotonic()
        moved = vmctl_in(bed, "-f", str(env), "migrate", "web", "--to", "h2", "--json")
        t_end = time.monotonic()
        stop.set()
        caller.join()
        assert moved.returncode == 0, moved.stderr
        while not _answers(h2):
            assert time.monotonic() - t0 < 60, "the service did not answer on h2"
        result = json.loads(moved.stdout)
        assert (result["source"], result["target"]) == ("h1", "h2") and result["seconds"] > 0
        # What moved: the guest's memory by QEMU (at least what the idle guest holds, at most all of it
        # again, twice over if it dirtied it), and what a cold move needs: its kernel, initramfs and disks.
        assert 8 << 20 < result["memory_bytes"] < 2 * 256 << 20, result
        assert result["image_bytes"] >= result["copied_bytes"] >= 0 and result["image_bytes"] > 1 << 20, result
        assert [t for t in served if t0 < t < t_end]  # live: it kept serving on h1 while its memory moved
        status = json.loads(vmctl_in(bed, "-f", str(env), "status", "--json").stdout)
        assert [(m["name"], m["host"], m["state"]) for m in status["machines"]] == [("web", "h2", "running")]
        assert not _answers(h1)  # its published port moved with it
        proc = vmctl_in(bed, "-f", str(env), "exec", "web", "--", "cat", "/etc/hostname")
        assert (proc.returncode, proc.stdout) == (0, "web\n"), proc.stderr
        ps = vmctl_in(bed, "-f", str(env), "ps", "--json")
        assert [s["host"] for s in json.loads(ps.stdout)["services"]] == ["h2"]
    finally:
        down = vmctl_in(bed, "-f", str(env), "down")
    assert down.returncode == 0, down.stderr


def test_compare_measures_portability_across_the_hosts(bed: hostbed.HostBed, tmp_path: Path) -> None:
    """`vmctl compare --only portability`: the workload's microVM moved there and back by live migration,
    a client on the environment network timing the gap; the container's row is CRIU's, or skipped with
    CRIU's reason where `criu check` fails (as on this machine's kernel)."""
    env = write_env(tmp_path, "name: cmp\n" + hosts_yaml(bed) + f"""\
services:
  bench:
    image: {WEB}
    command: ["sh", "-c", "echo ready $$HOSTNAME; while :; do sleep 3600; done"]
    vm: {{memory: 192M}}
""")
    proc = vmctl_in(bed, "-f", str(env), "compare", "--only", "portability", "--sandboxes", "runc,microvm",
                    "--runs", "1", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    rows = {r["metric"]: r for r in data["results"] if r["workload"] == "portability" and r["sandbox"] == "microvm"}
    assert set(rows) == {"total_seconds", "downtime_ms", "client_downtime_ms", "moved_mib", "cold_move_mib"}, data
    assert {r["accel"] for r in rows.values()} <= {"tcg", "kvm"} and rows["total_seconds"]["median"] > 0
    # The client went without answers at least while QEMU had the guest paused (less one 5 ms echo
    # interval and some slack for the two clocks), and not for longer than the whole move.
    client, paused = rows["client_downtime_ms"]["median"], rows["downtime_ms"]["median"]
    assert paused > 0 and 0.8 * paused - 10 <= client < rows["total_seconds"]["median"] * 1000, rows
    assert 8 < rows["moved_mib"]["median"] < 2 * 192
    assert rows["cold_move_mib"]["median"] > 1
    criu = subprocess.run(["criu", "check"], capture_output=True, text=True, timeout=60, check=False)
    if criu.returncode == 0:
        assert any(r["workload"] == "portability" and r["sandbox"] == "runc" for r in data["results"]), data
    else:
        assert "`criu check` fails" in data["skipped"]["portability/runc"], data["skipped"]
    # Nothing of the moved environment is left: no QEMU on either host (their processes are this machine's).
    left = subprocess.run(["pgrep", "-af", "qemu-system.*compare-move"], capture_output=True, text=True, timeout=10,
                          check=False)
    assert left.stdout == "", left.stdout


SCRATCH = 'for b in /sys/block/vd*; do [ "$(cat $b/serial)" = data ] && echo /dev/${b##*/}; done'


def test_a_scratch_disk_lives_on_the_host_and_moves_with_the_machine(bed: hostbed.HostBed, tmp_path: Path) -> None:
    """A machine's scratch disk on a remote host is a volume of that host's pool (sparse, made by `up`);
    `migrate` copies what the guest wrote to it while it runs (libvirt's storage migration), the source's
    volume goes, and `down` removes it on the host it ended on."""
    env = write_env(tmp_path, "name: scr\n" + hosts_yaml(bed) + """\
machines:
  box: {memory: 192M, host: h1, disks: [{name: data, size: 64M}]}
""")
    h1, h2 = bed.hosts
    volume = "scratch-scr.box.data.raw"
    up = vmctl_in(bed, "-f", str(env), "up", "--timeout", "180")
    try:
        assert up.returncode == 0, up.stderr
        assert volume in pool_volumes(bed, h1) and volume not in pool_volumes(bed, h2)
        write = f'd=$({SCRATCH}); printf written-on-h1 | dd of="$d" bs=512 conv=sync,fsync 2>/dev/null && echo "$d"'
        wrote = vmctl_in(bed, "-f", str(env), "exec", "box", "--", "sh", "-c", write)
        assert wrote.returncode == 0 and wrote.stdout.startswith("/dev/vd"), wrote.stderr
        moved = vmctl_in(bed, "-f", str(env), "migrate", "box", "--to", "h2", "--json")
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["disk_bytes"] > 0, moved.stdout
        assert volume in pool_volumes(bed, h2) and volume not in pool_volumes(bed, h1)
        read = vmctl_in(bed, "-f", str(env), "exec", "box", "--", "sh", "-c", f'head -c 13 "$({SCRATCH})"')
        assert (read.returncode, read.stdout) == (0, "written-on-h1"), read.stderr
    finally:
        down = vmctl_in(bed, "-f", str(env), "down")
    assert down.returncode == 0, down.stderr
    assert not [v for host in bed.hosts for v in pool_volumes(bed, host) if v.startswith("scratch-")]
