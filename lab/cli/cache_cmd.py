"""``cnlab cache`` and ``cnlab cache prune``: the cache as a table, and freeing it.

The listing shows every artefact by kind with its size on disk, its age
(since it was built), its last use (the last time a lab leased it) and
whether a running lab holds it now.  Prune removes what
:func:`lab.host.prune.plan_prune` picks, skips whatever a lab holds at that
moment, and says how much disk it freed.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TextIO

from lab.host.inventory import Artefact, take_inventory
from lab.host.prune import plan_prune, prune

__all__ = ["parse_duration", "human_size", "human_age", "list_cache", "prune_cache"]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``12h``, ``7d``, ``2w`` or ``1d12h``; ValueError with the expected form otherwise."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"not a duration: {text!r} (use a number and a unit: 30m, 12h, 7d, 2w)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def human_size(size: int) -> str:
    """``417 MiB``-style size (binary units, as ``du -h`` counts)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit in ("B", "KiB") or value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``5 d``."""
    seconds = max(seconds, 0)
    for limit, unit, divisor in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / divisor:.0f} {unit}"
    return f"{seconds / 86400:.0f} d"


def _row(artefact: Artefact, now: float, note: str = "") -> str:
    state = "in use" if artefact.in_use else ""
    name = f"{artefact.key} {artefact.variant}".strip()
    return (f"{artefact.kind:10} {name:44} {human_size(artefact.size):>9} {human_age(now - artefact.built):>7} "
            f"{human_age(now - artefact.last_used) + ' ago':>11}  {state or note}").rstrip()


def list_cache(root: Path, out: TextIO, now: float | None = None) -> int:
    """Print the cache's artefacts by kind; 0."""
    now = time.time() if now is None else now
    inventory = take_inventory(root)
    print(f"cache {root}: {human_size(inventory.total_bytes)} ({_n(len(inventory.artefacts), 'artefact')}, "
          f"{human_size(inventory.other_bytes)} of keys, locks and records)", file=out)
    if not inventory.artefacts:
        return 0
    print(f"{'kind':10} {'artefact':44} {'size':>9} {'age':>7} {'last use':>11}", file=out)
    for artefact in sorted(inventory.artefacts, key=lambda a: (a.kind, -a.last_used)):
        print(_row(artefact, now, "" if artefact.prunable else "never pruned"), file=out)
    if inventory.scratch:
        print(f"{len(inventory.scratch)} scratch folder(s) of builds in progress or interrupted", file=out)
    print("cnlab cache prune [--keep-last N] [--older-than D] removes what no running lab holds", file=out)
    return 0


def prune_cache(root: Path, keep_last: int, older_than: float | None, dry_run: bool, out: TextIO,
                now: float | None = None) -> int:
    """Remove what :func:`plan_prune` picks (``dry_run``: only say so); 0."""
    now = time.time() if now is None else now
    inventory = take_inventory(root)
    plan = plan_prune(inventory, keep_last, older_than, now)
    if dry_run:
        for artefact in plan.remove:
            print(f"would remove {_row(artefact, now)}", file=out)
        print(f"would free {human_size(sum(a.size for a in plan.remove))} "
              f"({_n(len(plan.remove), 'artefact')}; {len(plan.keep)} kept)", file=out)
        return 0
    result = prune(inventory, plan)
    for artefact in result.removed:
        print(f"removed {_row(artefact, now)}", file=out)
    for artefact in result.held:
        print(f"kept    {_row(artefact, now, 'a running lab took it meanwhile')}", file=out)
    held = [a for a, why in plan.keep if a.in_use]
    scratch = f", {len(result.scratch_removed)} abandoned scratch folder(s)" if result.scratch_removed else ""
    print(f"freed {human_size(result.freed)}: {_n(len(result.removed), 'artefact')}{scratch}; kept {len(plan.keep)} "
          f"({len(held) + len(result.held)} held by a running lab)", file=out)
    return 0
