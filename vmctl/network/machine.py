"""One machine's part of the environment network, for `up`: its taps before the domain is defined,
their move onto the bridges once QEMU holds them, and the guest's addresses once it answers SSH."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmctl.network import guest as guest_net
from vmctl.network.host import EnvNetwork
from vmctl.network.plan import Member, NetworkPlan, Nic
from vmctl.ssh import Guest

FIRST_SLOT = 0x11  # pcie.0 slots after user-mode networking's NIC (0x10)


@dataclass(frozen=True)
class MachineNetwork:
    host: EnvNetwork
    plan: NetworkPlan
    member: Member

    def taps(self) -> list[tuple[str, Nic, int]]:
        """(tap name, NIC, PCI slot) of each NIC, in the member's network order."""
        return [(self.host.tap_name(self.member.name, nic.network), nic, FIRST_SLOT + i)
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
