"""Host containers for real (no VMs): image build -> prepare (ext4) -> runc + slirp4netns -> stop, no leaks.

Needs root, runc, slirp4netns, skopeo, umoci, mkfs.ext4/debugfs and busybox-static; skipped otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import tarfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.build_images import build_image, build_tiny_image
from tests.conftest import missing_tools
from vmctl.container_image import PreparedImage, prepare_image
from vmctl.errors import UsageError, VmctlError
from vmctl.host_container import HostContainer, HostRuntime, PortForward
from vmctl.oci_spec import ContainerRequest, merge_command, merge_env

TOOLS = ("runc", "slirp4netns", "skopeo", "umoci", "mkfs.ext4", "debugfs", "busybox")
missing = missing_tools(TOOLS)
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root"),
    pytest.mark.skipif(bool(missing), reason=f"missing tools: {missing}"),
]
HOSTILE = 'it\'s "quoted"; $(id) `id` & done'



@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("hostc")
    old = os.environ.get("VMCTL_CACHE_DIR")
    os.environ["VMCTL_CACHE_DIR"] = str(path / "cache")
    yield path
    if old is None:
        os.environ.pop("VMCTL_CACHE_DIR", None)
    else:
        os.environ["VMCTL_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def tiny_tar(workdir: Path) -> Path:
    out: Path = build_tiny_image(workdir / "images")
    return out


@pytest.fixture(scope="module")
def image(tiny_tar: Path) -> PreparedImage:
    return prepare_image(tiny_tar.name, tiny_tar.parent)


@pytest.fixture(scope="module")
def runtime(workdir: Path) -> HostRuntime:
    return HostRuntime(workdir / "runc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _request(image: PreparedImage, name: str, **over: Any) -> ContainerRequest:
    req = ContainerRequest(
        name=name,
        args=merge_command(None, None, image.config),
        env=merge_env(image.config.env, [f"GREETING={HOSTILE}"]),
        cwd="/",
        user="",
        hostname="web-1",
        rootfs=str(image.rootfs),
    )
    return dataclasses.replace(req, **over)


@pytest.fixture
def started(runtime: HostRuntime, image: PreparedImage, tmp_path: Path) -> Iterator[tuple[HostContainer, int]]:
    name, cdir, port = "vmctl-test-web", tmp_path / "web", _free_port()
    try:
        c = runtime.start(_request(image, name), cdir, ports=[PortForward(port, 8080)])
        yield c, port
    finally:
        runtime.stop(name, cdir)
        assert runtime.leftovers(name, cdir) == []


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s")


# ---------------------------------------------------------------- images


def test_prepare_makes_an_ext4_disk_and_caches(image: PreparedImage, tiny_tar: Path) -> None:
    assert image.digest.startswith("sha256:") and image.disk.is_file()
    assert image.config.entrypoint == ("/bin/web-start",) and "8080/tcp" in image.config.exposed_ports
    assert (image.rootfs / "bin" / "busybox").is_file() and image.size_bytes > 1_000_000
    listing = shutil.which("debugfs") or "/usr/sbin/debugfs"
    from vmctl.runner import output

    names = output([listing, "-R", "ls /", image.disk]).split()
    for expected in ("bin", "www", "etc", "proc", "sys", "dev", "tmp", "run"):
        assert expected in names
    t = time.monotonic()
    again = prepare_image(str(tiny_tar), Path("/"))
    assert time.monotonic() - t < 0.5
    assert again.digest == image.digest and again.disk == image.disk


def test_docker_archive_and_layout_dir_are_accepted(workdir: Path, image: PreparedImage) -> None:
    docker_tar = build_image("web", workdir / "docker", fmt="docker-archive")
    prepared = prepare_image(str(docker_tar), workdir)
    assert prepared.config == image.config
    layout = workdir / "layout"
    from vmctl.runner import run

    run(["skopeo", "copy", "--quiet", f"docker-archive:{docker_tar}", f"oci:{layout}:v1"])
    assert prepare_image("layout:v1", workdir).config == image.config


def _cache_entries() -> list[str]:
    root = Path(os.environ["VMCTL_CACHE_DIR"]) / "images"
    return sorted(p.name for p in root.iterdir() if p.name != "sources") if root.exists() else []


def _corrupt_blob(src: Path, dest: Path) -> None:
    """Same tar structure, but the largest blob's bytes flipped: only skopeo's digest check sees it."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        members = tin.getmembers()
        biggest = max(members, key=lambda m: m.size)
        for m in members:
            data = tin.extractfile(m) if m.isfile() else None
            if m is biggest and data is not None:
                raw = bytearray(data.read())
                raw[len(raw) // 2] ^= 0xFF
                tout.addfile(m, io.BytesIO(bytes(raw)))
            else:
                tout.addfile(m, data)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "other-tar", "empty-dir", "bad-blob"])
def test_damaged_sources_are_usage_errors_and_leave_no_cache(
    damage: str, tiny_tar: Path, image: PreparedImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if damage == "bad-blob":  # same manifest as the good image: a shared cache would (rightly) answer it
        monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path / "cache"))
    before = _cache_entries()
    bad = tmp_path / "bad.tar"
    if damage == "truncated":
        bad.write_bytes(tiny_tar.read_bytes()[: tiny_tar.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif damage == "other-tar":
        with tarfile.open(bad, "w") as t:
            t.add(__file__, arcname="hello.py")
    elif damage == "empty-dir":
        bad = tmp_path / "emptydir"
        bad.mkdir()
    elif damage == "bad-blob":
        _corrupt_blob(tiny_tar, bad)
    with pytest.raises(UsageError) as err:
        prepare_image(bad.name, tmp_path)
    assert str(bad) in err.value.message and err.value.hint
    assert _cache_entries() == before


# ---------------------------------------------------------------- containers


def test_web_container_runs_isolated_with_a_published_port(runtime: HostRuntime, started: tuple) -> None:  # type: ignore[type-arg]
    c, port = started
    _wait_for(lambda: "serving" in c.log.read_text())
    assert f"web: {HOSTILE} from web-1" in c.log.read_text()
    url = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        try:
            page = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return False
        assert "hostname: web-1" in page and f"greeting: {HOSTILE}" in page
        return True

    _wait_for(answers)
    state = runtime.state(c.name)
    assert state is not None and state.status == "running" and state.pid == c.pid
    assert os.readlink(f"/proc/{c.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert c.slirp_pid is not None and Path(f"/proc/{c.slirp_pid}").exists()
    r = runtime.exec(c.name, ["sh", "-c", 'echo "$GREETING"; hostname; exit 7'])
    assert r.returncode == 7 and r.stdout.decode() == f"{HOSTILE}\nweb-1\n"
    r = runtime.exec(c.name, ["touch", "/bin/x"])
    assert r.returncode != 0 and b"Read-only file system" in r.stderr
    assert runtime.exec(c.name, ["touch", "/tmp/x"]).returncode == 0
    assert runtime.exec(c.name, ["cat", "/etc/hostname"]).stdout == b"web-1\n"
    assert not (Path(c.cdir) / "overlay" / "upper" / "tmp" / "x").exists()  # /tmp is the container's tmpfs


def test_slirp_ends_when_the_container_ends(runtime: HostRuntime, image: PreparedImage, tmp_path: Path) -> None:
    name, cdir = "vmctl-test-once", tmp_path / "once"
    try:
        c = runtime.start(_request(image, name, args=("/bin/echo", "done")), cdir)
        _wait_for(lambda: c.log.read_text() == "done\n")
        slirp = c.slirp_pid
        assert slirp is not None
        _wait_for(
            lambda: (
                not Path(f"/proc/{slirp}").exists() or "Z" in Path(f"/proc/{slirp}/stat").read_text().split(")")[1][:3]
            ),
            timeout=5,
        )
    finally:
        runtime.stop(name, cdir)
    assert runtime.leftovers(name, cdir) == []


def test_failed_start_leaves_nothing(runtime: HostRuntime, image: PreparedImage, tmp_path: Path) -> None:
    name, cdir = "vmctl-test-bad", tmp_path / "bad"
    with pytest.raises(VmctlError):
        runtime.start(_request(image, name, args=("/no/such/program",)), cdir, ports=[PortForward(_free_port(), 80)])
    assert runtime.leftovers(name, cdir) == []
