"""Guest image builder: digest, recipe validation, module order, the rendered init and the cpio writer."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmctl import guest_image as gi
from vmctl.errors import UsageError

VERSIONS = {
    "linux-image-cloud-amd64": "6.1.192-2",
    "linux-image-6.1.0-56-cloud-amd64": "6.1.192-2",
    "busybox-static": "1:1.35.0-4",
    "dropbear-bin": "2022.83-1",
    "crun": "1.8.1-1",
}

# A slice of a real modules.dep (depmod lists dependencies in no particular load order).
MODULES_DEP = """\
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
"""


def test_digest_is_stable() -> None:
    assert gi.compute_digest("r", "t", VERSIONS) == gi.compute_digest("r", "t", dict(reversed(VERSIONS.items())))


def test_digest_changes_with_recipe_template_and_versions() -> None:
    base = gi.compute_digest("recipe", "template", VERSIONS)
    assert gi.compute_digest("recipe ", "template", VERSIONS) != base
    assert gi.compute_digest("recipe", "template\n", VERSIONS) != base
    assert gi.compute_digest("recipe", "template", {**VERSIONS, "crun": "1.8.1-2"}) != base
    # no ambiguity between where one part ends and the next begins
    assert gi.compute_digest("ab", "c", VERSIONS) != gi.compute_digest("a", "bc", VERSIONS)


def test_digest_of_real_files_changes_only_with_their_contents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe_file = tmp_path / "recipe.yaml"
    template_file = tmp_path / "init.sh.j2"
    shutil.copy(gi.recipe_path("default"), recipe_file)
    shutil.copy(gi.INIT_TEMPLATE, template_file)
    monkeypatch.setattr(gi, "INIT_TEMPLATE", template_file)
    recipe = gi.parse_recipe("default", recipe_file.read_text(), str(recipe_file))
    first = gi._current_digest(recipe, VERSIONS)
    assert gi._current_digest(recipe, VERSIONS) == first
    template_file.write_text(template_file.read_text() + "# changed\n")
    second = gi._current_digest(recipe, VERSIONS)
    assert second != first
    recipe_file.write_text(recipe_file.read_text() + "# changed\n")
    assert gi._current_digest(recipe, VERSIONS) not in (first, second)


def test_default_recipe_parses() -> None:
    recipe = gi.load_recipe("default")
    assert recipe.kernel == "linux-image-cloud-amd64"
    assert "bin/busybox" in recipe.binaries and "usr/bin/crun" in recipe.binaries
    assert {"virtio_pci", "virtio_net", "virtio_blk", "overlay"} <= set(recipe.modules)
    assert recipe.modules_after_ready == ("virtio_balloon",)


@pytest.mark.parametrize(
    "text",
    [
        "kernel: k\npackages: [a]\nbinaries: [bin/a]\nmodules: [m]\nmodules_after_ready: [n]\ncompression: none\n"
        "extra: 1\n",
        "kernel: k\npackages: [a]\nbinaries: [bin/a]\nmodules: [m]\n",
        "kernel: k\npackages: [a]\nbinaries: [/bin/a]\nmodules: [m]\ncompression: none\n",
        "kernel: k\npackages: a\nbinaries: [bin/a]\nmodules: [m]\ncompression: none\n",
        "kernel: k\npackages: [a]\nbinaries: [bin/a]\nmodules: [m]\ncompression: xz\n",
    ],
)
def test_bad_recipes_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        gi.parse_recipe("x", text)


def test_bad_image_names_are_refused() -> None:
    with pytest.raises(UsageError):
        gi.load_recipe("../etc")


def test_module_order_respects_modules_dep() -> None:
    deps = gi.parse_modules_dep(MODULES_DEP)
    order = gi.module_load_order(deps, ["virtio_pci", "virtio_net", "virtio_blk", "overlay", "virtio-rng"])
    assert len(order) == len(set(order))
    for i, module in enumerate(order):
        assert set(deps[module]) <= set(order[:i]), f"{module} loaded before one of {deps[module]}"
    names = [gi._module_name(m) for m in order]
    assert names.index("failover") < names.index("net_failover") < names.index("virtio_net")
    assert names.index("virtio_ring") < names.index("virtio") < names.index("virtio_pci")


def test_unknown_module_is_an_error() -> None:
    with pytest.raises(UsageError, match="nosuch"):
        gi.module_load_order(gi.parse_modules_dep(MODULES_DEP), ["nosuch"])


def test_kernel_dependency_parsing() -> None:
    assert gi.kernel_dependency("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)") == (
        "linux-image-6.1.0-56-cloud-amd64",
        "6.1.192-2",
    )
    assert gi.kernel_dependency("libc6") is None


def _rendered(tmp_path: Path) -> Path:
    modules = gi.module_load_order(gi.parse_modules_dep(MODULES_DEP), ["virtio_pci", "virtio_net", "overlay"])
    script = tmp_path / "init"
    script.write_text(gi.render_init("default", "6.1.0-56-cloud-amd64", modules))
    return script


def test_rendered_init_passes_busybox_syntax_check(tmp_path: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    script = _rendered(tmp_path)
    proc = subprocess.run([busybox, "sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_rendered_init_loads_modules_in_order_and_never_evals(tmp_path: Path) -> None:
    text = _rendered(tmp_path).read_text()
    loads = [line.split()[1] for line in text.splitlines() if line.strip().startswith("insmod ")]
    assert [Path(p).name for p in loads] == [
        "virtio_pci_legacy_dev.ko",
        "virtio_pci_modern_dev.ko",
        "virtio_ring.ko",
        "virtio.ko",
        "virtio_pci.ko",
        "failover.ko",
        "net_failover.ko",
        "virtio_net.ko",
        "overlay.ko",
    ]
    assert "eval" not in text.split()
    for line in ("VMCTL-INIT uptime=", "VMCTL-READY uptime=", "VMCTL-FAIL step=", "VMCTL-PROBE-OK"):
        assert line in text


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("web-1", True),
        ("a", True),
        ("-web", False),
        ("Web", False),
        ("a;reboot", False),
        ("$(id)", False),
        ("", False),
        ("a" * 64, False),
    ],
)
def test_init_hostname_validation(tmp_path: Path, value: str, ok: bool) -> None:
    """The init's own validator, run by busybox sh on the values a command line could carry."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    text = _rendered(tmp_path).read_text().replace("\nmain\n", "\n")
    probe = tmp_path / "probe.sh"
    probe.write_text(text + 'valid_hostname "$1"\n')
    proc = subprocess.run([busybox, "sh", str(probe), value], capture_output=True, check=False)
    assert (proc.returncode == 0) is ok


def test_cpio_records_are_newc_and_aligned() -> None:
    cpio = gi.Cpio()
    cpio.file("usr/bin/tool", b"abc", 0o755)
    cpio.symlink("bin/sh", "/bin/busybox")
    cpio.chardev("dev/console", 5, 1)
    data = cpio.serialize()
    assert data.startswith(b"070701") and data.rstrip(b"\0").endswith(b"TRAILER!!!")
    assert len(data) % 4 == 0
    names = []
    offset = 0
    while True:
        header = data[offset : offset + 110]
        namesize, filesize = int(header[94:102], 16), int(header[54:62], 16)
        name = data[offset + 110 : offset + 110 + namesize - 1].decode()
        if name == "TRAILER!!!":
            break
        names.append(name)
        offset += 110 + namesize
        offset += -offset % 4 + filesize
        offset += -offset % 4
    assert names == sorted(names)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/tool")
    assert {"bin", "bin/sh", "dev", "dev/console"} <= set(names)


def test_modules_after_ready_load_after_the_ready_line(tmp_path: Path) -> None:
    deps = gi.parse_modules_dep(MODULES_DEP)
    early = gi.module_load_order(deps, ["virtio_pci"])
    late = [m for m in gi.module_load_order(deps, ["virtio_pci", "virtio_net"]) if m not in early]
    text = gi.render_init("default", "6.1.0-56-cloud-amd64", early, modules_after_ready=late)
    body = text[text.index("\nmain() {"):]
    assert body.index("step load_modules") < body.index("print_ready") < body.index("after_ready")
    late_fn = text[text.index("load_modules_after_ready() {"):text.index("\nafter_ready() {")]
    assert [Path(line.split()[1]).name for line in late_fn.splitlines() if line.strip().startswith("insmod ")] == [
        "failover.ko", "net_failover.ko", "virtio_net.ko"]  # virtio_ring & co. came with virtio_pci already
    assert "load_modules_after_ready" in text[text.index("\nafter_ready() {"):]


def test_a_recipe_may_name_its_own_init_template() -> None:
    """The nested KVM test host's image (`l1`) has its own init; the default stays guest/init.sh.j2."""
    l1 = gi.load_recipe("l1")
    assert l1.init == gi.TEMPLATES_DIR / "l1" / "init.sh.j2" and "kvm_amd" in l1.modules
    assert gi.load_recipe("default").init == gi.INIT_TEMPLATE
    text = gi.render_init("l1", "6.1.0-57-cloud-amd64", ["kernel/arch/x86/kvm/kvm-amd.ko"], template=l1.init)
    assert "VMCTL-L1-KVM" in text and "kernel/arch/x86/kvm/kvm-amd.ko" in text
    base = "kernel: k\npackages: [a]\nbinaries: [bin/a]\nmodules: [m]\nmodules_after_ready: [n]\ncompression: none\n"
    for bad in ("/etc/passwd", "../README.md", "guest/nonexistent.j2", "[1]"):
        with pytest.raises(UsageError, match="`init` must be"):
            gi.parse_recipe("x", base + f"init: {bad}\n")
