"""An ICMP echo client: a request to ADDRESS every INTERVAL seconds, the monotonic time of each reply
on stdout, until it is stopped.

    python -m vmctl.compare.pinger ADDRESS INTERVAL

compare's portability runs it in a network namespace on the environment network (nsenter), so the
answers are what a client of the moving machine saw. ICMP because the guest's kernel answers it,
whatever the workload serves; a raw socket, so it needs root (as host containers do).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys
import time

ECHO_REQUEST, ECHO_REPLY = 8, 0
PAYLOAD = b"vmctl-portability"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + PAYLOAD), ident, seq) + PAYLOAD


def is_reply(packet: bytes, ident: int) -> bool:
    """A raw ICMP socket reads the IP header too: skip it (IHL words), then match our identifier."""
    start = (packet[0] & 0x0F) * 4
    if len(packet) < start + 8:
        return False
    kind, _code, _sum, got = struct.unpack("!BBHH", packet[start:start + 6])
    return bool(kind == ECHO_REPLY and got == ident)


def main(argv: list[str]) -> int:
    address, interval = argv[0], float(argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, seq, due = os.getpid() & 0xFFFF, 0, time.monotonic()
    while True:
        now = time.monotonic()
        if now >= due:
            with contextlib.suppress(OSError):  # unreachable for a moment (a neighbour being learnt): go on
                sock.sendto(echo_request(ident, seq), (address, 0))
            seq, due = (seq + 1) & 0xFFFF, max(due + interval, now)
        ready, _, _ = select.select([sock], [], [], max(0.0, due - time.monotonic()))
        if ready and is_reply(sock.recv(2048), ident):
            print(f"{time.monotonic():.6f}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
