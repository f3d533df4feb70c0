"""No injection: hostile values reach libvirt XML only as text, the kernel command line only as quoted tokens
(or are refused), and the guest only as an argv that its shell splits back exactly."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from vmctl import cmdline, render
from vmctl.errors import UsageError

HOSTILE = [
    "'",
    '"',
    "<",
    ">",
    "&",
    "&amp;",
    "]]>",
    "<!--",
    "</kernel><cmdline>init=/bin/sh</cmdline>",
    '"/><qemu:arg value="-monitor"/><x y="',
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
    "$(touch /tmp/pwned)",
    "`id`",
    "a;b|c&&d",
    "../../../etc/shadow",
    "${IFS}",
    "tab\there",
    "ünïcødé ☃",
    "\\",
]
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def view(**changes: object) -> render.DomainView:
    base = render.DomainView(
        environment="env", environment_file="/srv/env/vmctl.yaml", machine="m1", domain_type="qemu", accel="tcg",
        memory_mib=128, vcpus=1, kernel="/boot/vmlinuz", initrd="/boot/initrd", cmdline="console=ttyS0",
        console_log="/state/console.log", emulator="/usr/bin/qemu-system-x86_64", loader="/usr/share/qemu/qboot.rom",
        forwards=(render.Forward("127.0.0.1", 2222, 22), render.Forward("127.0.0.1", 8080, 80)),
        disks=(render.DiskView("/d/a.raw", "vda", "data", False), render.DiskView("/d/b.raw", "vdb", "logs", True)),
        dac_label="+0:+0",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def shape(root: ET.Element) -> list[tuple[str, tuple[str, ...]]]:
    """The structure of a tree: every element's tag and attribute names, in document order."""
    return [(e.tag, tuple(sorted(e.attrib))) for e in root.iter()]


REFERENCE = ET.fromstring(render.render_domain(view()))

# Every user-controlled string of the view, and where its value must come back out of the tree.
FIELDS = {
    "environment_file": lambda r: r.find("metadata/{*}instance/{*}environment-file").text,
    "kernel": lambda r: r.find("os/kernel").text,
    "initrd": lambda r: r.find("os/initrd").text,
    "cmdline": lambda r: r.find("os/cmdline").text,
    "console_log": lambda r: r.find("devices/serial/source").get("path"),
    "emulator": lambda r: r.find("devices/emulator").text,
    "loader": lambda r: r.find("os/loader").text,
    "dac_label": lambda r: r.find("seclabel/label").text,
    # names are validated to [a-z0-9-] by spec; the template must still hold if that ever slips
    "environment": lambda r: r.find("metadata/{*}instance/{*}environment").text,
    "machine": lambda r: r.find("metadata/{*}instance/{*}machine").text,
}


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("name", sorted(FIELDS))
def test_hostile_string_stays_text(name: str, value: str) -> None:
    xml = render.render_domain(view(**{name: value}))
    root = ET.fromstring(xml)  # well-formed: no entity, comment or CDATA escaped its text
    assert shape(root) == shape(REFERENCE)
    assert FIELDS[name](root) == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_disk_values_stay_text(value: str) -> None:
    disk = render.DiskView(path=f"/d/{value}", dev="vda", serial=value, readonly=False)
    root = ET.fromstring(render.render_domain(view(disks=(disk, view().disks[1]))))
    assert shape(root) == shape(REFERENCE)
    first = root.find("devices/disk")
    assert first is not None
    assert first.find("source").get("file") == f"/d/{value}"  # type: ignore[union-attr]
    assert first.find("serial").text == value  # type: ignore[union-attr]


def test_qemu_args_are_only_numbers_and_addresses() -> None:
    """hostfwd values are ints and IPv4 addresses: QEMU's comma syntax cannot be broken into."""
    root = ET.fromstring(render.render_domain(view()))
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    assert args == ["-netdev", "user,id=vmctl0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
                    "-device", "virtio-net-pci,netdev=vmctl0,bus=pcie.0,addr=0x10"]
    with pytest.raises((ValueError, TypeError)):
        render.netdev_args([render.Forward("127.0.0.1", "22,hostfwd=tcp::1-:2", 22)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- kernel cmdline

TOKENS_OK = [
    ["quiet"],
    ["foo=bar baz"],
    ["a=1", "b=two words", "c=x=y", "d='single'"],
    ["x=$(id)", "y=`id`", "z=a;b", "w=<>&|"],
    ["dyndbg=file drivers/* +p"],
]
TOKENS_REFUSED = [
    'a="b"',
    "a=b\nrdinit=/bin/sh",
    "a=\x00",
    "a=\x1b[31m",
    "a=é",
    "",
    "bad key=1",
    "=x",
    "init=/bin/sh",
    "rdinit=/bin/sh",
    "console=tty0",
    "vmctl.hostname=evil",
    "vmctl.sshkey=AAAA",
    "--",
]


@pytest.mark.parametrize("tokens", TOKENS_OK)
def test_cmdline_round_trips(tokens: list[str]) -> None:
    line = render.kernel_cmdline("m1", "QUFBQQ==", tokens)
    split = cmdline.split(line)
    assert split[-len(tokens):] == tokens
    assert split[: -len(tokens)] == [*render.BASE_KERNEL_ARGS, "vmctl.hostname=m1", "vmctl.sshkey=QUFBQQ=="]


@pytest.mark.parametrize("token", TOKENS_REFUSED)
def test_cmdline_refuses_what_it_cannot_quote(token: str) -> None:
    with pytest.raises(UsageError):
        cmdline.user_tokens([token])


def test_cmdline_string_form_cannot_smuggle_a_reserved_key() -> None:
    with pytest.raises(UsageError, match="cannot be overridden"):
        cmdline.user_tokens('quiet "x=1" init=/bin/sh')
    with pytest.raises(UsageError, match="cannot be overridden"):
        cmdline.user_tokens('foo="a b" vmctl.probe=1')


def test_cmdline_too_long_is_refused() -> None:
    with pytest.raises(UsageError, match="more than"):
        render.kernel_cmdline("m1", "QUFBQQ==", [f"k{i}=" + "x" * 60 for i in range(40)])


# ---------------------------------------------------------------------------------------------- SSH argv

ARGVS = [
    ["echo", "hello world"],
    ["printf", "%s\\n", "$(touch /tmp/vmctl-pwned)", "`id`", "a;b", "c && d", "e | f", "> g"],
    ["sh", "-c", "exit 3"],
    ["x", "'", '"', "\\", "$HOME", "${IFS}", "*", "?", "[a]", "~", "#comment"],
    ["x", "new\nline", "tab\tchar", "", " ", "ünïcødé"],
    ["x", "--", "-n", "-e"],
]


@pytest.mark.parametrize("shell", ["/bin/sh", "busybox"])
@pytest.mark.parametrize("argv", ARGVS)
def test_ssh_argv_survives_the_guest_shell(shell: str, argv: list[str], tmp_path: object) -> None:
    """vmctl.ssh sends `shlex.join(argv)`; the guest's shell (busybox ash) must hand the program exactly argv."""
    sh = [shell] if shell.startswith("/") else [shutil.which("busybox") or pytest.skip("no busybox"), "sh"]
    probe = ["python3", "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    line = shlex.join([*probe, *argv[1:]])  # what Guest._channel sends, with a program that echoes its argv
    out = subprocess.run([*sh, "-c", line], capture_output=True, text=True, check=True)
    import json

    assert json.loads(out.stdout) == argv[1:]


def test_ssh_channel_quotes_with_shlex_join() -> None:
    """The one place vmctl.ssh builds the command string is shlex.join of the argv (never a format string)."""
    import inspect

    from vmctl import ssh

    source = inspect.getsource(ssh.Guest._channel)
    assert "chan.exec_command(shlex.join(argv))" in source
    assert "exec_command(shlex.join(argv))" in inspect.getsource(ssh.Guest.interactive)
