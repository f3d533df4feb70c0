"""Templates without VMs: the key, what a damaged or foreign template looks like, the clone's line and views."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from vmctl import render, template
from vmctl.guest_image import GuestImage
from vmctl.network import guest as guest_net
from vmctl.network import plan as netplan
from vmctl.spec import DiskSpec, MachineSpec, load_environment

VERSIONS = {"libvirt": "9.0.0", "qemu": "7.2.0"}
SHAPE = template.Shape(image="default", image_digest="d" * 64, kernel="/k", initrd="/i", memory_mib=256, vcpus=1,
                       accel="tcg", cmdline=(), nics=1, image_disks=1)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path))
    return tmp_path


def _install(key: str, /, state: bytes = b"QEVM" + b"x" * 100, **manifest: object) -> Path:
    folder = template.templates_dir() / f"{key[:16]}.{key[:16]}"
    folder.mkdir(parents=True)
    (folder / template.STATE_FILE).write_bytes(state)
    data = {"format": template.FORMAT, "key": key, "shape": {"image": "default"}, "versions": VERSIONS,
            "size": len(state), "sha256": template.file_sha256(folder / template.STATE_FILE), "macs": [],
            **manifest}
    (folder / template.MANIFEST).write_text(json.dumps(data))
    (template.templates_dir() / key[:16]).symlink_to(folder.name)
    return folder


def test_the_key_covers_the_shape_and_the_versions() -> None:
    key = SHAPE.key(VERSIONS)
    assert key == SHAPE.key(dict(reversed(VERSIONS.items())))
    assert key != SHAPE.key({**VERSIONS, "qemu": "8.0.0"})
    assert key != replace(SHAPE, image_digest="e" * 64).key(VERSIONS)  # a rebuilt image: another template
    assert key != replace(SHAPE, memory_mib=512).key(VERSIONS)
    assert key != replace(SHAPE, nics=2).key(VERSIONS)


def test_lookup_finds_a_good_template(cache: Path) -> None:
    key = SHAPE.key(VERSIONS)
    assert template.lookup(key, VERSIONS) is None
    _install(key)
    found = template.lookup(key, VERSIONS)
    assert found is not None and found.size == 104 and found.name == key[:16]
    assert [t["name"] for t in template.listing()] == [key[:16]]


@pytest.mark.parametrize(("change", "message"), [
    ({"versions": {"libvirt": "8.0.0", "qemu": "6.2.0"}}, r"was saved by libvirt 8\.0\.0 \+ qemu 6\.2\.0"),
    ({"format": 0}, "another shape or by another vmctl"),
    ({"key": "0" * 64}, "another shape or by another vmctl"),
    ({"size": 4096}, "saved state is 104 bytes, 4096 were saved"),  # truncated
])
def test_a_damaged_or_foreign_template_is_refused(cache: Path, change: dict[str, object], message: str) -> None:
    key = SHAPE.key(VERSIONS)
    _install(key, **change)
    with pytest.raises(template.TemplateError, match=message):
        template.lookup(key, VERSIONS)
    template.discard(key)
    assert template.lookup(key, VERSIONS) is None
    assert not list(template.templates_dir().glob(f"{key[:16]}*"))


def test_an_unreadable_manifest_is_refused(cache: Path) -> None:
    key = SHAPE.key(VERSIONS)
    (_install(key) / template.MANIFEST).write_text("{")
    with pytest.raises(template.TemplateError, match="no readable manifest"):
        template.lookup(key, VERSIONS)


def test_a_killed_build_leaves_nothing_a_lookup_reads(cache: Path) -> None:
    key = SHAPE.key(VERSIONS)
    half = template.templates_dir() / f".{key[:16]}.build-abc"
    half.mkdir(parents=True)
    (half / template.STATE_FILE).write_bytes(b"QEVM")
    assert template.lookup(key, VERSIONS) is None
    assert template.listing() == []


def test_the_clone_line() -> None:
    line = template.clone_line("web", "AAAAC3NzaC1lZDI1NTE5AAAAIA", now=1234.9, seed=bytes(range(32)))
    assert line == (b"VMCTL-CLONE hostname=web sshkey=AAAAC3NzaC1lZDI1NTE5AAAAIA time=1234 seed="
                    + bytes(range(32)).hex().encode() + b"\n")
    assert template.clone_line("a", "k") != template.clone_line("a", "k")  # a fresh seed each time


def _view() -> render.DomainView:
    return render.DomainView(
        environment="e", environment_file="/e.yaml", machine="m", domain_type="qemu", accel="tcg", memory_mib=256,
        vcpus=1, kernel="/k", initrd="/i", cmdline="x", console_log="/c.log", emulator="/usr/bin/qemu-system-x86_64",
        loader="/usr/share/qemu/qboot.rom", forwards=(render.Forward("127.0.0.1", 2222, 22),),
        disks=(render.DiskView("/img.ext4", "vda", "img-0123456789abcdef", readonly=True),),
        interfaces=(render.InterfaceView("vtabc0", "52:54:00:11:22:33", 0x11),))


def test_the_clone_and_template_domains_share_their_device_set(tmp_path: Path) -> None:
    view = _view()
    clone = ET.fromstring(render.render_domain(template.clone_view(view, SHAPE, tmp_path / "c.sock")))
    tpl = ET.fromstring(render.render_domain(template.template_view(view, SHAPE, "f" * 64, tmp_path,
                                                                    [tmp_path / "slot0.raw"], tmp_path / "t.sock")))
    for root in (clone, tpl):
        assert root.find("genid") is not None
        assert root.find("os/loader") is None  # SeaBIOS: qboot does not boot with vmgenid
        assert root.find("devices/serial[@type='unix']/target").get("port") == "1"  # type: ignore[union-attr]
        assert "vmctl.template=1" in root.findtext("os/cmdline", "")
        assert "vmctl.sshkey" not in root.findtext("os/cmdline", "")
    args = [a.get("value") for a in clone.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    assert args[-2:] == ["-incoming", "defer"] and any("hostfwd=tcp:127.0.0.1:2222-:22" in str(a) for a in args)
    assert clone.find("devices/interface/target").get("dev") == "vtabc0"  # type: ignore[union-attr]
    assert tpl.find("devices/interface/target") is None  # libvirt's own tap, on no bridge
    assert tpl.find("devices/interface/mac").get("address") == "52:54:00:fe:00:00"  # type: ignore[union-attr]
    assert tpl.find("devices/disk/source").get("file") == str(tmp_path / "slot0.raw")  # type: ignore[union-attr]
    assert tpl.findtext("devices/disk/serial") == "tpl-slot0"
    assert "-incoming" not in [a.get("value") for a in tpl.iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]


def test_which_machines_have_a_shape() -> None:
    image = GuestImage("default", Path("/k"), Path("/i"), "6.1", "d" * 64, Path("/"))
    view = _view()
    plain = MachineSpec(name="m")
    assert template.shape_for(plain, image, view, embedded=True) == SHAPE
    assert template.shape_for(plain, image, view, embedded=False) is None
    assert template.shape_for(replace(plain, template=False), image, view, embedded=True) is None
    assert template.shape_for(replace(plain, kernel=Path("/x")), image, view, embedded=True) is None
    assert template.shape_for(replace(plain, disks=(DiskSpec("d", size_mib=1),)), image, view, embedded=True) is None
    read_only = (DiskSpec("d", path=Path("/img"), readonly=True),)
    assert template.shape_for(replace(plain, disks=read_only), image, view, embedded=True) == SHAPE
    with_volume = replace(view, filesystems=(render.FilesystemView("/data", "vol-0", True),))
    assert template.shape_for(plain, image, with_volume, embedded=True) is None


def test_a_clone_takes_its_own_macs(tmp_path: Path) -> None:
    (tmp_path / "vmctl.yaml").write_text("machines:\n  m: {}\n")
    plan = netplan.plan(load_environment(tmp_path / "vmctl.yaml"))
    member = plan.member("m")
    assert member is not None
    mac, cidr = member.nics[0].mac, member.nics[0].cidr
    assert guest_net.script_args(plan, member)[1:] == [f"{mac}={cidr}"]
    assert guest_net.script_args(plan, member, ["52:54:00:fe:00:00"])[1:] == [f"{mac}={cidr}@52:54:00:fe:00:00"]
