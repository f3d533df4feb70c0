"""The pure parts of services: one request for both runtimes, the guest bundle, status parsing, ports, disks."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vmctl import lifecycle, render
from vmctl.compose_values import Restart
from vmctl.container_image import ImageConfig, PreparedImage
from vmctl.errors import UsageError
from vmctl.guest_container import GuestRuntime, bundle_tar, image_serial, parse_status, volume_tag
from vmctl.host_container import PortForward
from vmctl.host_supervisor import Plan
from vmctl.oci_spec import BindMount, ContainerRequest, make_config
from vmctl.paths import STAMP_AWK
from vmctl.progress import Progress, quiet_renderer
from vmctl.spec import load_environment
from vmctl.ssh import Guest
from vmctl.state import EnvState, ForwardState, MachineState
from vmctl.workloads import (
    HostServiceRuntime,
    PrefixWriter,
    PublishedPort,
    container_request,
    copy_file,
    image_disks,
    machine_volumes,
    published_ports,
)

ENV = """\
name: unit
machines:
  box: {}
services:
  web:
    image: ./web.tar
    machine: box
    command: ["httpd", "-f"]
    environment: {GREETING: hi, PATH: /bin}
    ports: ["8080"]
    read_only: false
  solo:
    image: ./web.tar
    ports: ["9000:90"]
  plain:
    image: ./web.tar
    isolation: container
    volumes: ["./data:/data"]
    depends_on: [web]
"""


@pytest.fixture()
def env_file(tmp_path: Path) -> Path:
    (tmp_path / "web.tar").write_bytes(b"")
    (tmp_path / "data").mkdir()
    file = tmp_path / "env.yaml"
    file.write_text(ENV)
    return file


def _image(digest: str = "sha256:" + "ab" * 32, user: str = "", rootfs: Path = Path("/cache/rootfs")) -> PreparedImage:
    config = ImageConfig(entrypoint=("/bin/web-start",), env=("PATH=/usr/bin", "A=1"), user=user)
    return PreparedImage("./web.tar", digest, rootfs, Path("/cache/disk.ext4"), config, 1)


def _guest_runtime() -> GuestRuntime:
    blob = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return GuestRuntime(Guest(name="box", port=1, hostkey=blob, key_file=Path("/nonexistent")))


def test_request_merges_service_over_image(env_file: Path) -> None:
    env = load_environment(env_file)
    svc = env.service("web")
    assert svc is not None
    req = container_request(svc, _image(), _guest_runtime())
    assert req.args == ("/bin/web-start", "httpd", "-f")  # compose: command replaces CMD, keeps ENTRYPOINT
    assert req.env == ("PATH=/bin", "A=1", "GREETING=hi")
    assert req.hostname == "web" and req.name == "web"
    assert req.rootfs == "/run/vmctl/svc/web/rootfs" and req.etc_dir == "/run/vmctl/svc/web/bundle/etc"
    assert req.share_host_network and not req.readonly_rootfs
    assert req.user == ""


def test_user_names_are_looked_up_in_the_image(env_file: Path, tmp_path: Path) -> None:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nstaff:x:50:\n")
    svc = load_environment(env_file).service("web")
    assert svc is not None
    image = _image(user="nobody", rootfs=tmp_path / "rootfs")
    assert container_request(svc, image, _guest_runtime()).user == "65534:65534"
    for user, want in (("nobody:staff", "65534:50"), ("1000", "1000:1000"), ("0:staff", "0:50")):
        assert container_request(replace(svc, user=user), image, _guest_runtime()).user == want
    with pytest.raises(UsageError, match="user `ghost` is not in the image's /etc/passwd"):
        container_request(replace(svc, user="ghost"), image, _guest_runtime())


def test_microvm_volumes_bind_the_guest_9p_mount(tmp_path: Path) -> None:
    (tmp_path / "web.tar").write_bytes(b"")
    (tmp_path / "d").mkdir()
    (tmp_path / "o").mkdir()
    file = tmp_path / "env.yaml"
    file.write_text("machines:\n  box: {image: minimal}\nservices:\n"
                    "  v: {image: ./web.tar, machine: box, volumes: ['./d:/d', './o:/o:rw']}\n"
                    "  w: {image: ./web.tar, machine: box, volumes: ['./d:/d2:ro', './o:/o2']}\n"
                    "  h: {image: ./web.tar, isolation: container, volumes: ['./d:/d']}\n")
    env = load_environment(file)
    d, o = (tmp_path / "d").resolve(), (tmp_path / "o").resolve()
    assert machine_volumes(env, "box") == sorted([(volume_tag(d), d, True), (volume_tag(o), o, False)])
    svc = env.service("v")
    assert svc is not None
    req = container_request(svc, _image(), _guest_runtime())
    assert req.mounts == (BindMount(f"/run/vmctl/volumes/{volume_tag(d)}", "/d", True),
                          BindMount(f"/run/vmctl/volumes/{volume_tag(o)}", "/o", False))
    assert volume_tag(d).startswith("vol-") and len(volume_tag(d)) == 16
    binds = {m["destination"]: m for m in make_config(req)["mounts"]}
    assert binds["/d"]["source"] == f"/run/vmctl/volumes/{volume_tag(d)}" and "ro" in binds["/d"]["options"]
    assert "ro" not in binds["/o"]["options"]
    host = env.service("h")
    assert host is not None
    hreq = container_request(host, _image(), HostServiceRuntime("e", tmp_path / "services"))
    assert hreq.mounts == (BindMount(str(d), "/d", True),)


def test_bundle_tar_holds_config_and_etc() -> None:
    from vmctl.oci_spec import ContainerRequest

    req = ContainerRequest(name="web", args=("sh",), env=(), cwd="/", user="", hostname="web",
                           rootfs="/run/vmctl/svc/web/rootfs", share_host_network=True,
                           etc_dir="/run/vmctl/svc/web/bundle/etc")
    with tarfile.open(fileobj=io.BytesIO(bundle_tar(req))) as tar:
        names = sorted(tar.getnames())
        config = json.loads(tar.extractfile("config.json").read())  # type: ignore[union-attr]
        hostname = tar.extractfile("etc/hostname").read()  # type: ignore[union-attr]
    assert names == ["config.json", "etc/hostname", "etc/hosts", "etc/resolv.conf"]
    assert config["hostname"] == "web" and hostname == b"web\n"
    assert {"type": "network"} not in config["linux"]["namespaces"]  # the guest's network stack


def test_parse_status_and_serial() -> None:
    live = parse_status("state=restarting\nexit_code=3\nrestarts=2\nstarted=12.5\n")
    assert (live.state, live.exit_code, live.restarts) == ("restarting", 3, 2)
    assert parse_status("state=absent\n").exit_code is None
    serial = image_serial("sha256:" + "0123456789abcdef" * 4)
    assert serial == "img-0123456789abcdef" and len(serial) <= 20


def test_published_ports_come_from_the_machine_forwards(env_file: Path) -> None:
    env = load_environment(env_file)
    state = EnvState("unit", str(env_file))
    state.machines["box"] = MachineState("box", "d", "u", "tcg", 2222, forwards=[
        ForwardState("127.0.0.1", 40000, 8080), ForwardState("127.0.0.1", 40001, 22222)])
    web = env.service("web")
    assert web is not None
    assert published_ports(web, state) == [PublishedPort("127.0.0.1", 40000, 8080)]


def test_image_disks_dedupe_and_render_valid_xml(env_file: Path, tmp_path: Path) -> None:
    env = load_environment(env_file)
    images = {"web": _image(), "solo": _image()}
    disks = image_disks(env, "box", images)
    assert disks == [("img-abababababababab", Path("/cache/disk.ext4"))]
    project = lifecycle.Project(env=env, progress=Progress(quiet_renderer))
    machine = env.machine("box")
    assert machine is not None
    files = lifecycle.BootFiles(tmp_path / "vmlinuz", None, None)
    xml = render.render_domain(lifecycle.domain_view(project, machine, files, "tcg", [], 2222, disks))
    assert "<serial>img-abababababababab</serial>" in xml and "<readonly/>" in xml
    if shutil.which("virt-xml-validate"):
        (tmp_path / "d.xml").write_text(xml)
        subprocess.run(["virt-xml-validate", str(tmp_path / "d.xml"), "domain"], check=True, capture_output=True)


def test_select_with_services(env_file: Path) -> None:
    project = lifecycle.Project(env=load_environment(env_file), progress=Progress(quiet_renderer))
    machines, services = project.select_with_services(["plain"])  # with what it depends on, as compose
    assert [m.name for m in machines] == ["box"] and [s.name for s in services] == ["web", "plain"]
    machines, services = project.select_with_services(["web"])
    assert [m.name for m in machines] == ["box"] and [s.name for s in services] == ["web"]
    machines, services = project.select_with_services(["box"])
    assert [m.name for m in machines] == ["box"] and [s.name for s in services] == ["web"]
    machines, services = project.select_with_services(["solo"])
    assert [m.name for m in machines] == ["solo"] and [s.name for s in services] == ["solo"]


def test_prefix_writer_and_copy_file(tmp_path: Path) -> None:
    out = io.BytesIO()
    writer = PrefixWriter(out, "web  ")
    writer.write(b"one\ntw")
    writer.write(b"o\nthree")
    writer.close()
    assert out.getvalue() == b"web   | one\nweb   | two\nweb   | three\n"
    log = tmp_path / "log"
    log.write_bytes(b"a\nb\nc\n")
    tail = io.BytesIO()
    copy_file(log, tail, tail=2, follow=False)  # type: ignore[arg-type]
    assert tail.getvalue() == b"b\nc\n"


def test_copy_file_reads_the_rotated_files_first_and_follows_across_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "log"
    (tmp_path / "log.2").write_bytes(b"1\n2\n")
    (tmp_path / "log.1").write_bytes(b"3\n")
    log.write_bytes(b"4\n")
    out = io.BytesIO()
    copy_file(log, out, tail=None, follow=False)  # type: ignore[arg-type]
    assert out.getvalue() == b"1\n2\n3\n4\n"
    out = io.BytesIO()
    copy_file(log, out, tail=3, follow=False)  # type: ignore[arg-type]
    assert out.getvalue() == b"2\n3\n4\n"

    def rotate() -> None:  # what stamp.awk does: a last line, the moves, a new file
        with log.open("ab") as f:
            f.write(b"5\n")
        (tmp_path / "log.1").rename(tmp_path / "log.2")
        log.rename(tmp_path / "log.1")
        log.write_bytes(b"6\n")

    def interrupt() -> None:
        raise KeyboardInterrupt

    steps = iter([rotate, interrupt])
    out = io.BytesIO()
    with pytest.raises(KeyboardInterrupt):
        copy_file(log, out, tail=1, follow=True, sleep=lambda _s: next(steps)())  # type: ignore[arg-type]
    assert out.getvalue() == b"4\n5\n6\n"  # the old file to its end, then the new one from its start


def test_stamp_awk_rotates_both_logs_by_size_and_keeps_the_newest_files(tmp_path: Path) -> None:
    """templates/logs/stamp.awk under the busybox awk that runs it, in a folder whose name needs quoting."""
    folder = tmp_path / "it's here"
    folder.mkdir()
    raw, stamped = folder / "log", folder / "log.t"

    def stamp(lines: range, keep: int) -> None:
        subprocess.run(["busybox", "awk", "-v", f"raw={raw}", "-v", f"stamped={stamped}", "-v", "max=100", "-v",
                        f"keep={keep}", "-f", str(STAMP_AWK)], input="".join(f"{i:03}\n" for i in lines).encode(),
                       check=True, timeout=30)

    stamp(range(1, 101), keep=3)  # 400 bytes: 25 lines a file
    assert sorted(p.name for p in folder.iterdir()) == ["log", "log.1", "log.2", "log.t", "log.t.1", "log.t.2"]
    assert [p.stat().st_size for p in (raw.with_name("log.2"), raw.with_name("log.1"), raw)] == [100, 100, 100]
    assert raw.with_name("log.2").read_text().split() == [f"{i:03}" for i in range(26, 51)]
    assert [line.split()[1] for line in raw.with_name("log.t.1").read_text().splitlines()] == [
        f"{i:03}" for i in range(51, 76)]
    assert all(p.stat().st_mode & 0o077 == 0 for p in (raw, stamped))  # private, as the first ones
    stamp(range(101, 111), keep=3)  # a restart appends: the new stamper counts what the log holds
    assert raw.read_text().split()[-1] == "110" and raw.with_name("log.1").read_text().split()[0] == "076"
    stamp(range(111, 200), keep=1)  # one file: it starts again, empty
    assert len(raw.read_text().split()) <= 25 and raw.read_text().split()[-1] == "199"


def test_net_sysctls_of_a_microvm_service_go_to_the_guest_not_the_oci_config(tmp_path: Path) -> None:
    (tmp_path / "web.tar").write_bytes(b"")
    file = tmp_path / "compose.yaml"
    file.write_text("services:\n  web: {image: ./web.tar, sysctls: {net.core.somaxconn: 1024, kernel.shmmax: 1}}\n")
    svc = load_environment(file).service("web")
    assert svc is not None
    req = container_request(svc, _image(), _guest_runtime())
    assert req.sysctls == (("kernel.shmmax", "1"),)  # crun refuses net.* without a network namespace of its own


def test_host_supervisor_plan_round_trips(tmp_path: Path) -> None:
    req = ContainerRequest(name="e.web", args=("sh", "-c", "x"), env=("A=1",), cwd="/", user="1:2", hostname="web",
                           rootfs="/r", mounts=(BindMount("/a", "/b", False),), tmpfs=(("/t", ("size=1m",)),),
                           rlimits=(("nofile", 1, 2),), annotations=(("k", "v"),), cpus=0.5)
    plan = Plan(req, tmp_path / "svc", (PortForward(8080, 80),), Restart.ON_FAILURE, 3, tmp_path / "runc")
    assert Plan.load(plan.dump()) == plan
