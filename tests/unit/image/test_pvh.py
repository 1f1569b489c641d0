"""lab.image.pvh: finding the kernel in a bzImage and checking it can boot as a PVH ELF."""

import gzip
import lzma
import struct

import pytest

from lab.image.pvh import PvhUnavailable, bzimage_payload, decompress_payload, has_pvh_note, write_pvh_kernel


def _elf(notes: list[tuple[bytes, int]]) -> bytes:
    """A 64-bit ELF with one PT_NOTE segment holding ``notes`` (name, type)."""
    body = b""
    for name, n_type in notes:
        name0 = name + b"\0"
        desc = b"\0" * 8
        body += struct.pack("<III", len(name0), len(desc), n_type)
        body += name0.ljust((len(name0) + 3) & ~3, b"\0") + desc
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(body), len(body), 4)
    return bytes(header) + phdr + body


def _bzimage(payload: bytes, version: int = 0x020F, setup_sects: int = 1) -> bytes:
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<II", image, 0x248, 16, len(payload))  # payload 16 bytes into the protected-mode part
    return bytes(image) + b"\0" * 16 + payload + b"trailer"


PVH_ELF = _elf([(b"Xen", 6), (b"Xen", 18)])


@pytest.mark.parametrize("compress", [
    lambda d: gzip.compress(d) + struct.pack("<I", len(d)),  # whatever follows the stream is ignored
    lambda d: lzma.compress(d, format=lzma.FORMAT_XZ) + struct.pack("<I", len(d)),
])
def test_the_payload_is_found_and_unpacked(tmp_path, compress):
    bz = tmp_path / "bzImage"
    bz.write_bytes(_bzimage(compress(PVH_ELF)))
    write_pvh_kernel(bz, tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == PVH_ELF


def test_pvh_note_is_required():
    assert has_pvh_note(PVH_ELF)
    assert not has_pvh_note(_elf([(b"Xen", 6), (b"GNU", 18)]))
    assert not has_pvh_note(b"MZ not an elf" + b"\0" * 64)


def test_anything_unexpected_is_a_reason_not_a_crash(tmp_path):
    with pytest.raises(PvhUnavailable, match="no bzImage setup header"):
        bzimage_payload(b"\0" * 1024)
    with pytest.raises(PvhUnavailable, match="boot protocol 2.06 has no payload fields"):
        bzimage_payload(_bzimage(b"x", version=0x0206))
    with pytest.raises(PvhUnavailable, match="compression not handled"):
        decompress_payload(b"BZh91AY&SY")
    bz = tmp_path / "bzImage"
    bz.write_bytes(_bzimage(gzip.compress(b"\x7fELF\x02\x01" + b"\0" * 10)))  # truncated ELF header
    with pytest.raises(PvhUnavailable, match="cannot read the kernel out of bzImage"):
        write_pvh_kernel(bz, tmp_path / "vmlinux")
    bz.write_bytes(_bzimage(b"\x1f\x8b" + b"not gzip at all"))
    with pytest.raises(PvhUnavailable, match="cannot read the kernel"):
        write_pvh_kernel(bz, tmp_path / "vmlinux")
    bz.write_bytes(_bzimage(gzip.compress(_elf([(b"Xen", 6)]))))
    with pytest.raises(PvhUnavailable, match="no PVH entry note"):
        write_pvh_kernel(bz, tmp_path / "vmlinux")
    assert not (tmp_path / "vmlinux").exists()
