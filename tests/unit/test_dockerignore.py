"""`.dockerignore` as the builders read it: which context files stay out of a build's cache key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import build, dockerignore

RULES = dockerignore.parse("""\
# comments and blank lines are skipped

/node_modules
*.log
**/__pycache__
docs/*.md
!docs/KEEP.md
tmp?
[a-c]x.txt
""")


@pytest.mark.parametrize(("rel", "out"), [
    ("node_modules", True), ("node_modules/pkg/index.js", True),  # a folder takes its contents
    ("src/node_modules", False),  # anchored at the context
    ("build.log", True), ("src/build.log", False),  # `*` stays within one part
    ("__pycache__/a.pyc", True), ("src/app/__pycache__/a.pyc", True),  # `**/` spans parts, or none
    ("docs/guide.md", True), ("docs/KEEP.md", False),  # the last matching rule decides
    ("tmp1", True), ("tmp12", False),
    ("bx.txt", True), ("dx.txt", False),
    ("Dockerfile", False), (".dockerignore", False), ("app.py", False),
])
def test_rules_match_as_the_builders_do(rel: str, out: bool) -> None:
    assert dockerignore.ignored(RULES, rel) is out


def test_the_dockerfile_is_always_sent() -> None:
    rules = dockerignore.parse("*\n")
    assert not dockerignore.ignored(rules, "Containerfile", dockerfile="Containerfile")
    assert dockerignore.ignored(rules, "app.py")


def test_an_ignored_file_does_not_change_the_build_key(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY app.py /\n")
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / ".dockerignore").write_text("*.log\nlogs/\n")
    builder = build.Builder("podman", ("podman",), "podman version 4.3.1")
    spec = build.BuildSpec(tmp_path)
    key = build.cache_key(spec, builder)
    (tmp_path / "debug.log").write_text("noise\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.txt").write_text("noise\n")
    assert build.cache_key(spec, builder) == key
    (tmp_path / "app.py").write_text("print(2)\n")
    assert build.cache_key(spec, builder) != key
    key = build.cache_key(spec, builder)
    (tmp_path / ".dockerignore").write_text("*.log\n")  # now logs/ is sent: a new key
    assert build.cache_key(spec, builder) != key
