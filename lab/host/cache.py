"""The lab's cache directory: content keys, file locks and atomic publishing.

Every built artefact lives under one directory (``$CNLAB_CACHE``, else
``$XDG_CACHE_HOME/cnlab``, else ``~/.cache/cnlab``), in a folder named by a
hash of every input that went into it.  A folder exists only once complete
(it is built in a temporary sibling and renamed), so "is it cached?" is one
``stat``.

A process that uses an artefact holds a *lease* on its folder (a shared
``flock`` on the folder itself, :func:`lease`) for as long as it keeps the
object that took it; ``cnlab cache prune`` removes only folders it can lock
exclusively, and renames a folder away before deleting it, so a lab that
leases a folder while it is being pruned sees it gone and builds it again.
Each artefact folder carries two stamps: ``.cnlab-built`` (when it was
published) and ``.cnlab-used`` (touched at every lease: its last use).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["cache_root", "content_key", "hash_tree", "file_lock", "publish_dir", "write_json_atomic", "Lease",
           "lease", "BUILT_STAMP", "USED_STAMP"]

#: Published with every artefact folder: its modification time is when the artefact was built.
BUILT_STAMP = ".cnlab-built"
#: Touched whenever a lab leases the folder: its modification time is the artefact's last use.
USED_STAMP = ".cnlab-used"


def cache_root(env: dict[str, str] | None = None) -> Path:
    """Where cnlab keeps images, keys, modules and verdicts."""
    env = os.environ if env is None else env
    if env.get("CNLAB_CACHE"):
        return Path(env["CNLAB_CACHE"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "cnlab"


def content_key(*parts: object) -> str:
    """A short stable hash of the given inputs (JSON-serialised)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_tree(root: Path, patterns: Iterable[str] = ("*",)) -> str:
    """Hash the names and contents of the files under ``root`` matching ``patterns``."""
    digest = hashlib.sha256()
    files: set[Path] = set()
    for pattern in patterns:
        files.update(p for p in root.rglob(pattern) if p.is_file())
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    Parallel builders (xdist workers, concurrent ``cnlab`` runs) serialise on
    it, so an artefact is built once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def publish_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield scratch
        (scratch / BUILT_STAMP).touch()
        if final.exists():
            shutil.rmtree(final)
        scratch.rename(final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Lease:
    """A shared lock on one cache folder: while it is held, ``cnlab cache prune`` leaves the folder alone.

    The lock goes with the object: :meth:`release`, or the object being
    collected, or the process ending frees it.  A lease does not travel to
    another process (pickled, it arrives released).
    """

    def __init__(self, folder: Path, fd: int | None) -> None:
        self.folder = folder
        self._fd = fd
        self._finalizer = weakref.finalize(self, _close, fd) if fd is not None else None

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._finalizer is not None and self._finalizer.alive

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()

    def __reduce__(self):
        return (Lease, (self.folder, None))

    def __repr__(self) -> str:
        return f"Lease({str(self.folder)!r}, held={self.held})"


def lease(folder: Path) -> Lease | None:
    """Hold a shared lock on the artefact ``folder``; None if it is gone (pruned, or never built).

    Blocks while a prune holds the folder; afterwards the folder is either
    still the same one (leased) or gone (None: the caller builds it again).
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        current = os.stat(folder)
        opened = os.fstat(fd)
        if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            raise FileNotFoundError(folder)
    except OSError:
        _close(fd)
        return None
    try:
        built = folder / BUILT_STAMP
        if not built.exists():  # published before stamps existed: the folder's time is the best guess
            built.touch()
            os.utime(built, (opened.st_mtime, opened.st_mtime))
        (folder / USED_STAMP).touch()
    except OSError:
        pass  # a read-only cache: the lease still holds, the times are not recorded
    return Lease(folder, fd)
