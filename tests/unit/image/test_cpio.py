"""The newc writer produces archives that cpio (and the kernel) read back."""

import shutil
import subprocess

import pytest

from lab.image.cpio import CpioEntry, write_newc


def _parse(blob: bytes) -> list[tuple[str, int, bytes]]:
    members, pos = [], 0
    while True:
        assert blob[pos:pos + 6] == b"070701"
        fields = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = (name_start + namesize + 3) & ~3
        data = blob[data_start:data_start + size]
        pos = (data_start + size + 3) & ~3
        if name == "TRAILER!!!":
            return members
        members.append((name, mode, data))


def test_round_trip_keeps_names_modes_and_data():
    blob = write_newc([CpioEntry("cnlab", None, 0o700), CpioEntry("cnlab/key", b"secret", 0o600),
                       CpioEntry("cnlab/odd", b"x" * 5)])
    members = _parse(blob)
    assert [m[0] for m in members] == ["cnlab", "cnlab/key", "cnlab/odd"]
    assert members[0][1] & 0o170000 == 0o040000 and members[1][1] & 0o777 == 0o600
    assert members[1][2] == b"secret" and members[2][2] == b"xxxxx"
    assert len(blob) % 4 == 0


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_gnu_cpio_lists_the_archive(tmp_path):
    blob = write_newc([CpioEntry("d", None), CpioEntry("d/f", b"hello")])
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=blob, capture_output=True, check=True)
    assert listing.stdout.decode().split() == ["d", "d/f"]
