"""container_image: source detection and resolution, config parsing, mountpoints, sizing (no tools run)."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from vmctl import container_image as ci
from vmctl import registry as reg
from vmctl.errors import HostError, UsageError


def make_tar(path: Path, names: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as t:
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def test_detects_docker_and_oci_archives(tmp_path: Path) -> None:
    docker = make_tar(tmp_path / "d.tar", {"manifest.json": b"[]", "abc/layer.tar": b"x" * 600})
    oci = make_tar(tmp_path / "o.tar", {"./oci-layout": b"{}", "./index.json": b"{}", "blobs/sha256/a": b"1"})
    assert ci.detect_archive(docker) == "docker-archive:"
    assert ci.detect_archive(oci) == "oci-archive:"


@pytest.mark.parametrize("kind", ["neither", "truncated", "garbage", "only-index"])
def test_unusable_archives_are_usage_errors_naming_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.tar"
    if kind == "neither":
        make_tar(path, {"hello.txt": b"hi"})
    elif kind == "only-index":
        make_tar(path, {"index.json": b"{}"})
    elif kind == "truncated":
        full = make_tar(tmp_path / "full.tar", {"manifest.json": b"[]", "big": b"y" * 100_000})
        path.write_bytes(full.read_bytes()[:50_000])
    else:
        path.write_bytes(b"\x00\x01not a tar" * 100)
    with pytest.raises(UsageError) as err:
        ci.detect_archive(path)
    assert str(path) in err.value.message and err.value.hint


def test_resolve_paths_relative_to_base_dir(tmp_path: Path) -> None:
    make_tar(tmp_path / "web.tar", {"manifest.json": b"[]"})
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text("{}")
    (layout / "index.json").write_text("{}")
    assert ci.resolve_source("web.tar", tmp_path) == f"docker-archive:{tmp_path}/web.tar"
    assert ci.resolve_source("./layout", tmp_path) == f"oci:{tmp_path}/layout"
    assert ci.resolve_source("layout:v2", tmp_path) == f"oci:{tmp_path}/layout:v2"
    assert ci.resolve_source("docker-archive:web.tar", tmp_path) == f"docker-archive:{tmp_path}/web.tar"
    with pytest.raises(UsageError):
        ci.resolve_source("oci-archive:web.tar", tmp_path)  # it is a docker archive
    with pytest.raises(UsageError) as err:
        ci.resolve_source("images/missing.tar", tmp_path)
    assert "missing.tar" in err.value.message
    (tmp_path / "notlayout").mkdir()
    with pytest.raises(UsageError):
        ci.resolve_source("./notlayout", tmp_path)
    with pytest.raises(UsageError):
        ci.resolve_source("", tmp_path)


def test_names_go_to_the_registry_when_no_engine_has_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    assert ci.resolve_source("busybox", tmp_path) == "docker://busybox:latest"
    assert ci.resolve_source("quay.io/x/y:1.2", tmp_path) == "docker://quay.io/x/y:1.2"
    assert ci.resolve_source("docker-daemon:web:1", tmp_path) == "docker-daemon:web:1"
    assert ci.resolve_source("docker://alpine:3", tmp_path) == "docker://alpine:3"


def test_image_config_from_json() -> None:
    blob: dict[str, Any] = {
        "config": {
            "Entrypoint": ["/e"],
            "Cmd": None,
            "Env": ["A=1"],
            "WorkingDir": "/w",
            "User": "1000",
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        }
    }
    c = ci.image_config_from_json(blob)
    assert c == ci.ImageConfig(("/e",), (), ("A=1",), "/w", "1000", ("53/udp", "80/tcp"))
    assert ci.image_config_from_json({}) == ci.ImageConfig()


def test_add_mountpoints_replaces_symlinked_etc_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (tmp_path / "etc" / "hosts").write_text("keep\n")
    ci.add_mountpoints(tmp_path)
    for d in ("proc", "sys", "dev", "tmp", "run"):
        assert (tmp_path / d).is_dir()
    resolv = tmp_path / "etc" / "resolv.conf"
    assert resolv.is_file() and not resolv.is_symlink()
    assert (tmp_path / "etc" / "hosts").read_text() == "keep\n"


def test_tree_size_and_ext4_headroom(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 10_000)
    (tmp_path / "l").symlink_to("d/f")
    size, files, dirs = ci.tree_size(tmp_path)
    assert (files, dirs) == (2, 2) and size == 10_000 + len("d/f")
    small = ci.ext4_size_bytes(size, files, dirs)
    assert small % 2**20 == 0 and small >= size + 16 * 2**20
    assert ci.ext4_size_bytes(100 * 2**20, 1000, 100) > 115 * 2**20


def test_memo_is_keyed_by_file_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path / "cache"))
    tar = make_tar(tmp_path / "a.tar", {"manifest.json": b"[]"})
    source = f"docker-archive:{tar}"
    assert ci._memo_get(source) is None
    ci._memo_put(source, "sha256:" + "0" * 64)
    assert ci._memo_get(source) == "sha256:" + "0" * 64
    make_tar(tar, {"manifest.json": b"[1]", "other": b"changed"})
    assert ci._memo_get(source) is None
    assert ci._memo_get("docker://x:1") is None


def test_cache_entry_round_trip(tmp_path: Path) -> None:
    entry = tmp_path / "e"
    (entry / "rootfs").mkdir(parents=True)
    (entry / "disk.ext4").write_bytes(b"")
    config = ci.ImageConfig(("/e",), ("c",), ("A=1",), "/", "", ("80/tcp",))
    digest = "sha256:" + "1" * 64
    meta = {"format": ci.CACHE_FORMAT, "digest": digest, "size_bytes": 5, "config": config.__dict__}
    (entry / "image.json").write_text(json.dumps(meta))
    got = ci._load_entry("ref", digest, entry)
    assert got is not None and got.config == config and got.size_bytes == 5
    assert ci._load_entry("ref", "sha256:" + "2" * 64, entry) is None
    (entry / "image.json").write_text("{broken")
    assert ci._load_entry("ref", digest, entry) is None


HEX = "ab" * 32


@pytest.mark.parametrize(("text", "registry", "name", "tag", "loopback"), [
    ("127.0.0.1:5000/web:1", "127.0.0.1:5000", "127.0.0.1:5000/web", "1", True),
    ("127.3.4.5/web", "127.3.4.5", "127.3.4.5/web", None, True),
    ("localhost:5000/team/app:2.1", "localhost:5000", "localhost:5000/team/app", "2.1", True),
    ("localhost/app", "localhost", "localhost/app", None, True),
    ("[::1]:5000/app:1", "[::1]:5000", "[::1]:5000/app", "1", True),
    ("redis:7", "docker.io", "redis", "7", False),
    ("library/redis", "docker.io", "library/redis", None, False),
    ("quay.io/x/y:1.2", "quay.io", "quay.io/x/y", "1.2", False),
    ("registry.example.com:5000/app", "registry.example.com:5000", "registry.example.com:5000/app", None, False),
    ("127.0.0.1.example.com/app:1", "127.0.0.1.example.com", "127.0.0.1.example.com/app", "1", False),
    ("10.0.0.1:5000/app:1", "10.0.0.1:5000", "10.0.0.1:5000/app", "1", False),
])
def test_registry_references(text: str, registry: str, name: str, tag: str | None, loopback: bool) -> None:
    ref = reg.parse(text)
    assert (ref.registry, ref.name, ref.tag, ref.digest, ref.loopback) == (registry, name, tag, None, loopback)
    assert str(ref) == text
    tls = ci.tls_off(f"docker://{text}", "--tls-verify")
    assert tls == (["--tls-verify=false"] if loopback else [])  # plain HTTP for loopback only


def test_digest_references_drop_the_tag_and_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    ref = reg.parse(f"localhost:5000/app:1@sha256:{HEX}")
    assert (ref.tag, ref.digest, str(ref)) == ("1", f"sha256:{HEX}", f"localhost:5000/app@sha256:{HEX}")
    assert ci.resolve_source(f"localhost:5000/app:1@sha256:{HEX}", tmp_path) == f"docker://localhost:5000/app@sha256:{HEX}"
    assert ci._pinned("docker://redis:7", f"sha256:{HEX}") == f"docker://redis@sha256:{HEX}"
    assert ci._pinned("oci:/x", f"sha256:{HEX}") == "oci:/x"
    for bad in ("app@sha256:abc", f"app@sha512:{HEX}", f"app@SHA256:{HEX}", "app@"):
        with pytest.raises(UsageError, match="invalid digest"):
            ci.resolve_source(bad, tmp_path)


def test_a_pull_skips_the_engine_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: f"/nonexistent/{name}")  # would fail if it were run
    assert ci.resolve_source("127.0.0.1:5000/web:1", tmp_path, engines=False) == "docker://127.0.0.1:5000/web:1"
    assert ci.resolve_source("busybox", tmp_path, engines=False) == "docker://busybox:latest"


def test_registry_memo_counts_only_while_the_preparation_is_cached(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path / "cache"))
    source, digest = "docker://127.0.0.1:5000/web:1", f"sha256:{HEX}"
    ci._memo_put(source, digest)
    assert ci._memo_get(source) == digest
    assert ci._known_digest(source, ci.PullPolicy.MISSING) is None  # memo, but no cache entry
    entry = ci.images_root() / HEX
    (entry / "rootfs").mkdir(parents=True)
    (entry / "disk.ext4").write_bytes(b"")
    meta = {"format": ci.CACHE_FORMAT, "digest": digest, "size_bytes": 1, "config": ci.ImageConfig().__dict__}
    (entry / "image.json").write_text(json.dumps(meta))
    assert ci._known_digest(source, ci.PullPolicy.MISSING) == digest
    assert ci._known_digest(source, ci.PullPolicy.NEVER) == digest
    assert ci._known_digest(source, ci.PullPolicy.ALWAYS) is None  # always asks the registry
    assert ci._known_digest(f"docker://elsewhere:5000/web@{digest}", ci.PullPolicy.NEVER) == digest  # pinned


def test_never_without_a_cached_preparation_fails_before_asking(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("shutil.which", lambda _name: None)  # no skopeo either: nothing may be run
    with pytest.raises(HostError) as err:
        ci.prepare_image("127.0.0.1:9/web:1", tmp_path, policy=ci.PullPolicy.NEVER)
    assert "pull_policy: never" in err.value.message and "vmctl pull" in (err.value.hint or "")


def test_an_images_healthcheck_from_dockers_config() -> None:
    hc = ci.healthcheck_from_json({"Test": ["CMD", "wget", "-q", "http://x/"], "Interval": 2_000_000_000,
                                   "Retries": 4, "StartPeriod": 500_000_000})
    assert hc == ci.ImageHealthcheck(("wget", "-q", "http://x/"), 2.0, 30.0, 4, 0.5, None)
    shell = ci.healthcheck_from_json({"Test": ["CMD-SHELL", "pg_isready || exit 1"], "StartInterval": 10**9})
    assert shell == ci.ImageHealthcheck(("/bin/sh", "-c", "pg_isready || exit 1"), start_interval=1.0)
    for off in ({"Test": ["NONE"]}, {"Test": []}, None, {"Test": ["CMD-SHELL"]}, {"Test": ["NOPE", "x"]}):
        assert ci.healthcheck_from_json(off) is None, off
    blob = {"config": {"Cmd": ["sh"], "Healthcheck": {"Test": ["CMD", "true"]}}}
    assert ci.image_config_from_json(blob).healthcheck == ci.ImageHealthcheck(("true",))


def test_cache_entry_keeps_the_healthcheck_and_an_older_format_is_replaced(tmp_path: Path) -> None:
    config = ci.ImageConfig(cmd=("c",), healthcheck=ci.ImageHealthcheck(("true",), 1.0, 2.0, 3, 4.0, 0.5))
    digest = "sha256:" + "3" * 64

    def entry(path: Path, fmt: int) -> Path:
        (path / "rootfs").mkdir(parents=True)
        (path / "disk.ext4").write_bytes(b"")
        meta = {"format": fmt, "digest": digest, "size_bytes": 1, "config": dataclasses.asdict(config)}
        (path / "image.json").write_text(json.dumps(meta))
        return path

    old, new = entry(tmp_path / "e", ci.CACHE_FORMAT - 1), entry(tmp_path / ".tmp-new", ci.CACHE_FORMAT)
    assert ci._load_entry("ref", digest, old) is None  # another format: not read
    ci._replace_entry(old, new)
    got = ci._load_entry("ref", digest, old)
    assert got is not None and got.config == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # nothing aside left
