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

__all__ = ["GuestShape", "BootPaths", "SavedState", "qemu_argv", "kernel_cmdline", "MAX_CPUS", "RAM_BACKEND_ID"]

MAX_CPUS = 8
#: The id of the guest RAM's memory backend in guests whose state is saved or restored.
RAM_BACKEND_ID = "cnlab-ram"
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


@dataclass(frozen=True)
class SavedState:
    """How a guest whose state is saved or restored (:mod:`lab.guest.snapshot`) differs from a cold boot.

    Its RAM is a file (``ram_file``): written through (``share=True``) by the guest whose state is saved,
    mapped copy-on-write (``share=False``) by a restored one, so a restore reads no RAM at all.  Its
    disks are virtio-blk (QEMU 7.2 cannot migrate an NVMe controller).  A restored guest starts waiting
    for the saved device state (``incoming``) and appends to a console log the host has begun.
    """

    ram_file: Path
    share: bool
    incoming: bool = False


def _option_value(text: str) -> str:
    """A path as a QEMU option value (a comma is written twice)."""
    return text.replace(",", ",,")


def kernel_cmdline(extra: list[str] | tuple[str, ...] = ()) -> str:
    """The guest's kernel command line: the base set plus validated extras."""
    tokens = list(BASE_CMDLINE)
    for token in extra:
        if not _CMDLINE_TOKEN.match(token):
            raise UsageError(f"kernel command-line argument not allowed: {token!r}")
        tokens.append(token)
    return " ".join(tokens)


def machine_args(shape: GuestShape, accel: Accel, memory_backend: str | None = None) -> list[str]:
    machine = "q35,vmport=off,smbus=off,sata=off" + (f",memory-backend={memory_backend}" if memory_backend else "")
    return [
        "-machine", machine,
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


def memory_args(shape: GuestShape, saved: SavedState) -> list[str]:
    """Guest RAM as a file (see :class:`SavedState`)."""
    return ["-object", f"memory-backend-file,id={RAM_BACKEND_ID},size={shape.memory_mb}M,"
                       f"mem-path={_option_value(str(saved.ram_file))},share={'on' if saved.share else 'off'}"]


def disk_args(paths: BootPaths, bus: str = "nvme") -> list[str]:
    """The root disk (and the module disk) on NVMe (cold boots: built into the cloud kernel) or
    virtio-blk (saved and restored guests: ``/dev/vda``, ``/dev/vdb``)."""
    # snapshot=on: a per-guest copy-on-write overlay; the cached image is never written.
    device = {"nvme": "nvme,drive={0},serial=cnlab-{0}", "virtio": "virtio-blk-pci,drive={0},serial=cnlab-{0}"}[bus]
    args = [
        "-drive", f"file={paths.rootfs},if=none,id=root,format=raw,snapshot=on",
        "-device", device.format("root"),
    ]
    if paths.modules_disk is not None:
        args += [
            "-drive", f"file={paths.modules_disk},if=none,id=mods,format=raw,readonly=on",
            "-device", device.format("mods"),
        ]
    return args


def channel_args(paths: BootPaths, console_append: bool = False) -> list[str]:
    # ttyS0: console, always drained to a file.  ttyS1: readiness, a socket we listen on.
    # QMP: QEMU connects to our listening socket, so nothing waits for a file to appear.
    return [
        "-chardev", f"file,id=console,path={paths.console_log}" + (",append=on" if console_append else ""),
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
              extra: list[str] | None = None, paused: bool = True, tap_fd: int | None = None,
              saved: SavedState | None = None) -> list[str]:
    """The whole QEMU command for one guest, started paused (``-S``) unless told otherwise.

    ``saved``: a guest whose state is saved or restored (:class:`SavedState`); everything else is the
    same for both, as migration needs.
    """
    return [
        binary,
        *machine_args(shape, accel, RAM_BACKEND_ID if saved else None),
        *(memory_args(shape, saved) if saved else []),
        *boot_args(paths, cmdline),
        *disk_args(paths, "virtio" if saved else "nvme"),
        *channel_args(paths, console_append=bool(saved and saved.incoming)),
        *net_args(tap_fd),
        *(extra or []),
        *(["-incoming", "defer"] if saved and saved.incoming else []),
        *(["-S"] if paused else []),
    ]
