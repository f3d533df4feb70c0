"""Host ports: resolve the published ports of a machine into concrete forwards, and check they are free."""

from __future__ import annotations

import socket
from collections.abc import Iterable

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
