"""`hosts:` and `host:` in the environment file, the URI vmctl opens for a host, and placement."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import placement
from vmctl.errors import HostError, SpecError
from vmctl.hostspec import Capacity, HostSpec
from vmctl.spec import MachineSpec, load_environment


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "key").write_text("k")
    (tmp_path / "kh").write_text("")
    file = tmp_path / "vmctl.yaml"
    file.write_text(text)
    return load_environment(file)


HOSTS = """\
hosts:
  h1: {uri: "qemu+ssh://root@10.0.0.2/system", key: key, known_hosts: kh, capacity: {memory: 2G, vcpus: 2}}
  h2: {uri: "qemu+ssh://10.0.0.3/system", user: admin, port: 2222}
"""


def test_hosts_parse_into_typed_specs(tmp_path: Path) -> None:
    env = load(tmp_path, HOSTS + "machines:\n  a: {host: h1}\n  b: {}\nservices:\n  s: {image: x, host: h2}\n")
    h1, h2 = env.hosts
    assert h1 == HostSpec("h1", "qemu+ssh://root@10.0.0.2/system", key=tmp_path / "key",
                          known_hosts=tmp_path / "kh", capacity=Capacity(2048, 2))
    assert (h2.ssh_user, h2.ssh_port, h2.address) == ("admin", 2222, "10.0.0.3")
    assert [(m.name, m.host) for m in env.machines] == [("a", "h1"), ("b", None), ("s", "h2")]


def test_ssh_hosts_are_opened_through_libssh2_with_their_key_and_known_hosts(tmp_path: Path) -> None:
    h1, h2 = load(tmp_path, HOSTS + "machines: {a: {}}\n").hosts
    assert h1.connection_uri == (f"qemu+libssh2://root@10.0.0.2/system?known_hosts={tmp_path}/kh"
                                 f"&known_hosts_verify=normal&keyfile={tmp_path}/key&sshauth=privkey")
    assert h2.connection_uri.startswith("qemu+libssh2://admin@10.0.0.3:2222/system?known_hosts=")
    assert HostSpec("l", "qemu:///system").connection_uri == "qemu:///system"
    assert h2.fingerprint_command() == "ssh-keyscan -p 2222 10.0.0.3 | ssh-keygen -lf -"


@pytest.mark.parametrize(("text", "message", "key"), [
    (HOSTS + "machines: {a: {host: h9}}\n", "undeclared host `h9`", "machines.a.host"),
    (HOSTS + "services: {s: {image: x, host: nope}}\n", "undeclared host `nope`", "services.s.host"),
    (HOSTS + "defaults: {host: hx}\nmachines: {a: {}}\n", "undeclared host `hx`", "defaults.host"),
    (HOSTS + "machines: {a: {uri: 'qemu:///system'}}\n", "exclude each other", "machines.a.uri"),
    (HOSTS + "machines: {w: {}}\nservices: {s: {image: x, machine: w, host: h1}}\n", "own microVM only",
     "services.s.host"),
    ("hosts: {h1: {uri: 'qemu:///embed?root=/x'}}\nmachines: {a: {}}\n", "not a libvirt host", "hosts.h1.uri"),
    ("hosts: {h1: {key: key}}\nmachines: {a: {}}\n", "has no `uri`", "hosts.h1"),
    ("hosts: {h1: {uri: 'qemu:///system', known_hosts: nosuch}}\nmachines: {a: {}}\n", "no such file",
     "hosts.h1.known_hosts"),
    ("hosts: {h1: {uri: 'qemu:///system', capacity: {memroy: 1G}}}\nmachines: {a: {}}\n", "did you mean `memory`",
     "hosts.h1.capacity.memroy"),
    ("hosts: {H1: {uri: 'qemu:///system'}}\nmachines: {a: {}}\n", "invalid name", "hosts.H1"),
])
def test_bad_hosts_are_named_with_their_line(tmp_path: Path, text: str, message: str, key: str) -> None:
    with pytest.raises(SpecError) as e:
        load(tmp_path, text)
    assert message in e.value.render()
    assert e.value.where is not None and e.value.where.key == key and e.value.where.line is not None


def _load(name: str, free: int, cpus: int = 2, answers: bool = True) -> placement.HostLoad:
    return placement.HostLoad(name=name, uri=f"qemu+ssh://{name}/system", answers=answers, cpus=cpus,
                              memory_mib=free, free_mib=free)


def test_placement_goes_to_the_roomiest_host_that_fits(tmp_path: Path) -> None:
    env = load(tmp_path, HOSTS + "machines:\n  a: {memory: 512M}\n  b: {memory: 256M}\n  c: {memory: 1G, host: h2}\n")
    loads = [_load("h1", 1000), _load("h2", 2000)]
    # c is pinned to h2 (2000 -> 912 left); a (576 with QEMU's) goes to h1 (1000 > 912); b then to h2
    assert placement.place(env, env.machines, loads) == {"c": "h2", "a": "h1", "b": "h2"}


def test_running_machines_keep_their_host(tmp_path: Path) -> None:
    env = load(tmp_path, HOSTS + "machines:\n  a: {}\n")
    assert placement.place(env, env.machines, [_load("h1", 10), _load("h2", 9000)], {"a": "h1"}) == {"a": "h1"}


def test_a_machine_that_fits_nowhere_says_which_host_lacked_what(tmp_path: Path) -> None:
    env = load(tmp_path, HOSTS + "machines:\n  a: {memory: 1G, vcpus: 4}\n")
    with pytest.raises(HostError) as e:
        placement.place(env, env.machines, [_load("h1", 4000, cpus=2), _load("h2", 500, cpus=8),
                                            _load("h3", 0, answers=False)])
    text = e.value.render()
    assert "does not fit on any host" in text
    assert "`h1` has 2 CPUs" in text and "`h2` has 500 MiB free" in text and "`h3` does not answer" in text
    assert e.value.where is not None and e.value.where.key == "machines.a"


def test_a_host_that_does_not_answer_is_named_with_its_uri(tmp_path: Path) -> None:
    env = load(tmp_path, HOSTS + "machines:\n  a: {}\n")
    down = placement.HostLoad(name="h2", uri="qemu+ssh://10.0.0.3/system", answers=False,
                              error="libssh transport error: Can't verify the session host key")
    with pytest.raises(HostError) as e:
        placement.require_answers(env, [_load("h1", 100), down])
    assert "host `h2` (qemu+ssh://10.0.0.3/system) does not answer" in e.value.message
    assert e.value.hint is not None and "ssh-keyscan -p 2222 10.0.0.3 | ssh-keygen -lf -" in e.value.hint


def test_read_load_counts_running_domains_against_a_capacity(tmp_path: Path) -> None:
    from vmctl.hypervisor import Hypervisor

    env = load(tmp_path, HOSTS + "machines:\n  a: {}\n")
    with Hypervisor("test:///default") as hv:  # one running domain of 8 GiB ("test")
        found = placement.read_load(env.hosts[0], hv)
    assert found.running == ("test",) and found.memory_mib == 2048 and found.cpus == 2
    assert found.free_mib == 0  # 2048 - 8192 - 64 < 0
    m = MachineSpec("x")
    assert not found.fits(m) and found.lack(m) == "`h1` has 0 MiB free"


def test_a_machine_on_another_host_takes_read_only_disk_files_and_scratch_disks_only(tmp_path: Path) -> None:
    from vmctl import remote
    from vmctl.errors import UsageError

    (tmp_path / "ro.img").write_bytes(b"x" * 512)
    base = "hosts:\n  h1: {uri: 'qemu+ssh://root@10.0.0.1/system'}\nmachines:\n  a:\n    host: h1\n    disks:\n"
    for fine in ("{name: ro, path: ./ro.img, readonly: true}", "{name: scratch, size: 8M}"):
        env = load(tmp_path, base + f"      - {fine}\n")
        remote.check(env, [(env.machines[0], env.hosts[0])])  # sent into (made in) the host's pool at `up`
    env = load(tmp_path, base + "      - {name: rw, path: ./ro.img}\n")
    with pytest.raises(UsageError) as info:
        remote.check(env, [(env.machines[0], env.hosts[0])])
    assert "the writable disk file `rw`" in info.value.message and info.value.where is not None
    assert (info.value.where.key, info.value.where.line) == ("machines.a.disks", 6)
    assert "a scratch disk" in (info.value.hint or "")
