"""Scenario files: every object from a registry, and every bad input stopped before any guest boots.

Each error names the file, the table and key as the scenario wrote them, what was expected, and a
suggestion where one fits; ``cnlab`` turns it into one line and exit status 2 (tested at the end).
"""

from __future__ import annotations

import pytest

from lab.cli.main import main as cnlab
from lab.config import LabConfig
from lab.engine.plan import plan_scenario
from lab.engine.scenario import load_scenario, scenario_from_dict
from lab.engine.sets import MATRIX_CPUS, MATRIX_EMULATORS, MATRIX_FAULTS, builtin_sets, full_matrix, resolve_scenarios
from lab.errors import ConfigError
from lab.plugin import get_plugin_manager

REG = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})).registries
GOOD = {"name": "s", "duration": 2, "emulators": [{"name": "generator", "rate": 100}]}


def _with(**changes):
    data = {k: (list(v) if isinstance(v, list) else v) for k, v in GOOD.items()}
    data.update(changes)
    return data


def _read(data):
    scenario = scenario_from_dict(data, "x.toml", REG)
    plan_scenario(scenario, REG)
    return scenario


def gen(**params):
    return {"name": "generator", **params}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # the scenario's own keys
        (_with(durration=3), "x.toml: durration: unknown key (did you mean 'duration'?"),
        (_with(duration="3"), "x.toml: duration: expected seconds, more than 0 and at most 600, got '3'"),
        (_with(duration=0), "x.toml: duration: expected seconds, more than 0"),
        (_with(guest={"cpus": 9}), "x.toml: guest.cpus: expected an integer from 1 to 8, got 9"),
        (_with(guest=[1]), "x.toml: guest: expected a table, got [1]"),
        (_with(emulators=[]), "x.toml: emulators: expected at least one [[emulators]] table"),
        (_with(emulators={"name": "generator"}), "x.toml: emulators: expected an array of tables ([[emulators]])"),
        (_with(invariants={"max_los": 1}), "x.toml: invariants.max_los: unknown key (did you mean 'max_loss'?"),
        (_with(name="a b"), "x.toml: name: expected a name of letters, digits, '-' and '_', got 'a b'"),
        # unknown objects, with a suggestion
        (_with(emulators=[{"name": "proc-event"}]), "x.toml: emulators[0].name: no emulator named 'proc-event' "
                                                    "(did you mean 'proc-events'? known: "),
        (_with(consumers=[{"name": "chekcer"}]), "x.toml: consumers[0].name: no consumer named 'chekcer' "
                                                 "(did you mean 'checker'?"),
        (_with(faults=[{"name": "pasue", "at": 1}]), "x.toml: faults[0].name: no fault named 'pasue' "
                                                     "(did you mean 'pause'?"),
        (_with(emulators=[{"rate": 5}]), "x.toml: emulators[0].name: expected a registered emulator name (required)"),
        # parameters: unknown keys, types, ranges, choices, lengths
        (_with(emulators=[gen(rat=5)]), "x.toml: emulators[0].rat: unknown key for emulator 'generator' (plugin "
                                        "'emulators') (did you mean 'rate'?)"),
        (_with(emulators=[gen(rate=-5)]), "x.toml: emulators[0].rate: expected an integer in 0..10000000, got -5"),
        (_with(emulators=[gen(rate=True)]), "x.toml: emulators[0].rate: expected an integer in 0..10000000, got "
                                            "boolean True"),
        (_with(emulators=[gen(context="nmi")]), "x.toml: emulators[0].context: expected a string, one of 'kthread', "
                                                "'softirq', 'timer', 'hardirq', got 'nmi'"),
        (_with(emulators=[gen(group=40)]), "x.toml: emulators[0].group: expected an integer in 1..32, got 40"),
        (_with(emulators=[gen(payload=[40])]), "x.toml: emulators[0].payload: expected an array of 2 integers in "
                                               "32..8192, got 1 element(s) [40]"),
        (_with(emulators=[gen(payload=[16, 40])]), "emulators[0].payload: expected an array of 2 integers in "
                                                   "32..8192, got element 16"),
        (_with(emulators=[{"name": "proc-events", "count": "x"}]), "x.toml: emulators[0].count: expected an "
                                                                   "integer in 1..1099511627776, got string 'x'"),
        (_with(consumers=[{"name": "checker", "rcvbuf": -1}]), "x.toml: consumers[0].rcvbuf: expected an integer "
                                                               "in 0..1073741824, got -1"),
        (_with(consumers=[{"name": "checker", "groups": [0]}]), "x.toml: consumers[0].groups: expected an array of "
                                                                "connector groups from 1 to 32, got [0]"),
        (_with(faults=[{"name": "cpu-offline", "at": 1, "cpu": 0}]), "x.toml: faults[0].cpu: expected an integer "
                                                                     "in 1..63, got 0"),
        (_with(faults=[{"name": "drain-stall", "at": 1, "ms": 1.5}]), "x.toml: faults[0].ms: expected an integer "
                                                                      "in 1..60000, got number 1.5"),
        # what only a factory or the plan can tell
        (_with(emulators=[gen(path="direct", context="hardirq")]), "x.toml: emulators[0]: emulator 'generator': "
                                                                   "hard-IRQ generators need the cbus path"),
        (_with(emulators=[gen(payload=[100, 50])]), "x.toml: emulators[0]: emulator 'generator': payload [100, 50]: "
                                                    "the first (smallest) must not exceed the second"),
        (_with(emulators=[gen(cpus=[3])]), "x.toml: emulators[0]: emulator 'generator': CPU mask 0x8 names CPUs "
                                           "the 2-vCPU guest does not have"),
        (_with(emulators=[gen(idx=0x21)]), "idx 0x21 is odd"),
        (_with(emulators=[gen(bursts=True, burst=4096, rate=1000)]), "x.toml: emulators[0]: emulator 'generator': "
                                                                     "bursts: burst x rate = 4096000 messages/s is "
                                                                     "above 1000000"),
        (_with(emulators=[gen(bursts=True, burst=0, rate=10)]), "bursts: burst 0 is outside 1..4096"),
        (_with(emulators=[gen(bursts=True, burst=1024, payload=[2048, 2048], rate=10)]),
         "burst x largest payload = 2097152 bytes is above 1048576"),
        (_with(emulators=[gen()] * 17), "more than 16 module generators"),
        (_with(faults=[{"name": "cpu-offline", "at": 1, "cpu": 2}]), "x.toml: faults[0]: fault 'cpu-offline': CPU 2 "
                                                                     "does not exist in the 2-vCPU guest"),
        # triggers
        (_with(faults=[{"name": "pause"}]), "x.toml: faults[0].at: expected exactly one of 'at' (seconds), 'every' "
                                            "(seconds) or 'on' (an event) (this table has none)"),
        (_with(faults=[{"name": "pause", "at": 1, "every": 1}]), "x.toml: faults[0].every: expected exactly one of"),
        (_with(faults=[{"name": "warn", "on": "gapp"}]), "x.toml: faults[0].on: no event named 'gapp' (did you "
                                                         "mean 'gap'?"),
        (_with(faults=[{"name": "warn", "at": 1, "threshold": 5}]), "x.toml: faults[0].threshold: expected a "
                                                                    "threshold only with on = EVENT"),
        (_with(faults=[{"name": "warn", "on": "drop", "threshold": 0}]), "x.toml: faults[0].threshold: expected a "
                                                                         "count >= 1, got 0"),
        (_with(faults=[{"name": "pause", "at": 9}]), "x.toml: faults[0].at: expected seconds from 0 to the "
                                                     "scenario's duration (2), got 9"),
        (_with(faults=[{"name": "pause", "every": 0.01}]), "x.toml: faults[0].every: expected seconds from 0.05"),
        (_with(faults=[{"name": "cpu-offline", "every": 0.5, "duration": 0.5}]), "x.toml: faults[0].duration: "
                                                                                 "expected seconds more than 0 and "
                                                                                 "less than every (0.5)"),
        (_with(faults=[{"name": "pause", "at": 1, "duration": 0}]), "x.toml: faults[0].duration: expected more than "
                                                                    "0 s for a host-side fault that is undone"),
        (_with(faults=[{"name": "pause", "at": 1}, {"name": "link-flap", "at": 1}]),
         "x.toml: faults[0]: fault 'pause': it acts from the host, which cannot hear the guest while a fault on the "
         "lab's own link breaks it"),
        # labels
        (_with(emulators=[gen(label="a"), gen(label="a")]), "x.toml: emulators[1].label: expected a label used once "
                                                            "in the scenario, got 'a' (emulators[0] has it already)"),
        # the old forms name the new keys
        (_with(plugins={"emulators": ["irq"]}), "x.toml: plugins: the [plugins] table is gone: give each object its "
                                                "own table"),
        (_with(emulators=[{"name": "procfork", "path": "cbus"}]), "no emulator named 'procfork' (known: "),
        (_with(emulators=[{"name": "procfork", "path": "cbus"}]), "the lab module's raw generator is name = "
                                                                  "\"generator\", with label = 'procfork'"),
        (_with(faults=[{"kind": "cpu_offline", "at": 1}]), "x.toml: faults[0].kind: faults are named with name = "
                                                           "\"<registered fault>\" (kind = 'cpu_offline' is now "
                                                           "name = 'cpu-offline'"),
    ],
)
def test_bad_input_names_file_table_key_and_expectation(data, message):
    with pytest.raises(ConfigError) as info:
        _read(data)
    assert message in str(info.value)
    assert str(info.value).startswith("x.toml: ") or "odd" in message or "16 module" in message


def test_objects_with_defaults_labels_and_the_implicit_checker():
    s = _read(_with(emulators=[gen(group=4), gen(group=6), {"name": "irq"}]))
    assert [e.label for e in s.emulators] == ["generator", "generator-2", "irq"]
    assert s.emulators[0].params["payload"] == (40, 40) and s.emulators[0].params["path"] == "cbus"
    assert [(c.name, c.label) for c in s.consumers] == [("checker", "checker")]
    assert s.consumers[0].params["rcvbuf"] == 8 << 20
    plan = plan_scenario(s, REG)
    assert plan["consumers"][0]["groups"] == [4, 6, 24]
    assert [g["idx"] for g in plan["generators"]] == [0x20, 0x22, 0x18, 0x18]  # auto idx per generator emulator


def test_fault_trigger_and_duration_defaults():
    s = _read(_with(faults=[{"name": "cpu-offline", "at": 0.5}, {"name": "warn", "on": "queue_depth",
                                                                   "threshold": 20}]))
    offline, warn = s.faults
    assert offline.trigger.at == 0.5 and offline.duration == 0.5  # the spec's default duration
    assert warn.trigger.on == "queue_depth" and warn.trigger.threshold == 20 and warn.duration == 0.0
    assert warn.trigger.describe() == "on queue_depth >= 20"


def test_every_builtin_scenario_reads_and_plans():
    for paths in builtin_sets().values():
        for path in paths:
            plan_scenario(load_scenario(path, REG), REG)


def test_unknown_scenario_and_set_are_config_errors():
    with pytest.raises(ConfigError, match="unknown scenario 'nope'"):
        resolve_scenarios(["nope"], REG)
    with pytest.raises(ConfigError, match="unknown scenario set 'huge'"):
        resolve_scenarios([], REG, "huge")


def test_broken_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid TOML"):
        load_scenario(bad, REG)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none.toml'}: no such scenario file"):
        load_scenario(tmp_path / "none.toml", REG)


def test_one_name_twice_in_a_run(tmp_path):
    for n in (1, 2):
        (tmp_path / f"s{n}.toml").write_text('name = "same"\n[[emulators]]\nname = "generator"\n')
    with pytest.raises(ConfigError, match="scenario name 'same' is used twice in this run"):
        resolve_scenarios([str(tmp_path / "s1.toml"), str(tmp_path / "s2.toml")], REG)


def test_full_matrix_covers_every_shape_emulator_and_fault_at_a_bounded_total_rate():
    matrix = full_matrix(REG)
    assert len(matrix) == len(MATRIX_CPUS) * len(MATRIX_EMULATORS) * len(MATRIX_FAULTS) - len(MATRIX_EMULATORS)
    assert not [s for s in matrix if s.cpus == 1 and s.uses("cpu-offline")]
    for name in MATRIX_EMULATORS:
        totals = {s.cpus: s.emulators[0].params["rate"] * s.cpus for s in matrix
                  if s.name == f"{name}-none-{s.cpus}cpu"}
        assert totals[4] <= totals[2] and totals[1] <= totals[2], (name, totals)
    for s in matrix:
        plan_scenario(s, REG)


def test_cnlab_check_and_run_stop_bad_input_with_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "b"\n[[emulators]]\nname = "generator"\nrate = -1\n')
    for command in (["check", str(bad)], ["run", str(bad)]):
        assert cnlab(command) == 2
        err = capsys.readouterr().err
        assert err == (f"cnlab: error: {bad}: emulators[0].rate: expected an integer in 0..10000000, got -1\n")


def test_cnlab_check_prints_the_plan(capsys):
    assert cnlab(["check", "queue-full-stall"]) == 0
    out = capsys.readouterr().out
    assert "audit = generator (plugin emulators): path='cbus' (default), context='kthread' (default), rate=4000" in out
    assert "cpu-offline = cpu-offline (plugin faults): cpu=1 (default); on drop, held 0.5 s" in out
    assert "     0.00 s  queue-limit fires (before the consumers start)" in out
    assert "  on event  cpu-offline fires once drop, undone 0.5 s later" in out
    assert out.rstrip().endswith("1 scenario(s) valid")
