"""Shipping cnlab's guest-side Python programs into a guest."""

from __future__ import annotations

from pathlib import Path

from .guest import Guest

__all__ = ["GUEST_LIB", "install_guest_programs"]

#: Where guest-side programs live inside a guest (a tmpfs, fresh per boot).
GUEST_LIB = "/run/cnlab/py"


def install_guest_programs(guest: Guest) -> str:
    """Copy kabi.py and the guest-side programs into the guest; return the folder."""
    here = Path(__file__).resolve().parent
    guest.run(["mkdir", "-p", GUEST_LIB], check=True)
    guest.ssh.put(here / "kabi.py", f"{GUEST_LIB}/kabi.py")
    for program in sorted((here / "guestside").glob("*.py")):
        if program.name != "__init__.py":
            guest.ssh.put(program, f"{GUEST_LIB}/{program.name}")
    return GUEST_LIB
