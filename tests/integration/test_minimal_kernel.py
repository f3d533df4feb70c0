"""The `minimal` guest image: vmctl's own kernel (guest_images/minimal/kernel.config, an uncompressed
vmlinux entered through PVH, no modules) booted by the real `vmctl up`, reached over SSH, running a crun
container.

The kernel is compiled at most once per cache, by the `minimal_image` fixture of tests/conftest.py: it
lands in the shared `VMCTL_CACHE_DIR` (kept between CI runs on the same machine), so only a run after its
source, fragment or compiler changed pays the compile (~see guest_images/minimal/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_vmctl
from vmctl.guest_image import GuestImage

pytestmark = pytest.mark.vm

ENV = """\
name: minikernel
machines:
  mini:
    image: minimal
    memory: 128M
"""
CONTAINER = (
    "set -e; b=/tmp/bundle; rm -rf $b; mkdir -p $b/rootfs/bin; cd $b;"
    " cp /bin/busybox rootfs/bin/; ln -s busybox rootfs/bin/sh; ln -s busybox rootfs/bin/cat;"
    " crun spec;"
    " sed -i -e 's/\"terminal\": true/\"terminal\": false/'"
    " -e 's/\"sh\"$/\"cat\", \"\\/proc\\/self\\/cgroup\"/' config.json;"
    " crun run mini-$$"
)


@pytest.fixture(scope="module")
def image(minimal_image: GuestImage) -> GuestImage:
    return minimal_image


@pytest.fixture(scope="module")
def running(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("minikernel") / "vmctl.yaml"
    path.write_text(ENV)
    try:
        proc = run_vmctl("-f", str(path), "up", "--timeout", "180")
        assert proc.returncode == 0, proc.stderr
        yield path
    finally:
        run_vmctl("-f", str(path), "down")


def _exec(env: Path, *argv: str) -> str:
    proc = run_vmctl("-f", str(env), "exec", "mini", "--", *argv, timeout=120)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def test_image_boots_the_built_vmlinux(image: GuestImage) -> None:
    assert image.kernel.name == "vmlinux" and image.kernel.read_bytes()[:4] == b"\x7fELF"
    assert image.kernel_release.endswith("-vmctl-minimal")
    manifest = json.loads((image.directory / "manifest.json").read_text())
    assert manifest["modules"] == [] and manifest["kernel_build"]["name"] == "minimal"


def test_guest_runs_the_minimal_kernel_without_modules(running: Path, image: GuestImage) -> None:
    assert _exec(running, "uname", "-r").strip() == image.kernel_release
    assert "modules" not in _exec(running, "ls", "/proc").split()  # CONFIG_MODULES is off


def test_guest_has_what_containers_need(running: Path) -> None:
    controllers = set(_exec(running, "cat", "/sys/fs/cgroup/cgroup.subtree_control").split())
    assert {"cpu", "memory", "pids", "io"} <= controllers
    filesystems = _exec(running, "cat", "/proc/filesystems")
    for fs in ("overlay", "ext4", "tmpfs", "devpts", "cgroup2", "9p"):
        assert fs in filesystems, fs
    assert "10.0.2.15/24" in _exec(running, "ip", "-4", "addr", "show", "eth0")
    assert "virtio" in _exec(running, "cat", "/sys/class/misc/hw_random/rng_current")


def test_crun_runs_a_container(running: Path) -> None:
    """pivot_root, namespaces, cgroup v2 (with BPF device control) and seccomp: a plain `crun run`."""
    out = _exec(running, "sh", "-c", CONTAINER)
    assert out.strip().splitlines()[-1].startswith("0::/"), out
