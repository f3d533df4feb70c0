"""`build:` in the file, the build cache's key, and the builder lookup (real folders, real PATH)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmctl import build, spec
from vmctl.errors import HostError, SpecError


def load(tmp_path: Path, text: str) -> spec.Environment:
    (tmp_path / "compose.yaml").write_text(text)
    return spec.load_environment(tmp_path / "compose.yaml")


def test_both_forms_and_the_name_of_the_built_image(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app" / "Dockerfile.dev").write_text("FROM scratch\n")
    env = load(tmp_path, "name: shop\nservices:\n  a: {build: ./app}\n"
                         "  b:\n    image: shop/b:dev\n    build:\n      context: app\n"
                         "      dockerfile: Dockerfile.dev\n"
                         "      args: [MODE=dev, EMPTY]\n      target: final\n      cache_from: [x]\n")
    a, b = env.service("a"), env.service("b")
    assert a is not None and b is not None and a.build is not None and b.build is not None
    assert (a.image, a.build.context, a.build.dockerfile) == ("shop-a", (tmp_path / "app").resolve(), "Dockerfile")
    assert (b.image, b.build.dockerfile, b.build.args, b.build.target) == (
        "shop/b:dev", "Dockerfile.dev", (("MODE", "dev"), ("EMPTY", "")), "final")
    assert any("`cache_from` is ignored" in w for w in env.warnings)


def test_the_key_follows_content_not_times(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "page.txt").write_text("v1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")
    builder = build.Builder("podman", ("podman",), "podman version 4.3.1")
    spec_ = build.BuildSpec(tmp_path)
    key = build.cache_key(spec_, builder)
    os.utime(tmp_path / "page.txt", (0, 0))
    (tmp_path / ".git" / "HEAD").write_text("other\n")  # not what a build reads
    assert build.cache_key(spec_, builder) == key
    (tmp_path / "page.txt").write_text("v2\n")
    assert build.cache_key(spec_, builder) != key
    assert build.cache_key(build.BuildSpec(tmp_path, args=(("A", "1"),)), builder) != build.cache_key(spec_, builder)
    newer = build.Builder("podman", ("podman",), "podman version 5.0.0")
    assert build.cache_key(spec_, newer) != build.cache_key(spec_, builder)


def test_no_builder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a host with neither podman nor docker
    with pytest.raises(HostError, match="no image builder") as info:
        build.find_builder()
    assert "apt-get install podman" in (info.value.hint or "")


def test_refused_build_keys_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with pytest.raises(SpecError, match="`secrets` is not supported") as info:
        load(tmp_path, "services:\n  a:\n    build:\n      context: .\n      secrets: [x]\n")
    where = info.value.where
    assert where is not None and (where.line, where.key) == (5, "services.a.build.secrets")


@pytest.mark.parametrize(("image", "tag"), [
    ("shop-web", "vmctl-build/shop-web:latest"),
    ("127.0.0.1:5000/App:1", "vmctl-build/127.0.0.1-5000-app-1:latest"),
    ("..", "vmctl-build/image:latest"),
])
def test_the_builders_tag_is_always_a_valid_reference(image: str, tag: str) -> None:
    assert build.tag_for(image) == tag


def test_the_build_network(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    env = load(tmp_path, "services:\n  a: {build: {context: ., network: none}}\n"
                         "  b: {build: {context: ., network: default}}\n")
    a, b = env.service("a"), env.service("b")
    assert a is not None and a.build is not None and a.build.network == "none"
    assert b is not None and b.build is not None and b.build.network is None
    builder = build.Builder("podman", ("podman",), "podman version 4.3.1")
    assert build.cache_key(a.build, builder) != build.cache_key(b.build, builder)
    with pytest.raises(SpecError, match="build network 'bridge2' is not supported"):
        load(tmp_path, "services:\n  a: {build: {context: ., network: bridge2}}\n")
