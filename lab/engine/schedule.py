"""Which guest runs which scenario: a plan from expected durations, corrected as it runs.

Handing scenarios longest first to whichever guest is free (the LPT rule)
can leave one guest finishing long after the others: on the quick set at
``-n 2`` the two guests ended 3 s apart.  So the plan balances the expected
time per guest up front: LPT first, then scenarios move or swap between the
busiest guest and the others while that lowers the busiest guest's time.  A
guest changing shape pays a boot, so the expected time of a guest's list is
its scenarios plus a boot per shape it has to run.

Each guest runs its list in groups of one shape, longest first.  Durations
are only expected ones: a guest that runs out of work takes the last
scenario (the shortest, preferring its own shape) of the guest with the
most time left, so no guest idles while scenarios wait.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lab.plugin.model import Scenario

__all__ = ["BOOT_ESTIMATE_S", "Schedule", "Task"]

#: What the plan charges a guest for each boot (a 2-vCPU TCG guest: 2.3-3.2 s).
BOOT_ESTIMATE_S = 3.0
#: A change smaller than this (seconds) does not count as an improvement.
_EPSILON = 1e-6


@dataclass(frozen=True)
class Task:
    """One run of one scenario; ``fresh`` asks for a newly booted guest (a retry)."""

    scenario: Scenario
    attempt: int = 1
    fresh: bool = False


class Schedule:
    """Per-guest task lists for ``workers`` guests (numbered from 1)."""

    def __init__(self, scenarios: list[Scenario], workers: int, expected: Callable[[Scenario], float],
                 boot_s: float = BOOT_ESTIMATE_S) -> None:
        self._expected = expected
        self._boot_s = boot_s
        lanes = _balance([list() for _ in range(workers)], scenarios, self._cost)
        self._lanes = [[Task(s) for s in self._ordered(lane)] for lane in lanes]  # per guest, in run order

    # ------------------------------------------------------------- planning
    def _cost(self, scenarios: list[Scenario]) -> float:
        shapes = {s.shape_key for s in scenarios}
        return sum(map(self._expected, scenarios)) + self._boot_s * len(shapes)

    def _ordered(self, scenarios: list[Scenario]) -> list[Scenario]:
        groups: dict[tuple, list[Scenario]] = {}
        for scenario in scenarios:
            groups.setdefault(scenario.shape_key, []).append(scenario)
        ordered = sorted(groups.values(), key=lambda group: -sum(map(self._expected, group)))
        return [s for group in ordered for s in sorted(group, key=lambda s: -self._expected(s))]

    def planned(self) -> list[list[str]]:
        """The scenario names each guest still has to run, in order."""
        return [[t.scenario.name for t in lane] for lane in self._lanes]

    def expected_left(self, worker: int) -> float:
        """Expected seconds of the tasks still planned for ``worker``."""
        return sum(self._expected(t.scenario) for t in self._lanes[worker - 1])

    # ------------------------------------------------------------- dispatch
    def next_for(self, worker: int, shape: tuple | None = None) -> Task | None:
        """The next task for ``worker`` (whose guest has ``shape``), or None when nothing is left."""
        own = self._lanes[worker - 1]
        if own:
            return own.pop(0)
        victims = [w for w in range(1, len(self._lanes) + 1) if self._lanes[w - 1]]
        if not victims:
            return None
        victim = self._lanes[max(victims, key=self.expected_left) - 1]
        same_shape = [i for i, t in enumerate(victim) if t.scenario.shape_key == shape]
        return victim.pop(same_shape[-1] if same_shape else len(victim) - 1)

    def retry(self, worker: int, task: Task) -> None:
        """Run ``task`` next on ``worker`` (its guest has been replaced)."""
        self._lanes[worker - 1].insert(0, task)

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes)


def _balance(lanes: list[list[Scenario]], scenarios: list[Scenario],
             cost: Callable[[list[Scenario]], float]) -> list[list[Scenario]]:
    """Spread ``scenarios`` over ``lanes``: LPT, then moves and swaps off the busiest lane."""
    for scenario in sorted(scenarios, key=lambda s: -cost([s])):
        min(lanes, key=lambda lane: cost(lane + [scenario])).append(scenario)
    for _ in range(10 * len(scenarios)):  # each round strictly lowers the busiest lane; bounded anyway
        if not _improve(lanes, cost):
            break
    return lanes


def _improve(lanes: list[list[Scenario]], cost: Callable[[list[Scenario]], float]) -> bool:
    """One best move or swap between the busiest lane and another that lowers the pair's maximum."""
    busiest = max(lanes, key=cost)
    top = cost(busiest)
    best: tuple[float, Callable[[], None]] | None = None
    for other in lanes:
        if other is busiest:
            continue
        for i, x in enumerate(busiest):
            rest = busiest[:i] + busiest[i + 1:]
            moved = max(cost(rest), cost(other + [x]))
            if moved < top - _EPSILON and (best is None or moved < best[0]):
                best = (moved, lambda i=i, other=other: other.append(busiest.pop(i)))
            for j, y in enumerate(other):
                swapped = max(cost(rest + [y]), cost(other[:j] + other[j + 1:] + [x]))
                if swapped < top - _EPSILON and (best is None or swapped < best[0]):
                    best = (swapped, lambda i=i, j=j, other=other: _swap(busiest, i, other, j))
    if best is None:
        return False
    best[1]()
    return True


def _swap(a: list[Scenario], i: int, b: list[Scenario], j: int) -> None:
    a[i], b[j] = b[j], a[i]
