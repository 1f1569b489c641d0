"""Built-in plugins on real guests, through the scenario engine.

Every built-in emulator with the checker in one guest, CPU hotplug and a
QMP pause under load, and the slow and multi consumers, each run as a
``[plugins]`` scenario by ``lab.engine.run`` (the same path ``cnlab run`` takes).
The module-knob faults are exercised by tests/integration/test_kmod.py and by the
engine's own queue-full-stall scenario.
"""

from __future__ import annotations

import pytest

from lab.engine.results import read_results
from lab.engine.run import EXIT_OK, run_scenarios
from lab.engine.scenario import scenario_from_dict

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("plugins")]

#: Sized for TCG guests, so that the checker keeps up and loss must reconcile exactly.
SMALL = {"proc-events": {"count": 800, "rate": 1000}, "audit": {"rate": 800, "duration_s": 1.5},
         "irq": {"count": 1000, "rate": 1000}, "uevent": {"count": 200, "rate": 300},
         "checker": {"rcvbuf": 8 << 20}}


def _scenario(name, emulators, faults=(), consumers=("checker",), max_loss=0, params=None):
    return scenario_from_dict({"name": name, "duration": 3.0, "guest": {"cpus": 2},
                               "plugins": {"emulators": list(emulators), "consumers": list(consumers),
                                           "faults": list(faults), "params": SMALL | (params or {})},
                               "invariants": {"max_loss": max_loss}}, f"<{name}>")


def _run_all_passing(cnlab_lab, tmp_path, scenarios, jobs: int) -> dict:
    """Run ``scenarios`` through ``lab.engine.run`` (as ``cnlab run`` does); every one must pass.
    Returns the result records by scenario name."""
    with open(tmp_path / "out.txt", "w") as out:
        status = run_scenarios(cnlab_lab, scenarios, jobs, tmp_path / "run", out=out).exit_status
    records = {r["scenario"]: r for r in read_results(tmp_path / "run" / "results.jsonl")}
    failed = {name: [v for v in r["invariants"] if not v["ok"]] or r.get("error")
              for name, r in records.items() if r["status"] != "passed"}
    assert status == EXIT_OK and not failed, failed
    assert set(records) == {s.name for s in scenarios}
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
    params = {"churn": {"rcvbuf": 8 << 20}} if consumer == "churn" else None
    scenario = _scenario(f"consumer-{consumer}", ["proc-events", "irq"], consumers=[consumer], max_loss=1_000_000,
                         params=params)
    record = _run_all_passing(cnlab_lab, tmp_path, [scenario], 1)[scenario.name]
    consumers = record["metrics"]["plugins"]["runner"]["consumers"]
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
    scenarios = [_scenario(f"fault-{fault}", ["proc-events", "irq"], [fault], max_loss=1_000_000)]
    with open(tmp_path / "out.txt", "w") as out:
        status = run_scenarios(cnlab_lab, scenarios, 1, tmp_path / "run", out=out).exit_status
    (record,) = read_results(tmp_path / "run" / "results.jsonl")
    assert status == EXIT_OK, [v for v in record["invariants"] if not v["ok"]] or record.get("error")
    runner = record["metrics"]["plugins"]["runner"]
    applied = runner["faults"]
    assert applied and all(entry.get("status", 0) == 0 for entry in applied), applied  # restarts carry no status
    if fault == "module-reload":
        # The unload took the generator and CBUS statistics with it; runplan.py read the final counts back
        # from the kernel log, so the checker's accounting is exact, not partial.
        assert runner["unloads"] == 1, runner["unloads"]
        assert all(g and g.get("unloaded") for g in runner["generators"].values()), runner["generators"]
        assert runner["cbus"]["balanced"] and runner["cbus"]["unloads"] == 1, runner["cbus"]
        accounting = [c["accounting"] for c in runner["consumers"]]
        assert accounting and all(a["exact"] and a["reconciled"] for a in accounting), accounting


def test_link_faults_on_the_lab_link_are_ridden_out(cnlab_lab, tmp_path):
    """The guest sits on the lab's tap: netem on its side of the link, and a flap long
    enough (16 s) to break the SSH connection, which the orchestrator must re-establish."""
    link_params = {"link-flap": {"down_s": 16.0, "delay_s": 0.5},
                   "link-netem": {"delay_ms": 100, "loss_pct": 10.0, "delay_s": 0.2}}

    def scenario(name, fault):
        return scenario_from_dict({"name": name, "duration": 3.0, "guest": {"cpus": 2},
                                   "plugins": {"emulators": ["proc-events"], "consumers": ["checker"],
                                               "faults": [fault], "params": SMALL | link_params}},
                                  f"<{name}>")

    records = _run_all_passing(cnlab_lab, tmp_path, [scenario("link-flap", "link-flap"),
                                                     scenario("link-netem", "link-netem")], 2)
    flap = records["link-flap"]["metrics"]["plugins"]
    assert [e["action"] for e in flap["faults"]["host_faults"]] == ["link down", "link up"]
    assert flap["runner"]["ssh_reconnects"] >= 1, "the flap never broke the SSH link"
    netem = records["link-netem"]["metrics"]["plugins"]["runner"]
    assert [f["argv"][:3] for f in netem["faults"]] == [["tc", "qdisc", "add"], ["tc", "qdisc", "del"]]
