"""Invariant evaluation on agent reports, and the results files."""

import json
import xml.etree.ElementTree as ET

from lab.engine.results import ResultsWriter, read_results
from lab.engine.scenario import scenario_from_dict
from lab.engine.verdicts import evaluate
from lab.report.junit import write_junit


def _scenario(**inv):
    return scenario_from_dict({"name": "s", "emulators": [{"name": "e", "path": "direct"}],
                               "invariants": inv}, "s.toml")


def _report(generated=1000, received=1000, err_nolistener=0, gaps=0, reordered=0, p99=100.0):
    return {
        "errors": [],
        "generators": {"1": {"generated": generated, "ok": generated - err_nolistener,
                             "err_nolistener": err_nolistener, "err_nomem": 0, "err_full": 0, "err_other": 0}},
        "consumers": [{"name": "c", "received": received, "enobufs": 0, "socket_drops": 0, "rate": 500.0,
                       "per_gen": {"1": {"received": received, "gaps": gaps, "reordered": reordered}},
                       "latency_us": {"p50": 10.0, "p99": p99, "p999": p99, "max": p99}, "series": []}],
        "cbus": {"inserted": 0, "sent": 0, "drop_full": 0, "drop_nomem": 0, "drop_nolistener": 0,
                 "drop_nlerr": 0, "rejected": 0, "queued": 0},
        "cbus_balanced": True,
    }


def _verdicts(scenario, report, reports=(), before=12288, after=12288):
    verdicts, metrics = evaluate(scenario, report, list(reports), before, after)
    return {v["name"]: v for v in verdicts}, metrics


def test_faults_verdict_fails_on_a_failed_or_never_triggered_fault():
    scenario = scenario_from_dict({"name": "s", "emulators": [{"name": "e"}],
                                   "faults": [{"kind": "stall", "on": "queue_depth", "threshold": 50}]}, "s.toml")
    assert scenario.faults[0].on == "queue_depth" and scenario.faults[0].threshold == 50
    applied = [{"kind": "stall", "at": 0.4, "on": "queue_depth>=50", "ok": True, "detail": "stalled"}]
    verdicts, _ = _verdicts(scenario, _report() | {"faults": applied, "faults_never_triggered": []})
    assert verdicts["faults"]["ok"]
    never = ["fault stall on queue_depth>=50: the event never happened"]
    verdicts, _ = _verdicts(scenario, _report() | {"faults": [], "faults_never_triggered": never})
    assert not verdicts["faults"]["ok"] and "never happened" in verdicts["faults"]["detail"]
    verdicts, _ = _verdicts(scenario, _report() | {"faults": [dict(applied[0], ok=False, detail="refused")]})
    assert verdicts["faults"]["detail"] == "stall: refused"


def test_clean_run_passes_everything():
    verdicts, metrics = _verdicts(_scenario(), _report())
    assert all(v["ok"] for v in verdicts.values()) and metrics["lost"] == 0


def test_counted_loss_reconciles_but_breaks_max_loss():
    verdicts, _ = _verdicts(_scenario(max_loss=0), _report(received=900, err_nolistener=100, gaps=100))
    assert verdicts["accounting"]["ok"] and not verdicts["loss"]["ok"]


def test_silent_loss_fails_accounting():
    verdicts, _ = _verdicts(_scenario(max_loss=1000), _report(received=900, gaps=100))
    assert not verdicts["accounting"]["ok"] and "silent loss" in verdicts["accounting"]["detail"]


def test_reordering_and_latency_bounds():
    verdicts, _ = _verdicts(_scenario(p99_latency_us=50), _report(reordered=3, p99=80.0))
    assert "x accelerator slowdown 1" in verdicts["latency"]["detail"]
    assert not verdicts["order"]["ok"] and not verdicts["latency"]["ok"]


def test_kernel_problem_and_new_taint_fail_unless_expected():
    warning = [{"kind": "warning", "fingerprint": "warning:abc", "excerpt": "WARNING: ..."}]
    verdicts, _ = _verdicts(_scenario(), _report(), warning, after=12288 | 512)
    assert not verdicts["kernel_problems"]["ok"] and not verdicts["taint"]["ok"]
    verdicts, _ = _verdicts(_scenario(expect_problems=["warning"]), _report(), warning, after=12288 | 512)
    assert verdicts["kernel_problems"]["ok"] and verdicts["taint"]["ok"]
    verdicts, _ = _verdicts(_scenario(expect_problems=["warning"]), _report())
    assert not verdicts["kernel_problems"]["ok"]  # the expected report never came


def test_results_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write({"scenario": "a", "status": "passed"})
        writer.write({"scenario": "b", "status": "failed"})
    with open(path, "a") as handle:
        handle.write('{"scenario": "c", "sta')  # the writer was killed mid-line
    assert [r["scenario"] for r in read_results(path)] == ["a", "b"]


def test_junit_has_environment_and_failures(tmp_path):
    records = [
        {"scenario": "ok", "status": "passed", "duration": 1.0, "invariants": [], "metrics": {"rate": 10}},
        {"scenario": "bad", "status": "failed", "duration": 2.0, "metrics": {},
         "invariants": [{"name": "loss", "ok": False, "detail": "lost 5"}],
         "kernel_reports": [{"kind": "warning", "fingerprint": "warning:1", "excerpt": "WARNING: x"}]},
        {"scenario": "err", "status": "error", "duration": 0.5, "error": "guest crashed", "metrics": {}},
    ]
    path = tmp_path / "j.xml"
    write_junit(path, records, {"kernel": "6.1", "accel": "tcg"})
    suite = ET.parse(path).getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props == {"kernel": "6.1", "accel": "tcg"}
    bad = suite.findall("testcase")[1]
    assert "lost 5" in bad.find("failure").text and "warning:1" in bad.find("failure").text
    assert json.loads(suite.findall("testcase")[0].find("properties")[0].get("value")) == 10


def test_plugin_scenarios_headline_rate_is_what_the_consumers_received_over_the_load():
    from lab.engine.execute import _plugin_headline

    data = {"runner": {"load_s": 2.0, "consumers": [
        {"received": 3000, "accounting": {"lost": 4}, "latency_us": {"p99": 80.0}},
        {"received": 1000, "accounting": {"exact": False}}]}}
    assert _plugin_headline(data) == {"received": 4000, "rate": 2000.0, "lost": 4, "latency_us": {"p99": 80.0}}
    assert _plugin_headline({}) == {}
