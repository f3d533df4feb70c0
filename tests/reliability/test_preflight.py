"""`vmctl.preflight`: what `up` checks before it creates anything, in-process (no VM, no libvirt daemon)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vmctl import preflight
from vmctl.errors import HostError, UsageError
from vmctl.lifecycle import Project
from vmctl.progress import Progress, quiet_renderer
from vmctl.spec import Environment, load_environment
from vmctl.state import EnvState, ForwardState, MachineState

HOST = preflight.HostResources(cpus=2, mem_total_mib=4096, mem_available_mib=2048)


def env_of(tmp_path: Path, text: str) -> Environment:
    (tmp_path / "vmctl.yaml").write_text(text)
    return load_environment(tmp_path / "vmctl.yaml")


def test_host_resources_reads_meminfo(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal:       24683520 kB\nMemFree: 1 kB\nMemAvailable:   20480000 kB\n")
    res = preflight.host_resources(tmp_path / "meminfo")
    assert (res.mem_total_mib, res.mem_available_mib) == (24105, 20000) and res.cpus >= 1


@pytest.mark.parametrize(("text", "message", "line", "key"), [
    ("machines:\n  m1:\n    vcpus: 4\n", "4 vCPUs, but this host has 2", 3, "machines.m1.vcpus"),
    ("defaults: {vcpus: 3}\nmachines:\n  m1: {}\n", "3 vCPUs", 1, "defaults.vcpus"),
    ("machines:\n  m1:\n    memory: 5G\n", "5120 MiB of memory, but this host has 4096", 3, "machines.m1.memory"),
    ("machines:\n  a: {memory: 1G}\n  b:\n    memory: 1500M\n", "only 2048 MiB are available", 4, "machines.b.memory"),
    ("services:\n  web:\n    image: x\n    vm: {memory: 8G}\n", "8192 MiB", 4, "services.web.vm.memory"),
])
def test_resources(tmp_path: Path, text: str, message: str, line: int, key: str) -> None:
    env = env_of(tmp_path, text)
    with pytest.raises(HostError, match=message) as info:
        preflight.check_resources(env, env.machines, HOST)
    assert info.value.where is not None and (info.value.where.line, info.value.where.key) == (line, key)
    assert info.value.hint and info.value.exit_code == 1


def test_resources_fit(tmp_path: Path) -> None:
    env = env_of(tmp_path, "machines:\n  a: {vcpus: 2, memory: 1G}\n  b: {memory: 512M}\n")
    preflight.check_resources(env, env.machines, HOST)


def test_ports_busy_and_ours(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        env = env_of(tmp_path, f"machines:\n  m1:\n    ports: ['{port + 1 if port < 65535 else 1}:81', '{port}:80']\n")
        with pytest.raises(HostError, match="already in use") as info:
            preflight.check_ports(env, env.machines, EnvState("t", ""), is_free=lambda ip, p, proto: p != port)
        assert info.value.where is not None and info.value.where.key == "machines.m1.ports[1]"
        # a port our own running machine holds is not a conflict
        ours = EnvState("t", "", {"m1": MachineState("m1", "d", "u", "tcg", 1, [ForwardState("127.0.0.1", port, 80)])})
        preflight.check_ports(env, env.machines, ours, is_free=lambda ip, p, proto: p != port)


def test_service_port_points_at_the_service(tmp_path: Path) -> None:
    env = env_of(tmp_path, "machines:\n  w: {}\nservices:\n  s:\n    image: x\n    machine: w\n"
                           "    ports: ['18777:80']\n")
    with pytest.raises(HostError) as info:
        preflight.check_ports(env, env.machines, EnvState("t", ""), is_free=lambda ip, p, proto: False)
    assert info.value.where is not None and (info.value.where.line, info.value.where.key) == (7, "services.s.ports[0]")


def test_unreadable_boot_file(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("")
    env = env_of(tmp_path, "machines:\n  m1:\n    kernel: k\n")
    preflight.check_boot_files(env, env.machines)
    (tmp_path / "k").unlink()
    with pytest.raises(HostError, match="cannot read kernel"):
        preflight.check_boot_files(env, env.machines)


def test_unreachable_uri_and_local_uris() -> None:
    with pytest.raises(HostError, match="cannot connect to libvirt"):
        preflight.check_uris(["qemu+tcp://127.0.0.1:1/system"])
    preflight.check_uris(["qemu:///embed?root=/nonexistent"])  # never opened here
    assert preflight.is_local("qemu:///system") and preflight.is_local("qemu:///embed?root=/x")
    assert not preflight.is_local("qemu+ssh://host/system") and not preflight.is_local("qemu+tcp://h:1/system")


def test_check_skips_machines_already_booted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "host_resources", lambda: HOST)
    env = env_of(tmp_path, "machines:\n  big: {memory: 8G}\n  small: {}\n")
    project = Project(env=env, progress=Progress(quiet_renderer))
    with pytest.raises(HostError, match="8192 MiB"):
        preflight.check(project, env.machines, EnvState("t", ""))
    booted = EnvState("t", "", {"big": MachineState("big", "d", "u", "tcg", 1, hostkey="ssh-ed25519 AAAA")})
    preflight.check(project, env.machines, booted)


def test_volumes_need_9p_in_the_guest_kernel(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    env = env_of(tmp_path, "machines:\n  mini: {image: minimal}\n  cloud: {}\nservices:\n"
                           "  ok: {image: x, machine: mini, volumes: ['./d:/d']}\n"
                           "  bad:\n    image: x\n    machine: cloud\n    volumes: ['./d:/d']\n")
    mini = [m for m in env.machines if m.name == "mini"]
    preflight.check_volumes(env, mini)  # the minimal kernel has 9p built in
    with pytest.raises(UsageError, match="need 9p in the guest kernel") as info:
        preflight.check_volumes(env, env.machines)  # Debian's cloud kernel has no 9p at all
    assert info.value.where is not None and (info.value.where.line, info.value.where.key) == (9, "services.bad.volumes")
    assert "image: minimal" in (info.value.hint or "")
