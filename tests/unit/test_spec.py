"""The environment file: defaults, and for every setting of the table one good value and one error path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vmctl import spec
from vmctl.compose_values import GUEST_OVERHEAD_MIB, Limits, LogRotation, Restart, TmpfsSpec, Ulimit
from vmctl.errors import SpecError, UsageError
from vmctl.hooks import Hook
from vmctl.settings import NAME_RE, Setting, Support
from vmctl.spec import Accel, Isolation, PortSpec


def load(tmp_path: Path, text: str, **kw: Any) -> spec.Environment:
    file = tmp_path / "vmctl.yaml"
    file.write_text(text)
    return spec.load_environment(file, **kw)


def fails(tmp_path: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(tmp_path, text)
    err = info.value
    assert err.hint, f"no hint for: {err.render()}"
    assert err.where is not None and err.where.file.endswith("vmctl.yaml")
    return err


def machine_with(tmp_path: Path, key: str, value: Any) -> spec.MachineSpec:
    text = yaml.safe_dump({"name": "t", "machines": {"m1": {key: value}}})
    m = load(tmp_path, text).machine("m1")
    assert m is not None
    return m


def service_with(tmp_path: Path, key: str, value: Any) -> spec.ServiceSpec:
    settings = {"image": "x.tar", key: value} if key != "image" else {"image": value}
    text = yaml.safe_dump({"name": "t", "services": {"s1": settings}})
    s = load(tmp_path, text).service("s1")
    assert s is not None
    return s


# ---------------------------------------------------------------------------------------------- defaults


def test_machine_defaults(tmp_path: Path) -> None:
    env = load(tmp_path, "machines:\n  m1:\n")
    m = env.machines[0]
    assert (m.vcpus, m.memory_mib, m.image, m.kernel, m.initrd, m.cmdline, m.disks, m.ports, m.accel, m.uri) == (
        1, 256, "default", None, None, (), (), (), Accel.AUTO, None)
    assert env.name == spec.folder_name(tmp_path / "vmctl.yaml")
    assert env.uri is None and env.services == ()


def test_service_defaults(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  web: {image: x.tar}\n")
    s = env.services[0]
    assert (s.command, s.entrypoint, s.environment, s.restart, s.isolation, s.read_only, s.privileged) == (
        None, None, (), Restart.NO, Isolation.MICROVM, True, False)
    assert s.machine == "web"  # its own dedicated VM, named after it
    vm = env.machine("web")
    assert vm is not None and vm.dedicated_to == "web" and vm.memory_mib == 256


def test_defaults_apply_and_machines_override(tmp_path: Path) -> None:
    env = load(tmp_path, "defaults: {vcpus: 2, memory: 512M}\nmachines:\n  a: {}\n  b: {memory: 1G}\n")
    a, b = env.machines
    assert (a.vcpus, a.memory_mib, b.vcpus, b.memory_mib) == (2, 512, 2, 1024)


def test_lines_are_recorded(tmp_path: Path) -> None:
    env = load(tmp_path, "name: t\nmachines:\n  m1:\n    vcpus: 2\n")
    assert env.places["machines.m1.vcpus"].line == 4 and env.places["name"].line == 1


# ---------------------------------------------------------------------------------------------- every machine key

MACHINE_GOOD: list[tuple[str, Any, str, Any]] = [
    ("networks", ["default", "default"], "networks", ("default",)),
    ("vcpus", 4, "vcpus", 4),
    ("memory", "1G", "memory_mib", 1024),
    ("memory", "512MiB", "memory_mib", 512),
    ("memory", 300, "memory_mib", 300),
    ("image", "default", "image", "default"),
    ("cmdline", "quiet foo=\"a b\"", "cmdline", ("quiet", "foo=a b")),
    ("cmdline", ["quiet", "x=1"], "cmdline", ("quiet", "x=1")),
    ("accel", "tcg", "accel", Accel.TCG),
    ("accel", "kvm", "accel", Accel.KVM),
    ("uri", "qemu:///system", "uri", "qemu:///system"),
    ("template", False, "template", False),
    ("ports", ["8080:80", "53/udp", "127.0.0.2:9000:90"], "ports",
     (PortSpec(80, 8080), PortSpec(53, None, proto="udp"), PortSpec(90, 9000, "127.0.0.2"))),
]

MACHINE_BAD: list[tuple[str, Any, str]] = [
    ("template", "no", "true or false"),
    ("vcpus", 0, "whole number from 1 to 64"),
    ("vcpus", 65, "whole number"),
    ("vcpus", "2", "whole number"),
    ("vcpus", True, "whole number"),
    ("memory", "16M", "invalid size"),
    ("memory", "lots", "invalid size"),
    ("memory", [1], "invalid size"),
    ("memory", "300T", "invalid size"),
    ("image", "Bad", "invalid name"),
    ("image", "nosuch", "no guest image recipe"),
    ("kernel", "./missing", "does not exist"),
    ("kernel", 5, "non-empty string"),
    ("initrd", "", "non-empty string"),
    ("initrd", "a\nb", "control characters"),
    ("cmdline", 5, "string or a list of strings"),
    ("cmdline", ["rdinit=/x"], "cannot be overridden"),
    ("cmdline", 'x="unterminated', "unbalanced double quote"),
    ("accel", "hvf", "use one of"),
    ("uri", "nope", "invalid libvirt URI"),
    ("uri", "qemu:///system with space", "invalid libvirt URI"),
    ("host", "nosuch", "undeclared host `nosuch`"),  # more in test_hostspec.py
    ("ports", "80", "must be a list"),
    ("ports", ["0:80"], "out of range"),
    ("ports", [True], "invalid port"),
    ("ports", ["a:b:c:d"], "invalid port"),
    ("ports", ["80/sctp"], "invalid port"),
    ("disks", "x.img", "must be a list of disks"),
    ("disks", [{}], "exactly one of"),
    ("disks", [{"size": "1G", "bogus": 1}], "unknown key `bogus`"),
    ("disks", [{"size": "1G", "readonly": "yes"}], "true or false"),
    ("disks", [{"size": "0"}], "invalid size"),
    ("disks", [{"size": "1G", "name": "x"}, {"size": "1G", "name": "x"}], "two disks are named"),
    ("networks", [], "non-empty list"),
    ("networks", ["back"], "undeclared network `back`"),
]


@pytest.mark.parametrize(("key", "value", "attr", "want"), MACHINE_GOOD)
def test_machine_setting_parses(tmp_path: Path, key: str, value: Any, attr: str, want: Any) -> None:
    assert getattr(machine_with(tmp_path, key, value), attr) == want


@pytest.mark.parametrize(("key", "value", "message"), MACHINE_BAD)
def test_machine_setting_errors(tmp_path: Path, key: str, value: Any, message: str) -> None:
    text = yaml.safe_dump({"name": "t", "machines": {"m1": {key: value}}})
    err = fails(tmp_path, text)
    assert message in err.render()
    assert err.where is not None and err.where.key is not None and err.where.key.startswith(f"machines.m1.{key}")
    assert err.where.line is not None


def test_every_machine_setting_is_covered() -> None:
    covered = {k for k, *_ in MACHINE_GOOD} | {k for k, *_ in MACHINE_BAD}
    assert {s.key for s in spec.MACHINE_SETTINGS} <= covered


def test_files_and_disks(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("kernel")
    (tmp_path / "data.img").write_text("")
    env = load(tmp_path, "machines:\n  m1:\n    kernel: ./k\n    initrd: k\n"
                         "    disks: [data.img, {size: 2G, name: scratch, readonly: true}]\n")
    m = env.machines[0]
    assert m.kernel == m.initrd == (tmp_path / "k").resolve()
    assert m.disks == (spec.DiskSpec("data", (tmp_path / "data.img").resolve()),
                       spec.DiskSpec("scratch", None, 2048, True))


# ---------------------------------------------------------------------------------------------- every service key

SERVICE_GOOD: list[tuple[str, Any, str, Any]] = [
    ("image", "./web.tar", "image", "./web.tar"),
    ("command", "sh -c 'echo hi'", "command", ("sh", "-c", "echo hi")),
    ("entrypoint", ["/bin/x", "--y"], "entrypoint", ("/bin/x", "--y")),
    ("environment", {"A": 1, "B": True}, "environment", (("A", "1"), ("B", "true"))),
    ("environment", ["A=1", "B=x=y"], "environment", (("A", "1"), ("B", "x=y"))),
    ("working_dir", "/srv", "working_dir", "/srv"),
    ("user", 1000, "user", "1000"),
    ("user", "1000:100", "user", "1000:100"),
    ("ports", ["8080:80"], "ports", (PortSpec(80, 8080),)),
    ("restart", "on-failure", "restart", Restart.ON_FAILURE),
    ("restart", False, "restart", Restart.NO),  # a bare `no` in YAML 1.1
    ("isolation", "container", "isolation", Isolation.CONTAINER),
    ("read_only", False, "read_only", False),
    ("privileged", True, "privileged", True),
    ("hostname", "db-1", "hostname", "db-1"),
    ("networks", ["default"], "networks", (spec.Attachment("default"),)),
    ("networks", {"default": {"aliases": ["db"]}}, "networks", (spec.Attachment("default", ("db",)),)),
    ("networks", {"default": None}, "networks", (spec.Attachment("default"),)),
    ("mac_address", "02:42:AC:11:00:02", "networks", (spec.Attachment("default", mac_address="02:42:ac:11:00:02"),)),
    ("networks", {"default": {"mac_address": "02:00:00:00:00:01"}}, "networks",
     (spec.Attachment("default", mac_address="02:00:00:00:00:01"),)),
    ("expose", [6379, "53/udp"], "expose", (6379, 53)),
    ("extra_hosts", ["db.local:10.1.2.3", "x=10.0.0.1"], "extra_hosts", (("db.local", "10.1.2.3"), ("x", "10.0.0.1"))),
    ("extra_hosts", {"a.b": "1.2.3.4"}, "extra_hosts", (("a.b", "1.2.3.4"),)),
    ("dns", "10.0.2.3", "dns", ("10.0.2.3",)),
    ("dns", ["1.1.1.1", "9.9.9.9"], "dns", ("1.1.1.1", "9.9.9.9")),
    ("dns_search", ["corp.example", "example"], "dns_search", ("corp.example", "example")),
    ("dns_opt", ["ndots:2", "rotate"], "dns_options", ("ndots:2", "rotate")),
    ("domainname", "corp.example", "domainname", "corp.example"),
    ("group_add", ["audio", 27], "group_add", ("audio", "27")),
    ("shm_size", "256m", "shm_mib", 256),
    ("stdin_open", True, "stdin_open", True),
    ("tty", True, "tty", True),
]

SERVICE_BAD: list[tuple[str, Any, str]] = [
    ("secrets", "db_password", "must be a list of secrets names"),
    ("secrets", ["nosuch"], "undeclared secret `nosuch`"),
    ("secrets", [{"source": "a", "mode": "9"}], "invalid mode"),
    ("secrets", [{"source": "a", "target": "../../etc/passwd"}], "invalid target"),
    ("configs", [{"target": "/x"}], "missing required key `source`"),
    ("configs", [{"source": "a", "uid": "root"}], "invalid id"),
    ("image", "", "non-empty string"),
    ("command", [], "must not be empty"),
    ("command", "a 'b", "cannot split command"),
    ("entrypoint", [1], "string or a list of strings"),
    ("environment", {"1A": "x"}, "invalid variable name"),
    ("environment", {"A": {"b": 1}}, "needs a plain value"),
    ("environment", {"A": "x\0y"}, "NUL"),
    ("environment", 5, "mapping or a list"),
    ("working_dir", "relative", "absolute path"),
    ("working_dir", "/a/../b", "absolute path"),
    ("user", "a b", "invalid user"),
    ("ports", ["x"], "invalid port"),
    ("volumes", ["./nope:/x"], "does not exist"),
    ("volumes", ["nope:/x"], "undeclared volume `nope`"),
    ("volumes", ["a"], "invalid volume"),
    ("volumes", "a:b", "must be a list"),
    ("depends_on", "other", "list of service names"),
    ("depends_on", ["Bad"], "invalid name"),
    ("healthcheck", {"test": 5}, "string or a list"),
    ("healthcheck", {"test": ["NOPE"]}, "invalid healthcheck test"),
    ("healthcheck", {"test": "true", "interval": "soon"}, "invalid duration"),
    ("healthcheck", {"test": "true", "retries": 0}, "whole number"),
    ("healthcheck", {}, "a healthcheck needs a `test`"),
    ("restart", "sometimes", "use one of"),
    ("restart", "always:3", "use one of"),
    ("env_file", 5, "`env_file` takes a path"),
    ("ipc", "host", "ipc mode 'host' is not supported"),
    ("cgroup", "host", "cgroup mode 'host' is not supported"),
    ("userns_mode", "keep-id", "userns_mode 'keep-id' is not supported"),
    ("volumes_from", ["container:abc"], "`container:NAME` is not supported"),
    ("volumes_from", ["nosuch"], "unknown service `nosuch`"),
    ("volumes_from", ["s1:rx"], "invalid volumes_from entry"),
    ("label_file", [{"path": "a.labels", "format": "raw"}], "`label_file` entries take `path` and `required`"),
    ("extends", "nope", "no service `nope`"),  # more in test_extends.py
    ("container_name", "-x", "invalid container name"),
    ("labels", "x", "mapping or a list"),
    ("annotations", {"a b": 1}, "invalid label"),
    ("tmpfs", ["/run:exec=1"], "invalid tmpfs option"),
    ("tmpfs", ["run"], "absolute path"),
    ("cap_add", ["NET_ADMN"], "unknown capability"),
    ("cap_drop", "ALL", "list of capability names"),
    ("security_opt", ["seccomp:unconfined"], "is not supported"),
    ("init", "yes", "true or false"),
    ("stop_signal", "SIGFOO", "invalid signal"),
    ("stop_grace_period", "soon", "invalid duration"),
    ("ulimits", {"nofiles": 1}, "unknown ulimit"),
    ("ulimits", {"nofile": {"soft": 10, "hard": 5}}, "above the hard limit"),
    ("sysctls", {"kernel.pid_max": "1"}, "not namespaced"),
    ("mem_limit", "lots", "invalid memory size"),
    ("mem_reservation", "1k", "invalid memory size"),
    ("cpus", 0, "invalid cpus"),
    ("pids_limit", 0, "pids limit of 0"),
    ("cpu_shares", 1, "from 2 to 262144"),
    ("cpu_period", 999, "from 1000 to 1000000 microseconds"),
    ("cpu_quota", "soon", "invalid duration"),
    ("cpu_quota", 6_500_001, "more than 64 CPUs"),
    ("cpuset", "1-x", "invalid cpuset"),
    ("cpuset", "3-1", "invalid CPU range `3-1`"),
    ("oom_score_adj", 1001, "from -1000 to 1000"),
    ("logging", {"driver": "fluentd"}, "log driver 'fluentd' is not supported"),
    ("post_start", {"command": "true"}, "must be a list of hooks"),
    ("post_start", [{"user": "root"}], "missing required key `command`"),
    ("pre_stop", [{"command": "true", "privileged": True}], "a privileged hook is not supported"),
    ("pre_stop", [{"command": "true", "environment": {"1A": "x"}}], "invalid variable name"),
    ("logging", {"options": {"max-sise": "1m"}}, "did you mean `max-size`"),
    ("logging", {"options": {"max-size": "tiny"}}, "invalid log size"),
    ("logging", {"options": {"max-size": "100"}}, "at least `1k`"),
    ("logging", {"options": {"max-size": "1m", "max-file": "0"}}, "invalid max-file"),
    ("logging", {"options": {"max-size": "1m", "max-file": 21}}, "from 1 to 20"),
    ("deploy", {"replicas": 0}, "must be a whole number from 1 to 32"),
    ("deploy", {"mode": "global"}, "is not supported"),
    ("scale", 33, "must be a whole number from 1 to 32"),
    ("deploy", {"resources": {"limits": {"memory": "x"}}}, "invalid memory size"),
    ("profiles", "debug", "list of profile names"),
    ("platform", "linux/arm64", "is not supported"),
    ("pull_policy", "build", "`pull_policy: build` needs a `build:` section"),
    ("build", "./nowhere", "folder `./nowhere` does not exist"),
    ("pull_policy", "sometimes", "invalid pull_policy"),
    ("isolation", "vm", "use one of"),
    ("machine", "Bad!", "invalid name"),
    ("vm", {"memroy": "1G"}, "did you mean `memory`"),
    ("vm", "big", "mapping of settings"),
    ("read_only", "yes", "true or false"),
    ("privileged", 1, "true or false"),
    ("hostname", "Bad_Host", "invalid name"),
    ("hostname", "-x", "DNS label"),
    ("networks", ["nosuch"], "undeclared network `nosuch`"),
    ("networks", "front", "list of network names"),
    ("networks", {"default": {"aliases": ["Not Valid"]}}, "invalid name"),
    ("networks", {"default": {"ipv4_address": "10.1.1.1"}}, "has no subnet of its own"),
    ("networks", {"default": {"ipv4_address": "10.1.1"}}, "invalid IPv4 address"),
    ("networks", {"default": {"alias": ["x"]}}, "did you mean `aliases`"),
    ("networks", {"default": {"ipv6_address": "fd00::2"}}, "IPv4 only"),
    ("networks", {"default": {"mac_address": "02:00:00:00:00"}}, "invalid MAC address"),
    ("networks", {"default": {"priority": "high"}}, "whole number"),
    ("mac_address", "03:00:00:00:00:01", "not a unicast address"),
    ("mac_address", "52:54:00:12:34:56", "user-mode NIC"),
    ("mac_address", 2914772520280, "read as the number"),
    ("expose", ["http"], "invalid port"),
    ("expose", 80, "list of ports"),
    ("extra_hosts", ["nohost"], "NAME:IP"),
    ("extra_hosts", ["a:not-an-ip"], "invalid address"),
    ("dns", ["8.8.8"], "invalid nameserver"),
    ("dns_search", ["bad domain"], "invalid domain"),
    ("dns_opt", ["ndots=2"], "invalid resolver option"),
    ("domainname", "-x", "invalid domain"),
    ("group_add", [["x"]], "invalid group"),
    ("shm_size", "lots", "size"),
    ("stdin_open", "always", "true or false"),
    ("tty", "yes", "true or false"),
    ("links", ["bad link!"], "invalid link"),
    ("network_mode", "host", "`network_mode` is not supported"),
    ("host", "nosuch", "undeclared host `nosuch`"),  # more in test_hostspec.py
]


@pytest.mark.parametrize(("key", "value", "attr", "want"), SERVICE_GOOD)
def test_service_setting_parses(tmp_path: Path, key: str, value: Any, attr: str, want: Any) -> None:
    assert getattr(service_with(tmp_path, key, value), attr) == want


def test_cpu_quota_is_a_share_of_cpu_period_said_once(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  s1: {image: x.tar, cpu_quota: 150000, cpu_period: 50ms}\n")
    svc, machine = env.service("s1"), env.machine("s1")
    assert svc is not None and svc.limits == Limits(cpus=3.0, cpu_period_us=50_000)
    assert machine is not None and machine.vcpus == 3  # sized as `cpus: 3` would size it
    err = fails(tmp_path, "services:\n  s1:\n    image: x.tar\n    cpus: 1\n    cpu_quota: 50000\n")
    assert "`cpu_quota` and `cpus` both limit" in err.message and err.where is not None and err.where.line == 5


def test_volumes_from_copies_volumes_through_chains_in_their_mode_or_the_one_asked(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    env = load(tmp_path, "services:\n"
                         "  app: {image: x.tar, isolation: container, volumes: ['./logs:/logs:rw', 'data:/data']}\n"
                         "  shipper: {image: x.tar, volumes_from: ['app:ro']}\n"
                         "  audit: {image: x.tar, volumes: ['./logs:/logs:rw'], volumes_from: [shipper]}\n"
                         "volumes: {data: {}}\n")
    def mounts(name: str) -> list[tuple[str, bool]]:
        svc = env.service(name)
        assert svc is not None
        return [(v.target, v.readonly) for v in svc.volumes]
    assert mounts("app") == [("/logs", False), ("/data", False)]
    assert mounts("shipper") == [("/logs", True), ("/data", True)]
    assert mounts("audit") == [("/logs", False), ("/data", True)]  # its own mount at /logs wins
    shipper = env.machine("shipper")
    assert shipper is not None and shipper.image == "minimal"  # a microVM sharing folders gets the 9p kernel
    err = fails(tmp_path, "services:\n  a: {image: x.tar, volumes_from: [b]}\n  b: {image: x.tar, volumes_from: [a]}\n")
    assert "goes round in a circle" in err.message


def test_a_cpuset_sizes_its_microvm_and_must_fit_the_vcpus_it_was_given(tmp_path: Path) -> None:
    sized = load(tmp_path, "services:\n  s1: {image: x.tar, cpuset: '0,2'}\n").machine("s1")
    assert sized is not None and sized.vcpus == 3
    err = fails(tmp_path, "services:\n  s1:\n    image: x.tar\n    cpuset: '1'\n    vm: {vcpus: 1}\n")
    assert "CPU 1 is not in its microVM `s1`, which has 1 vCPU(s)" in err.message and "vm.vcpus" in (err.hint or "")
    assert err.where is not None and (err.where.key, err.where.line) == ("services.s1.cpuset", 4)


@pytest.mark.parametrize(("key", "value", "message"), SERVICE_BAD)
def test_service_setting_errors(tmp_path: Path, key: str, value: Any, message: str) -> None:
    settings = {"image": "x.tar", key: value} if key != "image" else {"image": value}
    err = fails(tmp_path, yaml.safe_dump({"name": "t", "services": {"s1": settings}}))
    assert message in err.render()
    assert err.where is not None and err.where.key is not None and err.where.key.startswith("services.s1")


def test_every_service_setting_is_covered() -> None:
    covered = {k for k, *_ in SERVICE_GOOD} | {k for k, *_ in SERVICE_BAD}
    assert {s.key for s in spec.SERVICE_SETTINGS if s.support is Support.HONOURED} <= covered


COMPOSE_GOOD = [
    ("restart", "always", "restart", Restart.ALWAYS),
    ("restart", "unless-stopped", "restart", Restart.UNLESS_STOPPED),
    ("restart", "on-failure:3", "restart_retries", 3),
    ("restart", False, "restart", Restart.NO),
    ("user", "app:staff", "user", "app:staff"),
    ("container_name", "My_web.1", "container_name", "My_web.1"),
    ("labels", ["com.example.tier=web", "empty="], "labels", (("com.example.tier", "web"), ("empty", ""))),
    ("tmpfs", "/run", "tmpfs", (TmpfsSpec("/run"),)),
    ("tmpfs", ["/cache:size=64m,mode=1777,noexec"], "tmpfs", (TmpfsSpec("/cache", ("size=64m", "mode=1777",
                                                                                          "noexec")),)),
    ("cap_add", ["net_admin", "CAP_SYS_TIME"], "cap_add", ("CAP_NET_ADMIN", "CAP_SYS_TIME")),
    ("cap_drop", ["ALL"], "cap_drop", ("ALL",)),
    ("security_opt", ["no-new-privileges:false"], "no_new_privileges", False),
    ("security_opt", ["no-new-privileges"], "no_new_privileges", True),
    ("init", True, "init", True),
    ("stop_signal", "INT", "stop_signal", "SIGINT"),
    ("stop_grace_period", "1m30s", "stop_grace_period", 90.0),
    ("ulimits", {"nofile": {"soft": 100, "hard": 200}, "nproc": 64}, "ulimits",
     (Ulimit("nofile", 100, 200), Ulimit("nproc", 64, 64))),
    ("sysctls", {"net.core.somaxconn": 1024}, "sysctls", (("net.core.somaxconn", "1024"),)),
    ("mem_limit", "512m", "limits", Limits(memory_mib=512)),
    ("mem_limit", 268435456, "limits", Limits(memory_mib=256)),
    ("cpus", "0.5", "limits", Limits(cpus=0.5)),
    ("pids_limit", 100, "limits", Limits(pids=100)),
    ("cpu_shares", 512, "limits", Limits(cpu_shares=512)),
    ("cpu_quota", 50_000, "limits", Limits(cpus=0.5)),
    ("cpu_quota", "25ms", "limits", Limits(cpus=0.25)),
    ("cpuset", "0,2-3", "limits", Limits(cpuset=(0, 2, 3))),
    ("oom_score_adj", -500, "oom_score_adj", -500),
    ("post_start", [{"command": "chown -R 1000 /data", "user": "root"}], "post_start",
     (Hook(("chown", "-R", "1000", "/data"), user="root"),)),
    ("pre_stop", [{"command": ["sh", "-c", "x"], "working_dir": "/tmp", "environment": ["A=1"]}], "pre_stop",
     (Hook(("sh", "-c", "x"), working_dir="/tmp", environment=(("A", "1"),)),)),
    ("logging", {"driver": "local", "options": {"max-size": "1m"}}, "log_rotation", LogRotation(1 << 20, 5)),
    ("logging", {"driver": "local"}, "log_rotation", LogRotation(20 << 20, 5)),  # docker's `local` rotates
    ("logging", {"options": {"max-size": "10m", "max-file": "3"}}, "log_rotation", LogRotation(10 << 20, 3)),
    ("logging", {"options": {"max-size": 4096}}, "log_rotation", LogRotation(4096, 1)),
    ("logging", {"options": {"max-file": 3}}, "log_rotation", None),  # no max-size: ignored, with a warning
    ("logging", {"driver": "json-file"}, "log_rotation", None),
    ("ipc", "shareable", "name", "s1"),  # what vmctl always does: accepted
    ("cgroup", "private", "name", "s1"),
    ("userns_mode", "host", "name", "s1"),
    ("deploy", {"resources": {"limits": {"memory": "1g", "cpus": 2, "pids": 9},
                              "reservations": {"memory": "256m"}}},
     "limits", Limits(memory_mib=1024, memory_reservation_mib=256, cpus=2.0, pids=9)),
]


@pytest.mark.parametrize(("key", "value", "attr", "want"), COMPOSE_GOOD)
def test_compose_setting_parses(tmp_path: Path, key: str, value: Any, attr: str, want: Any) -> None:
    assert getattr(service_with(tmp_path, key, value), attr) == want


REFUSED = [s for s in spec.SERVICE_SETTINGS if s.support is Support.REFUSED]
IGNORED = [s for s in spec.SERVICE_SETTINGS if s.support is Support.IGNORED]


@pytest.mark.parametrize("setting", REFUSED, ids=[s.key for s in REFUSED])
def test_refused_compose_keys_name_the_key_reason_and_hint(tmp_path: Path, setting: Setting) -> None:
    err = fails(tmp_path, f"services:\n  s1:\n    image: x.tar\n    {setting.key}: v\n")
    assert f"`{setting.key}` is not supported: {setting.help}" in err.message and err.hint == setting.hint
    assert err.where is not None and err.where.key == f"services.s1.{setting.key}" and err.where.line == 4


@pytest.mark.parametrize("setting", IGNORED, ids=[s.key for s in IGNORED])
def test_ignored_compose_keys_warn_naming_the_key(tmp_path: Path, setting: Setting) -> None:
    env = load(tmp_path, yaml.safe_dump({"services": {"s1": {"image": "x.tar", setting.key: True}}}))
    assert any(f"`services.s1.{setting.key}`" in w and "is ignored" in w for w in env.warnings)


def test_top_level_compose_keys(tmp_path: Path) -> None:
    env = load(tmp_path, "version: '3.8'\nx-anything: {a: 1}\nservices:\n  s1: {image: x.tar, x-note: hi}\n")
    assert any("`version` is ignored" in w for w in env.warnings)
    err = fails(tmp_path, "services:\n  s1: {image: x.tar}\nmodels:\n  llm: {model: ai/x}\n")
    assert "`models` is not supported" in err.message and err.where is not None and err.where.line == 3


def test_cpu_reservations_warn(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  a:\n    image: x.tar\n    deploy: {resources: {reservations: {cpus: 1}}}\n")
    assert any("`cpus` is ignored in `reservations`" in w and "services.a.deploy.resources.reservations.cpus" in w
               for w in env.warnings)


def test_profiles_select_services(tmp_path: Path) -> None:
    text = "services:\n  a: {image: x.tar}\n  b: {image: x.tar, profiles: [debug]}\n"
    assert [s.name for s in load(tmp_path, text).services] == ["a"]
    env = load(tmp_path, text, profiles=["debug"])
    assert [s.name for s in env.services] == ["a", "b"] and env.services[1].profiles == ("debug",)


def test_memory_limit_sizes_the_dedicated_microvm(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  a: {image: x.tar, mem_limit: 64m, cpus: 1.5}\n"
                         "  b: {image: x.tar, mem_limit: 64m, vm: {memory: 1G}}\n  c: {image: x.tar}\n")
    sizes = {m.name: (m.memory_mib, m.vcpus) for m in env.machines}
    assert sizes == {"a": (64 + GUEST_OVERHEAD_MIB, 2), "b": (1024, 1), "c": (256, 1)}


def test_healthcheck_forms_and_durations(tmp_path: Path) -> None:
    s = service_with(tmp_path, "healthcheck", {"test": ["CMD-SHELL", "curl x"], "interval": "1m30s",
                                                "timeout": "500ms", "start_period": 2})
    assert s.healthcheck == spec.HealthcheckSpec(("/bin/sh", "-c", "curl x"), 90.0, 0.5, 5, 2.0)
    s = service_with(tmp_path, "healthcheck", {"test": ["CMD", "wget", "-q"]})
    assert s.healthcheck is not None and s.healthcheck.test == ("wget", "-q")


def test_service_in_machine_shares_its_ports(tmp_path: Path) -> None:
    env = load(tmp_path, "machines: {w: {ports: ['81:80']}}\nservices:\n  s: {image: x, machine: w, ports: ['82:8']}\n")
    w = env.machine("w")
    assert w is not None and [p.host_port for p in w.ports] == [81, 82]
    err = fails(tmp_path, "machines: {w: {ports: ['81:80']}}\n"
                          "services:\n  s: {image: x, machine: w, ports: ['81:8']}\n")
    assert "already used by `machines.w.ports`" in err.message


def test_container_service_refuses_vm_settings(tmp_path: Path) -> None:
    err = fails(tmp_path, "services:\n  s: {image: x, isolation: container, vm: {memory: 1G}}\n")
    assert "does not apply" in err.message


def test_topological_order(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  c: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n"
                         "  a: {image: x}\n")
    assert [s.name for s in spec.topological_services(env)] == ["a", "b", "c"]


# ---------------------------------------------------------------------------------------------- file-level


def test_unknown_key_suggests(tmp_path: Path) -> None:
    err = fails(tmp_path, "machines:\n  m1: {vcpu: 2}\n")
    assert err.hint == "did you mean `vcpus`?"
    assert err.where is not None and (err.where.line, err.where.key) == (2, "machines.m1.vcpu")


def test_unknown_key_without_a_close_match_lists_keys(tmp_path: Path) -> None:
    err = fails(tmp_path, "machines:\n  m1: {zzzzzz: 2}\n")
    assert err.hint is not None and err.hint.startswith("known keys: ")


def test_error_render_names_file_line_key_and_hint(tmp_path: Path) -> None:
    err = fails(tmp_path, "name: t\nmachines:\n  m1:\n    vcpus: 99\n")
    assert err.render() == (f"{tmp_path / 'vmctl.yaml'}:4: `machines.m1.vcpus`: must be a whole number from 1 to 64, "
                            "not 99\n  hint: `vcpus` takes int: virtual CPUs")


def test_hostile_keys_are_quoted_in_key_paths(tmp_path: Path) -> None:
    err = fails(tmp_path, 'machines:\n  "a\\nb\\u001b[2J": {}\n')
    assert err.where is not None and err.where.key == 'machines["a\\nb\\u001b[2J"]'
    assert "\n" not in str(err.where) and "\x1b" not in err.render()


def test_project_name_override_is_validated(tmp_path: Path) -> None:
    assert load(tmp_path, "machines: {m1: {}}\n", name_override="other").name == "other"
    for bad in ("../x", "a/b", "A", "x" * 40, "", "a b", "<x>"):
        with pytest.raises(UsageError, match="--project-name"):
            load(tmp_path, "machines: {m1: {}}\n", name_override=bad)


def test_folder_name_is_always_a_valid_name(tmp_path: Path) -> None:
    for folder in ("My Project!", "ünï", "---", "a" * 80):
        file = tmp_path / folder / "vmctl.yaml"
        file.parent.mkdir()
        assert NAME_RE.match(spec.folder_name(file))


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    err = fails(tmp_path, "machines:\n  m1: {}\n  m1: {}\n")
    assert "first at line 2" in err.message and err.where is not None and err.where.line == 3


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    rows += [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    err = fails(tmp_path, "\n".join(rows) + "\n")
    assert "expands to more than" in err.message


def test_replicas_become_instances_found_by_the_service_name(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  api:\n    image: x.tar\n    deploy: {replicas: 3}\n    ports: ['80']\n"
                         "  web:\n    image: x.tar\n    depends_on: [api]\n"
                         "  jobs: {image: x.tar, isolation: container, scale: 2}\n")
    assert [s.name for s in env.services] == ["api-1", "api-2", "api-3", "web", "jobs-1", "jobs-2"]
    assert [m.name for m in env.machines] == ["api-1", "api-2", "api-3", "web"]  # each its own microVM
    web, api2 = env.service("web"), env.service("api-2")
    assert web is not None and web.depends_on == ("api-1", "api-2", "api-3")
    assert api2 is not None and api2.names_on("default") == ("api-2", "api")
    assert env.service("api") == env.service("api-1")  # `exec api`: the first instance, as compose's --index 1
    assert [s.name for s in env.instances("jobs")] == ["jobs-1", "jobs-2"]


@pytest.mark.parametrize(("extra", "want", "key"), [
    ("    ports: ['8080:80']\n", "every instance would bind host port 8080", "services.api.ports"),
    ("    hostname: one\n", "`hostname` cannot be used with several instances", "services.api.hostname"),
    ("    container_name: one\n", "`container_name` cannot be used", "services.api.container_name"),
    ("    deploy: {replicas: 3}\n", "`scale: 2` and `deploy.replicas: 3` disagree", "services.api.scale"),
])
def test_what_instances_cannot_share_is_refused(tmp_path: Path, extra: str, want: str, key: str) -> None:
    err = fails(tmp_path, "services:\n  api:\n    image: x.tar\n    scale: 2\n" + extra)
    assert want in err.message and err.where is not None and err.where.key == key


def test_depends_on_conditions(tmp_path: Path) -> None:
    from vmctl.spec import Condition, Dependency

    env = load(tmp_path, "services:\n  db:\n    image: x.tar\n"
                         "    healthcheck: {test: [CMD, 'true'], start_interval: 1s}\n"
                         "  job: {image: x.tar}\n  web:\n    image: x.tar\n    depends_on:\n"
                         "      db: {condition: service_healthy, restart: true}\n"
                         "      job: {condition: service_completed_successfully}\n"
                         "      extra: {required: false}\n"
                         "  api: {image: x.tar, depends_on: [db]}\n")
    web, api, db = env.service("web"), env.service("api"), env.service("db")
    assert web is not None and api is not None and db is not None and db.healthcheck is not None
    assert web.dependencies == (Dependency("db", Condition.HEALTHY, restart=True),
                                Dependency("job", Condition.COMPLETED))  # the optional, absent `extra` left out
    assert any("optional dependency `extra`" in w and "services.web.depends_on.extra" in w for w in env.warnings)
    assert api.dependencies == (Dependency("db"),) and api.depends_on == ("db",)
    assert db.healthcheck.start_interval == 1.0


@pytest.mark.parametrize(("text", "want", "key"), [
    ("  db: {image: x.tar, healthcheck: {disable: true}}\n  web:\n    image: x.tar\n"
     "    depends_on: {db: {condition: service_healthy}}\n", "`db` has no healthcheck", "services.web.depends_on.db"),
    ("  web:\n    image: x.tar\n    depends_on: {db: {}}\n", "unknown service `db`", "services.web.depends_on.db"),
    ("  db: {image: x.tar}\n  web:\n    image: x.tar\n    depends_on: {db: {condition: service_ready}}\n",
     "invalid value 'service_ready'", "services.web.depends_on.db.condition"),
])
def test_depends_on_errors_name_the_dependency(tmp_path: Path, text: str, want: str, key: str) -> None:
    err = fails(tmp_path, "services:\n" + text)
    assert want in err.message and err.where is not None and err.where.key == key


def test_a_healthcheck_is_off_with_none_or_disable(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  a: {image: x.tar, healthcheck: {test: [NONE]}}\n"
                         "  b: {image: x.tar, healthcheck: {test: [CMD, 'false'], disable: true}}\n"
                         "  c: {image: x.tar}\n")
    assert [s.healthcheck for s in env.services] == [None, None, None]
    # only a service that says nothing about it inherits its image's HEALTHCHECK (at `up`)
    assert [s.healthcheck_from_image for s in env.services] == [False, False, True]


def test_restart_takes_the_dependents_that_ask_for_it(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  db: {image: x.tar}\n"
                         "  api: {image: x.tar, depends_on: {db: {restart: true}}}\n"
                         "  web: {image: x.tar, depends_on: {api: {restart: true}}}\n"
                         "  cron: {image: x.tar, depends_on: [db]}\n")
    assert spec.with_restart_dependents(env, ["db"]) == ("db", "api", "web")
    assert spec.with_restart_dependents(env, ["api"]) == ("api", "web")
    assert spec.with_restart_dependents(env, []) == ()


def test_links_alias_a_service_and_start_it_first(tmp_path: Path) -> None:
    from vmctl.spec import Dependency

    env = load(tmp_path, "services:\n  db: {image: x.tar}\n  web: {image: x.tar, links: ['db:database', db]}\n")
    web = env.service("web")
    assert web is not None and web.links == (("db", "database"), ("db", "db"))
    assert web.dependencies == (Dependency("db"),)
    err = fails(tmp_path, "services:\n  web:\n    image: x.tar\n    links: [nope]\n")
    assert "unknown service `nope`" in err.message
    assert err.where is not None and err.where.key == "services.web.links[0]"
