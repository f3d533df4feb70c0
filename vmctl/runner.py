"""One way to run a program: argv lists only (never a shell), logged in debug mode, failures reported once."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmctl.errors import CommandFailed, HostError

log = logging.getLogger("vmctl.run")

Arg = str | os.PathLike[str]


def which(program: str, *, package: str | None = None) -> str:
    """Return the path of `program`, or fail naming the Debian package that provides it."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if not found:
        hint = f"install it with `apt-get install {package or program}`"
        raise HostError(f"`{program}` is not installed", hint=hint)
    return found


def run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` and return the completed process; raise CommandFailed on a non-zero exit when `check`."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    full_env = None if env is None else {**os.environ, **env}
    pipe = subprocess.PIPE if capture else None
    try:
        child = subprocess.Popen(args, stdin=None if input is None else subprocess.PIPE, stdout=pipe, stderr=pipe,
                                 cwd=cwd, env=full_env)
    except FileNotFoundError as e:
        raise HostError(f"`{args[0]}` is not installed") from e
    with child:  # (closes the pipes)
        try:
            out, err = child.communicate(input, timeout=timeout)
        except BaseException as e:
            # Ctrl-C or a timeout: the command is over before vmctl goes on, never still finishing behind
            # its back (subprocess.run does not wait after a KeyboardInterrupt: a `mount` interrupted so
            # could complete after the clean-up had looked for its mount).
            child.kill()
            child.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                raise CommandFailed(f"`{shlex.join(args)}` did not finish within {timeout:g} s") from e
            raise
    proc = subprocess.CompletedProcess(args, child.returncode, out, err)
    if check and proc.returncode != 0:
        tail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-8:]
        detail = "\n    ".join(tail)
        raise CommandFailed(
            f"`{shlex.join(args)}` failed with exit code {proc.returncode}" + (f":\n    {detail}" if tail else "")
        )
    return proc


def output(argv: Sequence[Arg], **kwargs: object) -> str:
    """Run `argv` and return its stdout as text."""
    proc = run(argv, **kwargs)  # type: ignore[arg-type]
    return proc.stdout.decode(errors="replace")


def spawn(argv: Sequence[Arg], *, stdout: int | None = subprocess.DEVNULL, stderr: int | None = subprocess.PIPE,
          new_session: bool = False) -> subprocess.Popen[bytes]:
    """Start `argv` in the background (no shell); the caller owns the process."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s &", shlex.join(args))
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=new_session)
    except FileNotFoundError as e:
        raise HostError(f"`{args[0]}` is not installed") from e
