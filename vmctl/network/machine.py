"""One machine's part of the environment network, for `up`: its taps before the domain is defined,
their move onto the bridges once QEMU holds them, and the guest's addresses once it answers SSH.
A machine on a declared host has no taps of vmctl's: its NICs are on that host's tunnel bridges
(vmctl/network/tunnel.py), where libvirt makes (and removes) the taps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmctl.network import guest as guest_net
from vmctl.network.host import EnvNetwork
from vmctl.network.plan import Member, NetworkPlan, Nic
from vmctl.network.tunnel import Names
from vmctl.ssh import Guest

FIRST_SLOT = 0x11  # pcie.0 slots after user-mode networking's NIC (0x10)


@dataclass(frozen=True)
class MachineNetwork:
    host: EnvNetwork
    plan: NetworkPlan
    member: Member
    on_host: bool = False  # on a declared host: on its tunnel bridges, libvirt's taps

    def taps(self) -> list[tuple[str, Nic, int]]:
        """(tap name, NIC, PCI slot) of each NIC vmctl makes a tap for, in the member's network order."""
        if self.on_host:
            return []
        return [(self.host.tap_name(self.member.name, nic.network), nic, FIRST_SLOT + i)
                for i, nic in enumerate(self.member.nics)]

    def interfaces(self) -> list[tuple[str | None, str | None, Nic, int]]:
        """(tap, host bridge, NIC, PCI slot) of each NIC: a tap of vmctl's here, a bridge on a host."""
        if not self.on_host:
            return [(tap, None, nic, slot) for tap, nic, slot in self.taps()]
        names = Names(self.host.id)
        return [(None, names.bridge(self.plan.segment(nic.network).index), nic, FIRST_SLOT + i)
                for i, nic in enumerate(self.member.nics)]

    def make_taps(self) -> None:
        names = [tap for tap, _, _ in self.taps()]
        self.host.remove_taps(names)  # a previous boot's, moved into the namespace
        for name in names:
            self.host.make_tap(name)

    def remove_taps(self) -> None:
        self.host.remove_taps([tap for tap, _, _ in self.taps()])

    def join(self) -> None:
        """After the domain started: QEMU holds the taps, so they can move onto the bridges."""
        for tap, nic, _ in self.taps():
            self.host.join_tap(tap, self.plan.segment(nic.network))

    def configure_guest(self, guest: Guest, from_macs: Sequence[str] = ()) -> None:
        guest_net.configure(guest, self.plan, self.member, from_macs)
