"""A writer for the "newc" cpio format the kernel unpacks as an initramfs.

The per-boot part of a guest's initramfs (SSH keys, the freshly built module)
is written with this at every boot, in milliseconds, and appended to the
cached base archive: the kernel unpacks concatenated archives in order.
"""

from __future__ import annotations

import io
import stat
from dataclasses import dataclass

__all__ = ["CpioEntry", "write_newc"]

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: a directory (``data is None``) or a regular file."""

    name: str
    data: bytes | None = None
    mode: int = 0o644


def _header(name: str, mode: int, size: int, ino: int, nlink: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(encoded), 0]
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    return head + b"\0" * (-len(head) % 4)


def write_newc(entries: list[CpioEntry]) -> bytes:
    """Serialise ``entries`` (parents before children) as a newc archive."""
    out = io.BytesIO()
    for ino, entry in enumerate(entries, start=1):
        name = entry.name.lstrip("/")
        if entry.data is None:
            out.write(_header(name, stat.S_IFDIR | entry.mode, 0, ino, 2))
            continue
        out.write(_header(name, stat.S_IFREG | entry.mode, len(entry.data), ino, 1))
        out.write(entry.data)
        out.write(b"\0" * (-len(entry.data) % 4))
    out.write(_header(_TRAILER, 0, 0, 0, 1))
    return out.getvalue()
