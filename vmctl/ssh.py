"""SSH to guests with paramiko: the environment's key, and the guest's host key pinned, never auto-accepted."""

from __future__ import annotations

import base64
import contextlib
import os
import select
import shlex
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from vmctl.errors import GuestError, HostError
from vmctl.hostspec import DEFAULT_KNOWN_HOSTS, HostSpec
from vmctl.tty_relay import drain, raw_terminal, window_changes

GUEST_USER = "root"


def hostkey_from_line(line: str) -> paramiko.PKey:
    kind, blob = line.split()[:2]
    if kind != "ssh-ed25519":
        raise GuestError(f"unexpected host key type `{kind}`")
    return paramiko.Ed25519Key(data=base64.b64decode(blob))


@dataclass(frozen=True)
class Jump:
    """The hypervisor host a remote guest is reached through: its sshd, its key checked against a
    known-hosts file (never accepted when unknown), then a `direct-tcpip` channel to the guest's
    forwarded port on that host's 127.0.0.1."""

    host: HostSpec

    def open(self, timeout: float = 10.0) -> paramiko.SSHClient:
        h = self.host
        assert h.address is not None, f"host `{h.name}` is not reached over SSH"
        known = h.known_hosts or DEFAULT_KNOWN_HOSTS.expanduser()
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.load_host_keys(str(known))
            client.connect(h.address, h.ssh_port, username=h.ssh_user, key_filename=str(h.key) if h.key else None,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           allow_agent=h.key is None, look_for_keys=False)
        except paramiko.BadHostKeyException:
            client.close()
            raise HostError(f"host `{h.name}` ({h.address}) answers with another SSH host key than {known} holds; "
                            "refusing to connect", hint=f"check it with `{h.fingerprint_command()}`") from None
        except (paramiko.SSHException, OSError) as e:
            client.close()
            hint = (f"vmctl never accepts an unknown host key: check it (`{h.fingerprint_command()}`), then add it "
                    f"to {known}") if "not found in known_hosts" in str(e) else None
            raise HostError(f"cannot reach host `{h.name}` ({h.uri}) over SSH at {h.address}:{h.ssh_port}: {e}",
                            hint=hint) from None
        return client

    def channel(self, client: paramiko.SSHClient, port: int) -> paramiko.Channel:
        transport = client.get_transport()
        assert transport is not None
        return transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=10)


def run_on_host(client: paramiko.SSHClient, argv: Sequence[str], *, stdin: bytes | None = None,
                timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    """argv on a host reached by `Jump.open` (quoted, as for a guest); (exit code, stdout, stderr)."""
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_session()
    chan.exec_command(shlex.join(argv))
    return _complete(chan, stdin, timeout)


def _complete(chan: paramiko.Channel, stdin: bytes | None, timeout: float | None) -> tuple[int, bytes, bytes]:
    """Send stdin, read both outputs until the command exits; TimeoutError past `timeout`."""
    chan.settimeout(timeout)
    out, err = bytearray(), bytearray()
    try:
        if stdin is not None:
            chan.sendall(stdin)
        chan.shutdown_write()
        while True:
            if chan.recv_ready():
                out += chan.recv(65536)
            elif chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            else:
                select.select([chan], [], [], 0.05)
    except TimeoutError:
        chan.close()
        raise
    code = chan.recv_exit_status()
    chan.close()
    return code, bytes(out), bytes(err)


_Connection = tuple[paramiko.SSHClient, "paramiko.SSHClient | None"]  # (to the guest, to its host)


class _Kept:
    """Connections `up` opened to see that a guest answers, kept for the first one in this process
    that wants the same guest (the services' start): a second handshake costs ~0.15 s under TCG.
    Each is taken once, by a Guest of the same address, port, pinned key and host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[tuple[str, int, str, str], _Connection] = {}

    def keep(self, key: tuple[str, int, str, str], conn: _Connection) -> None:
        with self._lock:
            old = self._conns.pop(key, None)
            self._conns[key] = conn
        if old is not None:
            _close(old)

    def take(self, key: tuple[str, int, str, str]) -> _Connection | None:
        with self._lock:
            conn = self._conns.pop(key, None)
        transport = conn[0].get_transport() if conn else None
        if conn is not None and (transport is None or not transport.is_active()):
            _close(conn)  # the guest went away since
            return None
        return conn

    def client_for(self, port: int) -> paramiko.SSHClient | None:
        """What is kept for the guest on this forwarded port, if anything (not taken)."""
        with self._lock:
            return next((conn[0] for key, conn in self._conns.items() if key[1] == port), None)

    def release(self, port: int, hostkey: str) -> None:
        """Close what is kept for a guest that is going away (`down`)."""
        blob = hostkey.split()[1] if len(hostkey.split()) > 1 else hostkey
        with self._lock:
            gone = [self._conns.pop(k) for k in list(self._conns) if k[1] == port and k[2] == blob]
        for conn in gone:
            _close(conn)


def _close(conn: _Connection) -> None:
    for client in conn:
        if client is not None:
            client.close()


KEPT = _Kept()


class Guest:
    """An SSH connection to one guest through its forwarded port on 127.0.0.1 (of this machine, or
    of the host it runs on, through that host's sshd: `via`)."""

    def __init__(self, *, name: str, port: int, hostkey: str, key_file: Path, host: str = "127.0.0.1",
                 via: Jump | None = None) -> None:
        self.name, self.host, self.port = name, host, port
        self.hostkey = hostkey_from_line(hostkey)
        self.key_file = key_file
        self.via = via
        self.client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None

    @property
    def _key(self) -> tuple[str, int, str, str]:
        return (self.host, self.port, self.hostkey.get_base64(), self.via.host.name if self.via else "")

    def keep(self) -> None:
        """Hand this open connection to the next Guest of this process for the same guest (KEPT)."""
        if self.client is not None:
            KEPT.keep(self._key, (self.client, self._jump))
            self.client = self._jump = None

    def connect(self, timeout: float = 20.0) -> Guest:
        """Connect, retrying while the forward or the SSH server is not yet answering; a connection
        `up` kept for this guest is taken instead."""
        if (kept := KEPT.take(self._key)) is not None:
            self.client, self._jump = kept
            return self
        deadline = time.monotonic() + timeout
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.key_file))
        last: Exception | None = None
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            host_id = f"[{self.host}]:{self.port}"
            client.get_host_keys().add(host_id, self.hostkey.get_name(), self.hostkey)
            try:
                sock = self._through_host()
                client.connect(self.host, self.port, username=GUEST_USER, pkey=pkey, timeout=5, sock=sock,
                               banner_timeout=5, auth_timeout=5, allow_agent=False, look_for_keys=False)
                self.client = client
                return self
            except paramiko.BadHostKeyException as e:
                client.close()
                raise GuestError(
                    f"machine `{self.name}`: the SSH host key does not match the one the guest announced on "
                    f"its console (got {e.key.get_fingerprint().hex()}); refusing to connect",
                    hint="someone else may be answering on this port; run `vmctl down` and `vmctl up`",
                ) from None
            except paramiko.SSHException as e:
                if "not found in known_hosts" in str(e):
                    raise GuestError(f"machine `{self.name}`: unknown SSH host key; refusing to connect") from None
                last = e
            except OSError as e:
                last = e
            client.close()
            time.sleep(0.1)
        raise GuestError(f"machine `{self.name}`: no SSH connection to {self.host}:{self.port} ({last})",
                         hint=f"check `vmctl status` and `vmctl logs {self.name}`")

    def _through_host(self) -> paramiko.Channel | None:
        """A channel to the guest's port on its host, the host's SSH connection opened once."""
        if self.via is None:
            return None
        if self._jump is None:
            self._jump = self.via.open()
        return self.via.channel(self._jump, self.port)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def __enter__(self) -> Guest:
        return self if self.client else self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _channel(self, argv: Sequence[str], *, pty: bool = False) -> paramiko.Channel:
        assert self.client is not None, "connect() first"
        transport = self.client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        if pty:
            cols, rows = os.get_terminal_size() if sys.stdout.isatty() else (80, 24)
            chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
        # SSH carries one command string, run by the guest's shell: quote every argument so that
        # the guest sees exactly this argv, whatever the values contain.
        chan.exec_command(shlex.join(argv))
        return chan

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None,
            check: bool = False) -> tuple[int, bytes, bytes]:
        """Run argv in the guest; return (exit code, stdout, stderr)."""
        try:
            code, out, err = _complete(self._channel(argv), stdin, timeout)
        except TimeoutError:
            raise GuestError(f"machine `{self.name}`: `{shlex.join(argv)}` did not finish within {timeout} s") from None
        if check and code != 0:
            detail = err.decode(errors="replace").strip()[-800:]
            raise GuestError(f"machine `{self.name}`: `{shlex.join(argv)}` failed with exit code {code}: {detail}")
        return code, out, err

    def stream(self, argv: Sequence[str], out: BinaryIO, err: BinaryIO, *, stdin: BinaryIO | None = None) -> int:
        """Run argv, copying its output as it comes; return its exit code."""
        chan = self._channel(argv)
        if stdin is None:
            chan.shutdown_write()
        stdin_open = stdin is not None
        while True:
            readers: list[Any] = [chan]
            if stdin_open:
                readers.append(stdin)
            ready, _, _ = select.select(readers, [], [], 0.1)
            if stdin_open and stdin in ready:
                data = os.read(stdin.fileno(), 65536)  # type: ignore[union-attr]
                if data:
                    chan.sendall(data)
                else:
                    chan.shutdown_write()
                    stdin_open = False
            while chan.recv_ready():
                out.write(chan.recv(65536))
                out.flush()
            while chan.recv_stderr_ready():
                err.write(chan.recv_stderr(65536))
                err.flush()
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
        code = chan.recv_exit_status()
        chan.close()
        return code

    def interactive(self, argv: Sequence[str] | None = None,
                    on_resize: Callable[[int, int], None] | None = None) -> int:
        """A real terminal: raw mode locally, a pty in the guest, window size passed on, also when ours
        changes (and then to `on_resize(rows, cols)`, for a terminal behind the guest's pty)."""
        assert self.client is not None
        transport = self.client.get_transport()
        assert transport is not None
        chan = transport.open_session()
        cols, rows = os.get_terminal_size() if sys.stdin.isatty() else (80, 24)
        chan.get_pty(term=os.environ.get("TERM", "xterm"), width=cols, height=rows)
        if argv:
            chan.exec_command(shlex.join(argv))
        else:
            chan.invoke_shell()
        with raw_terminal(), window_changes() as resized:
            while True:
                ready, _, _ = select.select([chan, sys.stdin, resized], [], [])
                if resized in ready:  # our terminal was resized: so is the guest's pty (its SIGWINCH)
                    drain(resized)
                    with contextlib.suppress(OSError, paramiko.SSHException, GuestError):  # it has just ended
                        cols, rows = os.get_terminal_size()
                        chan.resize_pty(width=cols, height=rows)
                        if on_resize is not None:
                            on_resize(rows, cols)
                if chan in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                if sys.stdin in ready:
                    data = os.read(sys.stdin.fileno(), 4096)
                    if not data:
                        chan.shutdown_write()
                    else:
                        chan.sendall(data)
        return chan.recv_exit_status()
