"""Boot the default guest image with a bare QEMU (TCG here), log in over SSH with the host key pinned
from the READY line, and run a container with crun inside the guest."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from bench.bare_qemu import BareVm, running_vm
from vmctl.guest_image import BZIMAGE_FILE, GuestImage, build_guest_image
from vmctl.kernel_build import has_pvh_entry

pytestmark = pytest.mark.vm

HOSTNAME = "guest-test"
BOOT_TIMEOUT = 90.0


def _new_key() -> tuple[paramiko.Ed25519Key, str]:
    """A fresh ed25519 key for paramiko (which cannot generate one) and its public blob in base64."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    return key, key.get_base64()


@pytest.fixture(scope="module")
def image() -> GuestImage:
    return build_guest_image("default")


@pytest.fixture(scope="module")
def booted(image: GuestImage) -> Iterator[tuple[BareVm, paramiko.Ed25519Key]]:
    key, blob = _new_key()
    with running_vm(image.kernel, image.initrd, HOSTNAME, blob) as vm:  # kills QEMU on the way out
        marker = vm.wait_for("VMCTL-READY", timeout=BOOT_TIMEOUT)
        assert marker == "VMCTL-READY", "\n".join(vm.console[-20:])
        yield vm, key


@pytest.fixture(scope="module")
def ssh(booted: tuple[BareVm, paramiko.Ed25519Key]) -> Iterator[paramiko.SSHClient]:
    vm, key = booted
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    hostkey = paramiko.Ed25519Key(data=base64.b64decode(vm.hostkey()))
    client.get_host_keys().add(f"[127.0.0.1]:{vm.ssh_port}", "ssh-ed25519", hostkey)
    client.connect(
        "127.0.0.1", port=vm.ssh_port, username="root", pkey=key, timeout=30, allow_agent=False, look_for_keys=False
    )
    try:
        yield client
    finally:
        client.close()


def _exec(client: paramiko.SSHClient, command: str, timeout: float = 60.0) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
    status = stdout.channel.recv_exit_status()
    out = stdout.read().decode()
    assert status == 0, f"`{command}` exited {status}: {out}{stderr.read().decode()}"
    return out


def test_console_lines(booted: tuple[BareVm, paramiko.Ed25519Key]) -> None:
    vm, _ = booted
    assert vm.uptime("VMCTL-INIT") is not None
    ready = vm.uptime("VMCTL-READY")
    assert ready is not None and ready > (vm.uptime("VMCTL-INIT") or 0)
    assert "VMCTL-FAIL" not in vm.events


def test_kernel_and_tools(ssh: paramiko.SSHClient, image: GuestImage) -> None:
    # Debian's kernel booted through PVH: the ELF extracted from the bzImage, which stays beside it.
    assert image.kernel.name == "vmlinux" and has_pvh_entry(image.kernel.read_bytes())
    assert (image.directory / BZIMAGE_FILE).is_file()
    assert _exec(ssh, "uname -r").strip() == image.kernel_release
    assert _exec(ssh, "hostname").strip() == HOSTNAME
    assert "crun version" in _exec(ssh, "crun --version")
    assert "/usr/sbin:/usr/bin:/sbin:/bin" in _exec(ssh, "echo $PATH")


def test_guest_setup(ssh: paramiko.SSHClient) -> None:
    mounts = _exec(ssh, "cat /proc/mounts")
    assert " /sys/fs/cgroup cgroup2 " in mounts
    assert "10.0.2.15/24" in _exec(ssh, "ip -4 addr show eth0")
    assert "nameserver 10.0.2.3" in _exec(ssh, "cat /etc/resolv.conf")
    controllers = _exec(ssh, "cat /sys/fs/cgroup/cgroup.subtree_control").split()
    assert {"cpu", "memory", "pids"} <= set(controllers)


def test_crun_runs_a_container(ssh: paramiko.SSHClient) -> None:
    """pivot_root works after the switch out of the initramfs: a plain `crun run` succeeds."""
    script = (
        "set -e; b=/tmp/bundle; rm -rf $b; mkdir -p $b/rootfs/bin; cd $b;"
        " cp /bin/busybox rootfs/bin/; ln -s busybox rootfs/bin/sh; ln -s busybox rootfs/bin/echo;"
        " crun spec;"
        ' sed -i -e \'s/"terminal": true/"terminal": false/\''
        ' -e \'s/"sh"$/"echo", "hello-from-crun"/\' config.json;'
        " crun run smoke-$$"
    )
    started = time.monotonic()
    out = _exec(ssh, script)
    assert out.strip().splitlines()[-1] == "hello-from-crun", out
    assert time.monotonic() - started < 30
