"""Files a machine needs on a remote host, sent through libvirt itself: no shared filesystem assumed.

vmctl defines a directory storage pool `vmctl` on each host (`/var/lib/libvirt/vmctl`). The kernel, the
initramfs and the container image disks go there as volumes named by their content
(`sha256-HEX32.kind`), through `virStorageVol.upload` streams over the same connection vmctl already
has. A volume that is already there is not sent again, so a second `up` sends nothing. An upload goes
into a `.part` volume first and becomes the real one by a copy on the host, so a killed upload never
leaves a volume that looks complete. A machine's scratch disk (`size:`) is a volume of the same pool,
named by its environment, machine and disk (`scratch-ENV.MACHINE.DISK.raw`, sparse), made by the first
`up` and deleted by `down`. `down` leaves the rest of the pool alone; `vmctl image prune --host NAME`
empties it of what no domain uses.

The guest's console is a file in the same pool (`console-DOMAIN.log`, created by libvirt when the domain
starts): vmctl reads it with `virStorageVol.download`, from an offset, as it would follow a local file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from vmctl.errors import HostError
from vmctl.paths import cache_root
from vmctl.state import write_atomic

POOL = "vmctl"
POOL_DIR = "/var/lib/libvirt/vmctl"
PART = ".part"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Sent:
    """One file on the host: where it is there, and whether this call had to send it."""

    path: str
    uploaded: bool
    size: int


def pool_xml(name: str = POOL, target: str = POOL_DIR) -> str:
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = target
    return ET.tostring(pool, encoding="unicode")


def volume_xml(name: str, size: int, *, sparse: bool = False, mode: str = "0644") -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(size)
    if sparse:  # without <allocation>, libvirt allocates the whole capacity
        ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type="raw")
    ET.SubElement(ET.SubElement(target, "permissions"), "mode").text = mode
    return ET.tostring(vol, encoding="unicode")


def ensure_pool(conn: Any) -> Any:
    """vmctl's pool on this host, defined, built, started and autostarted on first use."""
    try:
        pool = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        pool = conn.storagePoolDefineXML(pool_xml(), 0)
        pool.build(0)
        pool.setAutostart(1)
    if not pool.isActive():
        pool.create(0)
    return pool


def content_name(path: Path, kind: str) -> str:
    return f"sha256-{file_digest(path)[:32]}.{kind}"


def file_digest(path: Path) -> str:
    """SHA-256 of a file, remembered per (device, inode, size, mtime): images are hashed once."""
    st = path.stat()
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    memo = cache_root() / "digests" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(memo.read_text())
        if saved["key"] == key:
            return str(saved["sha256"])
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    write_atomic(memo, json.dumps({"key": key, "sha256": h.hexdigest()}).encode(), mode=0o644)
    return h.hexdigest()


def send(conn: Any, pool: Any, path: Path, kind: str, name: str | None = None) -> Sent:
    """`path` as a content-named volume on the host (`name`: already known); uploaded only when it is not
    there yet."""
    name, size = name or content_name(path, kind), path.stat().st_size
    with contextlib.suppress(libvirt.libvirtError):
        return Sent(pool.storageVolLookupByName(name).path(), False, size)
    _delete_quietly(pool, name + PART)  # what a killed upload left
    part = pool.createXML(volume_xml(name + PART, size), 0)
    try:
        _upload(conn, part, path, size)
        vol = pool.createXMLFrom(volume_xml(name, size), part, 0)
    except libvirt.libvirtError as e:
        raise HostError(f"cannot upload `{path}` to {conn.getURI()}: {e.get_error_message()}") from None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            part.delete(0)
    return Sent(vol.path(), True, size)


def _upload(conn: Any, vol: Any, path: Path, size: int) -> None:
    stream = conn.newStream(0)
    vol.upload(stream, 0, size, 0)
    try:
        with path.open("rb") as f:
            stream.sendAll(lambda _st, n, fh: fh.read(min(n, CHUNK)), f)
        stream.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise


def _delete_quietly(pool: Any, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        pool.storageVolLookupByName(name).delete(0)


def volume_size(conn: Any, path: str) -> int:
    """The size of a file of vmctl's pool on a host, in bytes (its volume's capacity: they are raw)."""
    return volume_sizes(conn, path)[0]


def volume_sizes(conn: Any, path: str) -> tuple[int, int]:
    """(capacity, allocation) of a file of vmctl's pool on a host, in bytes: what its blocks take is less
    for a sparse scratch disk."""
    _, capacity, allocation = ensure_pool(conn).storageVolLookupByName(Path(path).name).info()
    return int(capacity), int(allocation)


def copy_between(src_conn: Any, dst_conn: Any, path: str) -> bool:
    """A volume of vmctl's pool on one host onto another host's (through this machine, a temporary file);
    False when the other host has it already."""
    name = Path(path).name
    src_pool, dst_pool = ensure_pool(src_conn), ensure_pool(dst_conn)
    with contextlib.suppress(libvirt.libvirtError):
        dst_pool.storageVolLookupByName(name)
        return False
    with tempfile.NamedTemporaryFile(prefix=".vmctl-copy-", dir=cache_root()) as tmp:
        stream = src_conn.newStream(0)
        src_pool.storageVolLookupByName(name).download(stream, 0, 0, 0)
        stream.recvAll(lambda _st, data, f: f.write(data), tmp)
        stream.finish()
        tmp.flush()
        send(dst_conn, dst_pool, Path(tmp.name), "", name=name)
    return True


# ------------------------------------------------------------------------------------------------ scratch disks


def scratch_name(environment: str, machine: str, disk: str) -> str:
    """The volume of a machine's scratch disk (`size:`) on its host: named by what it belongs to, not by
    content, since the guest writes to it. `.` occurs in none of the three names."""
    return f"{_scratch_prefix(environment)}{machine}.{disk}.raw"


def _scratch_prefix(environment: str) -> str:
    return f"scratch-{environment}."


def ensure_scratch(conn: Any, name: str, size: int) -> str:
    """An empty sparse volume of `size` bytes, made the first time (a later `up` keeps what the guest
    wrote, as a local scratch disk is kept until `down`); its path on the host."""
    pool = ensure_pool(conn)
    with contextlib.suppress(libvirt.libvirtError):
        return str(pool.storageVolLookupByName(name).path())
    try:
        return str(pool.createXML(volume_xml(name, size, sparse=True, mode="0600"), 0).path())
    except libvirt.libvirtError as e:
        raise HostError(f"cannot create the scratch disk `{name}` on {conn.getURI()}: {e.get_error_message()}"
                        ) from None


def remove_scratch(conn: Any, environment: str, *, only: set[str] | None = None) -> list[str]:
    """Delete the environment's scratch disks on the host (`only`: those of these paths); their names."""
    pool = ensure_pool(conn)
    pool.refresh(0)
    removed = []
    for vol in pool.listAllVolumes(0):
        name = str(vol.name())
        if name.startswith(_scratch_prefix(environment)) and (only is None or vol.path() in only):
            vol.delete(0)
            removed.append(name)
    return removed


# ------------------------------------------------------------------------------------------------ console


def console_name(domain: str) -> str:
    return f"console-{domain}.log"


def console_path(domain: str) -> str:
    return f"{POOL_DIR}/{console_name(domain)}"


def read_from(conn: Any, pool: Any, name: str, offset: int) -> bytes:
    """The bytes of volume `name` from `offset` on (b"" when it does not exist yet or has no more)."""
    try:
        pool.refresh(0)
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return b""
    if vol.info()[1] <= offset:
        return b""
    stream = conn.newStream(0)
    chunks: list[bytes] = []
    try:
        vol.download(stream, offset, 0, 0)
        stream.recvAll(lambda _st, data, out: out.append(bytes(data)), chunks)
        stream.finish()
    except libvirt.libvirtError:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
    return b"".join(chunks)


def remove_console(pool: Any, domain: str) -> None:
    _delete_quietly(pool, console_name(domain))


# ------------------------------------------------------------------------------------------------ prune


def in_use(conn: Any) -> set[str]:
    """Paths any defined domain on the host refers to (kernel, initrd, disks, console)."""
    used = set()
    for dom in conn.listAllDomains(0):
        root = ET.fromstring(dom.XMLDesc(0))
        used |= {e.text for e in root.iter() if e.tag in ("kernel", "initrd") and e.text}
        used |= {e.get("file") or e.get("path") or "" for e in root.iter("source")}
    return used


def prune(conn: Any, on_removed: Callable[[str, int], None] = lambda _n, _s: None) -> list[str]:
    """Remove every volume of vmctl's pool that no domain on the host uses."""
    try:
        pool = conn.storagePoolLookupByName(POOL)
    except libvirt.libvirtError:
        return []
    if not pool.isActive():
        pool.create(0)
    pool.refresh(0)
    used = in_use(conn)
    removed = []
    for vol in pool.listAllVolumes(0):
        if vol.path() not in used:
            size = vol.info()[1]
            vol.delete(0)
            removed.append(vol.name())
            on_removed(vol.name(), size)
    return removed

