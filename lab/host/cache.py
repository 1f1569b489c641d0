"""The lab's cache directory: content keys, file locks and atomic publishing.

Every built artefact lives under one directory (``$CNLAB_CACHE``, else
``$XDG_CACHE_HOME/cnlab``, else ``~/.cache/cnlab``), in a folder named by a
hash of every input that went into it.  A folder exists only once complete
(it is built in a temporary sibling and renamed), so "is it cached?" is one
``stat``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["cache_root", "content_key", "hash_tree", "file_lock", "publish_dir", "write_json_atomic"]


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
