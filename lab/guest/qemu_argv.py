"""Pure builders of QEMU argument fragments and the guest kernel command line.

Each function returns a list of arguments; :func:`qemu_argv` joins them.
Nothing here starts a process, so every line is unit-testable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError
from lab.guest.accel import Accel

__all__ = ["GuestShape", "BootPaths", "qemu_argv", "kernel_cmdline", "MAX_CPUS"]

MAX_CPUS = 8
MIN_MEMORY_MB = 256
MAX_MEMORY_MB = 16384
_CMDLINE_TOKEN = re.compile(r"^[A-Za-z0-9_.,:/=+@-]+$")

#: Always on the guest kernel command line.
BASE_CMDLINE = (
    "console=ttyS0,115200",
    "panic=-1",  # a panic reboots at once, and -no-reboot turns that into QEMU exiting
    "loglevel=5",  # prints KERN_WARNING and above: oopses, BUG and WARNING all reach the console
    "random.trust_cpu=on",
    # The crypto self-tests cost 0.5-0.8 s of every TCG boot (measured with
    # initcall_debug: crypto_algapi_init); cnlab tests the connector, not crypto.
    "cryptomgr.notests",
    "8250.nr_uarts=2",
    # No tsc=reliable here: on a loaded host the boot-time TSC calibration can
    # be far off, and without the clocksource watchdog the guest's clock then
    # ran 4.6x too fast (1252 s of guest uptime in a 271 s CI run: every
    # guest-side timeout and RCU's stall detector fired early).  The HPET is
    # slow to read under TCG but always right; only `cnlab bench kmod`, which
    # checks its guest's clock against the host's, uses the TSC.
)


@dataclass(frozen=True)
class GuestShape:
    """How big a guest is."""

    cpus: int = 2
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.cpus, int) or not 1 <= self.cpus <= MAX_CPUS:
            raise UsageError(f"--cpus must be between 1 and {MAX_CPUS}, got {self.cpus}")
        if not isinstance(self.memory_mb, int) or not MIN_MEMORY_MB <= self.memory_mb <= MAX_MEMORY_MB:
            raise UsageError(f"--mem must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB} MB, got {self.memory_mb}")


@dataclass(frozen=True)
class BootPaths:
    """The files and sockets one guest boot uses."""

    kernel: Path
    initrd: Path
    rootfs: Path
    modules_disk: Path | None
    console_log: Path
    qmp_socket: Path
    ready_socket: Path


def kernel_cmdline(extra: list[str] | tuple[str, ...] = ()) -> str:
    """The guest's kernel command line: the base set plus validated extras."""
    tokens = list(BASE_CMDLINE)
    for token in extra:
        if not _CMDLINE_TOKEN.match(token):
            raise UsageError(f"kernel command-line argument not allowed: {token!r}")
        tokens.append(token)
    return " ".join(tokens)


def machine_args(shape: GuestShape, accel: Accel) -> list[str]:
    return [
        "-machine", "q35,vmport=off,smbus=off,sata=off",
        *accel.qemu_args(),
        "-smp", str(shape.cpus),
        "-m", str(shape.memory_mb),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-no-reboot",
        # qboot (QEMU's minimal firmware, in qemu-system-data) instead of SeaBIOS:
        # measured with bench boot, the floor went from 1.73 to 1.63 s under TCG.
        "-bios", "qboot.rom",
    ]


def boot_args(paths: BootPaths, cmdline: str) -> list[str]:
    return ["-kernel", str(paths.kernel), "-initrd", str(paths.initrd), "-append", cmdline]


def disk_args(paths: BootPaths) -> list[str]:
    # snapshot=on: a per-guest copy-on-write overlay; the cached image is never written.
    args = [
        "-drive", f"file={paths.rootfs},if=none,id=root,format=raw,snapshot=on",
        "-device", "nvme,drive=root,serial=cnlab-root",
    ]
    if paths.modules_disk is not None:
        args += [
            "-drive", f"file={paths.modules_disk},if=none,id=mods,format=raw,readonly=on",
            "-device", "nvme,drive=mods,serial=cnlab-mods",
        ]
    return args


def channel_args(paths: BootPaths) -> list[str]:
    # ttyS0: console, always drained to a file.  ttyS1: readiness, a socket we listen on.
    # QMP: QEMU connects to our listening socket, so nothing waits for a file to appear.
    return [
        "-chardev", f"file,id=console,path={paths.console_log}",
        "-serial", "chardev:console",
        "-chardev", f"socket,id=ready,path={paths.ready_socket}",
        "-serial", "chardev:ready",
        "-chardev", f"socket,id=qmp,path={paths.qmp_socket}",
        "-mon", "chardev=qmp,mode=control",
    ]


def net_args(tap_fd: int | None = None) -> list[str]:
    """User-mode networking (the SSH forward is added over QMP once a free port is found),
    or the tap the lab opened in its own namespace (``lab.guest.netns``), passed by descriptor."""
    netdev = "user,id=net0,ipv6=off" if tap_fd is None else f"tap,id=net0,fd={tap_fd}"
    return ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0"]


def qemu_argv(binary: str, shape: GuestShape, accel: Accel, paths: BootPaths, cmdline: str,
              extra: list[str] | None = None, paused: bool = True, tap_fd: int | None = None) -> list[str]:
    """The whole QEMU command for one guest, started paused (``-S``) unless told otherwise."""
    return [
        binary,
        *machine_args(shape, accel),
        *boot_args(paths, cmdline),
        *disk_args(paths),
        *channel_args(paths),
        *net_args(tap_fd),
        *(extra or []),
        *(["-S"] if paused else []),
    ]
