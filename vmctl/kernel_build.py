"""Guest kernels of our own: Debian's `linux-source-*` tarball + a config fragment kept in the repo.

The fragment is `guest_images/<name>/kernel.config`. It is applied on top of `make allnoconfig` by the
kernel's own `scripts/kconfig/merge_config.sh -n`; every value it asks for must survive into the final
`.config` (a value Kconfig dropped for a missing dependency is an error, not a warning). `make vmlinux`
then builds an uncompressed ELF kernel with a PVH entry note, which QEMU (`-kernel`, libvirt `<kernel>`)
starts directly in 32-bit protected mode: no real-mode setup, no decompression.

Cache: `cache_root()/kernels/<name>` is a symlink to `<name>.<digest>/` holding `vmlinux`, `config` and
`manifest.json`. The digest covers the source package's version, the fragment, and the builder (this
module's FORMAT, the architecture, the make target and the compiler's version). A build happens in a
temporary directory beside the cache (the source tree, ~1.3 GB, is deleted afterwards) and is switched
in with one atomic rename of the symlink, as guest images are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmctl import cache
from vmctl.errors import CommandFailed, HostError, UsageError
from vmctl.paths import GUEST_IMAGES_DIR, cache_root
from vmctl.runner import output, run, spawn, which

FORMAT = 1  # bump when the builder changes what it makes
ARCH = "x86_64"
TARGET = "vmlinux"
SOURCE_PACKAGE = "linux-source-6.1"
FRAGMENT_FILE = "kernel.config"
KERNEL_FILE = "vmlinux"
MANIFEST = "manifest.json"
DEFAULT_JOBS = 2
DEFAULT_NICE = 10
DEFAULT_TIMEOUT = 3 * 3600.0
# Programs the kernel build runs, and the Debian package of each.
BUILD_TOOLS = {"make": "make", "gcc": "gcc", "ld": "binutils", "bison": "bison", "flex": "flex", "bc": "bc",
               "tar": "tar", "xz": "xz-utils", "perl": "perl"}
# Headers the host programs of the build need (objtool: libelf; certificate tools: openssl).
BUILD_HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelSource:
    package: str
    version: str
    tarball: Path


@dataclass(frozen=True)
class BuiltKernel:
    name: str
    vmlinux: Path
    release: str
    digest: str
    directory: Path


# ---------------------------------------------------------------------------------------------- fragment

def fragment_path(name: str) -> Path:
    return GUEST_IMAGES_DIR / name / FRAGMENT_FILE


def load_fragment(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise UsageError(f"`{name}` is not a kernel name", hint="use lowercase letters, digits, - and _")
    path = fragment_path(name)
    if not path.is_file():
        raise UsageError(f"no kernel config fragment `{name}`", hint=f"expected {path}")
    return path.read_text()


_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig text (a fragment or a full .config) -> {symbol: value}; `# X is not set` is `n`."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if match := _SET.match(line):
            values[match.group(1)] = match.group(2)
        elif match := _UNSET.match(line):
            values[match.group(1)] = "n"
    return values


def config_mismatches(requested: Mapping[str, str], final: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(symbol, requested, got) for each value of the fragment that the final .config does not have."""
    return [(sym, want, final.get(sym, "n")) for sym, want in sorted(requested.items())
            if final.get(sym, "n") != want]


# ---------------------------------------------------------------------------------------------- digest

def builder_identity() -> str:
    """What besides source and fragment decides the output: format, arch, target, compiler."""
    try:
        compiler = output([which("gcc", package="gcc"), "--version"]).splitlines()[0]
    except (HostError, CommandFailed, IndexError):
        compiler = "gcc: missing"
    return f"format={FORMAT} arch={ARCH} target={TARGET} {compiler}"


def compute_digest(source_version: str, fragment_text: str, builder: str) -> str:
    h = hashlib.sha256()
    for part in (f"{SOURCE_PACKAGE}={source_version}", fragment_text, builder):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- source

def _tarball_name() -> str:
    return f"{SOURCE_PACKAGE}.tar.xz"


def installed_source() -> KernelSource | None:
    """The source package as installed by `apt-get install linux-source-6.1` (tarball under /usr/src)."""
    dpkg_query = which("dpkg-query", package="dpkg")
    proc = run([dpkg_query, "-W", "-f", "${Status}\t${Version}", SOURCE_PACKAGE], check=False)
    text = proc.stdout.decode(errors="replace")
    tarball = Path("/usr/src") / _tarball_name()
    if proc.returncode != 0 or not text.startswith("install ok installed") or not tarball.is_file():
        return None
    return KernelSource(SOURCE_PACKAGE, text.split("\t", 1)[1].strip(), tarball)


def _downloaded_source() -> KernelSource | None:
    """A source tarball this builder downloaded earlier (`apt-get download`) into the cache."""
    found = sorted((cache_root() / "kernels" / "sources").glob(f"{SOURCE_PACKAGE}_*/{_tarball_name()}"))
    if not found:
        return None
    version = found[-1].parent.name.split("_", 1)[1]
    return KernelSource(SOURCE_PACKAGE, version, found[-1])


def find_source() -> KernelSource | None:
    return installed_source() or _downloaded_source()


def fetch_source(progress: Progress) -> KernelSource:
    """The installed source package, else `apt-get download` of its candidate into the cache (no root
    install needed; ~140 MB, kept for the next build)."""
    found = find_source()
    if found is not None:
        return found
    progress(f"downloading {SOURCE_PACKAGE} (apt-get download)")
    sources = cache_root() / "kernels" / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=sources) as tmp:
        argv = [which("apt-get", package="apt"), "download"]
        if os.geteuid() == 0:
            argv += ["-o", "APT::Sandbox::User=root"]
        run([*argv, SOURCE_PACKAGE], cwd=Path(tmp), timeout=1800)
        debs = sorted(Path(tmp).glob(f"{SOURCE_PACKAGE}_*.deb"))
        if len(debs) != 1:
            raise HostError(f"`apt-get download {SOURCE_PACKAGE}` gave {[d.name for d in debs]}")
        version = debs[0].name.split("_")[1].replace("%3a", ":")
        run([which("dpkg-deb", package="dpkg"), "-x", debs[0], Path(tmp) / "root"])
        target = sources / f"{SOURCE_PACKAGE}_{version}"
        target.mkdir(exist_ok=True)
        shutil.move(Path(tmp) / "root" / "usr" / "src" / _tarball_name(), target / _tarball_name())
    found = _downloaded_source()
    assert found is not None
    return found


def check_build_tools() -> None:
    """Fail once, naming every Debian package the build still needs."""
    missing = {pkg for prog, pkg in BUILD_TOOLS.items() if not shutil.which(prog)}
    missing |= {pkg for header, pkg in BUILD_HEADERS.items() if not Path(header).is_file()}
    if missing:
        raise HostError("the kernel build needs more packages",
                        hint=f"apt-get install {' '.join(sorted(missing | {'build-essential'}))}")


# ---------------------------------------------------------------------------------------------- vmlinux

# The payload of a bzImage, by its first bytes (as scripts/extract-vmlinux tries them), and the program
# that decompresses it (reading stdin, writing stdout).
_PAYLOADS: dict[bytes, tuple[str, str]] = {
    b"\x1f\x8b\x08": ("gzip", "gzip"), b"\xfd7zXZ\x00": ("xz", "xz-utils"), b"BZh": ("bzip2", "bzip2"),
    b"\x5d\x00\x00": ("lzma", "xz-utils"), b"\x02\x21\x4c\x18": ("lz4", "lz4"),
    b"\x28\xb5\x2f\xfd": ("zstd", "zstd"),
}


def bzimage_payload(data: bytes) -> tuple[str, bytes]:
    """(compression, compressed kernel) of a bzImage, located by its boot header (boot protocol >= 2.08:
    `setup_sects` at 0x1f1, `payload_offset`/`payload_length` at 0x248/0x24c)."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise UsageError("not a bzImage (no `HdrS` boot header)")
    setup = ((data[0x1F1] or 4) + 1) * 512
    offset = int.from_bytes(data[0x248:0x24C], "little")
    length = int.from_bytes(data[0x24C:0x250], "little")
    payload = data[setup + offset: setup + offset + length]
    for magic, (program, _package) in _PAYLOADS.items():
        if payload.startswith(magic):
            return program, payload
    raise UsageError(f"unknown bzImage payload compression (first bytes {payload[:6].hex()})")


def extract_vmlinux(bzimage: Path, out: Path) -> Path:
    """The uncompressed ELF kernel inside a bzImage (the kernel's scripts/extract-vmlinux, by header)."""
    program, payload = bzimage_payload(bzimage.read_bytes())
    # Like extract-vmlinux, judge by the output: the kernel appends the uncompressed size to the payload,
    # which some decompressors (lz4's legacy format) report as trailing garbage and exit 1.
    decompressed = run([which(program, package=dict(_PAYLOADS.values())[program]), "-dc"], input=payload,
                       check=False).stdout
    if not decompressed.startswith(b"\x7fELF"):
        raise HostError(f"the {program} payload of {bzimage} did not decompress to an ELF file")
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(decompressed)
    tmp.replace(out)
    return out


XEN_ELFNOTE_PHYS32_ENTRY = 18  # the note a PVH entry point is announced by (name "Xen")


def has_pvh_entry(elf: bytes) -> bool:
    """Whether an ELF64 kernel announces a PVH entry point, so QEMU can start it in 32-bit mode."""
    if elf[:5] != b"\x7fELF\x02" or len(elf) < 64:
        return False
    phoff, phentsize, phnum = int.from_bytes(elf[32:40], "little"), elf[54] | elf[55] << 8, elf[56] | elf[57] << 8
    for i in range(phnum):
        ph = elf[phoff + i * phentsize:phoff + (i + 1) * phentsize]
        if len(ph) < 56 or int.from_bytes(ph[0:4], "little") != 4:  # PT_NOTE
            continue
        offset, size = int.from_bytes(ph[8:16], "little"), int.from_bytes(ph[32:40], "little")
        notes, pos = elf[offset:offset + size], 0
        while pos + 12 <= len(notes):
            namesz, descsz, kind = (int.from_bytes(notes[pos + k:pos + k + 4], "little") for k in (0, 4, 8))
            name = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and kind == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# ---------------------------------------------------------------------------------------------- cache

def kernel_dir(name: str) -> Path:
    return cache_root() / "kernels" / name


def current_digest(name: str) -> str | None:
    """The digest a build of `name` would have now; None when no source package is at hand."""
    source = find_source()
    if source is None:
        return None
    return compute_digest(source.version, load_fragment(name), builder_identity())


def _from_directory(name: str, directory: Path) -> BuiltKernel | None:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    release, digest = manifest.get("release"), manifest.get("digest")
    if not (isinstance(release, str) and isinstance(digest, str) and (directory / KERNEL_FILE).is_file()):
        return None
    return BuiltKernel(name, directory / KERNEL_FILE, release, digest, directory)


def find_kernel(name: str) -> BuiltKernel | None:
    """The cached kernel `name` if its inputs are unchanged; never builds."""
    built = _from_directory(name, kernel_dir(name).resolve())
    if built is None:
        return None
    return built if built.digest == current_digest(name) else None


# ---------------------------------------------------------------------------------------------- build

def make_argv(src: Path, out: Path, jobs: int, nice: int, *targets: str) -> list[str]:
    """The make command line of the build (niced: the build shares the host's cores)."""
    make = [which("make", package="make"), "-C", str(src), f"ARCH={ARCH}", f"O={out}", f"-j{jobs}", *targets]
    return [which("nice", package="coreutils"), "-n", str(nice), *make] if nice else make


def _merge_config(src: Path, out: Path, fragment: Path) -> None:
    """allnoconfig + fragment through the kernel's merge_config.sh, then verify every requested value."""
    out.mkdir(parents=True, exist_ok=True)  # merge_config.sh -O wants an existing folder
    run(["sh", src / "scripts" / "kconfig" / "merge_config.sh", "-n", "-O", out, fragment], cwd=src,
        env={"ARCH": ARCH}, timeout=600)
    wrong = config_mismatches(parse_config(fragment.read_text()), parse_config((out / ".config").read_text()))
    if wrong:
        listing = ", ".join(f"{sym}={want} (got {got})" for sym, want, got in wrong)
        raise UsageError(f"the kernel config fragment {fragment} asks for values Kconfig did not keep: {listing}",
                         hint="a dependency of these symbols is missing from the fragment")


def _make(argv: list[str], progress: Progress, timeout: float) -> None:
    """Run make, reporting the number of compiled files every ~20 s; kill the whole build on timeout."""
    process = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, new_session=True)
    timer = threading.Timer(timeout, _kill_group, (process,))
    timer.start()
    tail: list[str] = []
    compiled = 0
    started = last = time.monotonic()
    assert process.stdout is not None
    try:
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail = [*tail[-39:], line]
            compiled += line.lstrip().startswith(("CC ", "AS "))
            if (now := time.monotonic()) - last >= 20:
                progress(f"compiling: {compiled} files, {now - started:.0f} s")
                last = now
        if process.wait() != 0:
            if not timer.is_alive():
                raise CommandFailed(f"the kernel build did not finish within {timeout:.0f} s")
            detail = "\n    ".join(t for t in tail if t)
            raise CommandFailed(f"`make {TARGET}` failed with exit code {process.returncode}:\n    {detail}")
    finally:
        timer.cancel()
        if process.poll() is None:
            _kill_group(process)
            process.wait()
        process.stdout.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _build_into(name: str, source: KernelSource, digest: str, out: Path, *, jobs: int, nice: int,
                timeout: float, progress: Progress) -> dict[str, object]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as tmp:
        work = Path(tmp)
        progress(f"unpacking {source.tarball.name} ({source.version})")
        run([which("tar", package="tar"), "-xf", source.tarball, "-C", work], timeout=1800)
        trees = [p for p in work.iterdir() if (p / "Makefile").is_file()]
        if len(trees) != 1:
            raise HostError(f"expected one kernel tree in {source.tarball}, found {[p.name for p in trees]}")
        src, build = trees[0], work / "build"
        progress("configuring (allnoconfig + fragment)")
        _merge_config(src, build, fragment_path(name))
        unpacked = time.monotonic()
        progress(f"compiling `{TARGET}` with {jobs} jobs (nice {nice})")
        _make(make_argv(src, build, jobs, nice, TARGET), progress, timeout)
        compile_seconds = time.monotonic() - unpacked
        release = output(make_argv(src, build, 1, 0, "-s", "kernelrelease")).strip()
        shutil.copyfile(build / KERNEL_FILE, out / KERNEL_FILE)
        shutil.copyfile(build / ".config", out / "config")
    return {"format": FORMAT, "name": name, "digest": digest, "release": release,
            "source": {"package": source.package, "version": source.version},
            "builder": builder_identity(), "jobs": jobs, "nice": nice,
            "compile_seconds": round(compile_seconds, 1),
            "build_seconds": round(time.monotonic() - started, 1),
            "sizes": {"vmlinux": (out / KERNEL_FILE).stat().st_size}}


def build_kernel(name: str, *, force: bool = False, jobs: int = DEFAULT_JOBS, nice: int = DEFAULT_NICE,
                 timeout: float = DEFAULT_TIMEOUT, progress: Progress = lambda _msg: None) -> BuiltKernel:
    """Build (or reuse) kernel `name` from its fragment; report each step through `progress`."""
    load_fragment(name)
    with cache.build_lock(cache_root() / "kernels", name):
        if not force and (cached := find_kernel(name)):
            progress("kernel is up to date")
            return cached
        check_build_tools()
        source = fetch_source(progress)
        digest = compute_digest(source.version, load_fragment(name), builder_identity())
        parent = kernel_dir(name).parent
        for stale in parent.glob(f".{name}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        built = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=parent))
        try:
            manifest = _build_into(name, source, digest, built, jobs=jobs, nice=nice, timeout=timeout,
                                   progress=progress)
            (built / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            built.chmod(0o755)
            final = cache.install(name, built, digest)
        except BaseException:
            shutil.rmtree(built, ignore_errors=True)
            raise
    progress(f"kernel built in {manifest['build_seconds']} s")
    kernel = _from_directory(name, final)
    if kernel is None:
        raise HostError(f"the kernel just built in {final} is incomplete")
    return kernel
