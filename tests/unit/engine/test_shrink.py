"""Shrinking with a fake runner: each reduction step, the same-failure rule, the bounds, determinism, TOML."""

from __future__ import annotations

import copy
import math
import tomllib

import pytest

from lab.engine.run import plugin_manager
from lab.engine.scenario import scenario_from_dict
from lab.engine.shrink import (
    MIN_DURATION,
    Failure,
    Outcome,
    dump_scenario,
    engine_validator,
    shrink,
)
from lab.plugin.model import ScenarioResult, Verdict

REGISTRIES = plugin_manager(None).registries
WARN = Failure("failed", ("kernel_problems", "taint"), ("warning:b5774984e41a",))


def busy() -> dict:
    """The self-check's WARN, unexpected, with more around it than it needs."""
    return {
        "name": "busy", "description": "x", "duration": 3.0, "guest": {"cpus": 2},
        "emulators": [{"name": "generator", "label": "procfork", "rate": 500, "group": 2},
                      {"name": "generator", "label": "timer", "context": "timer", "rate": 400, "group": 2}],
        "consumers": [{"name": "checker"}],
        "faults": [{"name": "warn", "at": 0.5}, {"name": "cpu-offline", "at": 1.0, "duration": 0.5, "cpu": 1}],
    }


class FakeRunner:
    """Fails as WARN while ``needs(data)`` holds, else passes; counts its calls; advances a fake clock."""

    def __init__(self, needs=None, seconds: float = 10.0, other=None) -> None:
        self.needs = needs or (lambda d: any(f["name"] == "warn" for f in d.get("faults", [])))
        self.other = other or (lambda d: None)
        self.seconds = seconds
        self.now = 0.0
        self.calls: list[dict] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, data: dict) -> Outcome:
        self.calls.append(copy.deepcopy(data))
        self.now += self.seconds
        if (failure := self.other(data)) is not None:
            return Outcome(failure.status, failure, "other")
        return Outcome("failed", WARN, "kernel_problems: ...") if self.needs(data) else Outcome("passed")


def run(data: dict, runner: FakeRunner, **kwargs):
    kwargs.setdefault("validate", engine_validator(REGISTRIES))
    return shrink(data, runner, clock=runner.clock, **kwargs)


# ------------------------------------------------------------ same failure
def record(status="failed", failed=("kernel_problems", "taint"), reports=("warning:b5774984e41a",), passed=("loss",),
           error="") -> ScenarioResult:
    verdicts = tuple(Verdict(n, False, f"detail of {n} 12345") for n in failed)
    verdicts += tuple(Verdict(n, True, "ok") for n in passed)
    kernel = tuple({"kind": r.split(":")[0], "fingerprint": r, "title": "WARNING at 0xffff..."} for r in reports)
    return ScenarioResult("s", status=status, verdicts=verdicts, kernel_reports=kernel, error=error)


def test_the_failure_of_a_record_is_its_status_failed_verdict_names_and_report_fingerprints():
    assert Failure.of(record()) == WARN
    # the same WARN twice, details and titles that change from run to run: still the same failure
    twice = record(reports=("warning:b5774984e41a", "warning:b5774984e41a"))
    assert Failure.of(twice) == WARN
    assert Failure.of(ScenarioResult("s", status="failed", verdicts=(Verdict("taint", False, "other numbers"),
                                                                      Verdict("kernel_problems", False, "x")),
                                     kernel_reports=({"kind": "warning", "fingerprint": "warning:b5774984e41a"},))
                      ) == WARN


@pytest.mark.parametrize("other", [
    record(failed=("kernel_problems", "taint", "loss")),          # an extra failed verdict
    record(failed=("kernel_problems",)),                          # one fewer
    record(reports=("warning:b5774984e41a", "bug:0123456789ab")),  # an extra kernel report
    record(reports=("warning:ffffffffffff",)),                    # another WARN (other frames)
    record(status="error", failed=(), error="guest died"),         # the guest died instead
])
def test_a_different_verdict_report_or_status_is_another_failure(other):
    assert Failure.of(other) != WARN and Failure.of(other) is not None


@pytest.mark.parametrize("status", ["passed", "interrupted", "not run"])
def test_records_that_did_not_fail_have_no_failure(status):
    assert Failure.of(ScenarioResult("s", status=status)) is None


def test_a_candidate_failing_differently_is_not_kept():
    # dropping cpu-offline makes "loss" fail too: the candidate is "other", and cpu-offline stays
    runner = FakeRunner(other=lambda d: (Failure("failed", WARN.verdicts + ("loss",), WARN.reports)
                                         if not any(f["name"] == "cpu-offline" for f in d.get("faults", []))
                                         and any(f["name"] == "warn" for f in d.get("faults", [])) else None))
    report = run(busy(), runner)
    step = next(s for s in report.steps if s.what == "drop faults[1] cpu-offline")
    assert step.verdict == "other" and not step.kept and "loss" in step.detail
    assert [f["name"] for f in report.result["faults"]] == ["warn", "cpu-offline"]


# -------------------------------------------------------------- each step
def test_faults_are_dropped_one_at_a_time_and_the_needed_one_stays():
    report = run(busy(), FakeRunner())
    drops = [(s.what, s.verdict) for s in report.steps if s.kind == "drop-fault"]
    assert drops[:2] == [("drop faults[0] warn", "pass"), ("drop faults[1] cpu-offline", "same")]
    assert report.result["faults"] == [{"name": "warn", "at": 0.5}]
    assert "fault cpu-offline" in report.removed


def test_consumers_go_and_with_none_left_the_table_goes():
    report = run(busy(), FakeRunner())
    assert "consumers" not in report.result and "consumer checker" in report.removed


def test_one_emulator_always_stays_and_a_needed_one_is_kept():
    needs_timer = FakeRunner(needs=lambda d: any(f["name"] == "warn" for f in d.get("faults", []))
                             and any(e.get("label") == "timer" for e in d["emulators"]))
    report = run(busy(), needs_timer)
    assert [e["label"] for e in report.result["emulators"]] == ["timer"]
    # the last emulator is never offered for dropping
    assert not [s for s in report.steps if s.kind == "drop-emulator" and "timer" in s.what and s.verdict == "same"]
    anything = run(busy(), FakeRunner())
    assert len(anything.result["emulators"]) == 1


def test_rates_and_counts_go_to_their_floor_first():
    report = run(busy(), FakeRunner())
    lowers = [s for s in report.steps if s.kind == "lower"]
    assert lowers[0].what == "emulators[0] timer: rate 400 -> 1" and lowers[0].kept
    assert report.result["emulators"][0]["rate"] == 1


def test_when_the_floor_passes_a_number_is_halved_while_it_still_fails():
    # the WARN needs a rate of at least 100: 400 -> 1 passes, 200 and 100 fail the same, 50 passes
    runner = FakeRunner(needs=lambda d: any(f["name"] == "warn" for f in d.get("faults", []))
                        and d["emulators"][0]["rate"] >= 100)
    report = run(busy(), runner)
    tried = [(s.what.split(": ")[1], s.verdict) for s in report.steps if s.kind == "lower"]
    assert tried[:4] == [("rate 400 -> 1", "pass"), ("rate 400 -> 200", "same"), ("rate 200 -> 100", "same"),
                         ("rate 100 -> 50", "pass")]
    assert report.result["emulators"][0]["rate"] == 100
    assert "emulators[0] timer: rate 400 -> 100" in report.removed


def test_a_generator_rate_of_zero_as_fast_as_possible_is_left_alone():
    data = busy()
    data["emulators"] = [{"name": "generator", "rate": 0, "count": 64}]
    report = run(data, FakeRunner())
    assert report.result["emulators"][0] == {"name": "generator", "rate": 0, "count": 1}


def test_vcpus_go_down_to_one():
    report = run(busy(), FakeRunner())
    (step,) = [s for s in report.steps if s.kind == "cpus" and s.kept]
    assert step.what == "guest.cpus 2 -> 1" and report.result["guest"]["cpus"] == 1


def test_vcpus_not_written_start_from_the_default():
    data = busy()
    del data["guest"]
    report = run(data, FakeRunner())
    assert report.result["guest"] == {"cpus": 1}


def test_a_fault_on_cpu_1_makes_one_vcpu_invalid_and_that_costs_no_run():
    runner = FakeRunner(needs=lambda d: len(d.get("faults", [])) == 2)  # both faults needed
    report = run(busy(), runner)
    step = next(s for s in report.steps if s.kind == "cpus")
    assert step.verdict == "invalid" and not step.ran and "cpu" in step.detail
    assert report.runs == len(runner.calls) == sum(1 for s in report.steps if s.ran)


def test_the_duration_tries_its_floor_then_halves_and_never_cuts_off_a_fault():
    report = run(busy(), FakeRunner())
    (step,) = [s for s in report.steps if s.kind == "duration"]
    assert step.what == f"duration 3 -> {MIN_DURATION:g}" and report.result["duration"] == MIN_DURATION
    # a fault at 1.2 s: the floor is 1.2; the WARN needs 2 s of load: 3 -> 1.2 passes, 1.5 passes
    data = busy()
    data["faults"][0]["at"] = 1.2
    runner = FakeRunner(needs=lambda d: any(f["name"] == "warn" for f in d.get("faults", []))
                        and d.get("duration", 3.0) >= 2.0)
    report = run(data, runner)
    tried = [(s.what, s.verdict) for s in report.steps if s.kind == "duration"]
    assert tried[:2] == [("duration 3 -> 1.2", "pass"), ("duration 3 -> 1.5", "pass")]
    assert report.result["duration"] == 3.0


def test_a_pass_repeats_until_nothing_more_goes():
    report = run(busy(), FakeRunner())
    assert report.stopped == "done"
    kinds = [s.kind for s in report.steps]
    # a second pass runs (the first kept something) and keeps nothing
    second = kinds.index("drop-fault", kinds.index("duration"))
    assert all(not s.kept for s in report.steps[second:])


def test_a_candidate_seen_before_is_not_run_again():
    runner = FakeRunner()
    report = run(busy(), runner)
    keys = [tomllib.loads(dump_scenario(c)) for c in runner.calls]
    assert len(keys) == len({repr(sorted(k.items())) for k in keys})
    assert report.runs == len(runner.calls)


# ------------------------------------------------ original, bounds, order
def test_a_scenario_that_passes_is_not_shrunk():
    runner = FakeRunner(needs=lambda d: False)
    report = run(busy(), runner)
    assert report.failure is None and report.first.status == "passed"
    assert len(runner.calls) == 1 and report.result == busy() and [s.verdict for s in report.steps] == ["pass"]


def test_max_runs_counts_the_original_and_stops_the_shrink():
    runner = FakeRunner()
    report = run(busy(), runner, max_runs=3)
    assert report.runs == len(runner.calls) == 3 and report.stopped == "max-runs"
    assert report.result["faults"] == [{"name": "warn", "at": 0.5}]  # what was kept before the limit stays


def test_no_run_starts_once_the_budget_is_spent():
    runner = FakeRunner(seconds=10.0)
    report = run(busy(), runner, budget=25.0)
    # runs start at 0, 10 and 20 s; at 30 s the budget is spent
    assert len(runner.calls) == 3 and report.stopped == "budget" and report.seconds == 30.0
    none = run(busy(), FakeRunner(), max_runs=0)
    assert none.runs == 0 and none.failure is None and none.stopped == "max-runs"


def test_shrinking_is_deterministic():
    first, second = FakeRunner(), FakeRunner()
    a, b = run(busy(), first), run(busy(), second)
    assert first.calls == second.calls and a.steps == b.steps and a.result == b.result and a.removed == b.removed


def test_the_result_is_smaller_and_still_a_valid_scenario():
    report = run(busy(), FakeRunner())
    result = report.result
    assert result == {"name": "busy", "description": "x", "duration": MIN_DURATION, "guest": {"cpus": 1},
                      "emulators": [{"name": "generator", "label": "timer", "context": "timer", "rate": 1,
                                     "group": 2}],
                      "faults": [{"name": "warn", "at": 0.5}]}
    scenario_from_dict(tomllib.loads(dump_scenario(result)), "out.toml", REGISTRIES)
    assert report.removed == ["fault cpu-offline", "consumer checker", "emulator generator (procfork)",
                              "emulators[0] timer: rate 400 -> 1", "guest.cpus 2 -> 1", "duration 3 -> 0.5"]


def test_kept_candidates_are_handed_out_as_they_are_kept():
    kept: list[dict] = []
    report = run(busy(), FakeRunner(), on_kept=kept.append)
    assert len(kept) == sum(1 for s in report.steps if s.kept) and kept[-1] == report.result


def test_the_runner_gets_a_copy():
    def mutating(data: dict) -> Outcome:
        data["faults"] = []
        return Outcome("failed", WARN)

    data = busy()
    report = shrink(data, mutating)
    assert data == busy() and report.original == busy()


# ------------------------------------------------------------------- TOML
def test_toml_round_trip_of_every_builtin_shaped_value():
    data = {"name": "x", "description": 'quote " backslash \\ tab \t newline \n del \x7f é ☃', "duration": 2.5,
            "big": 1e16, "small": 1e-05, "inf": math.inf, "flag": True, "list": [40, 40], "strings": ["a", "b"],
            "empty": [], "nested": [[1, 2], [3]],
            "guest": {"cpus": 2, "cmdline": ["slub_debug=FZPU"], "inline": {"a": 1, "b c": "d"}},
            "emulators": [{"name": "generator", "payload": [100, 2048], "bundle": False}, {"name": "irq"}],
            "invariants": {"expect_problems": ["warning"], "max_loss": 0}}
    text = dump_scenario(data, "a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n\n")
    assert tomllib.loads(text) == data


def test_every_builtin_scenario_survives_the_round_trip():
    from lab.engine.sets import builtin_sets

    for files in builtin_sets().values():
        for path in files:
            data = tomllib.loads(path.read_text())
            assert tomllib.loads(dump_scenario(data)) == data, path
            scenario_from_dict(tomllib.loads(dump_scenario(data)), str(path), REGISTRIES)


def test_values_toml_cannot_hold_are_refused():
    with pytest.raises(TypeError, match="NoneType"):
        dump_scenario({"name": None})


# ------------------------------------------------------- the engine's runner
def test_the_engine_runner_runs_each_candidate_from_its_own_file_and_reads_its_record(tmp_path, monkeypatch):
    import lab.engine.shrink as shrink_module
    from lab.engine.run import RunOutcome

    calls = []

    def run_scenarios(lab, scenarios, jobs, out_dir, plugin_config=None, on_event=None, **kwargs):
        calls.append((scenarios, jobs, out_dir))
        (scenario,) = scenarios
        failed = any(f.name == "warn" for f in scenario.faults)
        return RunOutcome([record(status="failed") if failed else ScenarioResult(scenario.name)], {}, (),
                          out_dir / "results.jsonl")

    monkeypatch.setattr(shrink_module, "run_scenarios", run_scenarios)
    runner = shrink_module.engine_runner(None, REGISTRIES, None, tmp_path)
    assert runner(busy()) == Outcome("failed", WARN, "kernel_problems: detail of kernel_problems 12345; "
                                                     "taint: detail of taint 12345")
    assert runner(dict(busy(), faults=[])) == Outcome("passed", None, "")
    (scenarios, jobs, folder), _ = calls
    assert jobs == 1 and folder == tmp_path / "run-01" and scenarios[0].source == str(folder / "scenario.toml")
    assert tomllib.loads((folder / "scenario.toml").read_text()) == busy()
    assert (tmp_path / "run-02" / "scenario.toml").is_file()


@pytest.mark.parametrize(("status", "raised"), [(130, KeyboardInterrupt), (143, SystemExit)])
def test_an_interrupted_run_stops_the_shrink(tmp_path, monkeypatch, status, raised):
    import lab.engine.shrink as shrink_module
    from lab.engine.run import RunOutcome

    monkeypatch.setattr(shrink_module, "run_scenarios", lambda *a, **k: RunOutcome([], {}, (), tmp_path / "r.jsonl",
                                                                                    interrupted=status))
    with pytest.raises(raised):
        shrink(busy(), shrink_module.engine_runner(None, REGISTRIES, None, tmp_path))


def test_a_candidate_that_never_ran_is_no_result(tmp_path, monkeypatch):
    import lab.engine.shrink as shrink_module
    from lab.engine.run import RunOutcome

    monkeypatch.setattr(shrink_module, "run_scenarios", lambda *a, **k: RunOutcome([], {}, ("busy",),
                                                                                    tmp_path / "r.jsonl"))
    outcome = shrink_module.engine_runner(None, REGISTRIES, None, tmp_path)(busy())
    assert outcome.status == "not run" and outcome.failure is None and "never ran" in outcome.detail
