"""`build:` end to end through the real CLI: a real builder (podman, the host's) builds a small
multi-stage Dockerfile whose base image is a local archive (`FROM oci-archive:...`: no registry), the
result runs as a host container and in a microVM (TCG here), and the build cache follows the context's
content. Nothing is mocked."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from examples.build_images import build_image
from tests.conftest import run_vmctl

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root")]
if shutil.which("podman") is None:  # a missing builder is a failed set-up: `./bootstrap.sh` installs podman
    raise RuntimeError("the build tests need podman: run ./bootstrap.sh (it installs it)")

DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS base
ARG MESSAGE=hello
COPY page.txt /www/page.txt
RUN echo "$MESSAGE" > /www/greeting.txt
FROM base AS final
ENV BUILT=yes
"""
COMPOSE = """\
name: built
x-build: &build
  context: ./app
  args: {{BASE: "oci-archive:{base}", MESSAGE: bonjour}}
  target: final
  network: none               # RUN needs none; podman's default would make its host bridge cni-podman0
services:
  app:
    build: *build
    isolation: container
    command: ["sleep", "3600"]
    stop_grace_period: 0s
  vm:
    build: *build
    command: ["sleep", "3600"]
"""


def _cat(file: Path, service: str, path: str) -> str:
    proc = run_vmctl("-f", str(file), "exec", service, "--", "cat", path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_built_image_runs_in_both_isolations_and_is_rebuilt_when_its_context_changes(tmp_path: Path) -> None:
    base = build_image("web", tmp_path / "base")  # the examples' busybox image, as an OCI archive
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "app" / "page.txt").write_text("v1\n")
    file = tmp_path / "compose.yaml"
    file.write_text(COMPOSE.format(base=base))
    vmctl = ("-f", str(file))
    try:
        up = run_vmctl(*vmctl, "up", "--timeout", "180")
        assert up.returncode == 0, up.stderr
        assert up.stderr.count("building with podman") == 1  # one build, both services (same build, same key)
        for service in ("app", "vm"):
            assert _cat(file, service, "/www/greeting.txt") == "bonjour\n"  # RUN, with the build arg
            assert _cat(file, service, "/www/page.txt") == "v1\n"  # COPY from the context
        env = run_vmctl(*vmctl, "exec", "app", "--", "env")
        assert "BUILT=yes" in env.stdout  # the `final` stage's ENV: `target` was built
        assert run_vmctl(*vmctl, "down").returncode == 0

        up = run_vmctl(*vmctl, "up", "app", "--timeout", "180")
        assert up.returncode == 0 and "building with" not in up.stderr and "built before" in up.stderr, up.stderr
        assert run_vmctl(*vmctl, "down").returncode == 0

        (tmp_path / "app" / "page.txt").write_text("v2\n")  # one byte of the context changes: built again
        up = run_vmctl(*vmctl, "up", "app", "--timeout", "180")
        assert up.returncode == 0 and "building with podman" in up.stderr, up.stderr
        assert _cat(file, "app", "/www/page.txt") == "v2\n"

        again = run_vmctl(*vmctl, "build", "app")  # `vmctl build` builds even an unchanged context
        assert again.returncode == 0 and "building with podman" in again.stderr, again.stderr
    finally:
        down = run_vmctl(*vmctl, "down")
    assert down.returncode == 0, down.stderr


def test_a_failing_build_names_the_service_and_keeps_the_log(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\nRUN exit 7\n")
    file = tmp_path / "compose.yaml"
    file.write_text("name: badbuild\nservices:\n  app:\n    build: {context: ./app, network: none}\n"
                    "    isolation: container\n")
    up = run_vmctl("-f", str(file), "up", "--timeout", "60")
    assert up.returncode == 1
    assert "`podman build` failed" in up.stderr and "services.app.build" in up.stderr, up.stderr
    assert "the whole output is in" in up.stderr
    assert run_vmctl("-f", str(file), "down").returncode == 0


HEALTHY = """\
name: built-health
x-build: &build
  args: {{BASE: "oci-archive:{base}"}}
  network: none
services:
  db:
    build: {{<<: *build, context: ./checked}}
    isolation: container
    entrypoint: ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 3600"]
    stop_grace_period: 0s
  web:
    build: {{<<: *build, context: ./unchecked}}
    isolation: container
    command: ["sleep", "3600"]
    stop_grace_period: 0s
    depends_on: {{db: {{condition: service_healthy}}}}
"""


def test_a_service_inherits_its_images_healthcheck(tmp_path: Path) -> None:
    """A HEALTHCHECK in the Dockerfile (kept: the build saves docker's image format) is what `db` runs when
    the file sets none, so `service_healthy` waits for it, and so does `start`; on an image without one it
    is refused before anything starts, naming the dependency's line."""
    base = build_image("web", tmp_path / "base")
    for name, extra in (("checked", 'HEALTHCHECK --interval=1s --retries=30 CMD ["test", "-e", "/tmp/ready"]\n'),
                        ("unchecked", "")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(f"ARG BASE\nFROM ${{BASE}}\n{extra}")
    file = tmp_path / "compose.yaml"
    file.write_text(HEALTHY.format(base=base))
    try:
        up = run_vmctl("-f", str(file), "up", "--timeout", "180")
        assert up.returncode == 0, up.stderr
        assert re.search(r"✔ db +healthy in", up.stderr) and "checks failed" in up.stderr, up.stderr  # it ran
        assert run_vmctl("-f", str(file), "stop", "db").returncode == 0
        start = run_vmctl("-f", str(file), "start", "db")  # waits for the image's check too, as `up` did
        assert start.returncode == 0 and re.search(r"✔ db +healthy in", start.stderr), start.stderr
    finally:
        assert run_vmctl("-f", str(file), "down").returncode == 0

    file.write_text(HEALTHY.format(base=base).replace("context: ./checked", "context: ./unchecked"))
    refused = run_vmctl("-f", str(file), "up", "--timeout", "180")
    assert refused.returncode == 2, refused.stderr
    assert f"{file}:16: `services.web.depends_on.db`: `db` has no healthcheck" in refused.stderr, refused.stderr
    assert f"the image built from `{tmp_path / 'unchecked'}` has no HEALTHCHECK" in refused.stderr, refused.stderr
    ps = run_vmctl("-f", str(file), "ps", "-a", "--json")
    assert '"state": "running"' not in ps.stdout, ps.stdout  # nothing was started
