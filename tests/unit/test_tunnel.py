"""The tunnel's pure parts: names, VNIs, and the `ip`/`bridge` batch lines built from what a node has."""

from __future__ import annotations

import pytest

from vmctl.network import tunnel

NAMES = tunnel.Names("0123456789")


def test_names_fit_ifnamsiz_and_vnis_differ_per_environment_and_segment() -> None:
    assert len(NAMES.bridge(999)) <= 15 and len(NAMES.vxlan(999)) <= 15
    vnis = {tunnel.Names(i).vni(k) for i in ("0123456789", "abcdef0123") for k in range(4)}
    assert len(vnis) == 8 and all(0 < v < 2**24 for v in vnis)


def test_host_end_commands_add_only_what_is_missing() -> None:
    lines = tunnel.host_end_commands(NAMES, [0, 1], {"vb01234567890"})
    assert "link add vb01234567890 type bridge" not in lines
    assert f"link add vx01234567890 type vxlan id {NAMES.vni(0)} dstport 4789" in lines
    assert "link add vb01234567891 type bridge" in lines
    assert tunnel.host_end_commands(NAMES, [0], {"vb01234567890", "vx01234567890"}) == []


def test_fdb_parsing_and_appends() -> None:
    shown = ("00:00:00:00:00:00 dst 10.79.0.1 self permanent\n"
             "52:54:00:aa:bb:cc dst 10.79.0.12 self\n")
    assert tunnel.flood_peers(shown) == {"10.79.0.1"}
    assert tunnel.fdb_commands("vx0", ["10.79.0.1", "10.79.0.12"], {"10.79.0.1"}) == [
        "fdb append 00:00:00:00:00:00 dev vx0 dst 10.79.0.12"]
    with pytest.raises(ValueError):  # nothing but an address reaches an `ip` line
        tunnel.fdb_commands("vx0", ["10.0.0.1 dev lo"], set())


def test_remove_commands_take_only_this_environments_devices() -> None:
    links = tunnel.link_names("1: lo: <LOOPBACK>\n7: vx01234567890@if2: <UP>\n8: vb01234567890: <UP>\n"
                              "9: vbabcdef01230: <UP>\n10: vnet3: <UP>\n")
    assert tunnel.remove_commands(NAMES, links) == ["link delete vx01234567890", "link delete vb01234567890"]
