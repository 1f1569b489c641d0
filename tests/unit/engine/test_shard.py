"""Shards of a selection: deterministic, balanced by expected durations, stable when a scenario is added."""

from __future__ import annotations

import random

import pytest

from lab.engine.shard import (
    ShardSpec,
    load_durations,
    parse_shard,
    plan_digest,
    selection_digest,
    shard_environment,
    split_scenarios,
)
from lab.errors import UsageError
from lab.plugin.model import Scenario


def _matrix(count=70, seed=1):
    """Scenarios shaped like the nightly matrix: 3-9 s each, 1, 2 or 4 vCPUs."""
    rng = random.Random(seed)
    return [Scenario(f"s{i}", f"/ci/{i}.toml", duration=round(rng.uniform(3, 9), 2), cpus=rng.choice([1, 2, 4]))
            for i in range(count)]


def _expected(scenario):
    return scenario.duration


def _where(shards):
    return {s.name: k for k, shard in enumerate(shards) for s in shard}


@pytest.mark.parametrize("total", [2, 3, 4, 8])
def test_every_scenario_is_in_exactly_one_shard_and_the_shards_are_balanced(total):
    scenarios = _matrix()
    shards = split_scenarios(scenarios, total, _expected)
    names = [s.name for shard in shards for s in shard]
    assert sorted(names) == sorted(s.name for s in scenarios)
    loads = [sum(s.duration for s in shard) for shard in shards]
    mean = sum(loads) / total
    # within one scenario (at most 9 s) of the mean
    assert max(loads) - mean <= 9.0 and mean - min(loads) <= 9.0, loads


def test_the_split_is_the_same_whatever_order_and_file_paths_the_jobs_see():
    scenarios = _matrix()
    moved = [Scenario(s.name, f"/other/checkout/{s.name}.toml", duration=s.duration, cpus=s.cpus)
             for s in reversed(scenarios)]
    assert _where(split_scenarios(scenarios, 4, _expected)) == _where(split_scenarios(moved, 4, _expected))
    assert selection_digest(scenarios) == selection_digest(moved)


@pytest.mark.parametrize("total", [2, 3, 4, 8])
def test_adding_a_scenario_moves_few_others(total):
    scenarios = _matrix()
    before = _where(split_scenarios(scenarios, total, _expected))
    for extra in range(10):
        added = Scenario(f"new-{extra}", "new.toml", duration=5.0 + extra / 3, cpus=(1, 2, 4)[extra % 3])
        after = _where(split_scenarios(scenarios + [added], total, _expected))
        moved = [name for name in before if before[name] != after[name]]
        # at most two scenarios at each of the N-1 cuts (longest-first over all 70 would reshuffle dozens)
        assert len(moved) <= 2 * (total - 1), (added.name, moved)


def test_a_shard_groups_guest_shapes():
    scenarios = _matrix()
    shards = split_scenarios(scenarios, 3, _expected)
    shapes_per_shard = [len({s.cpus for s in shard}) for shard in shards]
    assert sum(shapes_per_shard) <= 3 + 2  # each cut can split one shape


def test_fewer_scenarios_than_shards_leaves_some_empty():
    scenarios = _matrix(2)
    shards = split_scenarios(scenarios, 4, _expected)
    assert sum(map(len, shards)) == 2 and [] in shards


def test_the_environment_names_the_plan_and_the_selection():
    scenarios = _matrix(6)
    shards = split_scenarios(scenarios, 3, _expected)
    env = shard_environment(ShardSpec(2, 3), scenarios, shards)
    assert env["index"] == 2 and env["total"] == 3
    assert [name for name, _ in env["scenarios"]] == [s.name for s in scenarios]  # selection order
    assert {k for _, k in env["scenarios"]} <= {1, 2, 3}
    assert env["plan"] == plan_digest(shards) and env["selection"] == selection_digest(scenarios)
    changed = [Scenario(s.name, s.source, duration=s.duration + (1 if i == 0 else 0), cpus=s.cpus)
               for i, s in enumerate(scenarios)]
    assert selection_digest(changed) != env["selection"]


@pytest.mark.parametrize("text", ["3", "0/3", "4/3", "a/b", "1/", "/2", "-1/2"])
def test_bad_shard_specs_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard wants K/N"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("2/3") == ShardSpec(2, 3) and str(ShardSpec(2, 3)) == "2/3"


def test_durations_file(tmp_path):
    path = tmp_path / "durations.json"
    path.write_text('{"a": 7.5}')
    expected = load_durations(path)
    assert expected(Scenario("a", "", duration=3.0)) == 7.5
    assert expected(Scenario("b", "", duration=3.0)) == 3.0
    path.write_text('["a"]')
    with pytest.raises(UsageError, match="name -> seconds"):
        load_durations(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_durations(tmp_path / "missing.json")
