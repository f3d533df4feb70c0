"""Kernel builder: fragment parsing and verification, the cache key, the make command line, and the
recipe wiring in guest_image. Nothing here compiles a kernel (tests/integration/test_minimal_kernel.py
does, once per cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import guest_image as gi
from vmctl import kernel_build as kb
from vmctl.errors import UsageError

FRAGMENT = kb.fragment_path("minimal").read_text()


def test_parse_config_reads_set_unset_and_strings() -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\nCONFIG_D=64\n# a comment\n\n'
    assert kb.parse_config(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x y"', "CONFIG_D": "64"}


def test_mismatches_name_what_kconfig_dropped() -> None:
    requested = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "y"}
    final = {"CONFIG_A": "y", "CONFIG_X": "y"}  # B absent == n; C dropped
    assert kb.config_mismatches(requested, final) == [("CONFIG_C", "y", "n")]


@pytest.mark.parametrize("symbol", [
    "CONFIG_PVH", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET",
    "CONFIG_VIRTIO_CONSOLE", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS",
    "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_EXT4_FS", "CONFIG_OVERLAY_FS", "CONFIG_TMPFS", "CONFIG_DEVTMPFS",
    "CONFIG_MEMCG", "CONFIG_CGROUP_PIDS", "CONFIG_BLK_CGROUP", "CONFIG_CGROUP_SCHED", "CONFIG_USER_NS",
    "CONFIG_PID_NS", "CONFIG_NET_NS", "CONFIG_SECCOMP_FILTER", "CONFIG_CGROUP_BPF", "CONFIG_POSIX_MQUEUE",
    "CONFIG_UNIX", "CONFIG_UNIX98_PTYS", "CONFIG_ACPI", "CONFIG_KVM_GUEST", "CONFIG_X86_X2APIC",
    "CONFIG_BINFMT_SCRIPT", "CONFIG_BLK_DEV_INITRD", "CONFIG_64BIT",
])
def test_fragment_builds_in_what_guests_need(symbol: str) -> None:
    assert kb.parse_config(FRAGMENT).get(symbol) == "y"


def test_fragment_has_no_modules_and_no_netfilter() -> None:
    values = kb.parse_config(FRAGMENT)
    assert not any(v == "m" for v in values.values())
    assert values.get("CONFIG_MODULES", "n") == "n" and values.get("CONFIG_NETFILTER", "n") == "n"


def test_digest_covers_source_fragment_and_builder() -> None:
    base = kb.compute_digest("6.1.1-1", "CONFIG_A=y\n", "gcc 12")
    assert kb.compute_digest("6.1.1-1", "CONFIG_A=y\n", "gcc 12") == base
    assert kb.compute_digest("6.1.1-2", "CONFIG_A=y\n", "gcc 12") != base
    assert kb.compute_digest("6.1.1-1", "CONFIG_A=n\n", "gcc 12") != base
    assert kb.compute_digest("6.1.1-1", "CONFIG_A=y\n", "gcc 13") != base
    assert kb.compute_digest("ab", "c", "d") != kb.compute_digest("a", "bc", "d")


def test_make_argv_is_niced_out_of_tree_x86_64(tmp_path: Path) -> None:
    argv = kb.make_argv(tmp_path / "src", tmp_path / "out", 2, 10, "vmlinux")
    assert argv[1:3] == ["-n", "10"] and argv[0].endswith("nice")
    assert {"ARCH=x86_64", f"O={tmp_path / 'out'}", "-j2", "vmlinux", str(tmp_path / "src")} <= set(argv)
    assert kb.make_argv(tmp_path, tmp_path, 1, 0, "kernelrelease")[0].endswith("make")


def test_bad_kernel_names_are_refused() -> None:
    with pytest.raises(UsageError):
        kb.load_fragment("../default")
    with pytest.raises(UsageError):
        kb.load_fragment("nosuch")


def test_find_kernel_without_a_build_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCTL_CACHE_DIR", str(tmp_path))
    assert kb.find_kernel("minimal") is None


def test_minimal_recipe_names_the_built_kernel() -> None:
    recipe = gi.load_recipe("minimal")
    assert recipe.kernel_build == "minimal" and recipe.modules == () and recipe.kernel == ""
    assert recipe.binaries == gi.load_recipe("default").binaries


@pytest.mark.parametrize("text", [
    "kernel_build: minimal\npackages: [a]\nbinaries: [bin/a]\nmodules: [m]\ncompression: none\n",
    "kernel_build: minimal\nkernel: k\npackages: [a]\nbinaries: [bin/a]\ncompression: none\n",
    "kernel_build: ../x\npackages: [a]\nbinaries: [bin/a]\ncompression: none\n",
    "kernel_build: minimal\npackages: [a]\nbinaries: [bin/a]\n",
])
def test_bad_built_kernel_recipes_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        gi.parse_recipe("x", text)


def test_built_kernel_digest_enters_the_image_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = gi.load_recipe("minimal")
    monkeypatch.setattr(kb, "current_digest", lambda name: f"digest-of-{name}")
    versions = gi._with_built_kernel(recipe, {"crun": "1", "kernel-build:minimal": "old"})
    assert versions == {"crun": "1", "kernel-build:minimal": "digest-of-minimal"}
    monkeypatch.setattr(kb, "current_digest", lambda name: None)
    assert gi._with_built_kernel(recipe, {"crun": "1"}) is None


def test_init_without_modules_loads_none(tmp_path: Path) -> None:
    text = gi.render_init("minimal", "6.1.0-vmctl-minimal", [])
    body = text.split("load_modules() {", 1)[1].split("}", 1)[0]
    assert "insmod" not in body


def _bzimage(payload: bytes, setup_sects: int = 3) -> bytes:
    """A fake bzImage: boot header with setup_sects, HdrS, payload_offset/length, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    offset = 64
    setup[0x248:0x24C] = offset.to_bytes(4, "little")
    setup[0x24C:0x250] = len(payload).to_bytes(4, "little")
    return bytes(setup) + b"\0" * offset + payload + b"trailer"


def test_bzimage_payload_is_found_by_its_header() -> None:
    import gzip

    payload = gzip.compress(b"\x7fELF fake kernel")
    assert kb.bzimage_payload(_bzimage(payload)) == ("gzip", payload)
    with pytest.raises(UsageError):
        kb.bzimage_payload(b"MZ" + b"\0" * 0x300)
    with pytest.raises(UsageError, match="compression"):
        kb.bzimage_payload(_bzimage(b"plain bytes"))


def test_extract_vmlinux_decompresses_the_payload(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "bzImage").write_bytes(_bzimage(gzip.compress(b"\x7fELF fake kernel")))
    out = kb.extract_vmlinux(tmp_path / "bzImage", tmp_path / "vmlinux")
    assert out.read_bytes() == b"\x7fELF fake kernel"


def _elf_with_note(name: bytes, kind: int) -> bytes:
    """A minimal ELF64 header, one PT_NOTE program header, and one note."""
    desc = (0x1000000).to_bytes(4, "little")
    padded = name + b"\0" * (-len(name) % 4)
    note = b"".join(n.to_bytes(4, "little") for n in (len(name), len(desc), kind)) + padded + desc
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    header[32:40] = (64).to_bytes(8, "little")  # e_phoff
    header[54:56] = (56).to_bytes(2, "little")  # e_phentsize
    header[56:58] = (1).to_bytes(2, "little")  # e_phnum
    ph = bytearray(56)
    ph[0:4] = (4).to_bytes(4, "little")  # PT_NOTE
    ph[8:16] = (64 + 56).to_bytes(8, "little")
    ph[32:40] = len(note).to_bytes(8, "little")
    return bytes(header + ph + note)


def test_pvh_entry_is_found_by_its_xen_note() -> None:
    assert kb.has_pvh_entry(_elf_with_note(b"Xen\0", kb.XEN_ELFNOTE_PHYS32_ENTRY))
    assert not kb.has_pvh_entry(_elf_with_note(b"Xen\0", 5))  # another Xen note
    assert not kb.has_pvh_entry(_elf_with_note(b"GNU\0", kb.XEN_ELFNOTE_PHYS32_ENTRY))
    assert not kb.has_pvh_entry(b"MZ not an ELF file")


def test_the_built_kernel_has_a_pvh_entry() -> None:
    built = kb.find_kernel("minimal")
    if built is None:
        pytest.skip("the minimal kernel is not built on this machine")
    assert kb.has_pvh_entry(built.vmlinux.read_bytes())
