"""The environment network end to end, through the real CLI: real guests (TCG here), real runc
containers, real bridges, taps, veth pairs and dnsmasq, real sockets. Nothing is mocked.

One application environment (three microVMs and a host container on three networks) serves most
tests; a second environment beside it proves that two environments cannot reach each other.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.build_images import EXAMPLES, IMAGES_DIR, build_image
from tests.conftest import environment_up, missing_tools, run_vmctl

TOOLS = ("runc", "slirp4netns", "dnsmasq", "nsenter", "unshare", "ip")
missing = missing_tools(TOOLS)
if missing:  # a missing tool is a failed set-up, not a reason to skip: `./bootstrap.sh` installs them
    raise RuntimeError(f"the network tests need {missing}: run ./bootstrap.sh (it installs them)")
pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="bridges and taps need root")]

WEB_MAC, EDGE_MAC = "02:42:AC:11:00:02", "02:00:00:00:0e:d9"
BACK, CACHE_IP = "172.29.7.0/26", "172.29.7.10"
REDIS = '["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", ""]'
APP = f"""\
name: netapp
networks:
  front: {{}}
  back: {{internal: true, ipam: {{config: [{{subnet: {BACK}}}]}}}}   # a subnet of its own, not a /24
machines:
  worker: {{networks: [default, front]}}
services:
  cache:                      # a microVM on the internal network only, also found as `redis`, at a fixed address
    image: ./tools.tar
    command: {REDIS}
    networks:
      back: {{aliases: [redis], ipv4_address: {CACHE_IP}}}
  web:                        # a microVM on both networks, with a MAC of its choosing on the first
    image: ./tools.tar
    command: {REDIS}
    hostname: www
    networks: [front, back]
    mac_address: {WEB_MAC}
  job:                        # inside the declared machine: found by its name and the machine's
    image: ./tools.tar
    machine: worker
    command: {REDIS}
  edge:                       # a plain container on the host, on the front network only
    image: ./tools.tar
    isolation: container
    command: {REDIS}
    networks:
      front: {{mac_address: "{EDGE_MAC}"}}
    expose: [6379]
"""
OTHER = """\
name: netother
services:
  probe:
    image: ./tools.tar
    isolation: container
    command: ["sleep", "3600"]
"""


def write_env(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tools.tar").exists():
        (folder / "tools.tar").symlink_to(IMAGES_DIR / "tools.tar")
    file = folder / f"{name}.yaml"
    file.write_text(text)
    return file


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    build_image("tools", IMAGES_DIR)  # once per clone (a stamp of its inputs skips a rebuild)
    folder = tmp_path_factory.mktemp("net")
    with environment_up(write_env(folder, "app", APP)) as file:
        yield file


def sh(file: Path, service: str, line: str, *, timeout: float = 60) -> tuple[int, str]:
    """A shell line inside a service's container (the line is ours, never a user's)."""
    proc = run_vmctl("-f", str(file), "exec", service, "--", "sh", "-c", line, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def redis_ping(file: Path, client: str, server: str) -> str:
    """PONG when `client` reaches `server`'s redis by name (glibc's resolver, as any client library)."""
    # the first connection can be reset while redis is still starting: wait, bounded, as compose users do
    code, out = sh(file, client, f"for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h {server} ping && exit 0; "
                                 "sleep 0.5; done; exit 1")
    return out.strip().splitlines()[-1] if out.strip() else f"(exit {code})"


def test_microvm_to_microvm_by_name(app: Path) -> None:
    assert redis_ping(app, "web", "cache") == "PONG"
    _, out = sh(app, "web", "redis-cli -h cache incr hits; redis-cli -h redis incr hits")  # alias on `back`
    assert out.split() == ["1", "2"]


def test_resolution_goes_through_the_resolver(app: Path) -> None:
    code, getent = sh(app, "web", "getent hosts cache")
    assert code == 0 and getent.split()[1] == "cache", getent
    code, nslookup = sh(app, "web", "nslookup cache")
    assert code == 0 and getent.split()[0] in nslookup, nslookup
    _, resolv = sh(app, "web", "cat /etc/resolv.conf")
    assert resolv.split()[1].startswith("10.77."), resolv  # the network's resolver comes first


def test_container_and_microvm_are_peers(app: Path) -> None:
    assert redis_ping(app, "edge", "web") == "PONG"  # host container -> microVM
    assert redis_ping(app, "edge", "www") == "PONG"  # by the service's hostname
    assert redis_ping(app, "web", "edge") == "PONG"  # microVM -> host container


def test_chosen_macs_are_on_the_wire(app: Path) -> None:
    """`mac_address` is the NIC's: each side's ARP table holds the other's chosen MAC for its address."""
    def arp(service: str) -> dict[str, str]:
        _, table = sh(app, service, "cat /proc/net/arp")
        return {row.split()[0]: row.split()[3] for row in table.splitlines()[1:] if len(row.split()) >= 4}

    def address(client: str, name: str) -> str:
        _, out = sh(app, client, f"getent hosts {name}")
        return out.split()[0]

    assert redis_ping(app, "edge", "web") == "PONG" and redis_ping(app, "web", "edge") == "PONG"
    assert arp("edge").get(address("edge", "web")) == WEB_MAC.lower()
    assert arp("web").get(address("web", "edge")) == EDGE_MAC
    _, own = sh(app, "web", "cat /sys/class/net/*/address")
    assert WEB_MAC.lower() in own.split(), own


def test_a_network_with_its_own_subnet_and_a_fixed_address(app: Path) -> None:
    """`back` is the /26 its `ipam` gives, and the cache is at its `ipv4_address` there: by name, and at it."""
    assert sh(app, "web", "getent hosts cache")[1].split()[0] == CACHE_IP
    assert redis_ping(app, "web", CACHE_IP) == "PONG"
    web = sh(app, "cache", "getent hosts web")[1].split()[0]
    assert ipaddress.IPv4Address(web) in ipaddress.IPv4Network(BACK), web  # web's other NIC, on `back`


def test_declared_machine_is_found_by_its_name(app: Path) -> None:
    assert redis_ping(app, "edge", "worker") == "PONG"
    _, a = sh(app, "edge", "getent hosts worker")
    _, b = sh(app, "edge", "getent hosts job")
    assert a.split()[0] == b.split()[0]  # services of a machine share its address, as a pod's do


def test_networks_isolate_front_from_back(app: Path) -> None:
    code, out = sh(app, "edge", "getent hosts cache")
    assert code != 0, f"`cache` is only on `back`, yet `edge` (front only) resolved it: {out}"
    _, address = sh(app, "web", "getent hosts cache")
    code, out = sh(app, "edge", f"timeout 5 redis-cli -h {address.split()[0]} ping")
    assert "PONG" not in out, "a front-only container reached a back-only service"
    assert redis_ping(app, "edge", "web") == "PONG"  # ...while the same probe works on the shared network


def test_internal_network_has_no_way_out(app: Path) -> None:
    """A listener on the host's loopback: reached through user-mode networking's gateway from a member
    of a non-internal network, and not at all from a member of an internal network only."""
    with loopback_listener() as (port, hits):
        code, out = sh(app, "web", f"echo hi | nc -w 3 10.0.2.2 {port}")
        assert wait_for(lambda: hits), f"web (front + back) could not reach the host: {code} {out}"
        hits.clear()
        sh(app, "cache", f"echo hi | nc -w 3 10.0.2.2 {port}")
        time.sleep(1)
        assert not hits, "a member of an internal network only reached the host's loopback"
    _, resolv = sh(app, "cache", "cat /etc/resolv.conf")
    assert "10.0.2.3" not in resolv  # no DNS forwarder out of the host either


def test_two_environments_cannot_reach_each_other(app: Path, tmp_path: Path) -> None:
    _, worker = sh(app, "job", "getent hosts worker")
    address = worker.split()[0]
    with environment_up(write_env(tmp_path, "other", OTHER)) as other:
        code, out = sh(other, "probe", "getent hosts worker")
        assert code != 0, f"another environment resolved `worker`: {out}"
        code, out = sh(other, "probe", f"timeout 5 redis-cli -h {address} ping")
        assert "PONG" not in out, "a container of another environment reached this environment's member"


def test_restarted_member_is_found_again(app: Path) -> None:
    status = json.loads(run_vmctl("-f", str(app), "status", "--json").stdout)
    pid = next(m["pid"] for m in status["machines"] if m["name"] == "cache")
    os.kill(pid, signal.SIGKILL)  # the guest is gone; `up` makes it again
    assert wait_for(lambda: machine_state(app, "cache") != "running", timeout=30)
    code, out = sh(app, "web", "timeout 5 redis-cli -h cache ping")
    assert "PONG" not in out
    up = run_vmctl("-f", str(app), "up", "cache", "--timeout", "180")
    assert up.returncode == 0, up.stderr
    assert redis_ping(app, "web", "cache") == "PONG"


REPLICAS = f"""\
name: netrep
services:
  api:                        # two microVMs, api-1 and api-2, both found as `api`
    image: ./tools.tar
    command: {REDIS}
    deploy: {{replicas: 2}}
    ports: ["6379"]
  cli:                        # two host containers
    image: ./tools.tar
    isolation: container
    command: ["sleep", "3600"]
    scale: 2
    depends_on: [api]
"""


def test_replicas_are_members_of_their_own_found_by_the_service_name(tmp_path: Path) -> None:
    with environment_up(write_env(tmp_path, "rep", REPLICAS)) as file:
        ps = json.loads(run_vmctl("-f", str(file), "ps", "-a", "--json").stdout)
        assert sorted((s["name"], s["state"]) for s in ps["services"]) == [
            ("api-1", "running"), ("api-2", "running"), ("cli-1", "running"), ("cli-2", "running")]
        _, one = sh(file, "cli-1", "getent hosts api-1")
        _, two = sh(file, "cli-2", "getent hosts api-2")
        assert one.split()[0] != two.split()[0]
        _, both = sh(file, "cli-1", "nslookup api")
        assert {one.split()[0], two.split()[0]} <= set(both.split()), both  # `api`: every instance's address
        assert redis_ping(file, "cli-2", "api") == "PONG"
        assert redis_ping(file, "cli-1", "api-2") == "PONG"
        _, hostname = sh(file, "api", "cat /etc/hostname")  # `exec api` is the first instance
        assert hostname.strip() == "api-1"
        second = run_vmctl("-f", str(file), "exec", "--index", "2", "api", "--", "cat", "/etc/hostname")
        assert (second.returncode, second.stdout.strip()) == (0, "api-2"), second  # compose's `--index`
        beyond = run_vmctl("-f", str(file), "exec", "--index", "3", "api", "--", "true")
        assert beyond.returncode == 2 and "service `api` has 2 instance(s)" in beyond.stderr, beyond
        ports = {s["name"]: s["ports"][0]["host_port"] for s in ps["services"] if s["name"].startswith("api")}
        assert len(set(ports.values())) == 2  # each instance published on a free port of its own
        logs = run_vmctl("-f", str(file), "logs", "--index", "2", "api")
        prefixes = {line.split("|")[0].strip() for line in logs.stdout.splitlines() if "|" in line}
        assert logs.returncode == 0 and prefixes == {"api-2"}, logs
        port = run_vmctl("-f", str(file), "port", "--index", "2", "api", "6379")
        assert port.stdout.strip() == f"127.0.0.1:{ports['api-2']}", port


# ---------------------------------------------------------------------------------------------- helpers


class loopback_listener:  # noqa: N801 - used as a context manager
    """A TCP listener on 127.0.0.1 that counts connections, for as long as the block runs."""

    def __enter__(self) -> tuple[int, list[bool]]:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.hits: list[bool] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self.sock.getsockname()[1], self.hits

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.hits.append(True)
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def machine_state(file: Path, name: str) -> str:
    status = json.loads(run_vmctl("-f", str(file), "status", "--json").stdout)
    return str(next(m["state"] for m in status["machines"] if m["name"] == name))


def wait_for(check: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return True
        time.sleep(0.2)
    return False


def test_example_application_answers(tmp_path: Path) -> None:
    """examples/app.yaml, as the README's main command brings it up: the page counts visits in `cache`."""
    build_image("tools", IMAGES_DIR)

    def page() -> str:
        for _ in range(40):  # the first connections can be reset while httpd starts listening
            try:
                with urllib.request.urlopen("http://127.0.0.1:8090/cgi-bin/hits.cgi", timeout=10) as r:
                    return str(r.read().decode())
            except OSError:
                time.sleep(0.5)
        return ""

    with environment_up(EXAMPLES / "app.yaml"):
        first, second = page(), page()
    assert "served by: web" in first, first
    counts = [int(p.split("visits: ")[1].split()[0]) for p in (first, second)]
    assert counts[1] == counts[0] + 1, (first, second)
