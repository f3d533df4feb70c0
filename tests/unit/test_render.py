"""Domain XML: every example and every valid fixture renders, passes libvirt's schema (virt-xml-validate) and is
accepted by libvirt's own test driver (`test:///default`: the real API, no VMs)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from vmctl import lifecycle, ports, render
from vmctl.guest_container import volume_tag
from vmctl.paths import PROJECT_ROOT
from vmctl.progress import Progress, quiet_renderer
from vmctl.spec import load_environment

EXAMPLES = sorted((PROJECT_ROOT / "examples").glob("*.yaml"))

VALID = {
    "minimal": "machines:\n  m1:\n",
    "everything": (
        "name: full\nlibvirt: {uri: 'qemu:///embed?root=/tmp/x'}\ndefaults: {vcpus: 2, memory: 512M}\n"
        "machines:\n"
        "  big:\n    memory: 1G\n    cmdline: 'quiet loglevel=3 foo=\"a b\"'\n"
        "    disks: [{size: 64M, name: scratch}, {size: 1M, readonly: true}]\n"
        "    ports: ['18080:80', '53/udp', '127.0.0.2:18443:443']\n"
        "  small: {vcpus: 1, memory: 64M, accel: tcg}\n"
        "services:\n"
        "  web: {image: x.tar, ports: ['18081:8080'], vm: {memory: 128M}}\n"
        "  job: {image: x.tar, machine: small, depends_on: [web]}\n"
        "  host: {image: x.tar, isolation: container}\n"
    ),
    "kvm": "machines:\n  k: {accel: kvm}\n",
    "volumes": (
        "machines:\n  box: {image: minimal}\n"
        "services:\n"
        "  a: {image: x.tar, machine: box, volumes: ['./data:/data', './out & <\"x\">:/out:rw']}\n"
        "  b: {image: x.tar, machine: box, volumes: ['./data:/d2:ro', './out & <\"x\">:/o2']}\n"
        "  c: {image: x.tar, volumes: ['./data:/data']}\n"
    ),
}
FOLDERS = {"volumes": ("data", 'out & <"x">')}  # volume sources must exist

pytestmark = pytest.mark.skipif(shutil.which("virt-xml-validate") is None, reason="needs libxml2-utils")


def rendered(file: Path, accel: str | None = None) -> list[tuple[str, str]]:
    """(machine, XML) for every machine, the way `vmctl render` builds them."""
    env = load_environment(file)
    project = lifecycle.Project(env=env, progress=Progress(quiet_renderer))
    out = []
    for m in env.machines:
        files = lifecycle.BootFiles(Path("/boot/vmlinuz"), Path("/boot/initrd.img"), None)
        chosen = accel or ("kvm" if m.accel.value == "kvm" else "tcg")
        view = lifecycle.domain_view(project, m, files, chosen, ports.resolve(m.name, m.ports, check=False), 2222)
        out.append((m.name, render.render_domain(view)))
    return out


def fixtures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("valid")
    files = []
    for name, text in VALID.items():
        (base / name).mkdir()
        for folder in FOLDERS.get(name, ()):
            (base / name / folder).mkdir()
        (base / name / "vmctl.yaml").write_text(text)
        files.append(base / name / "vmctl.yaml")
    return files


@pytest.fixture(scope="module")
def all_xml(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    out = []
    for file in [*EXAMPLES, *fixtures(tmp_path_factory)]:
        for accel in ("tcg", "kvm"):
            out += [(f"{file.parent.name}/{m}/{accel}", xml) for m, xml in rendered(file, accel)]
    return out


def test_there_is_something_to_render(all_xml: list[tuple[str, str]]) -> None:
    assert EXAMPLES and len(all_xml) >= 2 * (len(EXAMPLES) + len(VALID))


def test_schema_valid(all_xml: list[tuple[str, str]], tmp_path: Path) -> None:
    for label, xml in all_xml:
        path = tmp_path / "domain.xml"
        path.write_text(xml)
        result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{label}: {result.stderr}\n{xml}"


def test_test_driver_defines_each_domain(all_xml: list[tuple[str, str]]) -> None:
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open("test:///default")
    try:
        for label, xml in all_xml:
            dom = conn.defineXML(xml)
            try:
                assert dom.name() == ET.fromstring(xml).findtext("name"), label
                back = ET.fromstring(dom.XMLDesc())
                assert back.findtext("os/cmdline") == ET.fromstring(xml).findtext("os/cmdline"), label
                assert int(back.findtext("vcpu") or 0) >= 1
            finally:
                dom.undefine()
    finally:
        conn.close()


def test_accelerator_shapes_the_domain() -> None:
    view = render.DomainView(environment="e", environment_file="/e.yaml", machine="m", domain_type="kvm",
                             accel="kvm", memory_mib=64, vcpus=1, kernel="/k", initrd=None, cmdline="quiet",
                             console_log="/c", emulator="/q", loader=None, forwards=())
    kvm = ET.fromstring(render.render_domain(view))
    assert kvm.get("type") == "kvm" and kvm.find("cpu") is not None and kvm.find("features/tcg") is None
    assert kvm.find("os/initrd") is None and kvm.find("os/loader") is None and kvm.find("seclabel") is None
    from dataclasses import replace

    tcg = ET.fromstring(render.render_domain(replace(view, domain_type="qemu", accel="tcg")))
    assert tcg.get("type") == "qemu" and tcg.find("cpu") is None
    assert tcg.findtext("features/tcg/tb-cache") == "64"


def test_forwards_bind_loopback_by_default(tmp_path: Path) -> None:
    (tmp_path / "vmctl.yaml").write_text("machines:\n  m1: {ports: ['18080:80', '90']}\n")
    [(_, xml)] = rendered(tmp_path / "vmctl.yaml")
    args = [a.get("value") or "" for a in ET.fromstring(xml).iter("{http://libvirt.org/schemas/domain/qemu/1.0}arg")]
    forwards = [f for f in args[1].split(",") if f.startswith("hostfwd=")]
    assert len(forwards) == 3 and all(f.startswith("hostfwd=tcp:127.0.0.1:") for f in forwards)


def test_volumes_are_9p_filesystems(tmp_path_factory: pytest.TempPathFactory) -> None:
    file = next(f for f in fixtures(tmp_path_factory) if f.parent.name == "volumes")
    xml = dict(rendered(file))
    data, out = (file.parent / "data").resolve(), (file.parent / 'out & <"x">').resolve()
    box = [(fs.get("type"), fs.get("accessmode"), fs.find("source").get("dir"),  # type: ignore[union-attr]
            fs.find("target").get("dir"), fs.find("readonly") is not None)  # type: ignore[union-attr]
           for fs in ET.fromstring(xml["box"]).iter("filesystem")]
    assert box == sorted([("mount", "passthrough", str(data), volume_tag(data), True),
                          ("mount", "passthrough", str(out), volume_tag(out), False)], key=lambda f: f[3])
    assert len(list(ET.fromstring(xml["c"]).iter("filesystem"))) == 1  # a dedicated VM's own volume


@pytest.mark.parametrize(("index", "dev"), [(0, "vda"), (1, "vdb"), (25, "vdz"), (26, "vdaa"), (27, "vdab")])
def test_disk_dev(index: int, dev: str) -> None:
    assert render.disk_dev(index) == dev


@pytest.mark.parametrize(("accel", "vcpus", "ticks_from_hpet"),
                         [("tcg", 1, True), ("tcg", 2, False), ("kvm", 1, False)])
def test_apic_timer_calibration_skipped_only_for_one_vcpu_under_tcg(accel: str, vcpus: int,
                                                                    ticks_from_hpet: bool) -> None:
    tokens = render.kernel_cmdline("m", "QUFBQQ==", ["loglevel=3"], accel=accel, vcpus=vcpus).split()
    assert ("nolapic_timer" in tokens) is ticks_from_hpet
    assert "noreplace-smp" in tokens and tokens[-1] == "loglevel=3"  # the machine's own arguments come last


def test_environment_network_nics_and_internal_restrict(tmp_path: Path) -> None:
    """`render` shows the NICs `up` defines: a tap per network at slots after user-mode networking's."""
    (tmp_path / "vmctl.yaml").write_text("name: r\nnetworks: {back: {internal: true}}\nservices:\n"
                                         "  web: {image: x, networks: [default, back]}\n"
                                         "  db: {image: x, networks: [back]}\n")
    project = lifecycle.Project(load_environment(tmp_path / "vmctl.yaml"), Progress(quiet_renderer))
    files = lifecycle.BootFiles(tmp_path / "k", None, None)
    for name, nics, restricted in (("web", 2, False), ("db", 1, True)):
        machine = project.env.machine(name)
        assert machine is not None
        net = lifecycle.machine_network(project, name)
        xml = render.render_domain(lifecycle.domain_view(project, machine, files, "tcg", [], 2222, net=net))
        root = ET.fromstring(xml)
        nic_elems = list(root.iter("interface"))
        taps = [str(i.find("target").get("dev")) for i in nic_elems]  # type: ignore[union-attr]
        slots = [i.find("address").get("slot") for i in nic_elems]  # type: ignore[union-attr]
        assert len(taps) == nics and all(t.startswith("vt") and len(t) <= 15 for t in taps)
        assert slots == ["0x11", "0x12"][:nics]
        assert ("restrict=on" in xml) is restricted


def test_service_labels_are_escaped_in_the_domain_metadata(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"")
    file = tmp_path / "compose.yaml"
    file.write_text("services:\n  web: {image: ./x.tar, labels: {com.example.tier: 'a<b&\"c'}}\n")
    (_name, xml), = rendered(file)
    assert '<vmctl:label name="com.example.tier">a&lt;b&amp;&#34;c</vmctl:label>' in xml


def test_a_machine_on_a_declared_host_is_on_that_hosts_tunnel_bridges(tmp_path: Path) -> None:
    """No tap of vmctl's there: libvirt's tap on the host's bridge of each segment (valid schema too)."""
    (tmp_path / "vmctl.yaml").write_text("name: r\nnetworks: {back: {}}\n"
                                         "hosts: {h1: {uri: 'qemu+ssh://root@10.0.0.2/system'}}\n"
                                         "services:\n  web: {image: x, host: h1, networks: [default, back]}\n")
    project = lifecycle.Project(load_environment(tmp_path / "vmctl.yaml"), Progress(quiet_renderer))
    machine = project.env.machine("web")
    assert machine is not None
    net = lifecycle.machine_network(project, "web")
    xml = render.render_domain(lifecycle.domain_view(project, machine, lifecycle.BootFiles(tmp_path / "k", None, None),
                                                     "tcg", [], 2222, net=net))
    nics = list(ET.fromstring(xml).iter("interface"))
    assert [i.get("type") for i in nics] == ["bridge", "bridge"] and not any(i.find("target") is not None for i in nics)
    bridges = [str(i.find("source").get("bridge")) for i in nics]  # type: ignore[union-attr]
    assert bridges == [f"vb{project.network_host.id}0", f"vb{project.network_host.id}1"]
    (tmp_path / "d.xml").write_text(xml)
    check = subprocess.run(["virt-xml-validate", str(tmp_path / "d.xml"), "domain"], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr


def test_the_host_probe_domain_is_a_bare_kvm_boot_and_escapes_its_values() -> None:
    from vmctl.host_accel import ProbeView

    view = ProbeView("vmctl-probe-1a2b", "/pool/a<b>.kernel", "/pool/x&y.initrd", "console=ttyS0 vmctl.probe=1",
                     "/pool/console-vmctl-probe-1a2b.log")
    root = ET.fromstring(render.render_template("domain/probe.xml.j2", probe=view))
    assert root.get("type") == "kvm" and root.findtext("name") == "vmctl-probe-1a2b"
    assert (root.findtext("os/kernel"), root.findtext("os/initrd")) == ("/pool/a<b>.kernel", "/pool/x&y.initrd")
    assert root.find("devices/serial/source").get("path") == view.console  # type: ignore[union-attr]
    assert root.find("devices/disk") is None and root.find("devices/interface") is None
