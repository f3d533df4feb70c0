"""`volumes` of a microVM service, end to end through the real CLI: host folders shared with the guest over
virtio-9p (one libvirt <filesystem> per folder), mounted once in the guest and bind-mounted into the crun
container, read-only unless `:rw`. Real VM under TCG, real crun; nothing is mocked.

The machine boots the `minimal` image: its kernel has 9p built in. Debian's cloud kernel (the `default`
image) is built without 9p, so `up` refuses volumes there before creating anything (tests/reliability/
test_preflight.py). The minimal kernel is compiled at most once per cache (the `minimal_image` fixture of
tests/conftest.py); `VMCTL_TEST_KERNEL_BUILD=0` skips these tests when it is not cached yet.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.build_images import build_tiny_image
from tests.conftest import environment_up, missing_tools, qemu_pids, run_vmctl
from vmctl.guest_container import volume_tag
from vmctl.guest_image import GuestImage

TOOLS = ("skopeo", "umoci", "mkfs.ext4", "busybox")
missing = missing_tools(TOOLS)
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="9p passthrough writes as QEMU's user: root here"),
    pytest.mark.skipif(bool(missing), reason=f"missing tools: {missing}"),
]

ENV = """\
name: vols
machines:
  box: {image: minimal, memory: 256M}
services:
  web:
    image: ./web.tar
    machine: box
    volumes: ["./ro:/data", "./rw:/out:rw"]
"""


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory, minimal_image: GuestImage) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("volumes")
    build_tiny_image(folder)
    (folder / "ro").mkdir()
    (folder / "ro" / "hello.txt").write_text("hello from the host\n")
    (folder / "rw").mkdir()
    file = folder / "vmctl.yaml"
    file.write_text(ENV)
    try:
        with environment_up(file):
            yield file
    finally:
        assert not [p for p in qemu_pids() if b"vmctl-vols-" in Path(f"/proc/{p}/cmdline").read_bytes()]


def _exec(file: Path, *argv: str) -> tuple[int, str]:
    out = run_vmctl("-f", str(file), "exec", "web", "--", *argv, timeout=120)
    return out.returncode, out.stdout + out.stderr


def test_read_only_volume_shows_the_host_file_and_refuses_writes(env_file: Path) -> None:
    assert _exec(env_file, "cat", "/data/hello.txt") == (0, "hello from the host\n")
    code, out = _exec(env_file, "sh", "-c", "echo nope > /data/new.txt")
    assert code != 0 and "Read-only file system" in out, out
    code, out = _exec(env_file, "sh", "-c", "echo nope > /data/hello.txt")
    assert code != 0, out
    assert sorted(p.name for p in (env_file.parent / "ro").iterdir()) == ["hello.txt"]
    assert (env_file.parent / "ro" / "hello.txt").read_text() == "hello from the host\n"


def test_rw_volume_write_appears_on_the_host(env_file: Path) -> None:
    code, out = _exec(env_file, "sh", "-c", "echo written in the vm > /out/from-vm.txt")
    assert code == 0, out
    assert (env_file.parent / "rw" / "from-vm.txt").read_text() == "written in the vm\n"
    (env_file.parent / "rw" / "from-host.txt").write_text("and back\n")
    code, out = _exec(env_file, "cat", "/out/from-host.txt")
    assert (code, out) == (0, "and back\n"), out


def test_domain_shares_each_folder_once_by_tag(env_file: Path) -> None:
    out = run_vmctl("-f", str(env_file), "render", "box")
    assert out.returncode == 0, out.stderr
    shared = {fs.find("target").get("dir"): fs.find("readonly") is not None  # type: ignore[union-attr]
              for fs in ET.fromstring(out.stdout).iter("filesystem")}
    assert shared == {volume_tag((env_file.parent / "ro").resolve()): True,
                      volume_tag((env_file.parent / "rw").resolve()): False}


NAMED = """\
name: nvols
services:
  writer:
    image: ./web.tar
    volumes: ["site:/www", "data:/data"]
  reader:
    image: ./web.tar
    isolation: container
    volumes: [{type: volume, source: data, target: /data, read_only: true}]
volumes:
  site: {}
  data:
"""


def test_named_volumes_are_kept_across_down_shared_and_removed_by_down_v(env_file: Path, tmp_path: Path) -> None:
    """compose's named volumes: a folder each under vmctl's state, filled from the image on creation
    (copy-up), shared by a microVM service (its own VM gets the 9p-capable image without being told)
    and a host container, kept by `down`, removed by `down -v`."""
    from vmctl.spec import load_environment
    from vmctl.volumes import volumes_root

    shutil.copy(env_file.parent / "web.tar", tmp_path / "web.tar")
    file = tmp_path / "compose.yaml"
    file.write_text(NAMED)
    site, data = volumes_root() / "nvols_site", volumes_root() / "nvols_data"
    vmctl = ("-f", str(file))
    try:
        up = run_vmctl(*vmctl, "up", "--timeout", "180")
        assert up.returncode == 0, up.stderr
        assert "volume nvols_data" in up.stderr and "created" in up.stderr
        assert (site / "cgi-bin" / "index.cgi").is_file()  # the image's /www, copied up
        assert not any(data.iterdir())  # the image has no /data: an empty folder
        assert load_environment(file).machine("writer").image == "minimal"  # type: ignore[union-attr]
        write = run_vmctl(*vmctl, "exec", "writer", "--", "sh", "-c", "echo kept > /data/f && ls /www/cgi-bin")
        assert (write.returncode, write.stdout) == (0, "index.cgi\n"), write.stderr
        read = run_vmctl(*vmctl, "exec", "reader", "--", "cat", "/data/f")
        assert (read.returncode, read.stdout) == (0, "kept\n"), read.stderr
        denied = run_vmctl(*vmctl, "exec", "reader", "--", "sh", "-c", "echo no > /data/g")
        assert denied.returncode != 0  # `read_only: true` in the long form
        assert run_vmctl(*vmctl, "down").returncode == 0
        assert (data / "f").read_text() == "kept\n"  # `down` keeps named volumes
        up = run_vmctl(*vmctl, "up", "--timeout", "180")
        assert up.returncode == 0, up.stderr
        assert "volume nvols_data" not in up.stderr  # there already: not created, nor filled again
        again = run_vmctl(*vmctl, "exec", "writer", "--", "cat", "/data/f")
        assert (again.returncode, again.stdout) == (0, "kept\n"), again.stderr
    finally:
        down = run_vmctl(*vmctl, "down", "-v")
    assert down.returncode == 0, down.stderr
    assert not site.exists() and not data.exists()
