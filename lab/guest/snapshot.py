"""Guests restored from a saved state instead of booted.

A guest of a given spec (kernel, root disk, initramfs, module, keys, vCPUs,
memory, command line, extra QEMU arguments, accelerator, QEMU binary, the
content of its files) is
booted once, with the module loaded, to SSH-ready; the spec's files (the
lab's guest programs, plugins' guest files: ``GuestSpec.files``) are copied
in, so a restored guest holds them without a copy; its page cache is warmed
(``tar``, ``python3`` and the modules guest programs import); the guest
programs' fork server starts (``lab/guestside/forkserver.py``: a Python with
the agent's imports done, so a restored guest starts the agent as a fork);
the init holds sshd (SIGSTOP, see below); and its state is saved into the
cache (``snapshots/KEY/``, KEY a hash of all of those):

* ``ram``: the guest's RAM.  The saved guest ran with its RAM as this file
  (``memory-backend-file``, shared), so saving it costs nothing; a restored
  guest maps it copy-on-write, so a restore reads no RAM up front and the
  file is never written again (QEMU's ``x-ignore-shared`` migration
  capability keeps RAM out of the saved stream).
* ``state``: QEMU's migration stream without RAM: device state and ROMs.
* ``boot.console.log``: the saved guest's boot console, which heads every
  restored guest's console log.
* ``meta.json``: the inputs, the kernel command line, the module's GNU
  build ID, sizes and how long booting and saving took.

The saved guest mounts its root disk read-only (``cnlab.snapshot``), so the
disk image is exactly the cached one; each restored guest gets its own
copy-on-write overlay of it (``snapshot=on``) and remounts it read-write.
Disks are virtio-blk: QEMU 7.2 cannot migrate an NVMe controller.

After a restore the host writes a resume line to the guest's readiness port
(``CNLAB-RESUME nonce=… rt=… seed=…``: a new nonce, the host's wall clock,
32 random bytes) and the init answers with a ready line saying what it did
(``images/init/cnlab-init.c``).  The init lets the held sshd go on only once
the CRNG is reseeded, so the host starts its SSH handshake right after the
resume line, beside the rest of the resume, and no connection can use random
bytes that every guest restored from the state would share.
:func:`check_restored` decides whether the guest is fit: CPUs online, clock
set and within :data:`CLOCK_TOLERANCE_S` of the host's, CRNG reseeded, sshd
let go, root disk writable, modules loaded at the build ID of the files the
spec names.  A guest that fails is stopped,
its saved state discarded (the next guest of the spec saves a new one) and
the guest boots cold, with a warning; after :data:`FAILURES_TO_DISABLE`
failures in a row within a day (a working restore clears the count), guests
of that spec boot cold (warning each time) until ``snapshots/KEY.failed`` is
deleted.

Locks (``locks/snapshot-KEY.lock``): saving holds it exclusively, a restore
shares it until QEMU has the files open, and pruning skips a state whose
lock is held.  Pruning keeps the :data:`KEEP` most recently used states and
any used within :data:`KEEP_RECENT_S`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp import QMPError

from lab.errors import LabError
from lab.guest.files import GUEST_LIB, files_key
from lab.guest.kcheck import console_problems, problems_before_module_load
from lab.guest.machine import Guest, GuestSpec
from lab.guest.qemu_argv import SavedState
from lab.host.cache import content_key, publish_dir, write_json_atomic

__all__ = ["Snapshot", "SnapshotStore", "snapshot_for", "snapshot_inputs", "machine_args", "check_restored",
           "resume_line", "module_build_id", "WARM_UP", "KEEP", "KEEP_RECENT_S", "CLOCK_TOLERANCE_S",
           "FAILURES_TO_DISABLE"]

log = logging.getLogger(__name__)

#: Bump when the way a state is saved changes in a way the inputs do not show.
RECIPE = 2  # 2: the fork server runs in the saved guest
#: Run in the guest before its state is saved: files every guest reads soon are then in its page cache.
WARM_UP = ["sh", "-c", "tar --version >/dev/null && python3 -c 'import argparse, errno, json, select, signal, "
           "socket, statistics, struct, subprocess, threading; import pyroute2.netlink.connector'"]
#: Saved states kept however old (the most recently used ones), and how recent a use keeps one anyway.
KEEP = 8
KEEP_RECENT_S = 3600.0
#: A restored guest's wall clock may differ from the host's by this much right after the resume.
CLOCK_TOLERANCE_S = 2.0
#: Failed saves or restores of one spec (within FAILURE_MEMORY_S) after which its guests boot cold.
FAILURES_TO_DISABLE = 2
FAILURE_MEMORY_S = 86400.0
#: The guest programs' fork server, started in a guest whose state is saved (when the spec has the programs).
FORK_SERVER = "forkserver.py"
#: Random bytes a resume line carries for the guest's CRNG.
SEED_BYTES = 32


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _qemu_identity(binary: str) -> dict:
    found = shutil.which(binary)
    if found is None:
        return {"binary": binary, "found": False}
    return _file_identity(Path(found).resolve())


#: QEMU options that set up only the host's side of a guest (character devices, monitors, what QEMU does on a
#: guest event): nothing of them is in a saved state, and their values (socket paths) differ from guest to guest.
HOST_SIDE_OPTIONS = frozenset({"-chardev", "-mon", "-action"})


def machine_args(extra: tuple[str, ...] | list[str]) -> list[str]:
    """``extra`` (a spec's ``qemu_extra``) without its host-side options and their values: what a saved state
    depends on, and what the guest that saves it runs with (so it does not take a watcher's monitor)."""
    out: list[str] = []
    skip = False
    for arg in extra:
        if skip:
            skip = False
        elif arg in HOST_SIDE_OPTIONS:
            skip = True
        else:
            out.append(arg)
    return out


def snapshot_inputs(spec: GuestSpec) -> dict:
    """Everything a saved state depends on; its hash names the state's folder.

    TCG's threading is not among them: it does not change the machine, so
    one state serves guests that run alone and guests that run side by side.
    """
    image = spec.image
    inputs = {
        "recipe": RECIPE,
        "qemu": _qemu_identity(spec.qemu_binary),
        "accel": spec.accel.name,
        "image": image.manifest_path.stem,  # content key of kernel, root disk, initramfs, module disk, boot entry
        "boot_kernel": _file_identity(image.boot_kernel),
        "keys": content_key(_sha256(image.keys.host_key), _sha256(image.keys.client_pub)),
        "modules": [{"name": m.name, "sha256": _sha256(m)} for m in spec.modules],
        "load_modules": spec.load_modules,
        "cpus": spec.shape.cpus,
        "memory_mb": spec.shape.memory_mb,
        "cmdline": list(spec.cmdline),
        "qemu_extra": machine_args(spec.qemu_extra),
    }
    if spec.files or spec.links:  # the guest is saved holding them
        inputs["files"] = files_key(spec.files, spec.links)
    return inputs


#: A GNU build-ID note's header: name size 4, ID size 20 (SHA-1), type NT_GNU_BUILD_ID, name "GNU".
_BUILD_ID_NOTE = struct.pack("<III", 4, 20, 3) + b"GNU\0"


def module_build_id(path: Path) -> str:
    """The GNU build ID (hex) of a module file, as the loaded module shows it in
    ``/sys/module/NAME/notes`` ("none" if the file has none)."""
    data = path.read_bytes()
    at = data.find(_BUILD_ID_NOTE)
    if at < 0:
        return "none"
    start = at + len(_BUILD_ID_NOTE)
    return data[start:start + 20].hex()


def _module_name(path: Path) -> str:
    return path.name.split(".")[0].replace("-", "_")


def resume_line(nonce: str, now_ns: int | None = None, seed: bytes | None = None) -> bytes:
    """What the host writes to a restored guest's readiness port (see ``images/init/cnlab-init.c``)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    seed = os.urandom(SEED_BYTES) if seed is None else seed
    return f"CNLAB-RESUME nonce={nonce} rt={now_ns // 10**9}.{now_ns % 10**9:09d} seed={seed.hex()}\n".encode()


def check_restored(info: dict, cpus: int, build_ids: dict[str, str], now: float | None = None) -> list[str]:
    """Why a restored guest is not fit to use, from its ready line (an empty list: it is).

    :param info: ``Guest.ready_info`` of the restored guest (``restored``: the resume report).
    :param cpus: vCPUs the spec asks for.
    :param build_ids: module name to the build ID of the file the spec names (loaded modules only).
    """
    report = info.get("restored")
    if not report:
        return ["no resume report in the ready line"]
    problems = []
    if info.get("cpus") != cpus:
        problems.append(f"{info.get('cpus')} CPUs online, not {cpus}")
    for key, what in (("clock", "setting the clock"), ("reseed", "reseeding the CRNG"),
                      ("sshd", "letting the held sshd go on"), ("rw", "remounting the root disk read-write")):
        if report.get(key) != "0":
            problems.append(f"{what} failed (errno {report.get(key)})")
    try:
        skew = float(report.get("rt", "")) - (time.time() if now is None else now)
    except ValueError:
        problems.append(f"no wall clock in the resume report ({report.get('rt')!r})")
    else:
        if abs(skew) > CLOCK_TOLERANCE_S:
            problems.append(f"wall clock {skew:+.1f} s off the host's")
    loaded = dict(item.split(":", 1) for item in report.get("build-id", "none").split(",") if ":" in item)
    for name, build_id in build_ids.items():
        if loaded.get(name) != build_id:
            problems.append(f"module {name} has build ID {loaded.get(name, 'none')}, not {build_id}")
    return problems


@dataclass(frozen=True)
class Snapshot:
    """One saved guest state in the cache (see the module docstring)."""

    key: str
    folder: Path
    meta: dict
    store: SnapshotStore

    @property
    def ram_file(self) -> Path:
        return self.folder / "ram"

    @property
    def state_file(self) -> Path:
        return self.folder / "state"

    @property
    def cmdline(self) -> str:
        """The saved guest's kernel command line (a restored guest is started with it)."""
        return self.meta["cmdline"]

    @property
    def build_ids(self) -> dict[str, str]:
        """Loaded module name to the build ID it must have in a restored guest."""
        return dict(self.meta.get("build_ids", {}))

    def boot_console(self) -> bytes:
        """The saved guest's boot console (empty if missing)."""
        try:
            return (self.folder / "boot.console.log").read_bytes()
        except FileNotFoundError:
            return b""

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Hold a shared lock on the state while QEMU opens it, so nobody prunes or discards it meanwhile."""
        with self.store.lock(self.key, shared=True):
            if not self.state_file.is_file():
                raise LabError(f"saved state {self.key} vanished before it could be restored")
            (self.folder / "used").touch()
            yield

    def restored(self) -> None:
        """A restore from this state worked: earlier failures of its key no longer count."""
        self.store.clear_failures(self.key)

    def discard(self, reason: str) -> None:
        """A restore from this state failed: delete it (the next guest saves a new one) and count the failure."""
        self.store.discard(self.key, reason)


class SnapshotStore:
    """The saved guest states under one folder (``CACHE/snapshots``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def lock(self, key: str, shared: bool = False, blocking: bool = True) -> contextlib.AbstractContextManager:
        """The lock of one state (see the module docstring)."""
        return _flock(self.root.parent / "locks" / f"snapshot-{key}.lock", shared, blocking)

    def get(self, key: str) -> Snapshot | None:
        """The complete state of ``key``, or None (a folder whose files do not match its meta is discarded)."""
        folder = self.root / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError:
            meta = {}
        sizes = meta.get("sizes", {})
        for name in ("ram", "state"):
            try:
                size = (folder / name).stat().st_size
            except FileNotFoundError:
                size = -1
            if size != sizes.get(name):
                log.warning("saved state %s: %s is %d bytes, meta.json says %s; discarding it", key, name, size,
                            sizes.get(name))
                self._remove(key)
                return None
        return Snapshot(key, folder, meta, self)

    def failures(self, key: str) -> dict:
        """The recent failures of ``key``'s saves and restores: ``{"count", "reasons", "last"}``."""
        try:
            record = json.loads((self.root / f"{key}.failed").read_text())
        except (FileNotFoundError, ValueError):
            return {"count": 0, "reasons": [], "last": 0.0}
        if time.time() - record.get("last", 0.0) > FAILURE_MEMORY_S:
            return {"count": 0, "reasons": [], "last": 0.0}
        return record

    def record_failure(self, key: str, reason: str) -> None:
        record = self.failures(key)
        record["count"] += 1
        record["reasons"] = (record["reasons"] + [reason])[-FAILURES_TO_DISABLE:]
        record["last"] = time.time()
        write_json_atomic(self.root / f"{key}.failed", record)

    def clear_failures(self, key: str) -> None:
        """A restore from ``key`` worked: forget its earlier failures (only failures in a row disable it)."""
        (self.root / f"{key}.failed").unlink(missing_ok=True)

    def discard(self, key: str, reason: str) -> None:
        """Delete ``key``'s state (waiting for restores that are opening it) and count a failure."""
        with self.lock(key):
            self._remove(key)
            self.record_failure(key, reason)

    def _remove(self, key: str) -> None:
        folder = self.root / key
        if folder.exists():
            doomed = self.root / f".discarded-{key}-{os.getpid()}-{time.monotonic_ns()}"
            folder.rename(doomed)  # gone from sight at once; restored guests keep their mapping of the RAM
            shutil.rmtree(doomed, ignore_errors=True)

    def save(self, key: str, inputs: dict, spec: GuestSpec) -> Snapshot:
        """Boot a guest of ``spec``, warm it up and save its state as ``key`` (under the state's lock)."""
        with self.lock(key):
            existing = self.get(key)
            if existing is not None:
                return existing
            with publish_dir(self.root / key) as scratch:
                _save(spec, scratch, key, inputs)
        snapshot = self.get(key)
        if snapshot is None:
            raise LabError(f"saved state {key} missing right after it was saved")
        return snapshot

    def prune(self, keep: str) -> list[str]:
        """Delete states beyond the :data:`KEEP` most recently used, unless used within
        :data:`KEEP_RECENT_S` or locked; and leftovers of interrupted saves.  The keys deleted."""
        now = time.time()
        states = []
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            if folder.name.startswith("."):
                if folder.is_dir() and now - folder.stat().st_mtime > KEEP_RECENT_S:
                    shutil.rmtree(folder, ignore_errors=True)  # a save or discard that was killed
                continue
            if folder.is_dir() and folder.name != keep:
                used = folder / "used"
                states.append(((used if used.exists() else folder).stat().st_mtime, folder.name))
        states.sort(reverse=True)
        deleted = []
        for last_used, key in states[KEEP - 1:]:
            if now - last_used <= KEEP_RECENT_S:
                continue
            try:
                with self.lock(key, blocking=False):
                    self._remove(key)
                    deleted.append(key)
            except BlockingIOError:
                continue
        return deleted

    def disk_bytes(self, key: str) -> int:
        """Bytes ``key``'s state takes on disk (allocated blocks: the RAM file is sparse)."""
        folder = self.root / key
        return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


@contextlib.contextmanager
def _flock(path: Path, shared: bool, blocking: bool) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        fcntl.flock(handle, flags)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_fork_server(saver: Guest, key: str) -> None:
    """Start the guest programs' fork server (``lab/guestside/forkserver.py``) in a guest whose state is about to
    be saved, if it has the programs: its restored guests then start the agent without starting a Python.  A
    server that fails is logged, and the state saved without it (``cnlab-fork`` then starts a Python)."""
    server = f"{GUEST_LIB}/{FORK_SERVER}"
    if not any(dest == server for _, dest, _ in saver.spec.files):
        return
    started = saver.run(["python3", "-S", server, "--daemon"], timeout=120)
    said = started.stderr.decode(errors="replace").strip()
    if not started.ok or "preload failed: none" not in said:
        log.warning("saved state %s: the fork server did not start cleanly: %s", key, said[-300:])
    else:
        log.info("saved state %s: %s", key, said)


def _save(spec: GuestSpec, scratch: Path, key: str, inputs: dict) -> None:
    """Boot, warm up and save one guest of ``spec`` into ``scratch`` (see the module docstring)."""
    from lab.guest.accel import qemu_version

    started = time.monotonic()
    machine_only = tuple(machine_args(spec.qemu_extra))
    saving_spec = dataclasses.replace(spec, snapshots=None, name="boot", qemu_extra=machine_only)
    saver = Guest(saving_spec, log_dir=scratch, saved=SavedState(scratch / "ram", share=True))
    try:
        saver.start()
        boot_s = saver.timing.ssh
        early = kernel_problems_of_the_boot(saver, spec)
        if early:  # every guest restored from it would start with them
            raise LabError(f"the kernel reported a problem while booting, before the modules loaded: {early[0]}")
        warm = saver.run(WARM_UP, timeout=120)
        if not warm.ok:
            log.info("saved state %s: warming the page cache failed (exit %s): %s", key, warm.exit_status,
                     warm.stderr.decode(errors="replace")[-300:])
        _start_fork_server(saver, key)
        argv = saver.argv_used
        saving = time.monotonic()
        saver.save_state(scratch / "state")
        save_s = time.monotonic() - saving
    finally:
        saver.stop()
    for name in ("ram", "state"):
        _fsync(scratch / name)
    meta = {
        "key": key,
        "inputs": inputs,
        "qemu_version": qemu_version(spec.qemu_binary),
        "cmdline": argv[argv.index("-append") + 1],
        "build_ids": {_module_name(m): module_build_id(m) for m in spec.modules} if spec.load_modules else {},
        "sizes": {name: (scratch / name).stat().st_size for name in ("ram", "state")},
        "disk_bytes": sum(p.stat().st_blocks * 512 for p in scratch.iterdir() if p.is_file()),
        "boot_s": round(boot_s, 3),
        "save_s": round(save_s, 3),
        "total_s": round(time.monotonic() - started, 3),
        "created": time.time(),
    }
    write_json_atomic(scratch / "meta.json", meta)
    (scratch / "used").touch()
    log.info("saved guest state %s (%d vCPUs, %d MB): %.1f MB on disk, in %.1f s", key, spec.shape.cpus,
             spec.shape.memory_mb, meta["disk_bytes"] / 2**20, meta["total_s"])


def kernel_problems_of_the_boot(guest: Guest, spec: GuestSpec) -> list[str]:
    """Console problems the kernel printed booting, before the spec's modules began to load (all of them
    for a guest that loads none): the kernel's own, not the modules' (whose own reports a saved state keeps,
    for the restored guests' checks to see)."""
    text = guest.console_text()
    modules = [_module_name(m) for m in spec.modules] if spec.load_modules else []
    return problems_before_module_load(text, modules) if modules else console_problems(text)


def discard_saved_state(spec: GuestSpec, reason: str) -> None:
    """Delete the saved state guests of ``spec`` start from, if there is one: the next guest saves anew."""
    if spec.snapshots is not None:
        SnapshotStore(spec.snapshots).discard(content_key(snapshot_inputs(spec)), reason)


def snapshot_for(spec: GuestSpec) -> Snapshot | None:
    """The saved state a guest of ``spec`` starts from, saved now if there is none; None: boot cold.

    None when the spec cannot be restored (a guest on the lab's own link), when saving failed (with a
    warning), or when the spec's saves or restores failed :data:`FAILURES_TO_DISABLE` times recently.
    """
    if spec.snapshots is None:
        return None
    if spec.network != "user":
        log.info("guest %s: on the lab's own link (network %s): cold boot, no saved state", spec.name, spec.network)
        return None
    store = SnapshotStore(spec.snapshots)
    inputs = snapshot_inputs(spec)
    key = content_key(inputs)
    snapshot = store.get(key)
    if snapshot is not None:
        return snapshot
    failures = store.failures(key)
    if failures["count"] >= FAILURES_TO_DISABLE:
        log.warning("guest %s boots cold: its saved states failed %d times (last: %s); delete %s to try again",
                    spec.name, failures["count"], failures["reasons"][-1] if failures["reasons"] else "?",
                    store.root / f"{key}.failed")
        return None
    try:
        snapshot = store.save(key, inputs, spec)
    except (LabError, OSError, QMPError, EOFError) as exc:
        reason = str(exc).split("\n--- console tail")[0]
        with store.lock(key):
            store.record_failure(key, f"saving: {reason}")
        log.warning("guest %s: saving a guest state failed (%s); it boots cold", spec.name, reason)
        return None
    for deleted in store.prune(keep=key):
        log.info("deleted the saved guest state %s (not used recently)", deleted)
    return snapshot
