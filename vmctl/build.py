"""`build:`: a service's image built from its Dockerfile by a builder the host has, kept as an image archive.

The builder is podman (daemonless; `podman build` is buildah), else docker when its daemon answers. Its
result is exported with `podman save --format docker-archive` / `docker save` (docker's image format:
OCI's has no HEALTHCHECK, which a service inherits), and that archive is what
the rest of vmctl uses, exactly as if the file had said `image: ./app.tar`: the image stage unpacks it,
caches it by digest and makes its ext4 disk. The archive itself is cached under `CACHE/builds/KEY.tar`,
KEY a hash of everything the build reads (the context's files, names, modes and link targets, less
what `.dockerignore` leaves out (vmctl/dockerignore.py), the Dockerfile, args, target, the builder's
version), so an unchanged context is not built again, and a changed byte is. `up --build`,
`vmctl build` and `pull_policy: build` build even when the archive exists (the builder's own layer
cache keeps that quick).

podman reads a base image from an archive (`FROM oci-archive:/path/base.tar`), so a build needs no
registry. On this host podman's default runtime (crun) cannot run a `RUN` step (cgroup v1+v2 hybrid), so
podman is told `--runtime runc`, as `vmctl compare` does.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmctl import dockerignore
from vmctl.cache import build_lock
from vmctl.errors import HostError
from vmctl.paths import cache_root
from vmctl.runner import output, run
from vmctl.settings import Ctx, Setting, Support, p_bool, p_dir, p_str, parse_table, typename
from vmctl.yamlpos import KeyPath

BUILD_TIMEOUT = 1800.0
SKIPPED = frozenset({".git"})  # never part of what a build reads into the key (compose sends it, rarely used)


@dataclass(frozen=True)
class BuildSpec:
    context: Path
    dockerfile: str = "Dockerfile"  # relative to the context
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    network: str | None = None  # the RUN steps' network: none | host; None: the builder's default


def p_build_args(value: Any, path: KeyPath, ctx: Ctx) -> tuple[tuple[str, str], ...]:
    """compose's two forms: a mapping, or a list of `KEY=VALUE` (a bare `KEY` takes it from the environment
    in compose; here only written values count: the build is keyed by them)."""
    if isinstance(value, list):
        value = dict(str(v).partition("=")[::2] for v in value)
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a mapping or a list of KEY=VALUE, not {typename(value)}")
    out = []
    for key, val in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(key)) or isinstance(val, dict | list):
            ctx.fail((*path, key), f"invalid build arg {key!r}", "write KEY: value (letters, digits, `_`)")
        out.append((str(key), "" if val is None else str(val)))
    return tuple(out)


def p_build_network(value: Any, path: KeyPath, ctx: Ctx) -> str | None:
    """compose's `build.network`: `none`, `host`, or `default` (the builder's own: podman's CNI bridge)."""
    if value not in ("none", "host", "default"):
        ctx.fail(path, f"build network {value!r} is not supported", "use `none`, `host` or `default`")
    return None if value == "default" else str(value)


def p_dockerfile(value: Any, path: KeyPath, ctx: Ctx) -> str:
    text = p_str(value, path, ctx)
    if text.startswith("/") or ".." in Path(text).parts:
        ctx.fail(path, f"dockerfile {text!r} must be a path inside the build context", "write it relative to `context`")
    return text


def _refused(key: str, reason: str, hint: str = "remove it") -> Setting:
    return Setting(key, lambda v, p, c: None, None, "-", reason, support=Support.REFUSED, hint=hint)


def _ignored(key: str, reason: str) -> Setting:
    return Setting(key, lambda v, p, c: None, None, "-", reason, support=Support.IGNORED)


BUILD_SETTINGS = (
    Setting("context", p_dir, None, "path", "the folder sent to the builder, relative to the file", shown="."),
    Setting("dockerfile", p_dockerfile, "Dockerfile", "path", "relative to `context`"),
    Setting("args", p_build_args, (), "mapping|list", "build arguments (`ARG` in the Dockerfile)"),
    Setting("target", p_str, None, "string", "the stage of a multi-stage Dockerfile to build"),
    Setting("no_cache", p_bool, False, "bool", "build without the builder's layer cache"),
    Setting("pull", p_bool, False, "bool", "have the builder look for newer base images"),
    Setting("network", p_build_network, None, "none|host|default", "the network of `RUN` steps (default: the "
            "builder's own, which for podman is its CNI bridge `cni-podman0`, made on first use)", shown="default"),
    _ignored("cache_from", "a layer cache source only changes how fast the build is"),
    _ignored("cache_to", "a layer cache destination only changes how fast later builds are"),
    _refused("dockerfile_inline", "an inline Dockerfile is not implemented", "put it in a file (`dockerfile:`)"),
    _refused("labels", "labels on the built image are not implemented", "set them in the Dockerfile (`LABEL`)"),
    _refused("ssh", "SSH agents are not passed to the builder", "remove it"),
    _refused("secrets", "build secrets are not passed to the builder", "remove it"),
    _refused("platforms", "guests and host containers run x86_64 Linux only", "remove it"),
    _refused("tags", "the built image is kept as an archive, not tagged in an engine", "remove it"),
    _refused("extra_hosts", "the builder's /etc/hosts is its default", "remove it"),
    _refused("shm_size", "the builder's /dev/shm is its default", "remove it"),
    _refused("isolation", "the builder's isolation is its default", "remove it"),
    _refused("privileged", "privileged builds are not supported", "remove it"),
    _refused("ulimits", "the builder's limits are its defaults", "remove it"),
    _refused("additional_contexts", "extra build contexts are not implemented", "copy what is needed into `context`"),
    _refused("entitlements", "builder entitlements are not supported", "remove it"),
)


def p_build(value: Any, path: KeyPath, ctx: Ctx) -> BuildSpec:
    if isinstance(value, str):
        value = {"context": value}
    raw = parse_table(BUILD_SETTINGS, value, path, ctx, extensible=True)
    context = raw["context"] or p_dir(".", path, ctx)
    if not (context / raw["dockerfile"]).is_file():
        ctx.fail((*path, "dockerfile"), f"no Dockerfile `{raw['dockerfile']}` in the build context `{context}`",
                 "write the Dockerfile's path relative to `context`")
    return BuildSpec(context, raw["dockerfile"], raw["args"], raw["target"], raw["no_cache"], raw["pull"],
                     raw["network"])


# ------------------------------------------------------------------------------------------------
# builders


@dataclass(frozen=True)
class Builder:
    name: str  # podman | docker
    argv: tuple[str, ...]  # how it is called
    version: str

    def build(self, spec: BuildSpec, tag: str, log: Path) -> None:
        argv = [*self.argv, "build", "-f", str(spec.context / spec.dockerfile), "-t", tag]
        if self.name == "podman":  # docker's image format, as docker builds: OCI's has no HEALTHCHECK
            argv += ["--format", "docker"]
        for key, value in spec.args:
            argv += ["--build-arg", f"{key}={value}"]
        argv += [*(["--target", spec.target] if spec.target else []), *(["--no-cache"] if spec.no_cache else []),
                 *(["--pull"] if spec.pull else []), *(["--network", spec.network] if spec.network else []),
                 str(spec.context)]
        proc = run(argv, check=False, timeout=BUILD_TIMEOUT)
        log.write_bytes(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n    ".join(log.read_text(errors="replace").strip().splitlines()[-10:])
            raise HostError(f"`{self.name} build` failed with exit code {proc.returncode}:\n    {tail}",
                            hint=f"the whole output is in {log}")

    def save(self, tag: str, archive: Path) -> None:
        form = ["--format", "docker-archive"] if self.name == "podman" else []  # keeps the config as built
        run([*self.argv, "save", *form, "-o", str(archive), tag], timeout=600)
        run([*self.argv, "rmi", tag], check=False, timeout=120)  # the archive is the result; the layers stay


def tag_for(image: str) -> str:
    """The builder's (temporary) tag for a built image: `image` may be any reference (`127.0.0.1:5000/app:1`),
    which is not always a valid repository name under `vmctl-build/`; this always is."""
    return "vmctl-build/" + (re.sub(r"[^a-z0-9._-]+", "-", image.lower()).strip("-._") or "image") + ":latest"


def find_builder() -> Builder:
    """podman, else docker with a daemon that answers; HostError naming what to install."""
    if shutil.which("podman"):
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        return Builder("podman", ("podman", *runtime), output(["podman", "--version"], timeout=60).strip())
    if shutil.which("docker") and run(["docker", "info"], check=False, timeout=30).returncode == 0:
        return Builder("docker", ("docker",), output(["docker", "--version"], timeout=60).strip())
    raise HostError("no image builder: `build:` needs podman, or docker with its daemon running",
                    hint="install one: `apt-get install podman` (or `apt-get install docker.io` and start dockerd)")


# ------------------------------------------------------------------------------------------------
# the cache


ARCHIVE_FORMAT = "docker-archive"  # in the key: an archive saved in another format is built again


def builds_root() -> Path:
    return cache_root() / "builds"


def cache_key(spec: BuildSpec, builder: Builder) -> str:
    h = hashlib.sha256(repr((ARCHIVE_FORMAT, builder.name, builder.version, spec.dockerfile, spec.args,
                             spec.target, spec.network)).encode())
    rules = dockerignore.load(spec.context)
    for rel, path in _context_files(spec.context):
        if dockerignore.ignored(rules, rel, dockerfile=spec.dockerfile):
            continue  # the builder does not send it: a change to it changes no image
        st = path.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        h.update(os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()


def _context_files(context: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(context):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED)
        for name in sorted([*filenames, *dirnames]):
            path = Path(dirpath) / name
            yield str(path.relative_to(context)), path


def ensure(spec: BuildSpec, tag: str, *, force: bool = False,
           progress: Callable[[str], None] = lambda _: None) -> Path:
    """The OCI archive of `spec` built, from the cache unless `force` or the context changed."""
    builder = find_builder()
    key = cache_key(spec, builder)
    archive = builds_root() / f"{key[:32]}.tar"
    with build_lock(builds_root(), key[:32]):
        if archive.is_file() and not force:
            progress(f"built before ({builder.name}, context unchanged)")
            return archive
        progress(f"building with {builder.name} from {spec.context}")
        with tempfile.TemporaryDirectory(prefix=".build-", dir=builds_root()) as tmp:
            builder.build(spec, tag, builds_root() / f"{key[:32]}.log")
            builder.save(tag, Path(tmp) / "image.tar")
            os.replace(Path(tmp) / "image.tar", archive)
    return archive
