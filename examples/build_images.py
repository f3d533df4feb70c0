"""Build the example container images from Debian packages, without a registry.

    python examples/build_images.py [--force] [--format oci-archive|docker-archive] [web|tools ...]

Writes `examples/images/web.tar` (busybox-static: `httpd` on :8080 serving a CGI page with the hostname
and $GREETING) and `examples/images/tools.tar` (busybox + stress-ng + fio + iperf3 + redis with the libraries
`ldd` lists, for benchmarks). Each image is a staged root folder -> `umoci insert` into a fresh OCI
layout -> `skopeo copy` to an archive. Timestamps are pinned, so the same inputs give the same digest.
An image is skipped when a stamp of its inputs matches. Progress goes to stderr.

Tests use `build_tiny_image(dir)`: the web image, built into any folder in well under a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from vmctl.errors import HostError, VmctlError  # noqa: E402
from vmctl.runner import output, run, which  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent
IMAGES_DIR = EXAMPLES / "images"
SRC_DIR = EXAMPLES / "images-src"
EPOCH = "1970-01-01T00:00:00Z"
TAG = "img"
TOOL_BINARIES = {"stress-ng": "stress-ng", "fio": "fio", "iperf3": "iperf3",  # program -> Debian package
                 "redis-server": "redis-server", "redis-benchmark": "redis-tools", "redis-cli": "redis-tools",
                 "getent": "libc-bin"}  # getent: name lookups through glibc's resolver, as client libraries do
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"


def log(text: str) -> None:
    print(f"build_images: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- staging a root folder


def stage_busybox(root: Path) -> None:
    """busybox-static at /bin/busybox, a symlink per applet, a minimal /etc/passwd and /etc/group."""
    busybox = which("busybox", package="busybox-static")
    ldd = run(["ldd", busybox], check=False)
    if b"not a dynamic executable" not in ldd.stdout + ldd.stderr:
        raise HostError(f"`{busybox}` is not statically linked", hint="`apt-get install busybox-static`")
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in output([busybox, "--list-full"]).split():
        link = root / applet
        if applet == "bin/busybox" or os.path.lexists(link):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    for d in ("proc", "sys", "dev", "tmp", "run", "root"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)  # as in every base image: runc gives a tmpfs on /tmp the mode of the image's /tmp


def stage_tree(src: Path, root: Path) -> None:
    """Copy a folder of ours (images-src/NAME) over the staged root, keeping modes."""
    shutil.copytree(src, root, symlinks=True, dirs_exist_ok=True)


def stage_dynamic(program: str, root: Path, *, package: str) -> None:
    """Copy an installed program and every library `ldd` lists (at the same paths) into the root."""
    exe = Path(which(program, package=package)).resolve()
    _copy_into(exe, root, as_path=Path("/usr/bin") / program)
    for line in output(["ldd", exe]).splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 3 else parts[0] if parts and parts[0].startswith("/") else ""
        if lib.startswith("/"):
            _copy_into(Path(lib), root, as_path=Path(lib))


def _copy_into(src: Path, root: Path, *, as_path: Path) -> None:
    dest = root / as_path.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        shutil.copy2(src.resolve(), dest)


def pin_times(root: Path) -> None:
    """Set every mtime to the epoch so the layer (and the digest) depends on content only."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (0, 0), follow_symlinks=False)
    os.utime(root, (0, 0))


# ---------------------------------------------------------------- writing an image


def write_image(root: Path, out: Path, *, config: dict[str, Sequence[str]], fmt: str = "oci-archive") -> None:
    """Turn a staged root folder into an image archive at `out` (written atomically)."""
    umoci, skopeo = which("umoci"), which("skopeo")
    pin_times(root)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out.parent) as tmp:
        layout = f"{tmp}/layout"
        image = f"{layout}:{TAG}"
        run([umoci, "init", "--layout", layout])
        run([umoci, "new", "--image", image])
        # A history entry for the one layer (pinned in time: the digest stays reproducible): builders
        # (buildah, podman build) refuse a base image whose history lists fewer layers than it has.
        run([umoci, "insert", "--image", image, "--history.created", EPOCH, "--history.created_by",
             "examples/build_images.py", root, "/"])
        argv: list[str] = [umoci, "config", "--no-history", "--image", image, "--created", EPOCH]
        argv += ["--author", "vmctl examples/build_images.py", "--config.workingdir", "/"]
        for key in ("entrypoint", "cmd", "env", "exposedports"):
            for value in config.get(key, ()):
                argv += [f"--config.{key}", value]
        run(argv)
        tmp_out = Path(tmp) / out.name
        dest = f"oci-archive:{tmp_out}" if fmt == "oci-archive" else f"docker-archive:{tmp_out}:vmctl/{out.stem}:latest"
        run([skopeo, "copy", "--quiet", f"oci:{image}", dest])
        os.replace(tmp_out, out)


# ---------------------------------------------------------------- the images

WEB_CONFIG: dict[str, Sequence[str]] = {
    "entrypoint": ["/bin/web-start"],
    "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
    "exposedports": ["8080/tcp"],
}
TOOLS_CONFIG: dict[str, Sequence[str]] = {"cmd": ["/bin/sh"], "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}


def stage_web(root: Path) -> None:
    stage_busybox(root)
    stage_tree(SRC_DIR / "web", root)


def stage_tools(root: Path) -> None:
    stage_busybox(root)
    stage_tree(SRC_DIR / "tools", root)  # the example application's page (examples/app.yaml)
    for program, package in TOOL_BINARIES.items():
        stage_dynamic(program, root, package=package)


IMAGES: dict[str, tuple[Callable[[Path], None], dict[str, Sequence[str]]]] = {
    "web": (stage_web, WEB_CONFIG),
    "tools": (stage_tools, TOOLS_CONFIG),
}


def build_image(name: str, dest_dir: Path, *, fmt: str = "oci-archive", force: bool = False) -> Path:
    """Build image `name` into `dest_dir/NAME.tar`, unless a stamp says it is up to date."""
    stage, config = IMAGES[name]
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / f"{name}.tar"
    stamp = dest_dir / f".{name}.tar.stamp"
    with tempfile.TemporaryDirectory(prefix=f".stage-{name}-", dir=dest_dir) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        stage(root)
        inputs = _inputs_hash(root, config, fmt)
        if not force and out.is_file() and stamp.is_file() and stamp.read_text().strip() == inputs:
            log(f"{out.name}: up to date")
            return out
        log(f"{out.name}: building ({fmt})")
        write_image(root, out, config=config, fmt=fmt)
    stamp.write_text(inputs + "\n")
    log(f"{out.name}: {out.stat().st_size / 2**20:.1f} MiB")
    return out


def build_tiny_image(dest_dir: Path, *, fmt: str = "oci-archive") -> Path:
    """The small busybox web image, for tests: `dest_dir/web.tar`."""
    return build_image("web", dest_dir, fmt=fmt)


def _inputs_hash(root: Path, config: dict[str, Sequence[str]], fmt: str) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(json.dumps([config, fmt], sort_keys=True).encode())
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(root)}\0{st.st_mode}\0{st.st_size}\0".encode())
            h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
    return h.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"images to build ({', '.join(IMAGES)}; default all)")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--format", default="oci-archive", choices=["oci-archive", "docker-archive"])
    parser.add_argument("--dest", type=Path, default=IMAGES_DIR)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image(s): {', '.join(unknown)}")
    try:
        for name in args.names or list(IMAGES):
            build_image(name, args.dest, fmt=args.format, force=args.force)
    except VmctlError as e:
        print(f"error: {e.render()}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
