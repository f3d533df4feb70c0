"""One way to fail: every error a user can cause or meet is a VmctlError with an exit code.

Exit codes (documented in the README):
  0 success, 1 runtime failure (a VM did not boot, libvirt refused...),
  2 usage error (bad YAML, bad flag, bad name), 130 interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Where:
    """A place in an environment file: file, line (1-based), key path like `machines.web.memory`, and the
    variables an interpolated value came from."""

    file: str
    line: int | None = None
    key: str | None = None
    variables: tuple[str, ...] = ()  # the `${VAR}`s the value was interpolated from

    def __str__(self) -> str:
        place = self.file
        if self.line is not None:
            place += f":{self.line}"
        if self.key:
            place += f": `{self.key}`"
        if self.variables:
            place += " (from " + ", ".join(f"`${{{v}}}`" for v in self.variables) + ")"
        return place


class VmctlError(Exception):
    """A failure with a message meant for a person, an optional hint and an exit code."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, hint: str | None = None, where: Where | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class UsageError(VmctlError):
    """The user asked for something invalid: a bad file, key, value or flag. Exit code 2."""

    exit_code = EXIT_USAGE


class SpecError(UsageError):
    """An environment file is invalid."""


class HostError(VmctlError):
    """The host cannot do what was asked (missing tool, KVM unusable, libvirt unreachable)."""


class GuestError(VmctlError):
    """A guest did not become ready, or misbehaved (timeout, panic, host-key mismatch)."""


class CommandFailed(VmctlError):
    """A subprocess failed; the message carries the command and the tail of its stderr."""
