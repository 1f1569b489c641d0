"""Booting the kernel without its decompressor: the bzImage's payload as a PVH ELF.

A bzImage is a small setup program plus the compressed kernel, which it
decompresses and relocates at every boot: under TCG that costs a guest
0.2-0.3 s of its boot (measured: SSH-ready 2.75-3.05 s from the bzImage,
2.48-2.62 s from the ELF, single-threaded TCG, 2 vCPUs).  A kernel built with
``CONFIG_PVH`` (Debian's cloud kernel is) carries a Xen ``PHYS32_ENTRY`` note,
and QEMU boots such an ELF ``vmlinux`` directly with ``-kernel``.

The payload's place comes from the setup header (boot protocol 2.08+:
``payload_offset`` and ``payload_length``); gzip and xz are decompressed here,
LZ4 (Debian's choice) and zstd by their command-line tools.  Anything
unexpected gives ``None`` with the reason, and the guest boots the bzImage.
"""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

__all__ = ["PVH_TOOLS", "PvhUnavailable", "bzimage_payload", "decompress_payload", "has_pvh_note",
           "write_pvh_kernel"]

#: Command-line tools some payloads need (gzip and xz are unpacked in Python).
PVH_TOOLS = ("lz4", "zstd")

#: ELF note type of the 32-bit PVH entry point (Xen's ``XEN_ELFNOTE_PHYS32_ENTRY``).
PVH_NOTE_TYPE = 18
_SETUP_HEADER_MAGIC = b"HdrS"
_MIN_PROTOCOL = 0x0208  # payload_offset / payload_length appeared in 2.08
_LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_PT_NOTE = 4


class PvhUnavailable(Exception):
    """Why this kernel boots as a bzImage (the message is the reason)."""


def bzimage_payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage."""
    if len(image) < 0x250 or image[0x202:0x206] != _SETUP_HEADER_MAGIC:
        raise PvhUnavailable("no bzImage setup header")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < _MIN_PROTOCOL:
        raise PvhUnavailable(f"boot protocol {version >> 8}.{version & 0xff:02d} has no payload fields")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if not length or start + length > len(image):
        raise PvhUnavailable("payload outside the image")
    return image[start:start + length]


def _tool(argv: list[str], data: bytes, package: str) -> bytes:
    if shutil.which(argv[0]) is None:
        raise PvhUnavailable(f"{argv[0]} not installed (Debian package {package})")
    result = subprocess.run(argv, input=data, capture_output=True, check=False)
    if result.returncode != 0:
        raise PvhUnavailable(f"{argv[0]} failed: {result.stderr.decode(errors='replace').strip()[:200]}")
    return result.stdout


def decompress_payload(payload: bytes) -> bytes:
    """Decompress a bzImage payload.  The kernel build appends the size (4 bytes) to LZ4 and zstd
    payloads; gzip and xz streams end by themselves, so what follows them is ignored."""
    if payload.startswith(_GZIP_MAGIC):
        return zlib.decompressobj(wbits=31).decompress(payload)
    if payload.startswith(_XZ_MAGIC):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload.startswith(_LZ4_LEGACY_MAGIC):
        return _tool(["lz4", "-d", "-c"], payload[:-4], "lz4")
    if payload.startswith(_ZSTD_MAGIC):
        return _tool(["zstd", "-d", "-c"], payload[:-4], "zstd")
    raise PvhUnavailable(f"payload compression not handled (magic {payload[:4].hex()})")


def has_pvh_note(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF has a Xen PHYS32_ENTRY note in a PT_NOTE segment."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and n_type == PVH_NOTE_TYPE:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def write_pvh_kernel(bzimage: Path, out: Path) -> None:
    """Write the kernel of ``bzimage`` as an ELF QEMU can boot directly, or raise PvhUnavailable."""
    try:
        elf = decompress_payload(bzimage_payload(bzimage.read_bytes()))
        pvh = has_pvh_note(elf)
    except (struct.error, zlib.error, lzma.LZMAError, EOFError, ValueError, IndexError) as exc:
        raise PvhUnavailable(f"cannot read the kernel out of {bzimage.name}: {exc}") from exc
    if not pvh:
        raise PvhUnavailable("the kernel has no PVH entry note (built without CONFIG_PVH)")
    out.write_bytes(elf)
