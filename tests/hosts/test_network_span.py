"""The environment network across the bed's hosts, for real: services on h1 and h2 and a host container
here find and reach each other by name through the VXLAN mesh, the resolver (here) answers names of
guests on the hosts, another environment's member on the same host reaches none of it, and `down`
leaves no bridge, VXLAN device or tap on any host."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import hostbed
from examples.build_images import IMAGES_DIR, build_image
from tests.hosts.conftest import hosts_yaml, vmctl_in, write_env

pytestmark = [pytest.mark.vm, pytest.mark.daemon]

TOOLS = IMAGES_DIR / "tools.tar"
REDIS = '["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]'
SPAN = f"""\
services:
  cache: {{image: {TOOLS}, command: {REDIS}, host: h1, vm: {{memory: 192M}}}}
  peer: {{image: {TOOLS}, command: {REDIS}, host: h2, vm: {{memory: 192M}}}}
  edge: {{image: {TOOLS}, isolation: container, command: ["sleep", "3600"]}}
"""
OTHER = f"""\
services:
  probe: {{image: {TOOLS}, command: ["sleep", "3600"], host: h1, vm: {{memory: 192M}}}}
"""


def sh(bed: hostbed.HostBed, file: Path, service: str, line: str) -> tuple[int, str]:
    proc = vmctl_in(bed, "-f", str(file), "exec", service, "--", "sh", "-c", line, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def addresses(bed: hostbed.HostBed, file: Path) -> dict[str, str]:
    status = json.loads(vmctl_in(bed, "-f", str(file), "status", "--json").stdout)
    return {m["name"]: m["networks"][0]["address"] for m in status["machines"]}


def tunnel_links(namespace: Path) -> list[str]:
    """Bridges, VXLAN devices and taps (vmctl's, libvirt's) in a namespace of the bed."""
    out = subprocess.run(["nsenter", f"--net={namespace}", "ip", "-o", "link", "show"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line]
    return [n for n in names if n.startswith(("vb", "vx", "vnet", "vt", "vc"))]


@pytest.fixture(scope="module")
def envs(bed: hostbed.HostBed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    build_image("tools", IMAGES_DIR)
    folder = tmp_path_factory.mktemp("span")
    span = write_env(folder, "name: span\n" + hosts_yaml(bed) + SPAN)
    other = (folder / "other.yaml")
    other.write_text("name: spanother\n" + hosts_yaml(bed) + OTHER)
    try:
        for file in (span, other):
            up = vmctl_in(bed, "-f", str(file), "up", "--timeout", "180")
            assert up.returncode == 0, up.stderr
        yield span, other
    finally:
        for file in (span, other):
            vmctl_in(bed, "-f", str(file), "down")


def test_services_on_two_hosts_and_here_reach_each_other_by_name(bed: hostbed.HostBed,
                                                                 envs: tuple[Path, Path]) -> None:
    span, _ = envs
    status = json.loads(vmctl_in(bed, "-f", str(span), "status", "--json").stdout)
    assert {m["name"]: m["host"] for m in status["machines"]} == {"cache": "h1", "peer": "h2"}
    for client, server in (("peer", "cache"), ("cache", "peer"), ("edge", "cache"), ("edge", "peer")):
        code, out = sh(bed, span, client, f"for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h {server} ping && exit 0; "
                                          "sleep 1; done; exit 1")
        assert code == 0 and "PONG" in out, f"{client} -> {server}: {out}"
    # The resolver is here: a name of a guest on h1, asked from h2, answered through the tunnel.
    code, out = sh(bed, span, "peer", "nslookup cache")
    assert code == 0 and addresses(bed, span)["cache"] in out, out
    # Frames bigger than the LAN's MTU minus VXLAN's 50 bytes: the outer packets are fragmented, not lost.
    code, out = sh(bed, span, "peer", "head -c 300000 /dev/urandom | redis-cli -h cache -x set big >/dev/null && "
                                      "redis-cli -h cache strlen big")
    assert code == 0 and out.split()[-1] == "300000", out


def test_another_environment_on_the_same_host_reaches_none_of_it(bed: hostbed.HostBed,
                                                                 envs: tuple[Path, Path]) -> None:
    span, other = envs
    theirs, ours = addresses(bed, span), addresses(bed, other)
    for name, address in theirs.items():
        if address == ours["probe"]:
            continue  # both environments hand out 10.77.0.x: that one is the probe itself
        code, out = sh(bed, other, "probe", f"timeout 5 redis-cli -h {address} ping")
        assert "PONG" not in out, f"{name} ({address}) answered another environment"
    code, out = sh(bed, other, "probe", "nslookup cache")
    assert theirs["cache"] not in out.split("Name:")[-1], out


def test_down_leaves_no_bridge_vxlan_or_tap_on_any_host(bed: hostbed.HostBed, envs: tuple[Path, Path]) -> None:
    assert all(tunnel_links(h.netns) for h in bed.hosts)  # the mesh is there while they run
    for file in envs:
        down = vmctl_in(bed, "-f", str(file), "down")
        assert down.returncode == 0, down.stderr
    for namespace in (*(h.netns for h in bed.hosts), bed.client):
        assert tunnel_links(namespace) == [], namespace
