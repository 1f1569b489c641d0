"""Longest-first ordering from remembered scenario durations."""

from lab.scenario import scenario_from_dict
from lab.timings import longest_first, remember_timings


def _s(name, duration=3.0):
    return scenario_from_dict({"name": name, "duration": duration, "emulators": [{"name": "e"}]}, f"{name}.toml")


def test_unknown_scenarios_are_ordered_by_their_configured_duration(tmp_path):
    order = longest_first([_s("a", 2.0), _s("b", 5.0), _s("c", 2.0)], tmp_path)
    assert [s.name for s in order] == ["b", "a", "c"]


def test_remembered_durations_win_and_are_merged(tmp_path):
    remember_timings([{"scenario": "a", "duration": 9.0}, {"scenario": "b", "duration": 1.0}], tmp_path)
    remember_timings([{"scenario": "c", "duration": 4.0}, {"scenario": "x", "status": "error"}], tmp_path)
    order = longest_first([_s("a"), _s("b"), _s("c"), _s("new", 6.0)], tmp_path)
    assert [s.name for s in order] == ["a", "new", "c", "b"]


def test_a_damaged_timings_file_is_ignored(tmp_path):
    (tmp_path / "timings.json").write_text("{not json")
    assert [s.name for s in longest_first([_s("a", 1.0), _s("b", 2.0)], tmp_path)] == ["b", "a"]


def test_guest_shapes_stay_grouped(tmp_path):
    def shaped(name, cpus, duration):
        return scenario_from_dict({"name": name, "duration": duration, "guest": {"cpus": cpus},
                                   "emulators": [{"name": "e"}]}, f"{name}.toml")

    order = longest_first([shaped("one-short", 1, 1.0), shaped("four", 4, 5.0), shaped("one-long", 1, 4.5),
                           shaped("two", 2, 2.0)], tmp_path)
    assert [s.name for s in order] == ["one-long", "one-short", "four", "two"]
