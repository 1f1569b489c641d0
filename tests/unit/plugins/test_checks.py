"""The engine's checks (essential plugin ``checks``): each verdict fails on a rigged input (convention 17)."""

from __future__ import annotations

import pytest

from lab.config import LabConfig
from lab.engine.scenario import scenario_from_dict
from lab.plugin import get_plugin_manager

PM = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}))
CHECKS = PM.get_plugin("checks")


def scenario(faults=(), consumers=(), **inv):
    data = {"name": "s", "emulators": [{"name": "generator", "path": "direct"}], "invariants": inv,
            "faults": list(faults), "consumers": list(consumers)}
    return scenario_from_dict(data, "s.toml", PM.registries)


def consumer(name="checker", received=1000, lost=0, drops=0, reconciled=True, reordered=0, p99=100.0, **extra):
    return {"name": name, "received": received, "reordered": reordered, "socket_drops": drops, "enobufs": 0,
            "latency_us": {"p50": 10.0, "p99": p99, "samples": received},
            "accounting": {"exact": True, "lost": lost, "socket_drops": drops, "pre_socket": 0, "cbus_nlerr": 0,
                           "reconciled": reconciled}} | extra


def data(consumers=None, faults=(), never=(), errors=(), drain=None, cbus=None, reports=(), before=12288,
         after=12288, live=(), load_s=2.0):
    agent = {"errors": list(errors), "consumers": consumers if consumers is not None else [consumer()],
             "cbus": cbus or {"balanced": True}, "faults": list(faults), "faults_never_fired": list(never),
             "drain": drain or {"ok": True, "waited_s": 0.01}, "live": list(live), "load_s": load_s}
    return {"agent": agent, "faults": list(faults), "guest": {"slowdown": 10},
            "kernel": {"reports": list(reports), "taint_before": before, "taint_after": after}}


def verdicts(s, d):
    return {v.name: v for v in CHECKS.lab_result_check(s, d)}


def test_a_clean_run_passes_every_check():
    v = verdicts(scenario(), data())
    assert set(v) == {"kernel_problems", "taint", "agent", "consumers", "accounting", "loss", "order", "drain"}
    assert all(x.ok for x in v.values())


def test_counted_loss_reconciles_but_breaks_max_loss():
    v = verdicts(scenario(max_loss=10), data([consumer(lost=100, drops=100)]))
    assert v["accounting"].ok and not v["loss"].ok and v["loss"].detail == "worst consumer checker lost 100 (max 10)"


def test_silent_loss_fails_accounting():
    v = verdicts(scenario(max_loss=1000), data([consumer(lost=100, drops=40, reconciled=False)]))
    assert not v["accounting"].ok and "lost 100 != socket drops 40" in v["accounting"].detail


def test_unbalanced_cbus_fails_accounting():
    v = verdicts(scenario(), data(cbus={"balanced": False, "inserted": 5}))
    assert not v["accounting"].ok and "CBUS counters do not balance" in v["accounting"].detail


def test_reordering_latency_and_throughput_bounds():
    v = verdicts(scenario(p99_latency_us=50, min_rate=1000), data([consumer(reordered=3, p99=800.0)]))
    assert not v["order"].ok and not v["latency"].ok and not v["throughput"].ok
    assert v["latency"].detail == "p99 800.0 us (max 500: 50 x accelerator slowdown 10)"
    assert v["throughput"].detail == "500 msgs/s (min 1000)"


def test_a_drain_that_timed_out_names_the_cpus():
    v = verdicts(scenario(), data(drain={"ok": False, "waited_s": 45.0, "cpus": {"1": 120}}))
    assert not v["drain"].ok and v["drain"].detail == "CBUS not empty after 45.0 s: cpu1 holds 120"


def test_agent_errors_and_a_missing_report_fail():
    assert not verdicts(scenario(), data(errors=["GEN_START 0: EPERM"]))["agent"].ok
    v = CHECKS.lab_result_check(scenario(), {"agent": None, "kernel": {}})
    assert [(x.name, x.ok) for x in v if x.name == "agent"] == [("agent", False)]


def test_consumers_that_did_not_report_or_heard_nothing():
    v = verdicts(scenario(), data([consumer(), consumer("late", received=0),
                                   {"name": "gone", "missing": True, "status": 1, "stderr": "Traceback"}]))
    assert not v["consumers"].ok
    assert v["consumers"].detail == "late: received nothing; gone: no report (exit status 1): Traceback"
    killed = verdicts(scenario(faults=[{"name": "consumer-kill", "at": 1}]),
                      data([consumer(), {"name": "c-r", "missing": True, "status": -9}],
                           faults=[{"label": "consumer-kill", "ok": True,
                                    "actions": [{"action": "signal consumers KILL", "ok": True}]}]))
    assert killed["consumers"].ok  # a consumer SIGKILLed by the fault may leave no report


@pytest.mark.parametrize(("records", "never", "expected"), [
    ([{"label": "warn", "trigger": "at 1 s", "ok": True, "actions": [{"action": "write x", "ok": True}]}], [],
     "1 firing(s), every action succeeded"),
    ([{"label": "warn", "trigger": "at 1 s", "ok": False,
       "actions": [{"action": "knob warn 1", "ok": False, "error": "EPERM"}]}], [],
     "warn (at 1 s): knob warn 1: EPERM"),
    ([], ["fault warn (gap): the event never happened"], "fault warn (gap): the event never happened"),
    ([], [], "warn: never fired"),
])
def test_faults_that_failed_or_never_fired_fail_their_scenario(records, never, expected):
    s = scenario(faults=[{"name": "warn", "at": 1}] if not never else [{"name": "warn", "on": "gap"}])
    v = verdicts(s, data(faults=records, never=never))["faults"]
    assert v.detail == expected and v.ok == (expected.startswith("1 firing"))


def test_kernel_problems_and_taint_fail_unless_expected():
    warning = [{"kind": "warning", "fingerprint": "warning:abc", "excerpt": "WARNING: ..."}]
    v = verdicts(scenario(), data(reports=warning, after=12288 | 512))
    assert not v["kernel_problems"].ok and not v["taint"].ok
    v = verdicts(scenario(expect_problems=["warning"]), data(reports=warning, after=12288 | 512))
    assert v["kernel_problems"].ok and v["taint"].ok
    v = verdicts(scenario(expect_problems=["warning"]), data())
    assert not v["kernel_problems"].ok and "expected but absent: ['warning']" in v["kernel_problems"].detail


def test_a_live_source_whose_driver_failed():
    v = verdicts(scenario(), data(live=[{"label": "cn_proc", "status": 1, "stderr": "fork failed"}]))
    assert not v["live"].ok and v["live"].detail == "cn_proc: driver exited 1: fork failed"


def test_the_cbus_ledger_names_the_cpu_and_the_equation_that_broke():
    d = data()
    d["agent"]["ledger"] = {"total": [], "cpus": {}}
    assert verdicts(scenario(), d)["cbus_ledger"].ok
    d["agent"]["ledger"] = {"total": ["inserted 11 != enqueued 8 + full 1 + nomem 1"],
                            "cpus": {"1": ["inserted 6 != enqueued 3 + full 1 + nomem 1"]}}
    v = verdicts(scenario(), d)["cbus_ledger"]
    assert not v.ok and v.detail == ("total: inserted 11 != enqueued 8 + full 1 + nomem 1; cpu1: inserted 6 != "
                                     "enqueued 3 + full 1 + nomem 1")
