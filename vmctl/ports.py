"""Host ports: resolve the published ports of a machine into concrete forwards, and check they are free."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from vmctl.errors import HostError
from vmctl.render import Forward
from vmctl.spec import PortSpec

PortCheck = Callable[[str, int, str], bool]  # (address, port, proto) -> free where the forwards will bind


def port_is_free(host: str, port: int, proto: str = "tcp") -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def claiming(check: PortCheck) -> PortCheck:
    """`check`, with each port it finds free claimed from then on: nothing binds a port until QEMU starts,
    so without this a later machine of the same `up` could be handed the same one."""
    claimed: set[tuple[str, int, str]] = set()

    def is_free(address: str, port: int, proto: str) -> bool:
        if (address, port, proto) in claimed or not check(address, port, proto):
            return False
        claimed.add((address, port, proto))
        return True
    return is_free


def free_port(host: str = "127.0.0.1", is_free: PortCheck = port_is_free) -> int:
    """A free port below the kernel's ephemeral range. Asking the kernel for port 0 would hand out an
    ephemeral port, which an outgoing connection (ours, to another guest) may take before QEMU binds it.
    `is_free`: where it must be free (this machine's by default; a remote host's: remote.port_check)."""
    low, _ = _ephemeral_range()
    lo, hi = (20000, low - 1) if low > 21000 else (low // 2, low - 1)
    for _ in range(200):
        port = random.randint(lo, hi)
        if is_free(host, port, "tcp"):
            return port
    raise HostError(f"found no free TCP port on {host} between {lo} and {hi}")


def resolve(machine: str, ports: Iterable[PortSpec], *, check: bool = True, is_free: PortCheck = port_is_free,
            on: str = "") -> list[Forward]:
    """Concrete forwards: fixed host ports must be free now (`check`); `GUEST`-only ports get a free one.
    `on`: the host they bind on, for the error (empty: this machine)."""
    out = []
    for p in ports:
        if p.host_port is None:
            out.append(Forward(p.host_ip, free_port(p.host_ip, is_free), p.target, p.proto))
            continue
        if check and not is_free(p.host_ip, p.host_port, p.proto):
            raise in_use(machine, p.host_ip, p.host_port, p.proto, on)
        out.append(Forward(p.host_ip, p.host_port, p.target, p.proto))
    return out


def in_use(machine: str, host_ip: str, port: int, proto: str, on: str = "") -> HostError:
    where = f" on host `{on}`" if on else ""
    return HostError(f"machine `{machine}`: host port {host_ip}:{port}/{proto} is already in use{where}",
                     hint=f"stop what listens there (`ss -ltnp`{where}), or pick another host port in `ports`")
