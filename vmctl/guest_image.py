"""Guest images: a Debian kernel plus an initramfs (busybox, dropbear, crun, our init), built once per recipe.

A recipe may instead name a kernel of our own (`kernel_build: <name>`, see vmctl/kernel_build.py): the
image then holds that `vmlinux` (booted through PVH) and an init that loads no modules.

Recipe: `guest_images/<name>/recipe.yaml`. Init: `templates/guest/init.sh.j2` (the guest contract is in
docs/design.md). Cache: `cache_root()/guest/<name>` is a symlink to `<name>.<digest>/`, which holds
the kernel (`vmlinux`, extracted from Debian's `vmlinuz` to boot through PVH; the bzImage stays beside
it), the initramfs and `manifest.json`. The digest covers the recipe, the init template, this
builder's format and the candidate versions of the packages (`apt-cache policy`), so a new kernel in
the archive, or an edit to the recipe or the init, makes a new image. A build is made in a temporary
directory beside the cache and switched in with one atomic rename of the symlink.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from vmctl import cache, kernel_build
from vmctl.errors import HostError, UsageError
from vmctl.paths import GUEST_IMAGES_DIR, TEMPLATES_DIR, cache_root
from vmctl.runner import output, run, which

FORMAT = 2  # bump when the builder changes what it puts into an image (2: the vmlinux for PVH)
INIT_TEMPLATE = TEMPLATES_DIR / "guest" / "init.sh.j2"
MANIFEST = "manifest.json"
BZIMAGE_FILE = "vmlinuz"
COMPRESSIONS = {"none": "initramfs.cpio", "gzip": "initramfs.cpio.gz"}

# The kernel command line to boot these images with (before the vmctl.* settings and user extras).
# Measured under TCG here: `cryptomgr.notests` saves ~0.25 s (crypto self-tests at boot),
# `tsc=reliable no_timer_check` ~0.1 s; `quiet` keeps the serial console (slow under TCG) short.
KERNEL_CMDLINE = ("console=ttyS0", "reboot=k", "panic=-1", "quiet",
                  "cryptomgr.notests", "tsc=reliable", "no_timer_check")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class GuestImage:
    name: str
    kernel: Path
    initrd: Path
    kernel_release: str
    digest: str
    directory: Path


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    kernel: str  # Debian meta package; "" when the kernel is built (`kernel_build`)
    packages: tuple[str, ...]
    binaries: tuple[str, ...]
    modules: tuple[str, ...]
    compression: str
    kernel_build: str | None = None  # a kernel of our own (vmctl/kernel_build.py), everything built in
    modules_after_ready: tuple[str, ...] = ()  # loaded once the guest announced READY (not needed for it)
    init: Path = INIT_TEMPLATE  # the init's template (the nested KVM test host has its own)


# ---------------------------------------------------------------------------------------------- recipe

_RECIPE_KEYS: dict[str, str] = {
    "kernel": "a Debian meta package name such as `linux-image-cloud-amd64`",
    "kernel_build": "the name of a kernel config fragment `guest_images/<name>/kernel.config`",
    "packages": "a list of Debian package names",
    "binaries": "a list of paths inside the unpacked packages, such as `usr/bin/crun`",
    "modules": "a list of kernel module names, such as `virtio_net`",
    "modules_after_ready": "a list of kernel module names loaded after READY, such as `virtio_balloon`",
    "compression": "`none` or `gzip`",
    "init": "a template path under templates/, such as `guest/init.sh.j2` (optional; that is the default)",
}
OPTIONAL_KEYS = ("kernel_build", "init")


def recipe_path(name: str) -> Path:
    return GUEST_IMAGES_DIR / name / "recipe.yaml"


def _str_list(value: object, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{where}: `{key}` must be {_RECIPE_KEYS[key]}, got {value!r}")
    return tuple(value)


def parse_recipe(name: str, text: str, where: str = "recipe.yaml") -> Recipe:
    """Validate a recipe's YAML text into a Recipe; unknown or missing keys are errors."""
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a recipe is a mapping of {', '.join(_RECIPE_KEYS)}")
    if "kernel_build" in data:
        return _parse_built_kernel_recipe(name, data, where)
    unknown = sorted(set(data) - set(_RECIPE_KEYS))
    missing = [k for k in _RECIPE_KEYS if k not in data and k not in OPTIONAL_KEYS]
    if unknown or missing:
        raise UsageError(f"{where}: unknown keys {unknown}, missing keys {missing}",
                         hint=f"the keys are {', '.join(f'`{k}`' for k in _RECIPE_KEYS)}")
    for key in ("kernel", "compression"):
        if not isinstance(data[key], str):
            raise UsageError(f"{where}: `{key}` must be {_RECIPE_KEYS[key]}, got {data[key]!r}")
    if data["compression"] not in COMPRESSIONS:
        raise UsageError(f"{where}: `compression` must be {_RECIPE_KEYS['compression']}")
    binaries = _str_list(data["binaries"], "binaries", where)
    if any(b.startswith("/") or ".." in Path(b).parts for b in binaries):
        raise UsageError(f"{where}: `binaries` are relative paths inside the packages, got {binaries}")
    return Recipe(name=name, path=Path(where), kernel=data["kernel"],
                  packages=_str_list(data["packages"], "packages", where), binaries=binaries,
                  modules=_str_list(data["modules"], "modules", where), compression=data["compression"],
                  modules_after_ready=_str_list(data["modules_after_ready"], "modules_after_ready", where),
                  init=_init_template(data.get("init"), where))


def _init_template(value: object, where: str) -> Path:
    if value is None:
        return INIT_TEMPLATE
    if not isinstance(value, str) or value.startswith("/") or ".." in Path(value).parts \
            or not (TEMPLATES_DIR / value).is_file():
        raise UsageError(f"{where}: `init` must be {_RECIPE_KEYS['init']}, got {value!r}")
    return TEMPLATES_DIR / value


def _parse_built_kernel_recipe(name: str, data: dict[str, object], where: str) -> Recipe:
    """A recipe whose kernel is built from a config fragment: no `kernel`, no `modules` (all built in)."""
    keys = ("kernel_build", "packages", "binaries", "compression")
    unknown = sorted(set(data) - set(keys))
    missing = [k for k in keys if k not in data]
    if unknown or missing:
        raise UsageError(f"{where}: unknown keys {unknown}, missing keys {missing}",
                         hint=f"with `kernel_build` the keys are {', '.join(f'`{k}`' for k in keys)} "
                              "(the kernel has no modules)")
    kernel_build, compression = data["kernel_build"], data["compression"]
    if not isinstance(kernel_build, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", kernel_build):
        raise UsageError(f"{where}: `kernel_build` must be {_RECIPE_KEYS['kernel_build']}, got {kernel_build!r}")
    if not isinstance(compression, str) or compression not in COMPRESSIONS:
        raise UsageError(f"{where}: `compression` must be {_RECIPE_KEYS['compression']}")
    binaries = _str_list(data["binaries"], "binaries", where)
    if any(b.startswith("/") or ".." in Path(b).parts for b in binaries):
        raise UsageError(f"{where}: `binaries` are relative paths inside the packages, got {binaries}")
    return Recipe(name=name, path=Path(where), kernel="", packages=_str_list(data["packages"], "packages", where),
                  binaries=binaries, modules=(), compression=compression, kernel_build=kernel_build)


def load_recipe(name: str) -> Recipe:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise UsageError(f"`{name}` is not a guest image name", hint="use lowercase letters, digits, - and _")
    path = recipe_path(name)
    if not path.is_file():
        raise UsageError(f"no guest image recipe `{name}`", hint=f"expected {path}")
    return parse_recipe(name, path.read_text(), str(path))


def has_9p(name: str) -> bool:
    """Whether the kernel of guest image `name` can mount virtio-9p volumes: built in (`kernel_build`: the
    fragment sets CONFIG_9P_FS and CONFIG_NET_9P_VIRTIO) or loaded as modules by the init. Debian's cloud
    kernel (the `default` image) is built without 9p at all (`# CONFIG_NET_9P is not set`)."""
    recipe = load_recipe(name)
    if recipe.kernel_build:
        config = kernel_build.parse_config(kernel_build.load_fragment(recipe.kernel_build))
        return config.get("CONFIG_9P_FS") == "y" and config.get("CONFIG_NET_9P_VIRTIO") == "y"
    return {"9p", "9pnet_virtio"} <= set(recipe.modules)


# ---------------------------------------------------------------------------------------------- digest

def compute_digest(recipe_text: str, template_text: str, versions: Mapping[str, str]) -> str:
    """Content hash of everything an image is made from."""
    h = hashlib.sha256()
    for part in (f"format={FORMAT}", recipe_text, template_text,
                 *(f"{pkg}={ver}" for pkg, ver in sorted(versions.items()))):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _show_candidates(packages: Sequence[str]) -> dict[str, dict[str, str]]:
    """Package -> fields (Version, Depends) of its candidate version, from one `apt-cache show` call
    (`--no-all-versions` shows the candidate that `apt-cache policy` names). Unknown packages are absent."""
    text = output([which("apt-cache", package="apt"), "show", "--no-all-versions", *packages], check=False)
    found: dict[str, dict[str, str]] = {}
    for paragraph in text.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Depends): (.*)$", paragraph, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def kernel_dependency(depends: str) -> tuple[str, str] | None:
    """(`linux-image-<release>`, version) out of a kernel meta package's Depends field."""
    match = re.search(r"\b(linux-image-\d[^\s,(]*)\s*\(=\s*([^)\s]+)\)", depends)
    return (match.group(1), match.group(2)) if match else None


def _apt_fingerprint() -> str:
    """Changes whenever apt's idea of a candidate can: package lists, dpkg status, pinning."""
    h = hashlib.sha256()
    places = [Path("/var/lib/dpkg/status"), Path("/etc/apt/preferences"),
              *sorted(Path("/var/lib/apt/lists").glob("*")), *sorted(Path("/etc/apt/preferences.d").glob("*"))]
    for path in places:
        with contextlib.suppress(OSError):
            st = path.stat()
            h.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def resolve_versions(recipe: Recipe) -> dict[str, str] | None:
    """Package -> candidate version for the kernel (meta package and the `linux-image-<release>` it
    depends on) and the recipe's packages; None if apt does not know one of them. A recipe with a built
    kernel has the kernel's digest (`kernel-build:<name>`) instead of the kernel packages."""
    if recipe.kernel_build is not None:
        shown = _show_candidates(recipe.packages)
        if not all(p in shown for p in recipe.packages):
            return None
        return _with_built_kernel(recipe, {name: fields["Version"] for name, fields in shown.items()})
    shown = _show_candidates([recipe.kernel, *recipe.packages])
    if recipe.kernel not in shown or not all(p in shown for p in recipe.packages):
        return None
    kernel = kernel_dependency(shown[recipe.kernel].get("Depends", ""))
    if kernel is None:
        return None
    versions = {name: fields["Version"] for name, fields in shown.items()}
    versions[kernel[0]] = kernel[1]
    return versions


def _with_built_kernel(recipe: Recipe, versions: Mapping[str, str]) -> dict[str, str] | None:
    """`versions` with the built kernel's current digest (its source, fragment and builder) in it."""
    assert recipe.kernel_build is not None
    digest = kernel_build.current_digest(recipe.kernel_build)
    if digest is None:
        return None
    return {**{k: v for k, v in versions.items() if not k.startswith("kernel-build:")},
            f"kernel-build:{recipe.kernel_build}": digest}


def kernel_package(versions: Mapping[str, str]) -> str:
    """The `linux-image-<release>` package among resolved versions (not the meta package)."""
    names = [p for p in versions if re.fullmatch(r"linux-image-\d.*", p)]
    if len(names) != 1:
        raise HostError(f"expected one versioned kernel package, found {names}")
    return names[0]


def _current_digest(recipe: Recipe, versions: Mapping[str, str]) -> str:
    return compute_digest(recipe.path.read_text(), recipe.init.read_text(), versions)


# ---------------------------------------------------------------------------------------------- modules

def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep -> {module path: [dependency paths]}."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" in line:
            module, rest = line.split(":", 1)
            deps[module.strip()] = rest.split()
    return deps


def module_load_order(deps: Mapping[str, Sequence[str]], wanted: Sequence[str]) -> list[str]:
    """Paths of `wanted` modules and everything they need, each after all of its dependencies."""
    by_name = {_module_name(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order:
            return
        if path in visiting:
            raise HostError(f"modules.dep has a dependency cycle through `{path}`")
        visiting.add(path)
        for dep in deps.get(path, ()):
            visit(dep)
        visiting.discard(path)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise UsageError(f"kernel module `{name}` is not in this kernel's modules.dep",
                             hint="it may be built in (see the kernel's config) or misspelled")
        visit(path)
    return order


# ---------------------------------------------------------------------------------------------- init

def render_init(image_name: str, kernel_release: str, modules: Sequence[str],
                template_text: str | None = None, modules_after_ready: Sequence[str] = (),
                template: Path | None = None) -> str:
    import jinja2  # as render._templates does: only what renders pays for it

    # Shell uses `${#var}`: Jinja comments are `{## ... ##}` here, not `{# ... #}`.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
                             comment_start_string="{##", comment_end_string="##}")
    text = template_text if template_text is not None else (template or INIT_TEMPLATE).read_text()
    return env.from_string(text).render(image_name=image_name, kernel_release=kernel_release, modules=list(modules),
                           modules_after_ready=list(modules_after_ready))


# ---------------------------------------------------------------------------------------------- cpio

class Cpio:
    """An initramfs as a newc cpio archive, built in memory: every entry owned by root, mtime 0, no
    root privileges needed (device nodes included). Parents are added before their children."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes, int]] = {}  # path -> (mode, data, rdev)

    def dir(self, path: str, mode: int = 0o755) -> None:
        parts = Path(path.strip("/")).parts
        for i in range(1, len(parts) + 1):
            self._entries.setdefault("/".join(parts[:i]), (stat.S_IFDIR | 0o755, b"", 0))
        self._entries["/".join(parts)] = (stat.S_IFDIR | mode, b"", 0)

    def _add(self, path: str, mode: int, data: bytes, rdev: int = 0) -> None:
        path = path.strip("/")
        parent = str(Path(path).parent)
        if parent != "." and parent not in self._entries:
            self.dir(parent)
        self._entries[path] = (mode, data, rdev)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self._add(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(path, stat.S_IFCHR | mode, b"", os.makedev(major, minor))

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._entries

    def serialize(self) -> bytes:
        chunks: list[bytes] = []
        for ino, path in enumerate(sorted(self._entries), start=1):
            mode, data, rdev = self._entries[path]
            chunks.append(self._record(path, ino, mode, data, rdev))
        chunks.append(self._record("TRAILER!!!", 0, 0, b"", 0))
        return b"".join(chunks)

    @staticmethod
    def _record(name: str, ino: int, mode: int, data: bytes, rdev: int) -> bytes:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(encoded), 0)
        header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
        head = header + encoded
        return head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4)


# ---------------------------------------------------------------------------------------------- build steps

def _download(versions: Mapping[str, str], packages: Sequence[str], into: Path) -> None:
    argv = [which("apt-get", package="apt"), "download"]
    if os.geteuid() == 0:
        argv += ["-o", "APT::Sandbox::User=root"]  # the temporary directory is not open to `_apt`
    run([*argv, *(f"{p}={versions[p]}" for p in packages)], cwd=into, timeout=900)


def _unpack(debs: Path, root: Path) -> None:
    dpkg_deb = which("dpkg-deb", package="dpkg")
    for deb in sorted(debs.glob("*.deb")):
        run([dpkg_deb, "-x", deb, root])


def _kernel_release(root: Path) -> str:
    releases = sorted(p.name for p in (root / "lib" / "modules").iterdir())
    if len(releases) != 1:
        raise HostError(f"expected one kernel in the packages, found {releases}")
    return releases[0]


def _shared_libraries(binary: Path) -> list[Path]:
    """Libraries (and the dynamic loader) that `ldd` finds for `binary`; none for a static binary."""
    proc = run([which("ldd", package="libc-bin"), binary], check=False)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 or "statically linked" in text:
        return []
    libs: list[Path] = []
    for line in text.splitlines():
        if "not found" in line:
            raise HostError(f"`{binary.name}` needs `{line.split()[0]}`, which this host does not have",
                            hint="install the Debian package that provides it (the image takes the "
                                 "host's copy of each shared library)")
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _add_base(cpio: Cpio) -> None:
    for d in ("proc", "sys", "dev", "run", "tmp", "var/log", "etc/dropbear", "usr/sbin", "sbin"):
        cpio.dir(d)
    cpio.dir("root", 0o700)
    cpio.dir("tmp", 0o1777)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    cpio.file("etc/group", b"root:x:0:\ntty:x:5:\n")
    cpio.file("etc/shells", b"/bin/sh\n")


def _add_busybox(cpio: Cpio, busybox: Path) -> None:
    for applet in output([busybox, "--list-full"]).split():
        if applet not in cpio and applet != "linuxrc":
            cpio.symlink(applet, "/bin/busybox")


def _add_binaries(cpio: Cpio, root: Path, binaries: Sequence[str]) -> None:
    libraries: dict[str, Path] = {}
    for rel in binaries:
        source = root / rel
        if not source.is_file():
            raise UsageError(f"the recipe's binary `{rel}` is not in the unpacked packages")
        cpio.file(rel, source.read_bytes(), 0o755)
        for lib in _shared_libraries(source):
            libraries[str(lib)] = lib
    for name, lib in sorted(libraries.items()):
        cpio.file(name, lib.resolve().read_bytes(), 0o755)


def _build_initramfs(recipe: Recipe, root: Path, release: str, modules: Sequence[str],
                     modules_after_ready: Sequence[str] = ()) -> bytes:
    cpio = Cpio()
    _add_base(cpio)
    _add_binaries(cpio, root, recipe.binaries)
    if "bin/busybox" in cpio:
        _add_busybox(cpio, root / "bin" / "busybox")
    for module in (*modules, *modules_after_ready):
        cpio.file(f"lib/modules/{release}/{module}", (root / "lib" / "modules" / release / module).read_bytes())
    init = render_init(recipe.name, release, modules, modules_after_ready=modules_after_ready, template=recipe.init)
    cpio.file("init", init.encode(), 0o755)
    data = cpio.serialize()
    return gzip.compress(data, compresslevel=6, mtime=0) if recipe.compression == "gzip" else data


# ---------------------------------------------------------------------------------------------- cache

def image_dir(name: str = "default") -> Path:
    return cache_root() / "guest" / name


def read_manifest(directory: Path) -> dict[str, object] | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _from_manifest(name: str, directory: Path, manifest: Mapping[str, object]) -> GuestImage | None:
    initrd, release, digest = manifest.get("initrd"), manifest.get("kernel_release"), manifest.get("digest")
    if not (isinstance(initrd, str) and isinstance(release, str) and isinstance(digest, str)):
        return None
    kernel = manifest.get("kernel", BZIMAGE_FILE)  # `vmlinux` (PVH) since format 2
    if not isinstance(kernel, str) or "/" in kernel:
        return None
    image = GuestImage(name=name, kernel=directory / kernel, initrd=directory / initrd,
                       kernel_release=release, digest=digest, directory=directory)
    return image if image.kernel.is_file() and image.initrd.is_file() else None


def find_guest_image(name: str = "default") -> GuestImage | None:
    """The cached image of recipe `name` if its inputs are unchanged; never builds (nor runs apt-get).

    Candidate versions are asked of apt (~0.5 s here) only when apt's state changed since the build."""
    recipe = load_recipe(name)
    directory = image_dir(name).resolve()
    manifest = read_manifest(directory)
    if manifest is None:
        return None
    image = _from_manifest(name, directory, manifest)
    if image is None:
        return None
    packages = manifest.get("packages")
    if manifest.get("apt_fingerprint") == _apt_fingerprint() and isinstance(packages, dict):
        stored = {str(k): str(v) for k, v in packages.items()}
        # a built kernel's fragment may have changed without apt noticing
        versions: Mapping[str, str] | None = (stored if recipe.kernel_build is None
                                              else _with_built_kernel(recipe, stored))
    else:
        versions = resolve_versions(recipe)
    if versions is None:
        return None
    return image if image.digest == _current_digest(recipe, versions) else None


def _versions_or_update(recipe: Recipe, progress: Progress) -> dict[str, str]:
    versions = resolve_versions(recipe)
    if versions is None:
        progress("updating the package lists (apt-get update)")
        run([which("apt-get", package="apt"), "update"], timeout=900)
        versions = resolve_versions(recipe)
    if versions is None:
        raise HostError(f"apt knows no candidate for the packages of guest image `{recipe.name}`",
                        hint="check /etc/apt/sources.list and run `apt-get update`")
    return versions


def _make_image_with_built_kernel(recipe: Recipe, kernel: kernel_build.BuiltKernel, versions: Mapping[str, str],
                                  fingerprint: str, out: Path, progress: Progress) -> dict[str, object]:
    """As `_make_image`, with the kernel from `kernel_build`: its vmlinux, and an init loading no modules."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        progress("downloading packages")
        _download(versions, recipe.packages, work / "debs")
        progress("unpacking")
        _unpack(work / "debs", work / "root")
        progress("writing initramfs")
        initrd = _build_initramfs(recipe, work / "root", kernel.release, ())
        (out / COMPRESSIONS[recipe.compression]).write_bytes(initrd)
        shutil.copyfile(kernel.vmlinux, out / kernel_build.KERNEL_FILE)
    return {
        "format": FORMAT, "name": recipe.name, "digest": _current_digest(recipe, versions),
        "apt_fingerprint": fingerprint, "kernel": kernel_build.KERNEL_FILE,
        "kernel_release": kernel.release, "kernel_build": {"name": kernel.name, "digest": kernel.digest},
        "packages": dict(sorted(versions.items())), "modules": [], "compression": recipe.compression,
        "initrd": COMPRESSIONS[recipe.compression], "build_seconds": round(time.monotonic() - started, 2),
        "sizes": {"kernel": (out / kernel_build.KERNEL_FILE).stat().st_size, "initrd": len(initrd)},
    }


def _make_image(recipe: Recipe, versions: Mapping[str, str], fingerprint: str, out: Path,
                progress: Progress) -> dict[str, object]:
    """Download, unpack and assemble the image into the empty directory `out`; return the manifest."""
    started = time.monotonic()
    kernel_pkg = kernel_package(versions)
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        progress("downloading packages")
        _download(versions, [kernel_pkg, *recipe.packages], work / "debs")
        progress("unpacking")
        _unpack(work / "debs", work / "root")
        release = _kernel_release(work / "root")
        progress("resolving kernel modules (depmod)")
        run([which("depmod", package="kmod"), "-b", work / "root", release])
        deps = parse_modules_dep((work / "root" / "lib" / "modules" / release / "modules.dep").read_text())
        modules = module_load_order(deps, recipe.modules)
        late = [m for m in module_load_order(deps, [*recipe.modules, *recipe.modules_after_ready]) if m not in modules]
        progress("writing initramfs")
        initrd = _build_initramfs(recipe, work / "root", release, modules, late)
        (out / COMPRESSIONS[recipe.compression]).write_bytes(initrd)
        shutil.copyfile(work / "root" / "boot" / f"vmlinuz-{release}", out / BZIMAGE_FILE)
        progress("extracting vmlinux for a PVH boot")
        kernel = _pvh_kernel(out)
    return {
        "format": FORMAT, "name": recipe.name, "digest": _current_digest(recipe, versions),
        "apt_fingerprint": fingerprint,
        "kernel_release": release, "packages": dict(sorted(versions.items())),
        "modules": [_module_name(m) for m in modules],
        "modules_after_ready": [_module_name(m) for m in late], "compression": recipe.compression,
        "initrd": COMPRESSIONS[recipe.compression], "build_seconds": round(time.monotonic() - started, 2),
        "kernel": kernel, "bzimage": BZIMAGE_FILE,
        "sizes": {"kernel": (out / kernel).stat().st_size, "bzimage": (out / BZIMAGE_FILE).stat().st_size,
                  "initrd": len(initrd)},
    }


def _pvh_kernel(out: Path) -> str:
    """Boot the distribution's kernel as an ELF through PVH when it has the entry note: QEMU starts it in
    32-bit mode, skipping the bzImage's real-mode setup and decompression (bench/boot.py, TCG, medians
    of 5: Debian's cloud kernel to SSH-ready 2.47 -> 2.22 s, guest RAM touched 102 -> 90 MiB). The
    bzImage stays beside it; a kernel without the note boots as the bzImage."""
    vmlinux = kernel_build.extract_vmlinux(out / BZIMAGE_FILE, out / kernel_build.KERNEL_FILE)
    if kernel_build.has_pvh_entry(vmlinux.read_bytes()):
        return vmlinux.name
    vmlinux.unlink()
    return BZIMAGE_FILE


def build_guest_image(name: str = "default", *, force: bool = False,
                      progress: Progress = lambda _msg: None) -> GuestImage:
    """Build (or reuse) the guest image of recipe `name`; report each step through `progress`."""
    recipe = load_recipe(name)
    with cache.build_lock(cache_root() / "guest", name):
        if not force and (cached := find_guest_image(name)):
            progress("guest image is up to date")
            return cached
        kernel = None
        if recipe.kernel_build is not None:
            progress(f"kernel `{recipe.kernel_build}` (built from source on first use)")
            kernel = kernel_build.build_kernel(recipe.kernel_build, progress=progress)
        progress("resolving package versions")
        versions = _versions_or_update(recipe, progress)
        fingerprint = _apt_fingerprint()
        parent = image_dir(name).parent
        for stale in parent.glob(f".{name}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        built = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=parent))
        try:
            if kernel is not None:
                manifest = _make_image_with_built_kernel(recipe, kernel, versions, fingerprint, built, progress)
            else:
                manifest = _make_image(recipe, versions, fingerprint, built, progress)
            (built / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            built.chmod(0o755)
            final = cache.install(name, built, str(manifest["digest"]))
        except BaseException:
            shutil.rmtree(built, ignore_errors=True)
            raise
    progress("guest image ready")
    image = _from_manifest(name, final, manifest)
    if image is None:
        raise HostError(f"the guest image just built in {final} is incomplete")
    return image
