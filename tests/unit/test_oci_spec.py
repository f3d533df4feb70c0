"""oci_spec: structure of the generated config.json, validation, and hostile values staying intact."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from vmctl.container_image import ImageConfig
from vmctl.errors import UsageError
from vmctl.oci_spec import (
    ALL_CAPS,
    DEFAULT_CAPS,
    BindMount,
    ContainerRequest,
    etc_files,
    make_config,
    merge_command,
    merge_env,
    parse_user,
)

BASE = ContainerRequest(
    name="vmctl-demo-web",
    args=("/bin/httpd", "-f"),
    env=("GREETING=hi",),
    cwd="/",
    user="",
    hostname="web",
    rootfs="/var/cache/rootfs",
    etc_dir="/run/bundle/etc",
)


def config(**changes: Any) -> Any:
    # through JSON and back, as the runtime will read it
    return json.loads(json.dumps(make_config(dataclasses.replace(BASE, **changes))))


def by_dest(cfg: Any) -> dict[str, Any]:
    return {m["destination"]: m for m in cfg["mounts"]}


def test_defaults_are_isolated_and_locked_down() -> None:
    cfg = config()
    assert cfg["ociVersion"].startswith("1.0")
    assert cfg["root"] == {"path": "/var/cache/rootfs", "readonly": True}
    assert cfg["hostname"] == "web"
    ns = [n["type"] for n in cfg["linux"]["namespaces"]]
    assert sorted(ns) == sorted(["pid", "ipc", "uts", "mount", "network", "cgroup"])
    proc = cfg["process"]
    assert proc["noNewPrivileges"] is True
    assert proc["terminal"] is False
    assert proc["user"] == {"uid": 0, "gid": 0}
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    for kind in ("bounding", "effective", "permitted"):
        assert proc["capabilities"][kind] == list(DEFAULT_CAPS)
    assert "CAP_SYS_ADMIN" not in proc["capabilities"]["bounding"]
    for path in ("/proc/kcore", "/proc/keys", "/sys/firmware", "/proc/timer_list"):
        assert path in cfg["linux"]["maskedPaths"]
    assert "/proc/sys" in cfg["linux"]["readonlyPaths"]
    assert cfg["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]


def test_standard_mounts_and_tmpfs_when_readonly() -> None:
    mounts = by_dest(config())
    for dest, kind in {
        "/proc": "proc",
        "/dev": "tmpfs",
        "/dev/pts": "devpts",
        "/dev/shm": "tmpfs",
        "/sys": "sysfs",
        "/tmp": "tmpfs",
        "/run": "tmpfs",
    }.items():
        assert mounts[dest]["type"] == kind, dest
    assert "ro" in mounts["/sys"]["options"]
    for name in ("hostname", "hosts", "resolv.conf"):
        m = mounts[f"/etc/{name}"]
        assert m["type"] == "bind" and m["source"] == f"/run/bundle/etc/{name}" and "ro" in m["options"]
    writable = by_dest(config(readonly_rootfs=False))
    assert "/tmp" not in writable and "/run" not in writable


def test_env_gets_path_and_hostname_but_keeps_users_values() -> None:
    env = config()["process"]["env"]
    assert env[0].startswith("PATH=/usr/local/sbin:")
    assert "HOSTNAME=web" in env and "GREETING=hi" in env
    env = config(env=("PATH=/x", "HOSTNAME=other"))["process"]["env"]
    assert env == ["PATH=/x", "HOSTNAME=other"]


def test_privileged_gets_all_caps_devices_and_no_masks() -> None:
    cfg = config(privileged=True)
    assert cfg["process"]["capabilities"]["bounding"] == list(ALL_CAPS)
    assert cfg["process"]["noNewPrivileges"] is False
    assert "maskedPaths" not in cfg["linux"] and "readonlyPaths" not in cfg["linux"]
    assert cfg["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "rw" in by_dest(cfg)["/sys"]["options"]


def test_host_network_limits_user_and_mounts() -> None:
    cfg = config(
        share_host_network=True,
        memory_limit_bytes=64 << 20,
        pids_limit=100,
        cpus=0.5,
        cpu_shares=512,
        cpuset="0,2",
        oom_score_adj=-500,
        user="1000:100",
        cgroups_path="/vmctl/vmctl-demo-web",
        mounts=(BindMount("/srv/data", "/data"), BindMount("/srv/rw", "/rw", read_only=False)),
    )
    assert "network" not in [n["type"] for n in cfg["linux"]["namespaces"]]
    assert cfg["linux"]["resources"]["memory"] == {"limit": 64 << 20}
    assert cfg["linux"]["resources"]["pids"] == {"limit": 100}
    assert cfg["linux"]["resources"]["cpu"] == {"quota": 50_000, "period": 100_000, "shares": 512, "cpus": "0,2"}
    assert config(cpus=3.0, cpu_period=50_000)["linux"]["resources"]["cpu"] == {"quota": 150_000, "period": 50_000}
    assert cfg["process"]["oomScoreAdj"] == -500
    assert cfg["linux"]["cgroupsPath"] == "/vmctl/vmctl-demo-web"
    assert cfg["process"]["user"] == {"uid": 1000, "gid": 100}
    mounts = by_dest(cfg)
    assert mounts["/data"]["source"] == "/srv/data" and "ro" in mounts["/data"]["options"]
    assert "rw" in mounts["/rw"]["options"]


HOSTILE = ['it\'s "quoted"', "a; rm -rf /", "$(reboot)", "`id`", "line1\nline2", "  spaces  ", "", "*", "--flag"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_single_entries(value: str) -> None:
    cfg = config(args=("/bin/echo", value, "end"), env=(f"V={value}",))
    assert cfg["process"]["args"] == ["/bin/echo", value, "end"]
    assert f"V={value}" in cfg["process"]["env"]
    assert sum(1 for e in cfg["process"]["env"] if e.startswith("V=")) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"args": ()},
        {"args": ("/bin/sh", "a\0b")},
        {"env": ("NOEQUALS",)},
        {"env": ("1BAD=x",)},
        {"env": ("BAD KEY=x",)},
        {"env": ("$(x)=y",)},
        {"env": ("K=a\0b",)},
        {"hostname": "bad_host"},
        {"hostname": "-x"},
        {"hostname": "a;b"},
        {"name": "bad/name"},
        {"cwd": "relative"},
        {"rootfs": "rootfs"},
        {"user": "nobody"},
        {"user": "1000:abc"},
        {"mounts": (BindMount("relative", "/x"),)},
        {"mounts": (BindMount("/x", "y"),)},
        {"mounts": (BindMount("/x", "/a/../etc"),)},
        {"mounts": (BindMount("/x", "/"),)},
        {"memory_limit_bytes": 0},
        {"pids_limit": -1},
        {"cgroups_path": "vmctl/x"},
    ],
)
def test_bad_values_are_usage_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        make_config(dataclasses.replace(BASE, **changes))


def test_parse_user() -> None:
    assert parse_user("") == (0, 0)
    assert parse_user("1000") == (1000, 1000)
    assert parse_user("1000:5") == (1000, 5)


IMAGE = ImageConfig(entrypoint=("/entry",), cmd=("default", "args"))


def test_merge_command_follows_compose() -> None:
    assert merge_command(None, None, IMAGE) == ("/entry", "default", "args")
    assert merge_command(None, ["x"], IMAGE) == ("/entry", "x")
    assert merge_command(["/other"], None, IMAGE) == ("/other",)  # entrypoint drops the image CMD
    assert merge_command(["/other"], ["y"], IMAGE) == ("/other", "y")
    assert merge_command([], ["/bin/sh"], IMAGE) == ("/bin/sh",)
    assert merge_command(None, [], ImageConfig(entrypoint=("/e",), cmd=("c",))) == ("/e",)
    with pytest.raises(UsageError):
        merge_command(None, None, ImageConfig())


def test_merge_env_overrides_by_key() -> None:
    assert merge_env(["A=1", "B=2"], ["B=3", "C=x=y"]) == ("A=1", "B=3", "C=x=y")


def test_etc_files() -> None:
    files = etc_files("web")
    assert files["hostname"] == "web\n"
    assert "10.0.2.100\tweb" in files["hosts"] and "127.0.0.1\tlocalhost" in files["hosts"]
    assert files["resolv.conf"] == "nameserver 10.0.2.3\n"
    with pytest.raises(UsageError):
        etc_files("bad host\n")


def test_caps_in_mask_reads_kernel_numbering() -> None:
    from vmctl.oci_spec import caps_in_mask

    assert caps_in_mask(0b1) == {"CAP_CHOWN"}
    assert caps_in_mask(1 << 21) == {"CAP_SYS_ADMIN"}
    assert "CAP_SYS_RESOURCE" not in caps_in_mask((1 << 41) - 1 & ~(1 << 24))


def test_limit_caps_keeps_only_what_the_runtime_can_grant() -> None:
    from vmctl.oci_spec import ALL_CAPS, limit_caps

    allowed = frozenset(c for c in ALL_CAPS if c != "CAP_SYS_RESOURCE")
    limited = limit_caps(config(privileged=True), allowed)
    for names in limited["process"]["capabilities"].values():
        assert "CAP_SYS_RESOURCE" not in names
        assert "CAP_SYS_ADMIN" in names


def test_compose_keys_reach_the_config() -> None:
    req = dataclasses.replace(
        BASE, cap_add=("CAP_NET_ADMIN",), cap_drop=("CAP_NET_RAW", "CAP_CHOWN"), no_new_privileges=False,
                  rlimits=(("nofile", 4096, 8192), ("core", -1, -1)), sysctls=(("net.core.somaxconn", "1024"),),
                  tmpfs=(("/scratch", ("size=8m",)),), cpus=0.5, memory_limit_bytes=64 << 20,
                  memory_reservation_bytes=32 << 20, annotations=(("com.example.tier", "web"),),
                  init_path="/run/init")
    cfg = make_config(req)
    caps = cfg["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps and "CAP_NET_RAW" not in caps and "CAP_CHOWN" not in caps
    assert not cfg["process"]["noNewPrivileges"]
    limits = {r["type"]: (r["soft"], r["hard"]) for r in cfg["process"]["rlimits"]}
    assert limits == {"RLIMIT_NOFILE": (4096, 8192), "RLIMIT_CORE": (2**64 - 1, 2**64 - 1)}
    assert cfg["linux"]["sysctl"] == {"net.core.somaxconn": "1024"}
    assert cfg["linux"]["resources"]["cpu"] == {"quota": 50000, "period": 100000}
    assert cfg["linux"]["resources"]["memory"] == {"limit": 64 << 20, "reservation": 32 << 20}
    assert cfg["annotations"] == {"com.example.tier": "web"}
    assert cfg["process"]["args"][:2] == ["/sbin/docker-init", "--"]
    mounts = {m["destination"]: m for m in cfg["mounts"]}
    assert mounts["/scratch"]["type"] == "tmpfs" and "size=8m" in mounts["/scratch"]["options"]
    assert mounts["/sbin/docker-init"]["source"] == "/run/init" and "ro" in mounts["/sbin/docker-init"]["options"]


def test_cap_drop_all_keeps_only_what_is_added() -> None:
    cfg = make_config(dataclasses.replace(BASE, cap_drop=("ALL",), cap_add=("CAP_KILL",)))
    assert cfg["process"]["capabilities"]["effective"] == ["CAP_KILL"]


def test_resolver_domain_groups_and_shm_reach_the_config() -> None:
    from vmctl.oci_spec import ContainerRequest, make_config, request_etc_files

    req = ContainerRequest(name="c", args=("true",), env=(), cwd="/", user="", hostname="web", rootfs="/r",
                           dns=("10.77.0.1", "1.1.1.1"), dns_search=("corp.example",), dns_options=("ndots:2",),
                           domainname="corp.example", additional_gids=(29, 100), shm_bytes=256 << 20)
    config = make_config(req)
    assert config["linux"]["sysctl"] == {"kernel.domainname": "corp.example"}
    assert config["process"]["user"] == {"uid": 0, "gid": 0, "additionalGids": [29, 100]}
    shm = next(m for m in config["mounts"] if m["destination"] == "/dev/shm")
    assert "size=262144k" in shm["options"]
    assert request_etc_files(req)["resolv.conf"] == (
        "nameserver 10.77.0.1\nnameserver 1.1.1.1\nsearch corp.example\noptions ndots:2\n")
