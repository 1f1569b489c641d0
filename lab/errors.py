"""The one exception tree of cnlab.

::

    LabError                    every error cnlab raises on purpose
    ├── UsageError              bad command-line input (exit status 2)
    ├── ConfigError             a malformed lab config or scenario file
    ├── PluginError             a plugin failed to load or raised in a hook
    ├── HostSetupError          a missing host package, tool or kernel
    ├── BuildError              an image, initramfs or module build failed
    │   └── ModuleSourceError   an extra module (--module DIR, a plugin's) does not build or load (exit 2)
    └── GuestError              something went wrong with a guest
        ├── BootError           QEMU exited or the guest never became ready
        │   ├── BootTimeout     readiness did not arrive before the deadline
        │   └── SnapshotError   a guest state could not be saved, or a restored guest failed its checks
        ├── GuestCrashed        the guest died after it was ready
        ├── TransportError      SSH (or another channel) failed
        └── CommandFailed       a guest command exited non-zero (``check()``)

Errors carry data (argv, exit status, console tail) rather than only text, and
the command line prints ``str(error)`` as one line for user errors.
"""

from __future__ import annotations

__all__ = [
    "LabError",
    "UsageError",
    "ConfigError",
    "PluginError",
    "HostSetupError",
    "BuildError",
    "ModuleSourceError",
    "GuestError",
    "BootError",
    "BootTimeout",
    "SnapshotError",
    "GuestCrashed",
    "TransportError",
    "CommandFailed",
]


class LabError(Exception):
    """Base class of every error cnlab raises on purpose."""

    exit_status = 1


class UsageError(LabError):
    """Bad input on the command line."""

    exit_status = 2


class ConfigError(LabError):
    """A lab config or scenario file is malformed."""

    exit_status = 2


class PluginError(LabError):
    """A plugin could not be loaded, or raised inside a hook."""

    exit_status = 2


class HostSetupError(LabError):
    """The host lacks a package, tool or file that cnlab needs."""

    exit_status = 2


class BuildError(LabError):
    """Building an image, an initramfs or the kernel module failed."""


class ModuleSourceError(BuildError):
    """An extra module's sources do not build, or its modules cannot be loaded in any order: the user's input."""

    exit_status = 2


class GuestError(LabError):
    """A guest failed; ``console_tail`` holds the end of its console."""

    def __init__(self, message: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.console_tail = console_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.console_tail:
            return f"{text}\n--- console tail ---\n{self.console_tail}"
        return text


class BootError(GuestError):
    """QEMU exited, or the guest failed, before it became ready."""


class BootTimeout(BootError):
    """The guest did not announce readiness before the deadline."""


class SnapshotError(BootError):
    """A guest's state could not be saved, or a guest restored from one failed its checks.

    The guest that wanted the restore boots cold instead (``lab.guest.snapshot``).
    """


class GuestCrashed(GuestError):
    """The guest (QEMU) died after it had become ready."""


class TransportError(GuestError):
    """The SSH connection to a guest failed."""


class CommandFailed(GuestError):
    """A command in the guest exited with a non-zero status."""

    def __init__(self, argv: list[str], exit_status: int, stdout: bytes, stderr: bytes) -> None:
        self.argv = list(argv)
        self.exit_status_code = exit_status
        self.stdout = stdout
        self.stderr = stderr
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        super().__init__(f"{argv[0]} exited with status {exit_status}: {' | '.join(tail)}")
