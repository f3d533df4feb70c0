"""Templates: boot a machine shape once to the point every clone shares, save it, restore clones from it.

A template is a guest booted with `vmctl.template=1` (templates/guest/init.sh.j2): kernel, modules and
user-mode network up, then it announces `VMCTL-TEMPLATE` on its console and blocks reading ttyS1. It has
no hostname of its own, no SSH key and no host key. The host pauses it and has QEMU write its state
(`migrate` to a file descriptor) into the cache, beside the guest image, keyed by everything the state
depends on (`Shape` + QEMU and libvirt versions).

A clone is an ordinary domain of its own (own name, uuid, taps, console, ports, `<genid/>`) whose QEMU
starts with `-incoming defer` and loads the template's state (`migrate-incoming` from a descriptor).
libvirt's own `virDomainRestoreFlags` was measured too, but it refuses a domain name or uuid other
than the saved one (docs/design.md, "Templates"), so two clones could not share an environment.
After the load the host writes one line into the clone's ttyS1 socket (hostname, the environment's
SSH key, the time, a seed from the host's CSPRNG); the guest makes its host key only then and
announces it on its console, exactly as a cold boot does: the host pins that key, and there is no
template key to trust.

The cache folder of a template is `cache_root()/templates/<key16>.<key16>/` behind a `<key16>`
symlink (vmctl/cache.py): written under a temporary name, checksummed, renamed into place, so a
SIGKILL mid-save leaves only a temporary folder that no `up` reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu

from vmctl import cache, console, render
from vmctl.errors import VmctlError
from vmctl.guest_image import GuestImage
from vmctl.paths import cache_root, private_dir, runtime_root
from vmctl.spec import MachineSpec

FORMAT = 1  # bump when what a template holds, or how a clone becomes itself, changes
STATE_FILE = "state"  # QEMU's migration stream
MANIFEST = "manifest.json"
PLACEHOLDER_BYTES = 16 << 30  # capacity the guest sees for a container-image slot (sparse, never written)
BUILD_TIMEOUT = 120.0
MIGRATION_TIMEOUT = 60.0


class TemplateError(VmctlError):
    """A template that cannot be used: `up` boots the machine cold instead, with a one-line warning."""


class TemplateDamaged(TemplateError):
    """A template whose files are not what was saved (checksum, size): forgotten, rebuilt when next needed."""


@dataclass(frozen=True)
class Shape:
    """What a template's saved state depends on, besides QEMU's and libvirt's versions."""

    image: str
    image_digest: str
    kernel: str
    initrd: str
    memory_mib: int
    vcpus: int
    accel: str
    cmdline: tuple[str, ...]
    nics: int  # environment-network NICs
    image_disks: int  # container-image slots (read-only virtio disks)

    def key(self, versions: Mapping[str, str]) -> str:
        text = json.dumps({"format": FORMAT, "shape": asdict(self), "versions": dict(sorted(versions.items()))},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Template:
    key: str
    directory: Path
    size: int
    sha256: str
    macs: tuple[str, ...]  # the template's NIC MACs: a clone's NICs keep them until it takes its own

    @property
    def name(self) -> str:
        return self.key[:16]

    @property
    def state(self) -> Path:
        return self.directory / STATE_FILE


def templates_dir() -> Path:
    return cache_root() / "templates"


def template_macs(count: int) -> tuple[str, ...]:
    return tuple(f"52:54:00:fe:00:{i:02x}" for i in range(count))


# ---------------------------------------------------------------------------------------------- lookup

def lookup(key: str, versions: Mapping[str, str]) -> Template | None:
    """The cached template of `key`; None when there is none. A damaged or foreign one raises."""
    directory = (templates_dir() / key[:16]).resolve()
    if not directory.is_dir():
        return None
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        raise TemplateError(f"template {key[:16]} has no readable manifest") from None
    if manifest.get("format") != FORMAT or manifest.get("key") != key:
        raise TemplateError(f"template {key[:16]} was made for another shape or by another vmctl")
    if manifest.get("versions") != dict(versions):
        raise TemplateError(f"template {key[:16]} was saved by {_fmt(manifest.get('versions'))}, "
                            f"this host has {_fmt(versions)}")
    try:
        size = (directory / STATE_FILE).stat().st_size
    except OSError:
        raise TemplateError(f"template {key[:16]} has no saved state") from None
    if size != manifest.get("size"):
        raise TemplateDamaged(f"template {key[:16]}'s saved state is {size} bytes, {manifest.get('size')} were saved")
    return Template(key=key, directory=directory, size=size, sha256=str(manifest.get("sha256")),
                    macs=tuple(manifest.get("macs", ())))


def _fmt(versions: object) -> str:
    if not isinstance(versions, Mapping):
        return "an unknown QEMU/libvirt"
    return " + ".join(f"{k} {v}" for k, v in sorted(versions.items()))


def discard(key: str) -> None:
    """Forget a template (damaged, foreign): the next `up` that needs its shape builds it again."""
    link = templates_dir() / key[:16]
    target = link.resolve()
    link.unlink(missing_ok=True)
    if target != link and target.parent == templates_dir():
        shutil.rmtree(target, ignore_errors=True)


def listing() -> list[dict[str, Any]]:
    """Every cached template: name, shape, size (bytes), for `vmctl image ls`."""
    out = []
    for link in sorted(templates_dir().glob("*")):
        if not link.is_symlink():
            continue
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads((link.resolve() / MANIFEST).read_text())
            out.append({"name": link.name, "image": manifest["shape"]["image"], "shape": manifest["shape"],
                        "versions": manifest["versions"], "size": manifest["size"],
                        "created": manifest.get("created")})
    return out


def _prune(shape: Shape) -> None:
    """Templates of `shape`'s image made from an earlier build of it: no `up` will look them up again."""
    for entry in listing():
        if entry["image"] == shape.image and entry["shape"].get("image_digest") != shape.image_digest:
            discard(entry["name"])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- QMP

def _qmp(dom: Any, command: str, arguments: Mapping[str, object] | None = None, files: Sequence[int] = ()) -> Any:
    text = json.dumps({"execute": command, **({"arguments": dict(arguments)} if arguments else {})})
    try:
        if files:
            reply = libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, list(files), 0)[0]
        else:
            reply = libvirt_qemu.qemuMonitorCommand(dom, text, 0)
    except libvirt.libvirtError as e:
        raise TemplateError(f"QEMU refused `{command}`: {e.get_error_message()}") from None
    return json.loads(reply).get("return")


def _pass_fd(dom: Any, path: Path, flags: int, name: str = "vmctl-template") -> None:
    fd = os.open(path, flags, 0o600)
    try:
        _qmp(dom, "getfd", {"fdname": name}, [fd])
    finally:
        os.close(fd)


def _wait_migration(dom: Any, timeout: float = MIGRATION_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _qmp(dom, "query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            why = f": {info['error-desc']}" if info.get("error-desc") else ""
            raise TemplateError(f"QEMU's migration of the template state ended `{status}`{why}")
        time.sleep(0.005)
    raise TemplateError(f"QEMU's migration of the template state took more than {timeout:.0f} s")


def save_state(dom: Any, path: Path) -> None:
    """Pause the guest and have QEMU write its whole state into `path`."""
    dom.suspend()
    _pass_fd(dom, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    _qmp(dom, "migrate", {"uri": "fd:vmctl-template"})
    _wait_migration(dom)
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def load_state(dom: Any, template: Template) -> None:
    """Into a domain started paused with `-incoming defer`: the template's state, checked first."""
    _pass_fd(dom, template.state, os.O_RDONLY)
    _qmp(dom, "migrate-incoming", {"uri": "fd:vmctl-template"})
    _wait_migration(dom)


# ---------------------------------------------------------------------------------------------- views

def template_cmdline(shape: Shape) -> str:
    return render.kernel_cmdline("vmctl-template", "", shape.cmdline, accel=shape.accel, vcpus=shape.vcpus,
                                 template=True)


def clone_view(view: render.DomainView, shape: Shape, socket_path: Path) -> render.DomainView:
    """A machine's domain as a clone: the template's device set and cmdline, its own everything else.

    SeaBIOS rather than qboot: qboot does not boot with QEMU's vmgenid device (`<genid/>`; nothing on
    the console, measured here), and a clone never runs its firmware anyway (it must only be the same
    ROM as the template's, whose boot pays SeaBIOS's few tenths of a second once)."""
    return replace(view, cmdline=template_cmdline(shape), clone_socket=str(socket_path), incoming=True, loader=None)


def template_view(view: render.DomainView, shape: Shape, key: str, folder: Path,
                  placeholders: Sequence[Path], socket_path: Path) -> render.DomainView:
    """The template's own domain, from one clone's: no forwards, placeholder disks, NICs on no bridge.
    Tagged with the clone's environment, so that `down` removes it too if `up` was killed mid-build."""
    disks = tuple(render.DiskView(str(p), d.dev, f"tpl-slot{i}", readonly=True)
                  for i, (p, d) in enumerate(zip(placeholders, view.disks, strict=True)))
    nics = tuple(render.InterfaceView(None, mac, nic.slot)
                 for mac, nic in zip(template_macs(shape.nics), view.interfaces, strict=True))
    return replace(view, machine=f"template-{key[:12]}",
                   cmdline=template_cmdline(shape), console_log=str(folder / "console.log"), forwards=(),
                   disks=disks, filesystems=(), interfaces=nics, restrict=False,
                   clone_socket=str(socket_path), incoming=False, loader=None)


# ---------------------------------------------------------------------------------------------- build

def ensure(hv: Any, view: render.DomainView, shape: Shape, versions: Mapping[str, str],
           say: Callable[[str], None]) -> Template:
    """The template of `shape`, built now if missing (one build at a time per shape: the cache's lock)."""
    key = shape.key(versions)
    with cache.build_lock(templates_dir(), key[:16]):
        found = lookup(key, versions)
        if found is not None:
            return found
        say(f"building template {key[:16]} (first use of this shape)")
        try:
            return _build(hv, view, shape, key, versions)
        except TemplateError:
            raise
        except VmctlError as e:
            raise TemplateError(f"template {key[:16]} could not be built: {e.message.splitlines()[0]}") from None


def _build(hv: Any, view: render.DomainView, shape: Shape, key: str, versions: Mapping[str, str]) -> Template:
    parent = templates_dir()
    for stale in parent.glob(f".{key[:16]}.build-*"):  # a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.build-", dir=parent))
    try:
        placeholders = [folder / f"slot{i}.raw" for i in range(shape.image_disks)]
        for p in placeholders:
            with p.open("wb") as f:
                f.truncate(PLACEHOLDER_BYTES)
        tview = template_view(view, shape, key, folder, placeholders, template_socket(key))
        started = time.monotonic()
        with _running(hv, render.render_domain(tview)) as dom:
            log = Path(tview.console_log)
            boot = console.wait_ready(log, machine="template", timeout=BUILD_TIMEOUT, alive=dom.isActive,
                                      template=True)
            save_state(dom, folder / STATE_FILE)
        for p in placeholders:
            p.unlink()
        state = folder / STATE_FILE
        size, digest = state.stat().st_size, file_sha256(state)
        manifest = {"format": FORMAT, "key": key, "shape": asdict(shape), "versions": dict(versions),
                    "size": size, "sha256": digest, "macs": list(template_macs(shape.nics)),
                    "guest_uptime_at_save": boot.guest_ready_uptime, "created": int(time.time()),
                    "build_seconds": round(time.monotonic() - started, 2)}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        folder.chmod(0o755)
        final = cache.install(key[:16], folder, key)
        _prune(shape)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Template(key=key, directory=final, size=size, sha256=digest, macs=template_macs(shape.nics))


@contextlib.contextmanager
def _running(hv: Any, xml: str) -> Iterator[Any]:
    try:
        dom = hv.conn.createXML(xml, 0)
    except libvirt.libvirtError as e:
        raise TemplateError(f"libvirt could not start the template guest: {e.get_error_message()}") from None
    try:
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()


# ---------------------------------------------------------------------------------------------- clone

@dataclass(frozen=True)
class Clone:
    """How one machine starts from a template: which one, and its own channel socket."""

    template: Template
    shape: Shape
    socket: Path


def shape_for(machine: MachineSpec, image: GuestImage, view: render.DomainView, *, embedded: bool) -> Shape | None:
    """The machine's shape, or None when it boots cold: `template: false`, a kernel or initrd of its own,
    a writable disk or a volume (their devices are not in a template), or a libvirt other than the
    embedded driver. Read-only disks (container images) are slots the template holds placeholders for."""
    writable = any(not d.readonly for d in machine.disks)
    if not (machine.template and embedded) or machine.kernel or machine.initrd or writable or view.filesystems:
        return None
    return Shape(image=image.name, image_digest=image.digest, kernel=str(image.kernel), initrd=str(image.initrd),
                 memory_mib=view.memory_mib, vcpus=view.vcpus, accel=view.accel, cmdline=machine.cmdline,
                 nics=len(view.interfaces), image_disks=len(view.disks))


def clone_socket(state_folder: Path, machine: str) -> Path:
    """Short (a UNIX socket path holds at most 107 bytes), and private to this environment's machine."""
    digest = hashlib.sha256(f"{state_folder}\0{machine}".encode()).hexdigest()[:16]
    return private_dir(runtime_root() / "clones") / f"{digest}.sock"


def template_socket(key: str) -> Path:
    """The template guest's ttyS1 while it is built (never written to): short, like a clone's, not in
    the cache folder, whose path may be long."""
    return private_dir(runtime_root() / "clones") / f"tpl-{key[:16]}.sock"


_checks: dict[tuple[str, int, int], Future[str]] = {}
_checks_lock = threading.Lock()
_checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="template-checksum")


def _checksum(template: Template) -> Future[str]:
    """The state file's SHA-256, computed once per process and file version: the clones of one `up`
    share one check (10 clones: 0.1 s of CPU instead of 1 s)."""
    st = template.state.stat()
    key = (str(template.state), st.st_size, st.st_mtime_ns)
    with _checks_lock:
        if key not in _checks:
            _checks[key] = _checker.submit(file_sha256, template.state)
        return _checks[key]


def start_paused(dom: Any, template: Template) -> None:
    """Start a defined clone domain paused, checking the template's checksum while libvirt starts QEMU."""
    try:
        digest = _checksum(template)
    except OSError as e:
        raise TemplateDamaged(f"template {template.name}'s saved state cannot be read: {e}") from None
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as e:
        raise TemplateError(f"libvirt could not start the clone: {e.get_error_message()}") from None
    if digest.result() != template.sha256:
        raise TemplateDamaged(f"template {template.name}'s saved state does not match its checksum")


def clone_line(hostname: str, ssh_key_blob: str, now: float | None = None, seed: bytes | None = None) -> bytes:
    """The one line a clone reads on ttyS1: values the guest checks again (init.sh.j2, read_clone_line)."""
    seed = seed if seed is not None else os.urandom(32)
    stamp = int(now if now is not None else time.time())
    return f"VMCTL-CLONE hostname={hostname} sshkey={ssh_key_blob} time={stamp} seed={seed.hex()}\n".encode()


@contextlib.contextmanager
def clone_channel(path: Path, line: bytes, timeout: float = 5.0) -> Iterator[None]:
    """Connect to the clone's ttyS1 socket and send its line; stay connected while the guest reads it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
            sock.sendall(line)
        except OSError as e:
            raise TemplateError(f"cannot reach the clone's channel {path}: {e}") from None
        yield
    finally:
        sock.close()

