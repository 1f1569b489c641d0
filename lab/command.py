"""Argument-list commands and their results."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from lab.errors import CommandFailed

__all__ = ["CommandResult", "as_argv", "quote_argv"]


def as_argv(argv: object) -> list[str]:
    """Validate an argument list; a plain string is refused (no shell strings)."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("commands are argument lists, not strings: pass ['ls', '-l'], not 'ls -l'")
    items = [str(a) for a in argv]  # type: ignore[attr-defined]
    if not items:
        raise ValueError("empty command")
    return items


def quote_argv(argv: list[str]) -> str:
    """The single place an argv becomes a shell string: the SSH boundary and logs."""
    return shlex.join(as_argv(argv))


@dataclass(frozen=True)
class CommandResult:
    """What a command in a guest returned."""

    argv: list[str]
    exit_status: int
    stdout: bytes = b""
    stderr: bytes = b""
    elapsed: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def check(self) -> CommandResult:
        """Return self, or raise CommandFailed if the command failed."""
        if self.exit_status != 0:
            raise CommandFailed(self.argv, self.exit_status, self.stdout, self.stderr)
        return self
