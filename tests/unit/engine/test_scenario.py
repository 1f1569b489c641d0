"""Scenario files: validation errors name file, key and expectation."""

import pytest

from lab.engine.execute import agent_plan
from lab.engine.scenario import scenario_from_dict
from lab.engine.sets import builtin_sets, resolve_scenarios
from lab.errors import ConfigError

GOOD = {"name": "s", "duration": 2, "emulators": [{"name": "e", "rate": 100}]}


def _with(**changes):
    data = {k: (list(v) if isinstance(v, list) else v) for k, v in GOOD.items()}
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(durration=3), "x.toml: durration: unknown key"),
        (_with(duration="3"), "x.toml: duration: expected"),
        (_with(duration=0), "x.toml: duration: expected seconds, more than 0"),
        (_with(guest={"cpus": 9}), "x.toml: guest.cpus: expected an integer from 1 to 8, got 9"),
        (_with(emulators=[]), "x.toml: emulators: expected at least one"),
        (_with(emulators=[{"name": "e", "context": "nmi"}]), "emulators[0].context: expected one of"),
        (_with(emulators=[{"name": "e", "path": "direct", "context": "hardirq"}]), "not hard-IRQ safe"),
        (_with(emulators=[{"name": "e", "group": 40}]), "emulators[0].group: expected a connector group"),
        (_with(emulators=[{"name": "e", "payload": [10, 5]}]), "emulators[0].payload: expected [min, max]"),
        (_with(emulators=[{"name": "e"}, {"name": "e"}]), "names must be unique"),
        (_with(emulators=[{"name": "e", "rate": True}]), "emulators[0].rate: expected"),
        (_with(faults=[{"kind": "reboot", "at": 1}]), "faults[0].kind: expected one of"),
        (_with(faults=[{"kind": "pause"}]), "faults[0].at: expected exactly one of 'at', 'every' or 'on'"),
        (_with(faults=[{"kind": "stall", "at": 1, "on": "gap"}]), "exactly one of"),
        (_with(faults=[{"kind": "stall", "on": "ping"}]), "faults[0].on: expected one of received, queue_depth"),
        (_with(faults=[{"kind": "pause", "on": "gap"}]), "faults[0].on: expected a fault the guest applies itself"),
        (_with(faults=[{"kind": "stall", "on": "queue_depth"}]), "faults[0].threshold: expected a count >= 1"),
        (_with(faults=[{"kind": "pause", "at": 1, "every": 1}]), "exactly one of"),
        (_with(faults=[{"kind": "pause", "at": 9}]), "faults[0].at: expected seconds from 0 to the duration"),
        (_with(guest={"cpus": 1}, faults=[{"kind": "cpu_offline", "at": 1, "cpu": 1}]),
         "2 or more CPUs for cpu_offline"),
        (_with(invariants={"max_los": 1}), "invariants.max_los: unknown key"),
        (_with(guest=[1]), "guest: expected a table"),
    ],
)
def test_errors_name_file_key_and_expectation(data, message):
    with pytest.raises(ConfigError) as info:
        scenario_from_dict(data, "x.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("x.toml: ")


def test_defaults_and_implicit_consumer():
    s = scenario_from_dict(_with(emulators=[{"name": "a", "group": 4}, {"name": "b", "group": 6}]), "x.toml")
    assert s.cpus == 2 and s.consumers[0].groups == (4, 6)


def test_every_builtin_scenario_validates():
    sets = builtin_sets()
    assert "quick" in sets and len(sets["quick"]) >= 6
    assert len(resolve_scenarios([], "quick")) == len(sets["quick"])


def test_unknown_scenario_name_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        resolve_scenarios(["nope"])


def test_broken_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        resolve_scenarios([str(bad)])


def test_agent_plan_gives_each_emulator_its_own_even_connector_id():
    s = scenario_from_dict(_with(emulators=[{"name": "a", "cpus": [1]}, {"name": "b", "count": 10,
                                                                        "bundle": True}]), "x.toml")
    plan = agent_plan(s, timeout_scale=3)
    a, b = plan["generators"]
    assert (a["idx"], b["idx"]) == (0x20, 0x22) and a["idx"] % 2 == 0
    assert a["cpu_mask"] == 2 and a["duration_ns"] == 2_000_000_000
    assert b["count"] == 10 and b["duration_ns"] == 0 and b["flags"] == 1


def test_plugin_scenarios_name_registered_objects():
    s = scenario_from_dict({"name": "p", "plugins": {"emulators": ["proc-events"], "consumers": ["checker"],
                                                     "params": {"proc-events": {"count": 5}}}}, "p.toml")
    assert s.plugins.emulators == ("proc-events",) and s.plugins.params["proc-events"] == {"count": 5}
    assert s.emulators == ()


@pytest.mark.parametrize(("plugins", "message"), [
    ({"emulators": []}, "plugins.emulators: expected at least one registered emulator name"),
    ({"emulators": ["x"], "fault": ["y"]}, "plugins.fault: unknown key"),
    ({"emulators": [1]}, "plugins.emulators: expected a list of registered names"),
])
def test_plugin_table_errors(plugins, message):
    with pytest.raises(ConfigError, match=message):
        scenario_from_dict({"name": "p", "plugins": plugins}, "p.toml")


def test_unknown_plugin_object_fails_before_anything_boots():
    from lab.engine.run import check_plugin_names, plugin_manager
    from lab.errors import LabError

    s = scenario_from_dict({"name": "p", "plugins": {"emulators": ["proc-events"], "faults": ["meteor"]}}, "p.toml")
    with pytest.raises(LabError, match=r"p.toml: plugins.faults: no fault named 'meteor'"):
        check_plugin_names(plugin_manager(None), [s])


def test_full_matrix_covers_every_shape_emulator_and_fault_at_a_bounded_total_rate():
    from lab.engine.sets import MATRIX_CPUS, MATRIX_EMULATORS, MATRIX_FAULTS, full_matrix

    matrix = full_matrix()
    assert len(matrix) == len(MATRIX_CPUS) * len(MATRIX_EMULATORS) * len(MATRIX_FAULTS) - len(MATRIX_EMULATORS)
    assert not [s for s in matrix if s.cpus == 1 and any(f.kind == "cpu_offline" for f in s.faults)]
    for name in MATRIX_EMULATORS:
        totals = {s.cpus: s.emulators[0].rate * s.cpus for s in matrix if s.name == f"{name}-none-{s.cpus}cpu"}
        assert totals[4] <= totals[2] and totals[1] <= totals[2], (name, totals)
