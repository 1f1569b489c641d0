"""Shards: one part of a run's scenarios, for CI matrices (``cnlab run --shard K/N``).

Every shard job computes the same split on its own, so the split depends
only on what every job has alike: the selected scenarios and their expected
durations (the remembered ones, or a ``--durations`` file).

The split is a ring cut into N arcs.  The scenarios are laid out in a fixed
order, grouped by guest shape (so a shard boots few shapes) and, within a
shape, by a hash of the name (not by duration, so a new scenario lands in one
place and does not reshuffle the others); the N-1 cuts fall where the running
sum of expected durations comes nearest to 1/N, 2/N... of the total.  A
shard's expected time is then within one scenario of the mean, and adding a
scenario moves at most a scenario or two at each cut.

Each shard's records carry ``env["shard"]``: its index, the total, a digest
of the selection (names and definitions, not file paths), a digest of the
plan, and the plan itself (which shard runs which scenario), so
``cnlab merge`` can refuse shards that do not belong together and name the
scenarios that no shard ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.errors import UsageError
from lab.plugin.model import Scenario

__all__ = ["ShardSpec", "parse_shard", "split_scenarios", "selection_digest", "plan_digest", "shard_environment",
           "load_durations"]


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` (from 1) of ``total``."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str) -> ShardSpec:
    """``K/N`` as a :class:`ShardSpec`.

    :raises UsageError: not two whole numbers with 1 <= K <= N.
    """
    index, sep, total = text.partition("/")
    try:
        spec = ShardSpec(int(index), int(total))
    except ValueError:
        spec = None
    if not sep or spec is None or not 1 <= spec.index <= spec.total:
        raise UsageError(f"--shard wants K/N with 1 <= K <= N (like 2/3), got {text!r}")
    return spec


def _ring_key(scenario: Scenario) -> tuple:
    name_hash = hashlib.sha256(scenario.name.encode()).hexdigest()
    return (scenario.cpus, scenario.memory, scenario.cmdline, name_hash)


def split_scenarios(scenarios: Sequence[Scenario], total: int,
                    expected: Callable[[Scenario], float]) -> list[list[Scenario]]:
    """The ``total`` shards of ``scenarios`` (each in ring order; a shard may be empty when there are few).

    :param expected: each scenario's expected seconds.
    """
    ring = sorted(scenarios, key=_ring_key)
    weights = [max(float(expected(s)), 0.0) for s in ring]
    whole = sum(weights) or 1.0
    prefix = [0.0]
    for weight in weights:
        prefix.append(prefix[-1] + weight)
    cuts = [0]
    for k in range(1, total):
        ideal = whole * k / total
        # the cut (an index into prefix) whose running sum is nearest the ideal, not before the previous cut
        best = min(range(cuts[-1], len(ring) + 1), key=lambda i, ideal=ideal: (abs(prefix[i] - ideal), i))
        cuts.append(best)
    cuts.append(len(ring))
    return [ring[cuts[k]:cuts[k + 1]] for k in range(total)]


def _definition(scenario: Scenario) -> str:
    """What a scenario is, without where its file lies (checkouts differ between CI jobs)."""
    return repr(dataclasses.replace(scenario, source=""))


def selection_digest(scenarios: Sequence[Scenario]) -> str:
    """A digest of the selected scenarios: their names and definitions, in any order."""
    digest = hashlib.sha256()
    for name, definition in sorted((s.name, _definition(s)) for s in scenarios):
        digest.update(name.encode() + b"\0" + definition.encode() + b"\0")
    return digest.hexdigest()[:16]


def plan_digest(shards: Sequence[Sequence[Scenario]]) -> str:
    """A digest of which shard runs which scenario."""
    plan = [[s.name for s in shard] for shard in shards]
    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:16]


def shard_environment(spec: ShardSpec, scenarios: Sequence[Scenario],
                      shards: Sequence[Sequence[Scenario]]) -> dict:
    """What every record of shard ``spec`` carries as ``env["shard"]``.

    ``scenarios`` lists ``[name, shard]`` for the whole selection, in selection order.
    """
    where = {s.name: k for k, shard in enumerate(shards, start=1) for s in shard}
    return {"index": spec.index, "total": spec.total, "selection": selection_digest(scenarios),
            "plan": plan_digest(shards), "scenarios": [[s.name, where[s.name]] for s in scenarios]}


def load_durations(path: Path) -> Callable[[Scenario], float]:
    """Expected durations from a JSON file of ``{name: seconds}`` (the cache's ``timings.json`` or what
    ``cnlab merge`` writes as ``durations.json``); a scenario not in it is expected to take its configured duration.

    :raises UsageError: the file is missing or not such a mapping.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--durations {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, int | float) for v in data.values()):
        raise UsageError(f"--durations {path}: not a JSON object of scenario name -> seconds")
    known = {str(k): float(v) for k, v in data.items()}
    return lambda scenario: known.get(scenario.name, scenario.duration)
