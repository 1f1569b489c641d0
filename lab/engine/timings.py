"""How long each scenario took last time, for planning who runs what (lab.engine.schedule).

The last duration of every scenario (boot excluded), by name, lives in
``timings.json`` in the cache folder; a scenario never seen before is
estimated by its configured duration.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lab.host.cache import file_lock, write_json_atomic
from lab.plugin.model import Scenario, ScenarioResult

__all__ = ["expected_durations", "remember_timings"]

FILE_NAME = "timings.json"


def _load(cache: Path) -> dict[str, float]:
    try:
        data = json.loads((cache / FILE_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def expected_durations(cache: Path) -> Callable[[Scenario], float]:
    """Each scenario's expected seconds: its last duration, else its configured one."""
    known = _load(cache)

    def expected(scenario: Scenario) -> float:
        return known.get(scenario.name, scenario.duration)

    return expected


def remember_timings(records: list[ScenarioResult], cache: Path) -> None:
    """Record each finished scenario's duration (boot excluded), merged into what is already known.

    A known duration moves halfway towards the new one: one run on a busy
    host does not upset the next run's plan.
    """
    with file_lock(cache / "locks" / FILE_NAME):
        known = _load(cache)
        for record in records:
            name, seconds = record.scenario, record.duration
            if seconds and record.status in ("passed", "failed"):
                known[name] = round((known[name] + seconds) / 2, 3) if name in known else seconds
        write_json_atomic(cache / FILE_NAME, known)
