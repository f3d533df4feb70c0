"""Container images: archives, OCI layouts, local engine stores or registries -> rootfs + ext4 disk.

Pipeline: `resolve_source` (what is it? a skopeo transport string) -> manifest digest (`skopeo inspect
--raw`, memoised per source file by size/mtime/inode, and per registry reference as `pull_policy` allows)
-> cache hit, or: `skopeo copy` to a private OCI layout (a registry image by its digest, so the entry holds
what was inspected) -> `umoci raw unpack` (honours whiteouts) -> mountpoints the runtimes need -> `mkfs.ext4 -d`.
Everything is built in `cache_root()/images/.tmp-*` and renamed to `<digest-hex>/` in one step, so a
cache entry is either complete or absent.

Cache entry `cache_root()/images/<hex>/`: `rootfs/` (read-only use), `disk.ext4`, `image.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vmctl import registry
from vmctl.errors import CommandFailed, HostError, UsageError, VmctlError
from vmctl.paths import cache_root
from vmctl.runner import output, run, which
from vmctl.state import write_atomic

CACHE_FORMAT = 2  # 2: the image's HEALTHCHECK
LAYOUT_TAG = "vmctl"
FILE_TRANSPORTS = ("docker-archive:", "oci-archive:", "oci:")
ENGINE_TRANSPORTS = ("docker-daemon:", "containers-storage:")
REGISTRY_TRANSPORT = "docker://"
# Mountpoints crun/runc need; the disk is read-only in the guest, so they must exist in the image.
MOUNTPOINT_DIRS = ("proc", "sys", "dev", "tmp", "run", "etc")
MOUNTPOINT_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")
STALE_TMP_SECONDS = 3600


class PullPolicy(StrEnum):
    """compose's `pull_policy`, for registry images (archives, layouts and engine stores are read in place)."""

    ALWAYS = "always"  # ask the registry for the digest at every `up`; a plain name skips the local engine stores
    MISSING = "missing"  # ask only when this reference has no cached preparation (compose's default)
    NEVER = "never"  # never ask: the cache has it, or the service cannot start
    BUILD = "build"  # a service with `build:`: built at every `up` (vmctl/build.py); never a registry's


@dataclass(frozen=True)
class ImageHealthcheck:
    """An image's HEALTHCHECK (docker's image format only: OCI's has none), in seconds; a service that
    sets no `healthcheck:` of its own inherits it, as under compose."""

    test: tuple[str, ...]  # argv in the container
    interval: float = 30.0  # docker's defaults where the image leaves a field at 0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0
    start_interval: float | None = None


def healthcheck_from_json(raw: Any) -> ImageHealthcheck | None:
    """docker's `config.Healthcheck` ({"Test": [...], "Interval": ns, ...}); None for none or `NONE`."""
    if not isinstance(raw, dict):
        return None
    test = [str(t) for t in raw.get("Test") or ()]
    if not test or test[0] == "NONE":
        return None
    argv = tuple(test[1:]) if test[0] == "CMD" else ("/bin/sh", "-c", test[1]) \
        if test[0] == "CMD-SHELL" and len(test) == 2 else ()
    if not argv:
        return None

    def seconds(key: str, default: float) -> float:
        value = raw.get(key)
        return value / 1e9 if isinstance(value, int) and value > 0 else default

    retries = raw.get("Retries")
    return ImageHealthcheck(argv, seconds("Interval", 30.0), seconds("Timeout", 30.0),
                            retries if isinstance(retries, int) and retries > 0 else 3,
                            seconds("StartPeriod", 0.0), seconds("StartInterval", 0.0) or None)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a container runtime needs."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "K=V"
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "8080/tcp"
    healthcheck: ImageHealthcheck | None = None


@dataclass(frozen=True)
class PreparedImage:
    ref: str  # what the user wrote
    digest: str  # manifest digest of the source, "sha256:..."
    rootfs: Path  # unpacked root filesystem (read-only use)
    disk: Path  # ext4 image of the rootfs (attached read-only to microVMs)
    config: ImageConfig
    size_bytes: int  # apparent size of the rootfs


def _no_progress(_: str) -> None:
    pass


# ---------------------------------------------------------------- resolving what the user wrote


def resolve_source(ref: str, base_dir: Path, *, engines: bool = True) -> str:
    """Turn `ref` into a skopeo transport string; paths are relative to `base_dir`. UsageError if unusable.
    A name is looked up in the local docker/podman stores first, unless `engines` is false (a pull)."""
    if not ref or "\0" in ref or "\n" in ref:
        raise UsageError(f"image reference {ref!r} is empty or contains control characters")
    if ref.startswith(REGISTRY_TRANSPORT):
        return REGISTRY_TRANSPORT + str(registry.parse(ref.removeprefix(REGISTRY_TRANSPORT)))
    if ref.startswith(ENGINE_TRANSPORTS):
        return ref
    for transport in FILE_TRANSPORTS:
        if ref.startswith(transport):
            return _resolve_path(ref[len(transport) :], base_dir, expect=transport)
    if _looks_like_path(ref, base_dir):
        return _resolve_path(ref, base_dir, expect=None)
    return _resolve_name(ref, engines=engines)


def _looks_like_path(ref: str, base_dir: Path) -> bool:
    if ref.startswith(("/", "./", "../", "~")) or ref.endswith((".tar", ".tar.gz", ".tgz")):
        return True
    head = ref.split(":", 1)[0]
    return (base_dir / ref).exists() or (base_dir / head).is_dir()


def _resolve_path(text: str, base_dir: Path, *, expect: str | None) -> str:
    path = (base_dir / Path(text).expanduser()).absolute()
    tag = ""
    if not path.exists() and ":" in text:  # an OCI layout directory written as `dir:tag`
        head, _, tag = text.rpartition(":")
        candidate = (base_dir / Path(head).expanduser()).absolute()
        if candidate.is_dir():
            path = candidate
        else:
            tag = ""
    if not path.exists():
        raise UsageError(
            f"image `{text}` not found: no file or directory `{path}`",
            hint="build it first (e.g. `python examples/build_images.py`), or fix the path; "
            "paths are relative to the environment file",
        )
    if ":" in str(path):
        raise UsageError(f"image path `{path}` contains `:`", hint="rename or move it: skopeo cannot address it")
    if path.is_dir():
        _check_layout_dir(path)
        kind = "oci:"
    else:
        kind = detect_archive(path)
    if expect is not None and expect != kind:
        raise UsageError(f"`{path}` is {_describe(kind)}, not {_describe(expect)}", hint=f"write `{kind}{text}`")
    return f"{kind}{path}" + (f":{tag}" if tag else "")


def _describe(kind: str) -> str:
    return {"oci:": "an OCI layout directory", "oci-archive:": "an OCI archive", "docker-archive:": "a docker archive"}[
        kind
    ]


def _check_layout_dir(path: Path) -> None:
    if not (path / "oci-layout").is_file() or not (path / "index.json").is_file():
        raise UsageError(
            f"directory `{path}` is not an OCI image layout (no `oci-layout` and `index.json`)",
            hint="pass an OCI layout directory, an OCI archive or a `docker save` tarball",
        )


def detect_archive(path: Path) -> str:
    """`docker-archive:` or `oci-archive:` by looking inside the tar; UsageError for anything else."""
    names: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # reads every header: a truncated archive fails here
                names.add(member.name.removeprefix("./").rstrip("/"))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UsageError(
            f"`{path}` is not a readable tar archive ({e})",
            hint="expected a `docker save` tarball or an OCI archive; the file may be truncated or corrupt: "
            "build or export it again",
        ) from e
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive:"
    if "manifest.json" in names:
        return "docker-archive:"
    raise UsageError(
        f"`{path}` is a tar archive but neither a docker archive (`manifest.json`) "
        "nor an OCI archive (`index.json` + `oci-layout`)",
        hint="export the image with `docker save`, `podman save --format oci-archive` or `skopeo copy`",
    )


def _resolve_name(ref: str, *, engines: bool) -> str:
    parsed = registry.parse(ref)
    name = str(parsed) if parsed.tag or parsed.digest else f"{ref}:latest"
    # podman's store is asked through skopeo, the reader that will copy from it: `podman image exists`
    # says yes to `HOST/web@DIGEST` when any image has that digest, which skopeo then cannot resolve
    for engine, transport, probe in (
        ("docker", "docker-daemon:", ["docker", "image", "inspect", "--format", "{{.Id}}", name]),
        ("podman", "containers-storage:", ["skopeo", "inspect", "--raw", f"containers-storage:{name}"]),
    ):
        if shutil.which(engine) is None or not engines:
            continue
        with contextlib.suppress(VmctlError):
            if run(probe, check=False, timeout=30).returncode == 0:
                return f"{transport}{name}"
    return f"{REGISTRY_TRANSPORT}{name}"


# ---------------------------------------------------------------- preparing (cached)


def images_root() -> Path:
    return cache_root() / "images"


def prepare_image(ref: str, base_dir: Path, *, policy: PullPolicy = PullPolicy.MISSING,
                  progress: Callable[[str], None] = _no_progress) -> PreparedImage:
    """Resolve, fetch, unpack and make the ext4 disk of `ref`, or return the cached result.
    `policy` says when a registry is asked (see `PullPolicy`); HostError when `never` finds nothing cached."""
    source = resolve_source(ref, base_dir, engines=policy is not PullPolicy.ALWAYS)
    root = images_root()
    root.mkdir(parents=True, exist_ok=True)
    digest = _known_digest(source, policy) or _ask_digest(ref, source, policy, progress)
    entry = root / digest.removeprefix("sha256:")
    cached = _load_entry(ref, digest, entry)
    if cached is not None:
        _memo_put(source, digest)
        progress(f"image `{ref}`: cached ({digest[:19]})")
        return cached
    _remove_stale_tmp(root)
    with _build_dir(root) as tmp:
        _build(_pinned(source, digest), digest, tmp, progress)
        try:
            tmp.rename(entry)
        except OSError:  # another vmctl built it meanwhile: keep theirs
            if _load_entry(ref, digest, entry) is None:  # an entry of another cache format: replace it
                _replace_entry(entry, tmp)
    _memo_put(source, digest)
    result = _load_entry(ref, digest, entry)
    if result is None:
        raise HostError(f"image cache entry `{entry}` is unreadable right after building it")
    return result


def cached_image(ref: str, base_dir: Path, digest: str | None = None) -> PreparedImage | None:
    """`ref`'s cache entry, never pulled nor built: the one of `digest` (what a container was started from),
    else of the digest memoised for its source (files only: a name may point elsewhere by now)."""
    if digest is None:
        with contextlib.suppress(UsageError):
            digest = _memo_get(resolve_source(ref, base_dir))
    return _load_entry(ref, digest, images_root() / digest.removeprefix("sha256:")) if digest else None


def _build(source: str, digest: str, tmp: Path, progress: Callable[[str], None]) -> None:
    layout = tmp / "layout"
    rootfs = tmp / "rootfs"
    started = time.monotonic()
    progress(f"copying {source}")
    _skopeo(source, ["copy", "--quiet", *tls_off(source, "--src-tls-verify"), source, f"oci:{layout}:{LAYOUT_TAG}"])
    config = read_layout_config(layout, LAYOUT_TAG)
    if config.healthcheck is None:  # the copy into an OCI layout dropped it: the source's own config has it
        raw = json.loads(_skopeo(source, ["inspect", *tls_off(source, "--tls-verify"), "--config", "--raw", source],
                                 capture_text=True))
        config = dataclasses.replace(config, healthcheck=image_config_from_json(raw).healthcheck)
    progress("unpacking layers")
    _unpack(source, layout, rootfs)
    shutil.rmtree(layout)
    add_mountpoints(rootfs)
    size, files, dirs = tree_size(rootfs)
    progress(f"making ext4 disk ({size / 2**20:.1f} MiB in {files + dirs} inodes)")
    make_ext4(rootfs, tmp / "disk.ext4", label=f"vmctl-{digest[7:17]}", uuid_hex=digest[7:39], files=files, dirs=dirs)
    meta = {"format": CACHE_FORMAT, "digest": digest, "size_bytes": size, "config": asdict(config)}
    (tmp / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
    progress(f"prepared in {time.monotonic() - started:.1f} s")


def _replace_entry(entry: Path, new: Path) -> None:
    """Put `new` in the place of an entry this version cannot read (an older vmctl's): moved aside first,
    so the name never holds half of either; a running machine keeps the disk it has open."""
    aside = entry.with_name(f".tmp-stale-{uuid.uuid4().hex[:8]}")
    entry.rename(aside)
    new.rename(entry)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _build_dir(root: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    tmp.chmod(0o755)  # the disk must stay readable by a hypervisor running as another user
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - p.lstat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def _load_entry(ref: str, digest: str, entry: Path) -> PreparedImage | None:
    try:
        meta = json.loads((entry / "image.json").read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("digest") != digest:
            return None
        config = _config_from_meta(meta["config"])
        if not (entry / "rootfs").is_dir() or not (entry / "disk.ext4").is_file():
            return None
        return PreparedImage(ref, digest, entry / "rootfs", entry / "disk.ext4", config, int(meta["size_bytes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _config_from_meta(c: dict[str, Any]) -> ImageConfig:
    def strings(key: str) -> tuple[str, ...]:
        return tuple(str(x) for x in c[key])

    return ImageConfig(
        entrypoint=strings("entrypoint"),
        cmd=strings("cmd"),
        env=strings("env"),
        working_dir=str(c["working_dir"]),
        user=str(c["user"]),
        exposed_ports=strings("exposed_ports"),
        healthcheck=ImageHealthcheck(**{**hc, "test": tuple(hc["test"])}) if (hc := c["healthcheck"]) else None,
    )


# ---------------------------------------------------------------- digest (and its memo)


def _known_digest(source: str, policy: PullPolicy) -> str | None:
    """The digest to use without asking the source: a file's memo; for a registry reference (not with
    `always`), the digest it pins or the one its last pull found, while that preparation is in the cache."""
    if not source.startswith(REGISTRY_TRANSPORT):
        return _memo_get(source)
    if policy is PullPolicy.ALWAYS:
        return None
    digest = _registry_ref(source).digest or _memo_get(source)
    if digest is None or _load_entry(source, digest, images_root() / digest.removeprefix("sha256:")) is None:
        return None
    return digest


def _ask_digest(ref: str, source: str, policy: PullPolicy, progress: Callable[[str], None]) -> str:
    """The manifest digest, from the source itself; a registry's answer must match a digest written in `ref`."""
    if policy is PullPolicy.NEVER and source.startswith(REGISTRY_TRANSPORT):
        raise HostError(f"image `{ref}` is not in vmctl's image cache, and `pull_policy: never` forbids pulling it",
                        hint="pull it once: `vmctl pull` (it skips `never` services: set `pull_policy: missing` "
                             "for that run), or drop `pull_policy: never`")
    digest = _inspect_digest(source, progress)
    written = _registry_ref(source).digest if source.startswith(REGISTRY_TRANSPORT) else None
    if written is not None and written != digest:
        raise HostError(f"the registry answered `{ref}` with a manifest of digest {digest}, not {written}",
                        hint="the registry or something between it and this machine altered the manifest")
    return digest


def _inspect_digest(source: str, progress: Callable[[str], None]) -> str:
    progress(f"inspecting {source}")
    raw = _skopeo(source, ["inspect", *tls_off(source, "--tls-verify"), "--raw", source], capture_text=True)
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def _registry_ref(source: str) -> registry.RegistryRef:
    return registry.parse(source.removeprefix(REGISTRY_TRANSPORT))


def _pinned(source: str, digest: str) -> str:
    """A registry image is copied by the digest just inspected: a tag pushed again meanwhile cannot slip in."""
    if not source.startswith(REGISTRY_TRANSPORT):
        return source
    return REGISTRY_TRANSPORT + _registry_ref(source).pinned(digest)


def tls_off(source: str, option: str) -> list[str]:
    """A loopback registry is plain HTTP, as docker assumes by default; every other keeps TLS verification."""
    if source.startswith(REGISTRY_TRANSPORT) and _registry_ref(source).loopback:
        return [f"{option}=false"]
    return []


def _source_stat(source: str) -> list[int] | None:
    """What a memo of `source` stays valid for: a file's size, mtime and inode; a registry reference's
    digest until `pull_policy: always` or `vmctl pull` asks again ([]); engine stores: no memo (None)."""
    if source.startswith(REGISTRY_TRANSPORT):
        return []
    if not source.startswith(FILE_TRANSPORTS):
        return None  # an engine store can change under the same name: always ask it (it is local)
    path = Path(source.split(":", 2)[1])
    with contextlib.suppress(OSError):
        st = (path / "index.json" if path.is_dir() else path).stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]
    return None


def _memo_path(source: str) -> Path:
    return images_root() / "sources" / (hashlib.sha256(source.encode()).hexdigest()[:32] + ".json")


def _memo_get(source: str) -> str | None:
    st = _source_stat(source)
    if st is None:
        return None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        memo = json.loads(_memo_path(source).read_text())
        if memo["source"] == source and memo["stat"] == st:
            return str(memo["digest"])
    return None


def _memo_put(source: str, digest: str) -> None:
    st = _source_stat(source)
    if st is None:
        return
    write_atomic(_memo_path(source), json.dumps({"source": source, "stat": st, "digest": digest}).encode(), mode=0o644)


# ---------------------------------------------------------------- tools


def _skopeo(source: str, args: list[str], *, capture_text: bool = False) -> str:
    skopeo = which("skopeo")
    argv = [skopeo, "--command-timeout", "120s", *args]
    try:
        if capture_text:
            return output(argv, timeout=300)
        run(argv, timeout=600)
        return ""
    except CommandFailed as e:
        raise _source_error(source, e) from e


def _source_error(source: str, e: CommandFailed) -> VmctlError:
    if source.startswith(FILE_TRANSPORTS):
        return UsageError(
            f"cannot read image `{source.split(':', 1)[1]}`: {e.message}",
            hint="the archive or layout is damaged or incomplete: build or export it again",
        )
    if source.startswith(REGISTRY_TRANSPORT):
        return HostError(f"cannot pull `{source}` from its registry: {e.message}", hint=_registry_hint(source))
    return HostError(f"cannot read `{source}` from the local engine: {e.message}")


def _registry_hint(source: str) -> str:
    ref = _registry_ref(source)
    if ref.digest:
        return (f"check the digest: the registry may have no manifest {ref.digest[:19]}... of `{ref.name}` "
                f"(`skopeo inspect docker://{ref.name}:TAG` shows a tag's `Digest`)")
    speak = "vmctl speaks plain HTTP to it (loopback)" if ref.loopback else "it must offer HTTPS that this host trusts"
    return (f"is the registry `{ref.registry}` running and reachable, and the name and tag right? {speak}; "
            "without a registry, `docker save`/`skopeo copy` the image into an archive and give its path")


def _unpack(source: str, layout: Path, rootfs: Path) -> None:
    argv = [which("umoci"), "raw", "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    try:
        run([*argv, "--image", f"{layout}:{LAYOUT_TAG}", rootfs], timeout=600)
    except CommandFailed as e:
        raise _source_error(source, e) from e


def read_layout_config(layout: Path, tag: str) -> ImageConfig:
    """Parse the image config of `tag` in an OCI layout (index -> manifest -> config blob)."""
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests", [])
    chosen = [m for m in manifests if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    if not chosen:
        raise HostError(f"OCI layout `{layout}` has no image tagged `{tag}`")
    manifest = json.loads(_blob(layout, chosen[0]["digest"]).read_text())
    blob = json.loads(_blob(layout, manifest["config"]["digest"]).read_text())
    return image_config_from_json(blob)


def image_config_from_json(blob: dict[str, Any]) -> ImageConfig:
    """The runtime-relevant part of an OCI/docker image config blob."""
    c = blob.get("config") or {}

    def strings(key: str) -> tuple[str, ...]:
        return tuple(str(x) for x in (c.get(key) or ()))

    return ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        env=strings("Env"),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        exposed_ports=tuple(sorted(c.get("ExposedPorts") or {})),
        healthcheck=healthcheck_from_json(c.get("Healthcheck")),
    )


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexpart = digest.partition(":")
    return layout / "blobs" / algo / hexpart


def add_mountpoints(rootfs: Path) -> None:
    """Create the mountpoints runtimes bind over, so a read-only rootfs (or disk) still works."""
    for d in MOUNTPOINT_DIRS:
        p = rootfs / d
        if not os.path.lexists(p):
            p.mkdir(mode=0o755)
    if (rootfs / "etc").is_symlink():
        return
    for f in MOUNTPOINT_FILES:
        p = rootfs / f
        if p.is_symlink():  # e.g. resolv.conf -> ../run/...: the runtime binds a file of ours here
            p.unlink()
        if not p.exists():
            p.touch(mode=0o644)


def tree_size(root: Path) -> tuple[int, int, int]:
    """(apparent size in bytes, non-directory entries, directories) of a tree, not following links."""
    size = files = dirs = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirs += 1
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                size += st.st_size
    return size, files, dirs


def ext4_size_bytes(size: int, files: int, dirs: int) -> int:
    """Apparent size + per-file block rounding + inode tables + metadata headroom, in whole MiB."""
    blocks = size + (files + dirs) * 4096
    total = int(blocks * 1.15) + (files + dirs + 1024) * 256 + 16 * 2**20
    return -(-total // 2**20) * 2**20


def make_ext4(rootfs: Path, image: Path, *, label: str, uuid_hex: str, files: int, dirs: int) -> None:
    """`mkfs.ext4 -d`: an ext4 image of `rootfs` without root privileges or loop devices."""
    size, _, _ = tree_size(rootfs)
    nbytes = ext4_size_bytes(size, files, dirs)
    inodes = files + dirs + 1024
    for attempt in (1, 2):
        image.unlink(missing_ok=True)
        with image.open("wb") as f:
            f.truncate(nbytes * attempt)
        argv = [which("mkfs.ext4", package="e2fsprogs"), "-q", "-F", "-b", "4096", "-N", str(inodes * attempt)]
        argv += ["-m", "0", "-O", "^has_journal", "-E", "root_owner=0:0,nodiscard", "-L", label[:16]]
        argv += ["-U", str(uuid.UUID(uuid_hex)), "-d", str(rootfs), str(image)]
        result = run(argv, check=attempt == 2, timeout=600)
        if result.returncode == 0:
            return
