"""Images from a registry, for real: a distribution registry (Debian's `docker-registry`) on 127.0.0.1, fed by
`skopeo copy`, and host-container services (no VM boot) that name its images, through the real CLI.

Covers `up` + `exec` from a registry reference, `vmctl pull`, digest references (right and wrong), and the
pull policies: `never` with an empty cache, `always` picking up a tag pushed again, `missing` working with
the registry gone once the image is cached. Each test has an image cache of its own (VMCTL_CACHE_DIR):
the registry's web image has the same manifest digest as the archive other tests prepare.

Needs root, docker-registry, runc, slirp4netns, skopeo, umoci, mkfs.ext4 and busybox-static; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples.build_images import build_image, build_tiny_image
from tests.conftest import missing_tools, run_vmctl

TOOLS = ("docker-registry", "runc", "slirp4netns", "skopeo", "umoci", "mkfs.ext4", "busybox")
missing = missing_tools(TOOLS)
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="host containers need root"),
    pytest.mark.skipif(bool(missing), reason=f"missing tools: {missing}"),
]
DIGEST = re.compile(r"sha256:[0-9a-f]{12}")


@dataclass(frozen=True)
class Registry:
    address: str  # "127.0.0.1:PORT"
    folder: Path

    def push(self, archive: Path, ref: str) -> str:
        """Copy an OCI archive to `ref` (NAME:TAG) in this registry; returns its manifest digest."""
        target = f"docker://{self.address}/{ref}"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}", target],
                       check=True, timeout=120)
        out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", target], check=True, timeout=60,
                             capture_output=True, text=True)
        digest: str = json.loads(out.stdout)["Digest"]
        return digest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[Registry]:
    """`docker-registry serve` on a free loopback port, storing under `folder`; killed (and waited for) at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    address = f"127.0.0.1:{_free_port()}"
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {folder}/data}}\n"
                      f"  delete: {{enabled: true}}\nhttp: {{addr: '{address}'}}\n")
    with (folder / "registry.log").open("ab") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _answers(f"http://{address}/v2/"):
            assert proc.poll() is None, (folder / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not answer /v2/ within 20 s"
            time.sleep(0.05)
        yield Registry(address, folder)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reg-images")
    return {"web": build_tiny_image(folder / "web"), "tools": build_image("tools", folder / "tools")}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, images: dict[str, Path]) -> Iterator[Registry]:
    with serving(tmp_path_factory.mktemp("registry")) as reg:
        reg.push(images["web"], "web:1")
        yield reg


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty image cache of the test's own (the CLI runs inherit it)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(path))
    return path


SLEEPER = json.dumps(["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"])  # any busybox image; stops at once


def compose(folder: Path, image: str, *extra: str) -> Path:
    """A one-service environment: `web`, a host container of `image` that waits; `image:` is on line 4."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "compose.yaml"
    lines = [f"name: reg-{folder.name}", "services:", "  web:", f"    image: {image}", "    isolation: container",
             f"    entrypoint: {SLEEPER}", *extra]
    file.write_text("\n".join(lines) + "\n")
    return file


def vmctl_ok(*args: str) -> subprocess.CompletedProcess[str]:
    out = run_vmctl(*args)
    assert out.returncode == 0, out.stderr
    return out


def cached_digests(cache: Path) -> set[str]:
    root = cache / "images"
    return {"sha256:" + p.name for p in root.iterdir() if len(p.name) == 64} if root.is_dir() else set()


@contextlib.contextmanager
def up(file: Path) -> Iterator[str]:
    """`vmctl up` the file; yields its progress output; `down` afterwards, even when the block fails."""
    out = run_vmctl("-f", str(file), "up", "--timeout", "60")
    try:
        assert out.returncode == 0, out.stderr
        yield out.stderr
    finally:
        down = run_vmctl("-f", str(file), "down")
        assert down.returncode == 0, down.stderr


def test_a_registry_service_comes_up_and_runs_commands(registry: Registry, cache: Path, tmp_path: Path) -> None:
    file = compose(tmp_path / "env", f"{registry.address}/web:1")
    with up(file) as progress:
        assert f"image {registry.address}/web:1" in progress
        out = vmctl_ok("-f", str(file), "exec", "web", "--", "sh", "-c", "cat /etc/hostname; ls /bin/web-start")
        assert out.stdout == "web\n/bin/web-start\n"
    assert len(cached_digests(cache)) == 1


def test_pull_prepares_the_images_and_names_unknown_services(registry: Registry, cache: Path,
                                                             tmp_path: Path) -> None:
    file = compose(tmp_path / "env", f"{registry.address}/web:1")
    out = vmctl_ok("-f", str(file), "pull")
    assert f"image {registry.address}/web:1" in out.stderr and "copying" in out.stderr
    assert len(cached_digests(cache)) == 1
    again = vmctl_ok("-f", str(file), "pull", "web")
    assert "inspecting" in again.stderr and "cached" in again.stderr  # asked the registry, found it prepared
    bad = run_vmctl("-f", str(file), "pull", "nosuch")
    assert bad.returncode == 2 and "unknown service `nosuch`" in bad.stderr and "services: web" in bad.stderr
    assert "Examples:" in vmctl_ok("pull", "--help").stdout


def test_a_digest_reference_is_checked(registry: Registry, images: dict[str, Path], cache: Path,
                                       tmp_path: Path) -> None:
    digest = registry.push(images["web"], "web:1")
    good = compose(tmp_path / "good", f"{registry.address}/web@{digest}")
    with up(good):
        assert cached_digests(cache) == {digest}
        assert vmctl_ok("-f", str(good), "exec", "web", "--", "cat", "/etc/hostname").stdout == "web\n"
    wrong = compose(tmp_path / "wrong", f"{registry.address}/web@sha256:{'0' * 64}")
    out = run_vmctl("-f", str(wrong), "up")
    assert out.returncode == 1, out.stderr
    assert f"{wrong}:4: `services.web.image`" in out.stderr and "manifest unknown" in out.stderr
    assert "check the digest" in out.stderr
    malformed = compose(tmp_path / "malformed", f"{registry.address}/web@sha256:1234")
    out = run_vmctl("-f", str(malformed), "pull")
    assert out.returncode == 2 and "invalid digest" in out.stderr and "`services.web.image`" in out.stderr
    assert cached_digests(cache) == {digest}


def test_never_with_an_empty_cache_fails_before_creating_anything(registry: Registry, cache: Path,
                                                                   tmp_path: Path) -> None:
    file = compose(tmp_path / "env", f"{registry.address}/web:1", "    pull_policy: never")
    out = run_vmctl("-f", str(file), "up")
    assert out.returncode == 1, out.stderr
    assert f"{file}:4: `services.web.image`" in out.stderr and "`pull_policy: never`" in out.stderr
    assert "vmctl pull" in out.stderr and "Traceback" not in out.stderr
    state = Path(os.environ["VMCTL_STATE_DIR"])
    assert not list((state / "envs").glob("reg-env*")), "`up` left an environment folder"
    assert cached_digests(cache) == set()
    skipped = vmctl_ok("-f", str(file), "pull")
    assert "skipped: `pull_policy: never`" in skipped.stderr and cached_digests(cache) == set()
    # once pulled (here by a service that may pull), `never` runs from the cache
    vmctl_ok("-f", str(compose(tmp_path / "puller", f"{registry.address}/web:1")), "pull")
    with up(file):
        assert vmctl_ok("-f", str(file), "exec", "web", "--", "true").returncode == 0


def _digest_in(progress: str, ref: str) -> str:
    line = next(line for line in progress.splitlines() if line.startswith("✔") and f"image {ref}" in line)
    found = DIGEST.search(line)
    assert found, line
    return found.group(0)


def test_always_picks_up_a_tag_pushed_again(registry: Registry, images: dict[str, Path], cache: Path,
                                            tmp_path: Path) -> None:
    ref = f"{registry.address}/moving:1"
    first = registry.push(images["web"], "moving:1")
    always = compose(tmp_path / "always", ref, "    pull_policy: always")
    lazy = compose(tmp_path / "lazy", ref)  # `missing`, the default
    probe = ["exec", "web", "--", "sh", "-c", "test -x /usr/bin/stress-ng && echo tools || echo web"]
    with up(always) as progress:
        assert _digest_in(progress, ref) == first[:19]
        assert vmctl_ok("-f", str(always), *probe).stdout == "web\n"
    second = registry.push(images["tools"], "moving:1")
    assert second != first
    with up(lazy) as progress:  # `missing`: the reference was prepared, the registry is not asked
        assert _digest_in(progress, ref) == first[:19] and "inspecting" not in progress
    with up(always) as progress:
        assert _digest_in(progress, ref) == second[:19]
        assert vmctl_ok("-f", str(always), *probe).stdout == "tools\n"
    assert cached_digests(cache) == {first, second}


def test_missing_does_not_ask_the_registry_once_cached(images: dict[str, Path], cache: Path, tmp_path: Path) -> None:
    with serving(tmp_path / "registry") as own:
        own.push(images["web"], "web:1")
        file = compose(tmp_path / "env", f"{own.address}/web:1")
        with up(file) as progress:
            assert "copying" in progress
    # the registry is gone (its port refuses): `up` still works from the cache, `pull` says what failed
    with up(file) as progress:
        assert "cached" in progress and "inspecting" not in progress
        assert vmctl_ok("-f", str(file), "exec", "web", "--", "cat", "/etc/hostname").stdout == "web\n"
    out = run_vmctl("-f", str(file), "pull")
    assert out.returncode == 1 and f"cannot pull `docker://{own.address}/web:1`" in out.stderr
    assert f"is the registry `{own.address}` running" in out.stderr
