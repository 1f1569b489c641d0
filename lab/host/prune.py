"""``cnlab cache prune``: remove artefacts nobody uses, never one a running lab holds.

Which artefacts go is decided per kind (:func:`plan_prune`): the ``keep_last``
most recently used stay, and with ``older_than`` so does everything used
more recently than that.  Removing one (:func:`remove_artefact`) takes an
exclusive lock on its folder without waiting (a lab's lease makes that fail:
the folder stays), renames the folder away, and only then deletes it, so a
lab leasing it at that moment sees it gone and rebuilds it.  The space freed
is what the removed folders occupied on disk, measured before removal.
Scratch folders of interrupted builds go too, when their kind's build lock
is free.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.host.inventory import PRUNABLE_KINDS, Artefact, Inventory, disk_usage

__all__ = ["PrunePlan", "PruneResult", "plan_prune", "remove_artefact", "prune"]


@dataclass(frozen=True)
class PrunePlan:
    """What a prune would do: the artefacts to remove and, for each kept one, why."""

    remove: tuple[Artefact, ...]
    keep: tuple[tuple[Artefact, str], ...]


@dataclass(frozen=True)
class PruneResult:
    """What a prune did.

    :param removed: the artefacts deleted.
    :param held: the ones planned for removal that a lab held at that moment (kept).
    :param freed: bytes on disk the removed artefacts and scratch folders occupied.
    """

    removed: tuple[Artefact, ...]
    held: tuple[Artefact, ...]
    scratch_removed: tuple[Path, ...]
    freed: int


def plan_prune(inventory: Inventory, keep_last: int, older_than: float | None, now: float) -> PrunePlan:
    """Decide, per kind (and per variant: a root disk per list of extra guest packages), which artefacts go:
    not in use, not among the ``keep_last`` last used, and (if ``older_than`` seconds is given) not used
    within that time."""
    if keep_last < 0:
        raise ValueError("keep_last must be 0 or more")
    remove: list[Artefact] = []
    keep: list[tuple[Artefact, str]] = []
    kinds: dict[tuple[str, str], list[Artefact]] = {}
    for artefact in inventory.artefacts:
        kinds.setdefault((artefact.kind, artefact.variant), []).append(artefact)
    for kind in sorted(kinds):
        ranked = sorted(kinds[kind], key=lambda a: a.last_used, reverse=True)
        for rank, artefact in enumerate(ranked):
            if not artefact.prunable:
                keep.append((artefact, "no lab leases this kind"))
            elif artefact.in_use:
                keep.append((artefact, "in use by a running lab"))
            elif rank < keep_last:
                keep.append((artefact, f"among the {keep_last} last used"))
            elif older_than is not None and now - artefact.last_used < older_than:
                keep.append((artefact, "used recently"))
            else:
                remove.append(artefact)
    return PrunePlan(tuple(remove), tuple(keep))


def _delete(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def remove_artefact(artefact: Artefact) -> bool:
    """Delete ``artefact`` unless a lab holds it; True if it was removed."""
    try:
        fd = os.open(artefact.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        trash = artefact.path.with_name(f".prune-{artefact.key}-{os.getpid()}")
        os.rename(artefact.path, trash)  # from here on, a lab taking a lease sees the folder gone
        _delete(trash)
        return True
    finally:
        os.close(fd)


def _abandoned_scratch(inventory: Inventory) -> list[Path]:
    """Scratch folders whose kind's build lock is free: left by builds (or prunes) that were interrupted."""
    abandoned = []
    for folder in inventory.scratch:
        kind = folder.parent.name
        lock = inventory.root / "locks" / f"{PRUNABLE_KINDS.get(kind, kind)}.lock"
        if kind not in PRUNABLE_KINDS:
            continue
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            abandoned.append(folder)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            abandoned.append(folder)
        except BlockingIOError:
            pass  # a build of this kind is running: its scratch folder is live
        finally:
            os.close(fd)
    return abandoned


def prune(inventory: Inventory, plan: PrunePlan) -> PruneResult:
    """Carry out ``plan``: remove its artefacts (those a lab holds now stay) and abandoned scratch folders."""
    removed, held = [], []
    freed = 0
    for artefact in plan.remove:
        if remove_artefact(artefact):
            removed.append(artefact)
            freed += artefact.size
        else:
            held.append(artefact)
    scratch = _abandoned_scratch(inventory)
    for folder in scratch:
        freed += disk_usage(folder)
        _delete(folder)
    return PruneResult(tuple(removed), tuple(held), tuple(scratch), freed)
