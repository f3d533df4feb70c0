"""Host ports: resolve the published ports of a machine into concrete forwards, and check they are free."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable
from pathlib import Path

from vmctl.errors import HostError
from vmctl.render import Forward
from vmctl.spec import PortSpec


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


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range. Asking the kernel for port 0 would hand out an
    ephemeral port, which an outgoing connection (ours, to another guest) may take before QEMU binds it."""
    low, _ = _ephemeral_range()
    lo, hi = (20000, low - 1) if low > 21000 else (low // 2, low - 1)
    for _ in range(200):
        port = random.randint(lo, hi)
        if port_is_free(host, port):
            return port
    raise HostError(f"found no free TCP port on {host} between {lo} and {hi}")


def resolve(machine: str, ports: Iterable[PortSpec], *, check: bool = True) -> list[Forward]:
    """Concrete forwards: fixed host ports must be free now (`check`); `GUEST`-only ports get a free one."""
    out = []
    for p in ports:
        if p.host_port is None:
            out.append(Forward(p.host_ip, free_port(p.host_ip), p.target, p.proto))
            continue
        if check and not port_is_free(p.host_ip, p.host_port, p.proto):
            raise HostError(
                f"machine `{machine}`: host port {p.host_ip}:{p.host_port}/{p.proto} is already in use",
                hint="stop what listens there (`ss -ltnp`), or pick another host port in `ports`",
            )
        out.append(Forward(p.host_ip, p.host_port, p.target, p.proto))
    return out
