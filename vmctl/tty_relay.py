"""The terminal of a host container with `tty: true`: a process that holds the pty's master end.

runc creates the container's terminal and sends its master end to `--console-socket`; someone has to
hold it for as long as the container runs, or the container's writes fail. vmctl's commands end at
once, so `host_container` starts this relay in a session of its own: fd 3 is the listening socket
(bound before `runc create`, so runc never finds nobody there), stdout is where the output goes (the
log, or the stamper's pipe, or the terminal of `vmctl run`), and stdin, with `--stdin`, is copied to the
terminal (`stdin_open`, or what is typed at `vmctl run`). For `vmctl run` it runs in vmctl's process
group, so the kernel's SIGWINCH reaches it when our terminal is resized, and it gives the container's
terminal the new size.
It ends when the container has closed its terminal (EIO on the master), or after ACCEPT_SECONDS
when runc never connected.

    python -m vmctl.tty_relay [--stdin]
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import select
import signal
import socket
import sys
import termios
import threading
import tty
from collections.abc import Iterator

ACCEPT_SECONDS = 60.0
LISTEN_FD = 3


def receive_master(listener: socket.socket) -> int:
    """The descriptor runc sends (SCM_RIGHTS) over the one connection it makes."""
    listener.settimeout(ACCEPT_SECONDS)
    conn, _ = listener.accept()
    with conn:
        fds = array.array("i")
        _, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not fds:
        raise OSError("runc sent no terminal")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]


@contextlib.contextmanager
def window_changes() -> Iterator[int]:
    """A descriptor that turns readable whenever our terminal is resized (SIGWINCH), for a select loop:
    the handler only writes a byte, the loop does the work (a handler must not enter paramiko's locks).
    Off the main thread, which gets no signals, it never turns readable."""
    r, w = os.pipe()
    os.set_blocking(w, False)

    def changed(_signum: int, _frame: object) -> None:
        with contextlib.suppress(BlockingIOError):  # a byte is waiting already: one is enough
            os.write(w, b"\0")

    installed = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGWINCH, changed) if installed else None
    try:
        yield r
    finally:
        if installed:
            signal.signal(signal.SIGWINCH, previous)
        os.close(r)
        os.close(w)


def terminal_size() -> tuple[int, int] | None:
    """(rows, cols) of our terminal, None without one (or one of no size yet)."""
    try:
        cols, rows = os.get_terminal_size(sys.stdin.fileno())
    except (OSError, ValueError):
        return None
    return (rows, cols) if rows and cols else None


def drain(fd: int) -> None:
    os.read(fd, 4096)


def _copy_size(master: int) -> None:
    """Our terminal's size to the container's; nothing where our stdin is no terminal (a FIFO, /dev/null)."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))


def relay(master: int, forward_stdin: bool) -> None:
    # `vmctl run` on a terminal: the container's has its size, then follows it (only then can a
    # SIGWINCH reach us: otherwise we run in a session of our own, with no terminal)
    with window_changes() as resized:
        _copy_size(master)
        _copy_loop(master, forward_stdin, resized)


def _copy_loop(master: int, forward_stdin: bool, resized: int) -> None:
    readers = [master, resized, *([0] if forward_stdin else [])]
    while True:
        ready, _, _ = select.select(readers, [], [])
        if resized in ready:  # before what was typed meanwhile: it may depend on it
            drain(resized)
            _copy_size(master)
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed, the container has ended
                return
            if not data:
                return
            os.write(1, data)
        if 0 in ready:
            data = os.read(0, 65536)
            if data:
                os.write(master, data)
            else:
                readers.remove(0)  # input ended; the terminal stays open, as docker's does


@contextlib.contextmanager
def raw_terminal() -> Iterator[None]:
    """Our terminal in raw mode for the block (when stdin is one): keys reach the other end as typed,
    and its terminal does the echo and the line editing."""
    if not sys.stdin.isatty():
        yield
        return
    saved = termios.tcgetattr(sys.stdin)
    try:
        tty.setraw(sys.stdin.fileno())
        yield
    finally:
        termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def main(argv: list[str]) -> int:
    with socket.socket(fileno=LISTEN_FD) as listener:
        try:
            master = receive_master(listener)
        except OSError as e:
            print(f"tty relay: no terminal from runc: {e}", file=sys.stderr)
            return 1
    try:
        relay(master, "--stdin" in argv)
    finally:
        os.close(master)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
