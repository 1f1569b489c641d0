"""``cnlab bench suite``'s accounting, with the scenario runs faked (results files written as a run writes them)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import lab.bench.suite as suite
from lab.engine.results import ResultsWriter
from lab.plugin.model import ScenarioResult


def _fake_run(records_by_jobs):
    def run_scenarios(lab, scenarios, jobs, out_dir, out=None):
        out_dir.mkdir(parents=True, exist_ok=True)
        with ResultsWriter(out_dir / "results.jsonl") as writer:
            for record in records_by_jobs[jobs]:
                writer.write(record.to_json())
        time.sleep(0.01)  # a wall time above zero
        return SimpleNamespace(exit_status=0)
    return run_scenarios


def _lab():
    return SimpleNamespace(image=None, module=None, accel=SimpleNamespace(name="tcg"))


def test_an_attempt_that_did_not_pass_is_named_and_fails_the_bench_though_its_retry_passed(tmp_path, monkeypatch,
                                                                                          capsys):
    ok = ScenarioResult(scenario="a", source="a.toml", worker=1, boot_s=0.5, duration=5.0, wall_s=5.6)
    errored = ScenarioResult(scenario="b", source="b.toml", status="error", worker=1, boot_s=0.5, duration=500.0,
                             wall_s=500.5, error="the guest agent exited with status 1: stuck")
    retried = ScenarioResult(scenario="b", source="b.toml", attempt=2, retried=True, worker=1, boot_s=0.5,
                             duration=5.0, wall_s=5.6)
    monkeypatch.setattr(suite, "run_scenarios", _fake_run({1: [ok, errored, retried], 2: [ok, retried]}))
    monkeypatch.setattr(suite, "resolve_scenarios", lambda *a: [])
    monkeypatch.setattr(suite, "plugin_manager", lambda options: SimpleNamespace(registries=None))
    status = suite.run_suite_bench(_lab(), tmp_path / "bench.json", tmp_path / "runs")
    assert status == 1
    printed = capsys.readouterr().out
    assert "WARNING: -n 1: b attempt 1 error: the guest agent exited with status 1: stuck" in printed
    data = json.loads((tmp_path / "bench.json").read_text())
    (pair,) = data["pairs"]
    assert pair["serial"]["not_passed"] == [{"scenario": "b", "attempt": 1, "status": "error",
                                             "error": "the guest agent exited with status 1: stuck"}]
    assert pair["parallel"]["not_passed"] == []


def test_a_clean_run_passes(tmp_path, monkeypatch):
    ok = ScenarioResult(scenario="a", source="a.toml", worker=1, boot_s=0.5, duration=5.0, wall_s=5.6)
    monkeypatch.setattr(suite, "run_scenarios", _fake_run({1: [ok], 2: [ok]}))
    monkeypatch.setattr(suite, "resolve_scenarios", lambda *a: [])
    monkeypatch.setattr(suite, "plugin_manager", lambda options: SimpleNamespace(registries=None))
    assert suite.run_suite_bench(_lab(), tmp_path / "bench.json", tmp_path / "runs") == 0


def test_pairs_are_interleaved_and_their_medians_reported(tmp_path, monkeypatch, capsys):
    ok = ScenarioResult(scenario="a", source="a.toml", worker=1, boot_s=0.5, duration=5.0, wall_s=5.6)
    fake = _fake_run({1: [ok], 2: [ok]})
    order = []

    def run_scenarios(lab, scenarios, jobs, out_dir, out=None):
        order.append((jobs, out_dir.name))
        return fake(lab, scenarios, jobs, out_dir, out)

    walls = iter([30.0, 20.0, 40.0, 20.0, 33.0, 22.0])
    monkeypatch.setattr(suite, "run_scenarios", run_scenarios)
    monkeypatch.setattr(suite, "_one", lambda lab, jobs, out_dir, one=suite._one: {
        **one(lab, jobs, out_dir), "wall_s": next(walls)})
    monkeypatch.setattr(suite, "resolve_scenarios", lambda *a: [])
    monkeypatch.setattr(suite, "plugin_manager", lambda options: SimpleNamespace(registries=None))
    assert suite.run_suite_bench(_lab(), tmp_path / "bench.json", tmp_path / "runs", runs=3) == 0
    assert order == [(1, "serial-1"), (2, "parallel-1"), (1, "serial-2"), (2, "parallel-2"), (1, "serial-3"),
                     (2, "parallel-3")]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [p["speedup"] for p in data["pairs"]] == [1.5, 2.0, 1.5]
    assert data["median"] == {"serial_wall_s": 33.0, "parallel_wall_s": 20.0, "speedup": 1.5}
    printed = capsys.readouterr().out
    assert "medians of 3: -n 1 33.0 s, -n 2 20.0 s" in printed and "1.50x (median of the pairs)" in printed
