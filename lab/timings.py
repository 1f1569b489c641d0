"""How long each scenario took last time, to start the longest ones first.

With N guests, running the longest scenarios first (the LPT rule) keeps the
last guest from finishing alone long after the others.  The last wall time
of every scenario, by name, lives in ``timings.json`` in the cache folder;
a scenario never seen before is estimated by its configured duration.
"""

from __future__ import annotations

import json
from pathlib import Path

from .cache import file_lock, write_json_atomic
from .scenario import Scenario

__all__ = ["longest_first", "remember_timings"]

FILE_NAME = "timings.json"


def _load(cache: Path) -> dict[str, float]:
    try:
        data = json.loads((cache / FILE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def longest_first(scenarios: list[Scenario], cache: Path) -> list[Scenario]:
    """``scenarios`` longest first, kept in groups of one guest shape.

    A worker reuses its guest while the shape stays the same, so shapes are
    not interleaved: the group with the most expected time comes first, and
    within a group the longest scenario first (stable for ties).
    """
    known = _load(cache)

    def expected(s: Scenario) -> float:
        return known.get(s.name, s.duration)

    groups: dict[tuple, list[Scenario]] = {}
    for scenario in scenarios:
        groups.setdefault(scenario.shape_key, []).append(scenario)
    ordered = sorted(groups.values(), key=lambda group: -sum(map(expected, group)))
    return [s for group in ordered for s in sorted(group, key=lambda s: -expected(s))]


def remember_timings(records: list[dict], cache: Path) -> None:
    """Record each finished scenario's duration (boot excluded), merged into what is already known."""
    with file_lock(cache / "locks" / FILE_NAME):
        known = _load(cache)
        known.update({r["scenario"]: r["duration"] for r in records if r.get("duration")})
        write_json_atomic(cache / FILE_NAME, known)
