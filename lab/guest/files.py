"""Copying files into a guest: cnlab's guest-side programs and plugins' guest files.

Files travel as one tar stream on the stdin of one ``tar`` in the guest: a
copy per file over SFTP started an sftp-server in the guest for each (the
guest programs alone took 0.4-0.8 s that way under TCG, one command 0.2 s).
"""

from __future__ import annotations

import hashlib
import io
import py_compile
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lab.errors import LabError

if TYPE_CHECKING:
    from lab.guest.machine import Guest

__all__ = ["GUEST_LIB", "GUEST_COMMANDS", "files_key", "files_tar", "guest_programs", "guest_program_files",
           "install_guest_programs", "put_files"]

#: Where guest-side programs live inside a guest (a tmpfs, fresh per boot).
GUEST_LIB = "/run/cnlab/py"
#: Guest programs that are commands on the guest's PATH: name -> program in GUEST_LIB.
GUEST_COMMANDS = {"cnlabctl": "cnlabctl.py"}
#: Where those commands are linked (on the PATH of root's SSH sessions).
GUEST_BIN = "/usr/local/bin"
#: The byte-code tag of the guest's Python (Debian 12's python3 3.11): a host Python of another version ships
#: no byte code, and the guest compiles as before.
GUEST_CACHE_TAG = "cpython-311"
_COMPILED: dict[tuple, bytes | None] = {}


def _compiled(source: Path, dest: str) -> bytes | None:
    """``source`` compiled for the guest's Python (a hash-checked ``.pyc``, named ``dest`` in tracebacks), or
    None when this Python's byte code is not the guest's or the source does not compile."""
    if sys.implementation.cache_tag != GUEST_CACHE_TAG:
        return None
    stat = source.stat()
    key = (str(source), dest, stat.st_mtime_ns, stat.st_size)
    if key not in _COMPILED:
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "out.pyc"
            try:
                py_compile.compile(str(source), cfile=str(target), dfile=dest, doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
                _COMPILED[key] = target.read_bytes()
            except py_compile.PyCompileError:
                _COMPILED[key] = None  # the guest reports the syntax error when it runs the file
    return _COMPILED[key]


def _add_bytes(tar: tarfile.TarFile, dest: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(dest.lstrip("/"))
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def files_tar(files: Iterable[tuple[Path, str, int]], links: Iterable[tuple[str, str]] = ()) -> bytes:
    """``(host path, absolute guest path, mode)`` triples, and ``(guest path, target)`` symbolic links, as a tar
    archive rooted at ``/``.  Each Python file comes with its byte code for the guest's Python in
    ``__pycache__`` (hash-checked against the source): compiling them in the guest cost a TCG guest 0.6 s per
    start of the agent (1.23 s against 0.53-0.65 s to import it), and every scenario starts on a fresh guest."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for dest, target in links:
            if not dest.startswith("/"):
                raise LabError(f"guest path must be absolute: {dest!r}")
            link = tarfile.TarInfo(dest.lstrip("/"))
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, target, 0o777
            link.uname = link.gname = "root"
            tar.addfile(link)
        for source, dest, mode in files:
            if not dest.startswith("/"):
                raise LabError(f"guest path must be absolute: {dest!r}")
            try:
                info = tar.gettarinfo(str(source), arcname=dest.lstrip("/"))
                with open(source, "rb") as handle:
                    info.uid = info.gid = 0
                    info.uname = info.gname = "root"
                    info.mode = mode
                    tar.addfile(info, handle)
                code = _compiled(Path(source), dest) if dest.endswith(".py") else None
            except OSError as exc:
                raise LabError(f"cannot copy {source} into the guest: {exc.strerror}") from exc
            if code is not None:
                folder, _, name = dest.rpartition("/")
                _add_bytes(tar, f"{folder}/__pycache__/{name[:-3]}.{GUEST_CACHE_TAG}.pyc", code, 0o644)
    return buffer.getvalue()


def put_files(guest: Guest, files: Iterable[tuple[Path, str, int]], links: Iterable[tuple[str, str]] = ()) -> None:
    """Copy ``(host path, absolute guest path, mode)`` files (and make ``links``) in ``guest`` with one command."""
    archive = files_tar(files, links)
    # -m: a guest just booted may run a little behind the host, and a file "from the future" fails tar
    guest.run(["tar", "-x", "-m", "-f", "-", "-C", "/", "--no-same-owner"], stdin=archive, check=True)


def files_key(files: Iterable[tuple[Path, str, int]], links: Iterable[tuple[str, str]] = ()) -> str:
    """A hash of what :func:`put_files` would make of ``files`` and ``links``: each destination, mode and source
    content, each link, and whether byte code travels with them (a saved guest state holding the files is
    keyed by it, :mod:`lab.guest.snapshot`)."""
    digest = hashlib.sha256(f"pyc={sys.implementation.cache_tag == GUEST_CACHE_TAG}\n".encode())
    for source, dest, mode in sorted(files, key=lambda f: f[1]):
        try:
            content = Path(source).read_bytes()
        except OSError as exc:
            raise LabError(f"cannot copy {source} into the guest: {exc.strerror}") from exc
        digest.update(f"{dest}\0{mode:o}\0{len(content)}\0".encode() + content)
    for dest, target in sorted(links):
        digest.update(f"link {dest}\0{target}\0".encode())
    return digest.hexdigest()[:16]


def guest_programs() -> list[Path]:
    """kabi.py and the guest-side programs."""
    here = Path(__file__).resolve().parents[1]  # lab/
    return [here / "kabi.py"] + sorted(p for p in (here / "guestside").glob("*.py") if p.name != "__init__.py")


def guest_program_files() -> tuple[list[tuple[Path, str, int]], list[tuple[str, str]]]:
    """The files of :func:`install_guest_programs` (``(host path, guest path, mode)``) and its links."""
    commands = set(GUEST_COMMANDS.values())
    return ([(p, f"{GUEST_LIB}/{p.name}", 0o755 if p.name in commands else 0o644) for p in guest_programs()],
            [(f"{GUEST_BIN}/{name}", f"{GUEST_LIB}/{program}") for name, program in GUEST_COMMANDS.items()])


def install_guest_programs(guest: Guest, extra: Iterable[tuple[Path, str, int]] = (), commands: bool = True) -> str:
    """Copy kabi.py and the guest-side programs into the guest, link its commands (``cnlabctl``) into
    ``/usr/local/bin`` unless not ``commands``; return the folder.  ``extra`` files (plugins' guest files) go
    in the same copy: one command in the guest, not two (0.2 s each under TCG).  Nothing is copied when the
    guest's spec already carries all of them (:attr:`lab.guest.machine.GuestSpec.files`: a restored guest has
    them from its saved state, a cold one got them when it started)."""
    files, links = guest_program_files()
    links = links if commands else []
    wanted = [*files, *extra]
    spec = getattr(guest, "spec", None)
    if set(wanted) <= set(getattr(spec, "files", ())) and set(links) <= set(getattr(spec, "links", ())):
        return GUEST_LIB
    put_files(guest, wanted, links)
    return GUEST_LIB
