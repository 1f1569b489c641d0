"""What the cache holds: artefacts by kind, with size on disk, age, last use and whether a lab holds them.

An artefact is a folder ``CACHE/KIND/KEY`` (see :mod:`lab.host.cache`).
The kinds in :data:`PRUNABLE_KINDS` are leased by every lab that uses them,
so ``cnlab cache prune`` may remove them; folders of other kinds are listed
but never pruned (no lab leases them, so a running one could be using them).
Hidden folders next to artefacts are scratch: a build in progress (its kind's
build lock is held) or one that was interrupted.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lab.host.cache import BUILT_STAMP, USED_STAMP

__all__ = ["Artefact", "Inventory", "PRUNABLE_KINDS", "disk_usage", "in_use", "take_inventory"]

#: Kinds whose folders every lab leases, with the build lock (``CACHE/locks/NAME.lock``) of each.
PRUNABLE_KINDS: dict[str, str] = {
    "kernels": "kernel",
    "rootfs": "rootfs",
    "moddisk": "moddisk",
    "initramfs": "initramfs",
    "pvh": "pvh",
    "kmod": "kmod",
    "debug-kernels": "debug-kernel",
}
#: Folders of the cache that hold state rather than artefacts (keys, locks, records).
STATE_FOLDERS = ("locks", "keys", "manifests", "calibration", "logs")


@dataclass(frozen=True)
class Artefact:
    """One cached artefact folder.

    :param built: when it was published (seconds since the epoch).
    :param last_used: when a lab last leased it (``built`` if never).
    :param in_use: a running lab holds it (checked when the inventory was taken).
    :param prunable: its kind is leased by labs, so prune may remove it.
    :param variant: what sets it apart from others of its kind built from the same recipe: for a root disk,
        its extra guest packages (``+forkstat,strace``; "" for none).  Prune keeps the last used of each.
    """

    kind: str
    key: str
    path: Path
    size: int
    built: float
    last_used: float
    in_use: bool
    prunable: bool
    variant: str = ""


@dataclass(frozen=True)
class Inventory:
    """The artefacts of one cache, the scratch folders beside them and everything else."""

    root: Path
    artefacts: tuple[Artefact, ...]
    scratch: tuple[Path, ...]
    other_bytes: int

    @property
    def artefact_bytes(self) -> int:
        """Disk space of all artefacts."""
        return sum(a.size for a in self.artefacts)

    @property
    def total_bytes(self) -> int:
        """Disk space of the whole cache."""
        return self.artefact_bytes + self.other_bytes + sum(disk_usage(p) for p in self.scratch)


def disk_usage(path: Path) -> int:
    """Bytes ``path`` occupies on disk (allocated blocks; each inode counted once; links not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            info = current.lstat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
        if current.is_dir() and not current.is_symlink():
            try:
                stack.extend(current.iterdir())
            except OSError:
                continue
    return total


def in_use(folder: Path) -> bool:
    """True if some process holds a lease on ``folder`` (a probe: takes and drops an exclusive lock)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock
    return False


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _variant(kind: str, folder: Path) -> str:
    """A root disk's extra guest packages (from its ``inputs.json``) as ``+a,b``; "" otherwise."""
    if kind != "rootfs":
        return ""
    try:
        extra = json.loads((folder / "inputs.json").read_text()).get("extra_packages") or []
    except (OSError, ValueError, AttributeError):
        return ""
    return "+" + ",".join(map(str, extra)) if extra else ""


def _artefact(kind: str, folder: Path) -> Artefact:
    built = _mtime(folder / BUILT_STAMP) or _mtime(folder / "inputs.json") or _mtime(folder) or 0.0
    used = _mtime(folder / USED_STAMP) or built
    return Artefact(kind=kind, key=folder.name, path=folder, size=disk_usage(folder), built=built,
                    last_used=max(used, built), in_use=in_use(folder), prunable=kind in PRUNABLE_KINDS,
                    variant=_variant(kind, folder))


def take_inventory(root: Path) -> Inventory:
    """List the cache at ``root`` (an empty inventory if it does not exist)."""
    artefacts: list[Artefact] = []
    scratch: list[Path] = []
    if not root.is_dir():
        return Inventory(root, (), (), 0)
    other = root.lstat().st_blocks * 512
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink() or entry.name in STATE_FOLDERS or entry.name.startswith("."):
            other += disk_usage(entry)
            continue
        other += entry.lstat().st_blocks * 512
        for child in sorted(entry.iterdir()):
            if child.name.startswith(".") and child.is_dir():
                scratch.append(child)
            elif child.is_dir() and not child.is_symlink():
                artefacts.append(_artefact(entry.name, child))
            else:
                other += disk_usage(child)
    return Inventory(root, tuple(artefacts), tuple(scratch), other)
