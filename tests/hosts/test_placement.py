"""Hosts in the file, against the bed's real libvirtds: `vmctl hosts`, and the failures `up` reports
before it creates anything (a host that does not answer, a machine that fits nowhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import hostbed
from tests.hosts.conftest import hosts_yaml, vmctl_in, write_env

pytestmark = [pytest.mark.daemon]


def _domains(bed: hostbed.HostBed) -> list[str]:
    import subprocess

    names = []
    for host in bed.hosts:
        out = subprocess.run(bed.in_client(hostbed.client_ssh(bed, host, ["virsh", "-c", "qemu:///system", "list",
                                                                          "--all", "--name"])),
                             capture_output=True, text=True, check=True, timeout=60).stdout
        names += [line for line in out.splitlines() if line.strip()]
    return names


def test_hosts_shows_capacity_and_whether_each_answers(bed: hostbed.HostBed, tmp_path: Path) -> None:
    text = hosts_yaml(bed) + "  h3: {uri: 'qemu+ssh://root@10.79.0.99/system'}\n" + "machines:\n  a: {host: h2}\n"
    env = write_env(tmp_path, text.replace("    uri: qemu+ssh://root@10.79.0.11/system",
                                           "    uri: qemu+ssh://root@10.79.0.11/system\n    capacity: {memory: 1G}"))
    proc = vmctl_in(bed, "-f", str(env), "hosts", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["hosts"]}
    assert rows["h1"]["answers"] and rows["h1"]["memory_mib"] == 1024 and rows["h1"]["cpus"] >= 1
    assert rows["h2"]["answers"] and rows["h2"]["machines"] == ["a"] and rows["h2"]["versions"]["libvirt"]
    assert not rows["h3"]["answers"] and rows["h3"]["error"]
    table = vmctl_in(bed, "-f", str(env), "hosts")
    assert table.stdout.splitlines()[0].split() == ["NAME", "URI", "ANSWERS", "CPUS", "MEMORY", "FREE", "RUNNING",
                                                    "MACHINES"]


def test_up_names_a_host_that_does_not_answer_before_creating_anything(bed: hostbed.HostBed, tmp_path: Path) -> None:
    env = write_env(tmp_path, hosts_yaml(bed) + "  h3: {uri: 'qemu+ssh://root@10.79.0.99/system'}\n"
                              "machines:\n  a: {}\n")
    proc = vmctl_in(bed, "-f", str(env), "up")
    assert proc.returncode == 1
    assert "host `h3` (qemu+ssh://root@10.79.0.99/system) does not answer" in proc.stderr
    assert _domains(bed) == []


def test_up_refuses_a_host_whose_key_is_unknown(bed: hostbed.HostBed, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    other.write_text(bed.known_hosts.read_text().splitlines()[1] + "\n")  # h2's key only
    env = write_env(tmp_path, hosts_yaml(bed, ("h1",)).replace(str(bed.known_hosts), str(other))
                    + "machines:\n  a: {}\n")
    proc = vmctl_in(bed, "-f", str(env), "up")
    assert proc.returncode == 1
    assert "host `h1`" in proc.stderr and "host key" in proc.stderr
    assert f"ssh-keyscan {bed.hosts[0].address} | ssh-keygen -lf -" in proc.stderr
    assert _domains(bed) == []


def test_up_says_which_host_lacked_what(bed: hostbed.HostBed, tmp_path: Path) -> None:
    text = hosts_yaml(bed).replace("    uri: qemu+ssh://root@10.79.0.12/system",
                                   "    uri: qemu+ssh://root@10.79.0.12/system\n    capacity: {memory: 512M, vcpus: 1}")
    env = write_env(tmp_path, text + "machines:\n  big: {memory: 1G, vcpus: 2, host: h2}\n")
    proc = vmctl_in(bed, "-f", str(env), "up")
    assert proc.returncode == 1
    assert "machine `big` needs 1024 MiB (+64 MiB for QEMU) and 2 vCPUs, which does not fit on host `h2`" in proc.stderr
    assert "which does not fit on host `h2`: `h2` has 1 CPU\n" in proc.stderr
    assert _domains(bed) == []
