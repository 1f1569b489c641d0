"""Expected scenario durations, remembered between runs."""

from lab.engine.timings import expected_durations, remember_timings
from lab.plugin.model import Scenario, ScenarioResult


def _s(name, duration=3.0):
    return Scenario(name, f"{name}.toml", duration=duration)


def test_unknown_scenarios_are_expected_to_take_their_configured_duration(tmp_path):
    expected = expected_durations(tmp_path)
    assert expected(_s("a", 2.0)) == 2.0 and expected(_s("b", 5.0)) == 5.0


def test_remembered_durations_win_and_move_halfway_towards_each_new_one(tmp_path):
    remember_timings([ScenarioResult("a", duration=9.0), ScenarioResult("b", duration=1.0)], tmp_path)
    remember_timings([ScenarioResult("a", duration=5.0), ScenarioResult("x", status="error", duration=2.0),
                      ScenarioResult("y", status="not run")], tmp_path)
    expected = expected_durations(tmp_path)
    assert expected(_s("a")) == 7.0 and expected(_s("b")) == 1.0 and expected(_s("new", 6.0)) == 6.0
    assert expected(_s("x", 3.0)) == 3.0  # an error's or an unrun scenario's duration says nothing


def test_a_damaged_timings_file_is_ignored(tmp_path):
    (tmp_path / "timings.json").write_text("{not json")
    assert expected_durations(tmp_path)(_s("a", 1.5)) == 1.5
