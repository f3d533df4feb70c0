"""compare's portability without a host: the environment file it writes for the move (it reads back
as the same hosts and the same workload), the ICMP client's packets, and the downtime arithmetic it
shares with bench/migrate.py (with redis-benchmark's rate, which only the bench reads)."""

from __future__ import annotations

import struct
from pathlib import Path

import yaml

from bench.migrate import load_rate
from vmctl.compare.pinger import checksum, echo_request, is_reply
from vmctl.compare.portability import MOVER, PROBE, environment, seen_downtime_ms
from vmctl.compare.sandboxes import Workload
from vmctl.container_image import ImageConfig, PreparedImage
from vmctl.spec import Isolation, load_environment


def _workload(tmp_path: Path) -> Workload:
    archive = tmp_path / "images" / "app.tar"
    archive.parent.mkdir()
    archive.write_bytes(b"")
    image = PreparedImage("./images/app.tar", "sha256:" + "0" * 64, tmp_path / "rootfs", tmp_path / "disk.ext4",
                          ImageConfig(), 1 << 20)
    return Workload(name="bench", image_ref="./images/app.tar", base_dir=tmp_path, image=image,
                    args=("sh", "-c", "echo ready $HOSTNAME; sleep 1d"), env=("GREETING=costs $5", "PATH=/bin"),
                    vcpus=2, memory_mib=320)


def test_the_move_environment_reads_back_as_the_same_hosts_and_workload(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k")
    (tmp_path / "kh").write_text("")
    (tmp_path / "vmctl.yaml").write_text("""\
hosts:
  h1: {uri: "qemu+ssh://root@10.0.0.2/system", key: key, known_hosts: kh, capacity: {memory: 2G, vcpus: 2}}
  h2: {uri: "qemu+ssh://10.0.0.3/system", user: admin, port: 2222}
services: {s: {image: x}}
""")
    hosts = load_environment(tmp_path / "vmctl.yaml").hosts
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "move.yaml").write_text(yaml.safe_dump(environment(hosts, _workload(tmp_path))))
    env = load_environment(elsewhere / "move.yaml")
    assert env.hosts == hosts  # the key and known-hosts paths still name the same files
    mover, probe = env.service(MOVER), env.service(PROBE)
    assert mover is not None and probe is not None
    # `$` reaches the workload as written, not interpolated away by the file's reader
    assert (*mover.entrypoint, *mover.command) == ("sh", "-c", "echo ready $HOSTNAME; sleep 1d")
    assert dict(mover.environment)["GREETING"] == "costs $5"
    assert mover.image == str((tmp_path / "images" / "app.tar").resolve()) == probe.image
    machine = env.machine(MOVER)
    assert machine is not None and (machine.host, machine.vcpus, machine.memory_mib) == ("h1", 2, 320)
    assert probe.isolation is Isolation.CONTAINER


def test_the_echo_request_checks_out_and_only_our_replies_count() -> None:
    packet = echo_request(0x1234, 7)
    assert checksum(packet) == 0  # a packet with its checksum in place sums to zero
    assert struct.unpack("!BBHHH", packet[:8])[0::3] == (8, 0x1234)
    ip_header = bytes([0x45]) + bytes(19)  # IPv4, IHL 5 words
    reply = bytes([0]) + packet[1:]
    assert is_reply(ip_header + reply, 0x1234)
    assert not is_reply(ip_header + reply, 0x4321)  # another pinger's
    assert not is_reply(ip_header + packet, 0x1234)  # our own request, seen on the way out
    assert not is_reply(ip_header + reply[:4], 0x1234)


def test_the_longest_gap_while_the_move_ran_is_the_downtime() -> None:
    answers = [0.0, 0.01, 0.02, 0.5, 0.51, 2.0, 2.01]
    assert seen_downtime_ms(answers, 0.015, 0.3) == 480.0  # 0.02 -> 0.5; the later, bigger gap is after it
    assert seen_downtime_ms(answers, 0.6, 2.5) == 1490.0  # a gap that began before the window ends in it
    assert seen_downtime_ms(answers, 0.515, 0.6) == 1490.0  # the window falls inside one gap
    assert seen_downtime_ms(answers, 3.0, 4.0) is None  # no answer at all around the window: nothing to say


def test_the_load_is_redis_benchmarks_last_overall_rate() -> None:
    text = ("SET: rps=43430.3 (overall: 45365.0) avg_msec=0.071 (overall: 0.068)\r"
            "SET: rps=48412.0 (overall: 45641.6) avg_msec=0.062 (overall: 0.067)\r")
    assert load_rate(text) == 45641.6
    assert load_rate("") is None
