"""`volumes` of a microVM service, end to end through the real CLI: host folders shared with the guest over
virtio-9p (one libvirt <filesystem> per folder), mounted once in the guest and bind-mounted into the crun
container, read-only unless `:rw`. Real VM under TCG, real crun; nothing is mocked.

The machine boots the `minimal` image: its kernel has 9p built in. Debian's cloud kernel (the `default`
image) is built without 9p, so `up` refuses volumes there before creating anything (tests/reliability/
test_preflight.py). The minimal kernel is compiled at most once per cache (see test_minimal_kernel.py);
`VMCTL_TEST_KERNEL_BUILD=0` skips these tests when it is not cached yet.
"""

from __future__ import annotations

import os
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.build_images import build_tiny_image
from tests.conftest import environment_up, qemu_pids, run_vmctl
from vmctl import kernel_build
from vmctl.guest_container import volume_tag
from vmctl.guest_image import build_guest_image

TOOLS = ("skopeo", "umoci", "mkfs.ext4", "busybox")
missing = [t for t in TOOLS if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin"))]
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="9p passthrough writes as QEMU's user: root here"),
    pytest.mark.skipif(bool(missing), reason=f"missing tools: {missing}"),
]

BUILD_TIMEOUT = float(os.environ.get("VMCTL_TEST_KERNEL_BUILD_TIMEOUT", "2700"))
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
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if kernel_build.find_kernel("minimal") is None and os.environ.get("VMCTL_TEST_KERNEL_BUILD") == "0":
        pytest.skip("the minimal kernel is not cached and VMCTL_TEST_KERNEL_BUILD=0 forbids compiling it")
    kernel_build.build_kernel("minimal", timeout=BUILD_TIMEOUT,
                              progress=lambda m: print(f"kernel minimal: {m}", file=sys.stderr))
    build_guest_image("minimal")
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
