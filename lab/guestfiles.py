"""Shipping cnlab's guest-side Python programs into a guest."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from .guest import Guest

__all__ = ["GUEST_LIB", "guest_programs_tar", "install_guest_programs"]

#: Where guest-side programs live inside a guest (a tmpfs, fresh per boot).
GUEST_LIB = "/run/cnlab/py"


def guest_programs_tar() -> bytes:
    """kabi.py and the guest-side programs as a tar archive rooted at ``/``."""
    here = Path(__file__).resolve().parent
    programs = [here / "kabi.py"] + sorted(p for p in (here / "guestside").glob("*.py") if p.name != "__init__.py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for program in programs:
            info = tar.gettarinfo(str(program), arcname=f"{GUEST_LIB.lstrip('/')}/{program.name}")
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with program.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def install_guest_programs(guest: Guest) -> str:
    """Copy kabi.py and the guest-side programs into the guest; return the folder.

    One command with the files as a tar stream on its stdin: a copy per file
    over SFTP started an sftp-server in the guest for each (0.4-0.8 s in all
    under TCG).
    """
    guest.run(["tar", "-x", "-f", "-", "-C", "/", "--no-same-owner"], stdin=guest_programs_tar(), check=True)
    return GUEST_LIB
