"""The environment network as planned from the spec (pure: no namespaces, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmctl import spec
from vmctl.errors import SpecError
from vmctl.network.host import EnvNetwork, dnsmasq_conf
from vmctl.network.plan import Kind, plan

APP = """
name: app
networks:
  front: {}
  back: {internal: true}
machines:
  worker: {}
services:
  web:
    image: x
    networks: [front, back]
    hostname: www
  cache:
    image: x
    networks:
      back: {aliases: [redis]}
  job:
    image: x
    machine: worker
  proxy:
    image: x
    isolation: container
    networks: [front]
"""


def load(tmp_path: Path, text: str) -> spec.Environment:
    (tmp_path / "vmctl.yaml").write_text(text)
    return spec.load_environment(tmp_path / "vmctl.yaml")


def test_segments_members_and_names(tmp_path: Path) -> None:
    env = load(tmp_path, APP)
    assert [n.name for n in env.networks] == ["default", "front", "back"]
    p = plan(env)
    assert [(s.name, s.subnet, s.resolver, s.internal) for s in p.segments] == [
        ("default", "10.77.0.0/24", "10.77.0.1", False), ("front", "10.77.1.0/24", "10.77.1.1", False),
        ("back", "10.77.2.0/24", "10.77.2.1", True)]
    web = p.member("web")
    assert web is not None and web.kind is Kind.MACHINE and [n.network for n in web.nics] == ["front", "back"]
    assert web.nics[0].names == ("web", "www")
    cache = p.member("cache")
    assert cache is not None and cache.internal_only and cache.nics[0].names == ("cache", "redis")
    worker = p.member("worker")  # a declared machine answers to its name and to its services'
    assert worker is not None and worker.nics[0].names == ("worker", "job") and worker.nics[0].network == "default"
    proxy = p.member("proxy")
    assert proxy is not None and proxy.kind is Kind.CONTAINER
    back = p.resolver_of(cache)
    assert back.networks == ("back",) and back.address == "10.77.2.1"
    assert dict(p.records(back)) == {"web": web.nics[1].address, "www": web.nics[1].address,
                                     "cache": cache.nics[0].address, "redis": cache.nics[0].address}
    assert "proxy" not in dict(p.records(back))  # compose's isolation: names only where a member is
    both = p.resolver_of(web)  # on front and back: one resolver answers for both, from front's subnet
    assert both.networks == ("front", "back") and both.address == "10.77.1.254"
    assert dict(p.records(both))["cache"] == cache.nics[0].address
    assert dict(p.records(both))["proxy"] == proxy.nics[0].address


def test_nameservers_follow_internal(tmp_path: Path) -> None:
    p = plan(load(tmp_path, APP))
    web, cache = p.member("web"), p.member("cache")
    assert web is not None and cache is not None
    assert p.nameservers(web) == ("10.77.1.254", "10.0.2.3")
    assert p.nameservers(cache) == ("10.77.2.1",)  # internal only: no forwarder out of the host


def test_addresses_are_kept_across_ups(tmp_path: Path) -> None:
    env = load(tmp_path, APP)
    first = plan(env).remembered()
    # another `up` after a member was added in front of the others keeps every known address
    env2 = load(tmp_path, APP.replace("services:\n", "services:\n  new:\n    image: x\n    networks: [front]\n"))
    second = plan(env2, first).remembered()
    for member, nets in first["addresses"].items():
        assert second["addresses"][member] == nets
    assert second["resolvers"]["front,back"] == first["resolvers"]["front,back"]
    assert second["addresses"]["new"]["front"] not in first["addresses"]["web"].values()
    assert plan(env, first) == plan(env, first)


def test_unique_addresses_and_macs(tmp_path: Path) -> None:
    text = "services:\n" + "".join(f"  s{i}: {{image: x}}\n" for i in range(60))
    p = plan(load(tmp_path, text))
    addresses = [n.address for m in p.members for n in m.nics]
    macs = [n.mac for m in p.members for n in m.nics]
    assert len(set(addresses)) == len(addresses) == 60 and "10.77.0.1" not in addresses
    assert len(set(macs)) == 60 and all(m.startswith("52:54:00:") for m in macs)


def test_chosen_macs_and_network_priority(tmp_path: Path) -> None:
    """`mac_address` (the service's own: its first network by `priority`; or per network) is its NIC's, in a
    dedicated microVM and a host container alike; a derived MAC never takes a chosen one."""
    derived = plan(load(tmp_path, "networks: {front: {}}\nservices:\n  b: {image: x, networks: [front]}\n")).member("b")
    assert derived is not None  # the MAC `b` gets when nobody has chosen it
    text = f"""
networks: {{front: {{}}, back: {{}}}}
services:
  web:
    image: x
    mac_address: 02:42:AC:11:00:02
    networks:
      back: {{priority: 1}}
      front: {{priority: 5}}
  proxy:
    image: x
    isolation: container
    networks:
      front: {{mac_address: "{derived.nics[0].mac}"}}
  a: {{image: x, networks: [front]}}
  b: {{image: x, networks: [front]}}
"""
    p = plan(load(tmp_path, text))
    web, proxy = p.member("web"), p.member("proxy")
    assert web is not None and web.kind is Kind.MACHINE and proxy is not None and proxy.kind is Kind.CONTAINER
    assert [(n.network, n.mac) for n in web.nics][0] == ("front", "02:42:ac:11:00:02")  # priority 5 first
    assert [n.network for n in web.nics] == ["front", "back"] and web.nics[1].mac.startswith("52:54:00:")
    b = p.member("b")
    assert b is not None and proxy.nics[0].mac == derived.nics[0].mac != b.nics[0].mac  # `b` derived another
    macs = [n.mac for m in p.members for n in m.nics]
    assert len(set(macs)) == len(macs)
    bed = load(tmp_path, text)
    assert [a.network for a in bed.service("web").networks] == ["front", "back"]


OWN_SUBNETS = """
networks:
  front: {ipam: {config: [{subnet: 172.28.5.0/24, gateway: 172.28.5.1}]}}
  back: {ipam: {driver: default, config: [{subnet: 10.77.0.0/20}]}}  # in the pool: the others step around it
services:
  web:
    image: x
    networks:
      front: {ipv4_address: 172.28.5.2}
      back: {}
  db:
    image: x
    isolation: container
    networks:
      front: {ipv4_address: 172.28.5.200}
  b: {image: x, networks: [front]}
  a: {image: x}
"""


def test_own_subnets_and_fixed_addresses(tmp_path: Path) -> None:
    """`ipam`'s subnet is the segment's (its prefix the NICs'), `ipv4_address` the NIC's, before any address
    the previous `up` handed out; automatic /24s keep clear of the networks' own subnets."""
    env = load(tmp_path, OWN_SUBNETS)
    p = plan(env, {"addresses": {"b": {"front": "172.28.5.2"}}})  # b had web's address before web fixed it
    assert {s.name: s.subnet for s in p.segments} == {
        "default": "10.77.16.0/24", "front": "172.28.5.0/24", "back": "10.77.0.0/20"}
    web, db, b = p.member("web"), p.member("db"), p.member("b")
    assert web is not None and db is not None and b is not None
    assert [(n.network, n.cidr) for n in web.nics] == [("front", "172.28.5.2/24"), ("back", "10.77.0.2/20")]
    assert db.nics[0].cidr == "172.28.5.200/24" and db.kind is Kind.CONTAINER
    assert b.nics[0].address == "172.28.5.3"  # the fixed .2 is web's; .1 is the resolver
    assert p.resolver_of(web).address == "172.28.5.254" and p.segment("front").resolver == "172.28.5.1"
    again = plan(env, p.remembered())
    assert again == p


@pytest.mark.parametrize(("text", "message", "key"), [
    (OWN_SUBNETS.replace("10.77.0.0/20", "172.28.0.0/16"), "overlaps network `front`", "networks.back.ipam"),
    (OWN_SUBNETS.replace("ipv4_address: 172.28.5.2", "ipv4_address: 172.28.5.1"), "is not a member's address",
     "services.web.networks.front.ipv4_address"),
    (OWN_SUBNETS.replace("172.28.5.200", "172.28.5.2"), "is `web`'s address on network `front` already",
     "services.db.networks.front.ipv4_address"),
    (OWN_SUBNETS.replace("gateway: 172.28.5.1", "gateway: 172.28.5.9"), "is not `172.28.5.1`",
     "networks.front.ipam.config[0].gateway"),
    (OWN_SUBNETS.replace("[{subnet: 10.77.0.0/20}]", "[{subnet: 10.77.0.0/20}, {subnet: 10.78.0.0/20}]"),
     "list of one address pool", "networks.back.ipam.config"),
    (OWN_SUBNETS.replace("172.28.5.0/24, gateway", "172.28.5.0/30, gateway"), "cannot be an environment network's",
     "networks.front.ipam.config[0].subnet"),
    (OWN_SUBNETS.replace("10.77.0.0/20", "10.0.0.0/16"), "cannot be an environment network's",
     "networks.back.ipam.config[0].subnet"),
    ("networks: {front: {enable_ipv4: false}}\nservices:\n  a: {image: x, networks: [front]}\n",
     "`enable_ipv4: false` is not supported", "networks.front.enable_ipv4"),
    ("machines:\n  w: {}\nnetworks: {front: {ipam: {config: [{subnet: 172.28.0.0/24}]}}}\nservices:\n"
     "  a: {image: x, machine: w, networks: {front: {ipv4_address: 172.28.0.5}}}\n", "whose NICs its services share",
     "services.a.networks.front.ipv4_address"),
    ("networks: {front: {ipam: {config: [{subnet: 172.28.0.0/24}]}}}\nservices:\n"
     "  a: {image: x, scale: 2, networks: {front: {ipv4_address: 172.28.0.5}}}\n", "every instance would have",
     "services.a.ipv4_address"),
])
def test_bad_own_subnets_and_addresses(tmp_path: Path, text: str, message: str, key: str) -> None:
    with pytest.raises(SpecError) as err:
        load(tmp_path, text)
    assert message in err.value.render()
    assert err.value.where is not None and err.value.where.line is not None
    assert (err.value.where.key or "").startswith(key), err.value.where.key


@pytest.mark.parametrize(("text", "message", "key"), [
    ("services:\n  a: {image: x, networks: [front]}\n", "undeclared network `front`", "services.a.networks.front"),
    ("networks: {Front: {}}\nservices:\n  a: {image: x}\n", "invalid name", "networks"),
    ("networks: {front: {driver: overlay}}\nservices:\n  a: {image: x}\n", "not supported", "networks.front.driver"),
    ("networks: {front: {external: true}}\nservices:\n  a: {image: x}\n", "not supported", "networks.front.external"),
    ("services:\n  a: {image: x, hostname: b}\n  b: {image: x}\n", "claimed twice", "services.b"),
    ("services:\n  a: {image: x, networks: {default: {aliases: [b]}}}\n  b: {image: x, isolation: container}\n",
     "claimed twice", "services"),
    ("machines:\n  w: {networks: [default]}\nnetworks: {front: {}}\nservices:\n  a: {image: x, machine: w, "
     "networks: [front]}\n", "not on network `front`", "services.a.networks.front"),
    ("machines:\n  w: {}\nservices:\n  a: {image: x, machine: w, mac_address: '02:00:00:00:00:01'}\n",
     "whose NICs its services share", "services.a.mac_address"),
    ("services:\n  a: {image: x, networks: {default: {mac_address: '02:00:00:00:00:01'}}, "
     "mac_address: '02:00:00:00:00:02'}\n", "has a `mac_address` of its own already", "services.a.mac_address"),
])
def test_bad_networks_name_file_line_and_key(tmp_path: Path, text: str, message: str, key: str) -> None:
    with pytest.raises(SpecError) as err:
        load(tmp_path, text)
    assert message in err.value.render()
    assert err.value.where is not None and err.value.where.line is not None
    assert (err.value.where.key or "").startswith(key)


def test_dnsmasq_conf_answers_only_its_names(tmp_path: Path) -> None:
    p = plan(load(tmp_path, APP))
    cache = p.member("cache")
    assert cache is not None
    back = p.resolver_of(cache)
    conf = dnsmasq_conf(back.address, p.records(back), tmp_path / "p", tmp_path / "l")
    lines = conf.splitlines()
    assert "no-resolv" in lines and "listen-address=10.77.2.1" in lines and "bind-interfaces" in lines
    assert f"host-record=redis,{cache.nics[0].address}" in lines and "local=/redis/" in lines
    assert not any(line.startswith("server=") for line in lines)  # nothing upstream: others are REFUSED


def test_host_names_fit_ifnamsiz(tmp_path: Path) -> None:
    net = EnvNetwork(str(tmp_path))
    tap = net.tap_name("a-very-long-machine-name-of-32ch", "a-network-name")
    assert len(tap) <= 15 and tap.startswith("vt" + net.id[:6])
    other = EnvNetwork(str(tmp_path / "x"))
    assert net.tap_name("a", "front") != net.tap_name("a", "back") != other.tap_name("a", "back")


def test_a_replicated_service_name_answers_with_every_instance(tmp_path: Path) -> None:
    env = load(tmp_path, "services:\n  api: {image: x.tar, scale: 3}\n  web: {image: x.tar, isolation: container}\n")
    p = plan(env)
    records = p.records(p.resolvers[0])
    instances = sorted(address for name, address in records if name.startswith("api-"))
    assert sorted(address for name, address in records if name == "api") == instances and len(instances) == 3
    assert [name for name, _ in records].count("web") == 1
    conf = dnsmasq_conf("10.77.0.1", records, tmp_path / "pid", tmp_path / "log")
    assert conf.count("host-record=api,") == 3 and conf.count("local=/api/") == 1
