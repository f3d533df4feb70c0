"""Hosts in the file, against the bed's real libvirtds: `vmctl hosts`, and the failures `up` reports
before it creates anything (a host that does not answer, a machine that fits nowhere)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import hostbed
from tests.conftest import ROOT
from tests.hosts.conftest import hosts_yaml, vmctl_in, write_env

WEB = ROOT / "examples" / "images" / "web.tar"

pytestmark = [pytest.mark.daemon]


def _domains(bed: hostbed.HostBed) -> list[str]:
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


LISTEN = """\
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(600)
"""


def _listener(netns: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["nsenter", f"--net={netns}", sys.executable, "-c", LISTEN, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "listening\n"
    return proc


@pytest.mark.vm
def test_ports_are_checked_on_the_host_that_binds_them(bed: hostbed.HostBed, tmp_path: Path) -> None:
    """A published port taken on h1 stops `up` of a service bound there, before anything is made; the same
    port taken only where vmctl runs (the bed's client namespace) does not: QEMU binds it on h1."""
    h1 = bed.hosts[0]
    port = 23457
    env = write_env(tmp_path, "name: portcheck\n" + hosts_yaml(bed) + f"""\
services:
  web: {{image: {WEB}, host: h1, ports: ["{port}:8080"]}}
""")
    taken = _listener(h1.netns, port)
    try:
        up = vmctl_in(bed, "-f", str(env), "up", "--timeout", "180")
        assert up.returncode == 1, up.stderr
        assert f"host port 127.0.0.1:{port}/tcp is already in use on host `h1`" in up.stderr, up.stderr
        assert "vmctl.yaml:" in up.stderr and not [d for d in _domains(bed) if "portcheck" in d]
    finally:
        taken.kill()
        taken.wait()
    here = _listener(bed.client, port)
    try:
        up = vmctl_in(bed, "-f", str(env), "up", "--timeout", "180")
        assert up.returncode == 0, up.stderr
        served = subprocess.run(["nsenter", f"--net={h1.netns}", "wget", "-q", "-O-", f"http://127.0.0.1:{port}/"],
                                capture_output=True, text=True, timeout=30, check=False)
        assert "hostname: web" in served.stdout, served
    finally:
        here.kill()
        here.wait()
        down = vmctl_in(bed, "-f", str(env), "down")
    assert down.returncode == 0, down.stderr
