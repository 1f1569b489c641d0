"""Built-in plugins on real guests, through the one scenario engine (the path ``cnlab run`` takes).

Every built-in emulator with the checker in one guest, CPU hotplug and a QMP
pause under load, every consumer variant, and every other built-in fault, each
proving that it fired (its record) and that the loss it caused reconciles
exactly with what the kernel counted.
"""

from __future__ import annotations

import pytest

from lab.engine.plan import plan_scenario
from lab.engine.results import read_results
from lab.engine.run import EXIT_OK, plugin_manager, run_scenarios
from lab.engine.scenario import scenario_from_dict

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("plugins")]

REGISTRIES = plugin_manager(None).registries
#: Sized for TCG guests, so that the checker keeps up and loss must reconcile exactly.
SMALL = {"proc-events": {"count": 800, "rate": 1000}, "audit": {"rate": 800, "duration_s": 1.5},
         "irq": {"count": 1000, "rate": 1000}, "uevent": {"count": 200, "rate": 300}}
#: Each fault's table beside its name: when it fires and how long it holds.
FAULTS = {"cpu-offline": {"at": 0.5, "duration": 1.0}, "pause": {"at": 0.5, "duration": 1.0},
          "module-reload": {"at": 0.5, "duration": 1.0}, "consumer-kill": {"at": 0.5},
          "rcvbuf-squeeze": {"at": 0.0}, "alloc-fail": {"at": 0.5, "duration": 1.0},
          "drain-stall": {"at": 0.5}, "queue-limit": {"at": 0.5}, "memory-pressure": {"at": 0.5},
          "link-flap": {"at": 0.5, "duration": 16.0}, "link-netem": {"at": 0.2, "delay_ms": 100, "loss_pct": 10.0}}


def _scenario(name, emulators, faults=(), consumers=("checker",), max_loss=0, params=None):
    params = params or {}
    data = {"name": name, "duration": 3.0, "guest": {"cpus": 2},
            "emulators": [{"name": e, **SMALL.get(e, {}), **params.get(e, {})} for e in emulators],
            "consumers": [{"name": c, **params.get(c, {})} for c in consumers],
            "faults": [{"name": f, **FAULTS[f], **params.get(f, {})} for f in faults],
            "invariants": {"max_loss": max_loss}}
    scenario = scenario_from_dict(data, f"<{name}>", REGISTRIES)
    plan_scenario(scenario, REGISTRIES)
    return scenario


def _run_all_passing(cnlab_lab, tmp_path, scenarios, jobs: int) -> dict:
    """Run ``scenarios`` through ``lab.engine.run`` (as ``cnlab run`` does); every one must pass, and every
    fault must have fired.  Returns the result records by scenario name."""
    with open(tmp_path / "out.txt", "w") as out:
        status = run_scenarios(cnlab_lab, scenarios, jobs, tmp_path / "run", out=out).exit_status
    records = {r.scenario: r for r in read_results(tmp_path / "run" / "results.jsonl")}
    failed = {name: r.problems or r.error for name, r in records.items() if not r.passed}
    assert status == EXIT_OK and not failed, failed
    assert set(records) == {s.name for s in scenarios}
    for scenario in scenarios:
        fired = {f["label"] for f in records[scenario.name].faults if f["ok"]}
        assert fired == {f.label for f in scenario.faults}, records[scenario.name].faults
    return records


def test_every_builtin_emulator_and_guest_faults_under_load(cnlab_lab, tmp_path):
    scenarios = [
        _scenario("all-emulators", ["proc-events", "uevent", "audit", "irq", "cn_proc"]),
        _scenario("fault-cpu-offline", ["proc-events", "irq"], ["cpu-offline"]),
        _scenario("fault-pause", ["proc-events"], ["pause"]),
        # The slow consumer overruns on purpose: loss is expected, and must still reconcile exactly.
        _scenario("slow-and-multi", ["uevent"], consumers=["slow", "multi"], max_loss=1_000_000),
    ]
    _run_all_passing(cnlab_lab, tmp_path, scenarios, 2)


@pytest.mark.parametrize("consumer", ["tiny-rcvbuf", "churn", "pyroute2"])
def test_other_consumer_variants_reconcile_exactly(cnlab_lab, tmp_path, consumer):
    """The remaining consumer variants under CBUS and direct load: their loss (the tiny buffer
    overflows; the churning one misses what is sent while it is away) must equal what the
    kernel and the socket counted, exactly."""
    # The churning one gets a big buffer, so that it keeps up and its accounting can be exact.
    scenario = _scenario(f"consumer-{consumer}", ["proc-events", "irq"], consumers=[consumer], max_loss=1_000_000)
    record = _run_all_passing(cnlab_lab, tmp_path, [scenario], 1)[scenario.name]
    consumers = record.data["agent"]["consumers"]
    for c in consumers:
        if c.get("churns") and c["socket_drops"]:
            # Overran anyway (a very loaded host): then it must say it cannot be exact, and why.
            assert "cannot be seen as gaps" in c["accounting"]["reason"], c["accounting"]
        else:
            assert c["accounting"]["exact"] and c["accounting"]["reconciled"], c["accounting"]
    assert consumers


@pytest.mark.parametrize("fault", ["module-reload", "consumer-kill", "rcvbuf-squeeze", "alloc-fail", "drain-stall",
                                   "queue-limit", "memory-pressure"])
def test_every_other_fault_injector_under_load(cnlab_lab, tmp_path, fault):
    """Each remaining built-in fault under CBUS load with the checker: the run passes, which
    means the fault's commands succeeded and the loss it causes reconciles exactly."""
    scenario = _scenario(f"fault-{fault}", ["proc-events", "irq"], [fault], max_loss=1_000_000)
    record = _run_all_passing(cnlab_lab, tmp_path, [scenario], 1)[scenario.name]
    agent = record.data["agent"]
    (firing,) = record.faults
    assert firing["ok"] and all(a["ok"] for a in firing["actions"]), firing
    if fault == "consumer-kill":
        assert agent["restarted"], "the killed consumer was not restarted"
    if fault == "module-reload":
        # The unload took the generator and CBUS statistics with it; the agent read the final counts back
        # from the kernel log, so the checker's accounting is exact, not partial.
        assert agent["unloads"] == 1, agent["unloads"]
        assert all(g and g.get("unloaded") for g in agent["generators"].values()), agent["generators"]
        assert agent["cbus"]["balanced"] and agent["cbus"]["unloads"] == 1, agent["cbus"]
        accounting = [c["accounting"] for c in agent["consumers"]]
        assert accounting and all(a["exact"] and a["reconciled"] for a in accounting), accounting


def test_link_faults_on_the_lab_link_are_ridden_out(cnlab_lab, tmp_path):
    """The guest sits on the lab's tap: netem on its side of the link, and a flap long
    enough (16 s) to break the SSH connection, which the orchestrator must re-establish."""
    records = _run_all_passing(cnlab_lab, tmp_path, [_scenario("link-flap", ["proc-events"], ["link-flap"]),
                                                     _scenario("link-netem", ["proc-events"], ["link-netem"])], 2)
    flap = records["link-flap"]
    assert [a["action"] for a in flap.faults[0]["actions"]] == ["exec ip link set eth0 down",
                                                                "expect file /sys/class/net/eth0/operstate down",
                                                                "exec ip link set eth0 up"]
    assert flap.data["agent"]["ssh_reconnects"] >= 1, "the flap never broke the SSH link"
    netem = records["link-netem"].faults[0]
    assert [a["action"].split()[:4] for a in netem["actions"]] == [["exec", "tc", "qdisc", "add"],
                                                                   ["expect", "output", "netem", "tc"],
                                                                   ["exec", "tc", "qdisc", "del"]]


NO_EFFECT_PLUGIN = '''
from lab import hookimpl
from lab.plugin import FaultSpec
from lab.plugin.objects import Fault, expect_knob, module_knob


@hookimpl
def lab_faults_register(registry):
    # sets the queue limit, then claims a value it never set: its evidence can never hold
    registry.add_fault(FaultSpec("claims-too-much", "a fault whose effect never shows", "module",
                                 lambda s: Fault((module_knob("queue_limit", 512),),
                                                 (module_knob("queue_limit", None),),
                                                 evidence=(expect_knob("queue_limit", 513),))))
'''


def test_a_fault_that_fires_without_effect_fails_its_scenario(cnlab_lab, tmp_path):
    """Convention 17: a fault proves it fired.  A plugin fault whose evidence never holds fails the scenario,
    naming what was seen; the built-in drain-stall, whose knob reads back, passes beside it."""
    from lab.engine.run import PluginOptions

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "noeffect.py").write_text(NO_EFFECT_PLUGIN)
    options = PluginOptions(plugins_dirs=(plugins,))
    registries = plugin_manager(options).registries
    data = {"name": "no-effect", "duration": 2.0, "emulators": [{"name": "irq", **SMALL["irq"]}],
            "faults": [{"name": "claims-too-much", "at": 0.5}, {"name": "drain-stall", "at": 0.5, "ms": 5}]}
    scenario = scenario_from_dict(data, "<no-effect>", registries)
    with open(tmp_path / "out.txt", "w") as out:
        run_scenarios(cnlab_lab, [scenario], 1, tmp_path / "run", out=out, plugin_config=options)
    (record,) = read_results(tmp_path / "run" / "results.jsonl")
    assert record.status == "failed"
    faults = {f["label"]: f for f in record.faults}
    assert faults["drain-stall"]["ok"] and not faults["claims-too-much"]["ok"]
    verdict = next(v for v in record.verdicts if v.name == "faults")
    assert not verdict.ok and "fired without effect: module reports queue_limit 512" in verdict.detail, verdict
