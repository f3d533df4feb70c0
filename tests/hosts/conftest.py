"""The multi-host test bed (bench/hostbed.py) as a fixture: two libvirt hosts, each in namespaces of its
own with its own libvirtd and sshd, reached from a client namespace, and removed after the module."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import hostbed
from examples.build_images import IMAGES_DIR, build_image
from tests.conftest import ROOT, VMCTL


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hostbed.HostBed]:
    # The guest image first, here: its build downloads Debian packages, and the bed's client namespace
    # (where the tests run vmctl) reaches nothing outside the bed. A no-op once it is in the cache.
    build = subprocess.run([*VMCTL, "image", "build"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           check=False)
    assert build.returncode == 0, build.stderr
    build_image("web", IMAGES_DIR)  # the example image the bed's services run (a fresh clone has none)
    with hostbed.running(tmp_path_factory.mktemp("hostbed")) as running:
        yield running


def vmctl_in(bed: hostbed.HostBed, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI, run where it sits on the bed's LAN (the client namespace)."""
    return subprocess.run(bed.in_client([*VMCTL, *args]), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def hosts_yaml(bed: hostbed.HostBed, names: tuple[str, ...] = ("h1", "h2")) -> str:
    block = bed.hosts_block()
    lines = ["hosts:"]
    for name in names:
        lines.append(f"  {name}:")
        lines += [f"    {k}: {v}" for k, v in block[name].items()]
    return "\n".join(lines) + "\n"


def write_env(tmp: Path, text: str) -> Path:
    path = tmp / "vmctl.yaml"
    path.write_text(text)
    return path


def on_host(bed: hostbed.HostBed, host: hostbed.BedHost, *argv: str) -> str:
    """A command on one of the bed's hosts, over its sshd (as an administrator would look)."""
    return subprocess.run(bed.in_client(hostbed.client_ssh(bed, host, list(argv))), capture_output=True, text=True,
                          check=True, timeout=60).stdout


def pool_volumes(bed: hostbed.HostBed, host: hostbed.BedHost) -> list[str]:
    """The volumes of vmctl's pool on the host, by name, as its own libvirt lists them (none: no pool yet)."""
    # one word: ssh hands the command line to the host's shell, which runs the `||`
    out = on_host(bed, host, "virsh -q -c qemu:///system vol-list vmctl 2> /dev/null || true")
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())
