"""compose keys about names and resources inside the container, through the real CLI, seen from inside
the container, on both sides: runc on the host and crun in a microVM (TCG here). Nothing is mocked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.build_images import IMAGES_DIR, build_image
from tests.conftest import environment_up, run_vmctl

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root")]

SETTINGS = """\
    command: ["sh", "-c", "read line; echo stdin ended"]
    stdin_open: true
    init: true
    shm_size: 96m
    group_add: [nobody, "4242"]
    domainname: corp.example
    dns: [192.0.2.53]
    dns_search: [corp.example]
    dns_opt: ["ndots:2"]
    links: ["db:database"]
    cpu_shares: 512
    cpu_quota: 40ms
    cpu_period: 50000
    cpuset: "1"
    oom_score_adj: 300
"""
ENV = f"""\
name: csettings
services:
  db:
    image: ./tools.tar
    isolation: container
    command: ["sleep", "3600"]
    init: true
  host:
    image: ./tools.tar
    isolation: container
{SETTINGS}
  guest:
    image: ./tools.tar
{SETTINGS}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    build_image("tools", IMAGES_DIR)
    folder = tmp_path_factory.mktemp("csettings")
    (folder / "tools.tar").symlink_to(IMAGES_DIR / "tools.tar")
    (folder / "compose.yaml").write_text(ENV)
    with environment_up(folder / "compose.yaml") as file:
        yield file


def sh(file: Path, service: str, line: str) -> str:
    proc = run_vmctl("-f", str(file), "exec", service, "--", "sh", "-c", line, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("service", ["host", "guest"])
def test_names_resolver_groups_and_shm_inside(env: Path, service: str) -> None:
    assert sh(env, service, "cat /proc/sys/kernel/domainname") == "corp.example\n"
    # the service's own process (tini, with `init`), which the container's config made
    groups = sh(env, service, "cat /proc/1/status").split("Groups:")[1].splitlines()[0].split()
    assert {"65534", "4242"} <= set(groups), groups  # `nobody` is 65534 in the image's /etc/group
    resolv = sh(env, service, "cat /etc/resolv.conf").splitlines()
    assert resolv[0].startswith("nameserver 10.77.")  # the environment's resolver stays first
    assert resolv[1:] == ["nameserver 192.0.2.53", "search corp.example", "options ndots:2"]
    shm = [line.split() for line in sh(env, service, "cat /proc/mounts").splitlines() if " /dev/shm " in line]
    assert "size=98304k" in shm[0][3].split(","), shm
    database = sh(env, service, "getent hosts database").split()[0]
    assert database == sh(env, service, "getent hosts db").split()[0]  # `links: [db:database]`


@pytest.mark.parametrize("service", ["host", "guest"])
def test_cpu_weight_cpuset_and_oom_score_inside(env: Path, service: str) -> None:
    """`cpu_quota` and `cpu_period` are the cgroup's quota and period as written. `cpu_shares: 512` is half
    docker's default weight: cgroup v1's `cpu.shares` as written (this host), below cgroup v2's default
    `cpu.weight` of 100 in the guest (runc and crun versions map shares to weight differently); `cpuset: "1"`
    pins it (its microVM got 2 vCPUs for that); `oom_score_adj` is its processes'."""
    line = ("cd /sys/fs/cgroup; if [ -e cgroup.controllers ]; then echo v2 $(cat cpu.weight cpuset.cpus cpu.max); "
            "else echo v1 $(cat cpu/cpu.shares cpuset/cpuset.cpus cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us); fi; "
            "grep Cpus_allowed_list /proc/1/status; cat /proc/1/oom_score_adj")
    out = sh(env, service, line).splitlines()
    assert len(out) == 3, out
    (version, weight, cpus, quota, period), allowed, score = out[0].split(), out[1].split(), out[2]
    assert (version, weight) == ("v1", "512") if version == "v1" else 1 <= int(weight) < 100, out
    assert (quota, period) == ("40000", "50000"), out  # `cpu_quota: 40ms` of `cpu_period: 50000` (microseconds)
    assert cpus == "1" and allowed == ["Cpus_allowed_list:", "1"] and score == "300", out
    assert sh(env, "db", "cat /proc/1/oom_score_adj") == "0\n"  # not set: the default
    if service == "guest":  # the guest's CPUs, which the container sees in /proc/cpuinfo
        assert sh(env, "guest", "grep -c ^processor /proc/cpuinfo") == "2\n"


@pytest.mark.parametrize("service", ["host", "guest"])
def test_stdin_open_keeps_a_reading_program_running(env: Path, service: str) -> None:
    # its `read` would have ended at once on /dev/null (then exec could not reach the container)
    assert sh(env, service, "stat -L -c %F /proc/1/fd/0") == "fifo\n"
    assert sh(env, "db", "stat -L -c %F /proc/1/fd/0") == "character special file\n"  # no stdin_open
