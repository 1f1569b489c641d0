"""The guest agent's plan, built from the registries before any guest boots."""

from __future__ import annotations

import pytest

from lab import kabi
from lab.config import LabConfig
from lab.engine.plan import plan_scenario
from lab.engine.scenario import scenario_from_dict
from lab.errors import ConfigError
from lab.plugin import ConsumerSpec, EmulatorSpec, EventSpec, FaultSpec, get_plugin_manager
from lab.plugin.objects import FileCounter, GuestProgram


def registries():
    return get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})).registries


def plan(reg, **data):
    scenario = scenario_from_dict({"name": "p"} | data, "p.toml", reg)
    return plan_scenario(scenario, reg)


def test_plan_of_plugin_emulators_a_live_source_and_two_consumers():
    reg = registries()
    p = plan(reg, emulators=[{"name": "proc-events", "count": 10}, {"name": "irq"}, {"name": "cn_proc"}],
             consumers=[{"name": "checker"}, {"name": "multi"}])
    assert [g["gen_id"] for g in p["generators"]] == [0, 1, 2, 3, 4]  # 3 proc-events + 2 irq generators
    assert {g["group"] for g in p["generators"]} == {18, 24} and p["generators"][0]["count"] == 10
    for g in p["generators"]:
        kabi.gen_start_body(**{k: v for k, v in g.items() if k != "label"})
    assert p["live"][0]["name"] == "cn_proc" and p["live"][0]["driver"][1].endswith("storm.py")
    checker, multi = p["consumers"]
    assert checker["argv"][-2:] == ["--groups", "1,18,24"] and checker["listen"] is True
    assert multi["instances"] == 3 and p["network"] == "user" and p["folder"] == "/run/cnlab/plugins/out/p"


def test_faults_become_actions_with_triggers_and_their_events_probes():
    reg = registries()
    reg.events.for_plugin("t").add_event(EventSpec("vmstat", "page faults", FileCounter("/proc/vmstat",
                                                                                          r"pgfault (\d+)")))
    p = plan(reg, emulators=[{"name": "irq"}],
             faults=[{"name": "module-reload", "every": 1.0, "duration": 0.5},
                     {"name": "cpu-offline", "on": "vmstat", "threshold": 100}])
    reload, offline = p["faults"]
    labmods = ["python3", "-S", "/run/cnlab/py/labmods.py"]
    assert reload["inject"] == [["exec", *labmods, "unload"]] and reload["restore"] == [["exec", *labmods, "load"]]
    assert reload["trigger"]["every"] == 1.0 and reload["duration"] == 0.5 and reload["side"] == "guest"
    assert offline["inject"] == [["cpu", 1, False]] and offline["trigger"]["text"] == "on vmstat >= 100"
    assert p["events"] == {"vmstat": {"kind": "file", "path": "/proc/vmstat", "pattern": r"pgfault (\d+)",
                                      "relative": True}}


def test_link_faults_put_the_guest_on_the_lab_link():
    p = plan(registries(), emulators=[{"name": "irq"}], faults=[{"name": "link-netem", "at": 0.5}])
    assert p["network"] == "tap"
    assert p["faults"][0]["inject"] == [["exec", "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay",
                                         "100ms", "loss", "5.0%"]]


def test_one_shot_consumers_get_no_groups_and_wrong_objects_are_refused():
    reg = registries()
    reg.consumers.for_plugin("t").add_consumer(ConsumerSpec("counter", "x", lambda s: GuestProgram(
        "counter", "prog.py", {"seconds": 1}, protocol="oneshot")))
    reg.emulators.for_plugin("t").add_emulator(EmulatorSpec("odd", "x", 0x30, 1, 30, lambda s: object()))
    reg.faults.for_plugin("t").add_fault(FaultSpec("bad", "x", "guest", lambda s: ["rm", "-rf"]))
    p = plan(reg, emulators=[{"name": "irq"}], consumers=[{"name": "counter"}])
    assert p["consumers"][0]["argv"][-2:] == ["--seconds", "1"]
    with pytest.raises(ConfigError, match=r"p.toml: emulators\[0\]: emulator 'odd': its factory returned object, "
                                          "not a GeneratorProfile or LiveSource"):
        plan(reg, emulators=[{"name": "odd"}])
    with pytest.raises(ConfigError, match=r"faults\[0\]: fault 'bad': its factory returned list, not a "
                                          "lab.plugin.objects.Fault"):
        plan(reg, emulators=[{"name": "irq"}], faults=[{"name": "bad", "at": 1}])


def test_a_factory_that_raises_is_named_with_its_plugin():
    reg = registries()
    reg.emulators.for_plugin("t").add_emulator(EmulatorSpec("boom", "x", 0x30, 1, 30, lambda s: 1 / 0))
    with pytest.raises(ConfigError, match=r"emulators\[0\]: emulator 'boom': emulator 'boom' of plugin 't': its "
                                          "factory raised ZeroDivisionError"):
        plan(reg, emulators=[{"name": "boom"}])
