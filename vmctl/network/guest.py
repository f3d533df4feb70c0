"""The guest side of the environment network: over SSH, after READY (and so after a restore too).

The guest image knows nothing of networks: `templates/guest/network.sh` arrives on stdin and gives
each NIC (found by its MAC) its address and writes the guest's resolv.conf. Its arguments are this
host's own plan values (addresses, MACs), checked again by the script.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmctl.network.plan import Member, NetworkPlan
from vmctl.paths import TEMPLATES_DIR
from vmctl.ssh import Guest

SCRIPT = TEMPLATES_DIR / "guest" / "network.sh"


def script_args(plan: NetworkPlan, member: Member, from_macs: Sequence[str] = ()) -> list[str]:
    """`from_macs`: a template clone's MACs, one per NIC in order, which its NICs still have."""
    froms = [f"@{m}" for m in from_macs] or [""] * len(member.nics)
    return [",".join(plan.nameservers(member)) or "-",
            *(f"{n.mac}={n.cidr}{f}" for n, f in zip(member.nics, froms, strict=True))]


def configure(guest: Guest, plan: NetworkPlan, member: Member, from_macs: Sequence[str] = ()) -> None:
    guest.run(["sh", "-s", "--", *script_args(plan, member, from_macs)], stdin=SCRIPT.read_bytes(), timeout=30,
              check=True)
