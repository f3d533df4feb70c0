"""Named volumes: how the file declares them (both mount forms, names, external) and the host side
(create with copy-up, never through an image's symlink, keep, remove). Real folders, real `cp -a`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmctl import spec, volumes


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VMCTL_STATE_DIR", str(tmp_path / "state"))
    yield tmp_path / "state"


def load(tmp_path: Path, text: str) -> spec.Environment:
    file = tmp_path / "compose.yaml"
    file.write_text(text)
    return spec.load_environment(file)


def test_short_and_long_forms_name_the_same_folder(tmp_path: Path, state: Path) -> None:
    (tmp_path / "host").mkdir()
    env = load(tmp_path, "name: shop\nservices:\n  db:\n    image: x\n    isolation: container\n"
                         "    volumes: ['pg:/var/lib/pg', './host:/h', 'pg:/ro:ro']\n"
                         "  web:\n    image: x\n    isolation: container\n"
                         "    volumes: [{type: volume, source: pg, target: /pg},\n"
                         "              {type: bind, source: ./host, target: /h}]\n"
                         "volumes:\n  pg:\n  other: {name: shared-data}\n")
    db, web = env.service("db"), env.service("web")
    assert db is not None and web is not None
    assert [(v.volume, v.source, v.readonly) for v in db.volumes] == [
        ("pg", state / "volumes/shop_pg", False),  # a named volume is writable unless `:ro`
        (None, (tmp_path / "host").resolve(), True),  # a host folder is read-only unless `:rw` (vmctl's rule)
        ("pg", state / "volumes/shop_pg", True)]
    assert [(v.volume, v.readonly) for v in web.volumes] == [("pg", False), (None, True)]
    assert [(v.key, v.name, v.external) for v in env.volumes] == [("pg", "shop_pg", False),
                                                                  ("other", "shared-data", False)]


def test_a_dedicated_microvm_with_volumes_gets_the_9p_image_unless_told(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  a: {image: x, volumes: ['v:/v']}\n  b: {image: x}\n"
                         "  c: {image: x, volumes: ['v:/v'], vm: {image: default}}\nvolumes: {v: }\n")
    assert [(m.name, m.image) for m in env.machines] == [("a", "minimal"), ("b", "default"), ("c", "default")]


def _image(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "www/cgi-bin").mkdir(parents=True)
    (rootfs / "www/cgi-bin/index.cgi").write_text("#!/bin/sh\n")
    if os.geteuid() == 0:
        os.chown(rootfs / "www/cgi-bin/index.cgi", 1234, 5678)
    (rootfs / "www").chmod(0o750)
    (rootfs / "etc").mkdir()
    (rootfs / "etc/secret").write_text("not to be copied\n")
    (rootfs / "data").symlink_to("/etc")  # an image's absolute symlink names a folder of *this* machine
    (rootfs / "lnk").symlink_to("www")
    return rootfs


def test_a_new_volume_is_filled_from_the_image_once(tmp_path: Path) -> None:
    rootfs = _image(tmp_path)
    vol = volumes.NamedVolume("site", "p_site")
    assert volumes.ensure([vol], [(vol.path, rootfs, "/www")]) == ["p_site"]
    assert (vol.path / "cgi-bin/index.cgi").read_text() == "#!/bin/sh\n"
    assert vol.path.stat().st_mode & 0o777 == 0o750  # the mount point's own mode, as docker copies it
    if os.geteuid() == 0:
        assert (vol.path / "cgi-bin/index.cgi").stat().st_uid == 1234
    (vol.path / "cgi-bin/index.cgi").write_text("changed\n")
    assert volumes.ensure([vol], [(vol.path, rootfs, "/www")]) == []  # exists: never filled again
    assert (vol.path / "cgi-bin/index.cgi").read_text() == "changed\n"
    assert not list(vol.path.parent.glob(".*.new"))


@pytest.mark.parametrize("target", ["/data", "/data/x", "/lnk", "/missing", "/etc/secret"])
def test_copy_up_never_follows_a_symlink_nor_copies_a_file(tmp_path: Path, target: str) -> None:
    rootfs = _image(tmp_path)
    vol = volumes.NamedVolume("d", "p_d")
    volumes.ensure([vol], [(vol.path, rootfs, target)])
    assert vol.path.is_dir() and list(vol.path.iterdir()) == []


def test_down_v_removes_own_volumes_never_external_ones(tmp_path: Path) -> None:
    own, ext = volumes.NamedVolume("a", "p_a"), volumes.NamedVolume("b", "made-by-hand", external=True)
    ext.path.mkdir(parents=True)
    (ext.path / "keep").write_text("x")
    assert volumes.ensure([own, ext]) == ["p_a"]
    assert volumes.remove([own, ext]) == ["p_a"]
    assert not own.path.exists() and (ext.path / "keep").is_file()


def test_a_missing_external_volume_is_not_created(tmp_path: Path) -> None:
    from vmctl.errors import HostError

    ext = volumes.NamedVolume("b", "absent", external=True)
    with pytest.raises(HostError, match="external volume `absent` does not exist"):
        volumes.ensure([ext])
    assert not ext.path.exists()
