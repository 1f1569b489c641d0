"""cnlab merge: shards of one run become one results file, JUnit and HTML; shards that do not belong together
are refused with one line and exit status 2; scenarios no shard ran are named."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from lab.cli.main import main
from lab.engine.merge import merge_shards
from lab.engine.results import ResultsWriter, read_results
from lab.engine.shard import ShardSpec, shard_environment, split_scenarios
from lab.plugin.model import Scenario, ScenarioResult

ENV = {"kernel": "6.1.0-57-cloud-amd64", "module_source_hash": "abc", "accel": "tcg", "qemu": "QEMU 7.2"}
SCENARIOS = [Scenario(f"s{i}", f"s{i}.toml", duration=3.0 + i, cpus=2) for i in range(7)]


def write_shards(tmp_path, scenarios=SCENARIOS, total=3, env=ENV, status=lambda name: "passed", skip=(),
                 tag=""):
    """Each shard's results file as ``cnlab run --shard K/N`` writes it; returns the paths."""
    shards = split_scenarios(scenarios, total, lambda s: s.duration)
    paths = []
    for index in range(1, total + 1):
        shard_env = shard_environment(ShardSpec(index, total), scenarios, shards)
        path = tmp_path / f"shard{index}{tag}.jsonl"
        with ResultsWriter(path) as writer:
            for scenario in shards[index - 1]:
                if scenario.name in skip:
                    continue
                writer.write(ScenarioResult(scenario.name, scenario.source, status=status(scenario.name),
                                            duration=scenario.duration, env={**env, "shard": shard_env}).to_json())
        paths.append(path)
    return paths


def test_three_shards_merge_into_one_run_in_selection_order(tmp_path):
    merged = merge_shards(write_shards(tmp_path))
    assert [r.scenario for r in merged.records] == [s.name for s in SCENARIOS]
    assert merged.not_run == () and merged.missing_shards == () and merged.exit_status == 0
    assert merged.environment["shards"] == 3 and merged.environment["kernel"] == ENV["kernel"]


def test_the_merge_command_writes_results_junit_html_and_durations(tmp_path, capsys):
    paths = write_shards(tmp_path, status=lambda name: "failed" if name == "s3" else "passed")
    out = tmp_path / "merged"
    assert main(["merge", *map(str, paths), "--out", str(out)]) == 1
    records = read_results(out / "results.jsonl")
    assert sorted(r.scenario for r in records) == sorted(s.name for s in SCENARIOS)
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "7" and suite.get("failures") == "1"
    assert "s3" in (out / "report.html").read_text()
    assert json.loads((out / "durations.json").read_text())["s6"] == 9.0
    assert "merged 3 of 3 shards: 7 scenarios" in capsys.readouterr().out


def test_a_missing_shard_and_an_unfinished_scenario_are_named(tmp_path, capsys):
    first, second, third = write_shards(tmp_path, skip=("s0",))
    merged = merge_shards([first, third])
    plan = {s.name: k for k, shard in enumerate(split_scenarios(SCENARIOS, 3, lambda s: s.duration), start=1)
            for s in shard}
    expected = [s.name for s in SCENARIOS if plan[s.name] == 2 or s.name == "s0"]
    assert list(merged.not_run) == expected and merged.missing_shards == (2,)
    assert merged.exit_status == 3
    by_name = {r.scenario: r for r in merged.records}
    assert len(by_name) == len(SCENARIOS) and by_name["s0"].status == "not run"
    assert "do not have it" in by_name["s0"].error
    assert main(["merge", str(first), str(third), "--out", str(tmp_path / "m")]) == 3
    out = capsys.readouterr().out
    assert "no results from shard(s) 2/3" in out and "no shard ran: " in out


def test_an_interrupted_shard_counts_as_not_run(tmp_path):
    paths = write_shards(tmp_path, status=lambda name: "interrupted" if name == "s1" else "passed")
    merged = merge_shards(paths)
    assert merged.not_run == ("s1",) and merged.exit_status == 3


def test_an_empty_shard_file_is_a_shard_with_nothing_to_run(tmp_path):
    scenarios = SCENARIOS[:2]
    paths = write_shards(tmp_path, scenarios=scenarios, total=4)
    assert sum(1 for p in paths if not p.read_text()) == 2
    merged = merge_shards(paths)
    assert merged.exit_status == 0 and merged.missing_shards == ()


def _refused(argv, capsys, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnlab: error: cnlab merge: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_shards_of_different_selections_are_refused(tmp_path, capsys):
    a = write_shards(tmp_path)
    other = SCENARIOS[:6] + [Scenario("s6", "s6.toml", duration=4.0)]  # one scenario changed
    b = write_shards(tmp_path, scenarios=other, tag="b")
    _refused(["merge", str(a[0]), str(b[1])], capsys, "ran different scenario selections")


def test_shards_of_different_module_sources_or_kernels_are_refused(tmp_path, capsys):
    a = write_shards(tmp_path)
    b = write_shards(tmp_path, env={**ENV, "module_source_hash": "def"}, tag="b")
    _refused(["merge", str(a[0]), str(b[1])], capsys, "ran different module sources")
    c = write_shards(tmp_path, env={**ENV, "kernel": "6.1.0-58-cloud-amd64"}, tag="c")
    _refused(["merge", str(a[0]), str(c[1])], capsys, "ran different kernels")


def test_shards_split_from_other_durations_or_given_twice_are_refused(tmp_path, capsys):
    a = write_shards(tmp_path)
    b = write_shards(tmp_path, total=2, tag="b")
    _refused(["merge", str(a[0]), str(b[1])], capsys, "are shards of different totals")
    _refused(["merge", str(a[0]), str(a[0])], capsys, "shard1.jsonl is given twice")
    copy = tmp_path / "copy.jsonl"
    copy.write_text(a[0].read_text())
    _refused(["merge", str(a[0]), str(copy)], capsys, "shard 1/3 is given twice")
    scenarios = [Scenario(s.name, s.source, duration=s.duration, cpus=s.cpus) for s in SCENARIOS]
    shards = split_scenarios(scenarios, 3, lambda s: 1.0)  # other expected durations, another plan
    env = shard_environment(ShardSpec(2, 3), scenarios, shards)
    odd = tmp_path / "odd.jsonl"
    with ResultsWriter(odd) as writer:
        writer.write(ScenarioResult(shards[1][0].name, env={**ENV, "shard": env}).to_json())
    if env["plan"] != json.loads(a[0].read_text().splitlines()[0])["env"]["shard"]["plan"]:
        _refused(["merge", str(a[0]), str(odd)], capsys, "split the selection differently")


def test_plain_runs_and_bad_files_are_refused(tmp_path, capsys):
    plain = tmp_path / "plain.jsonl"
    with ResultsWriter(plain) as writer:
        writer.write(ScenarioResult("x", env=ENV).to_json())
    _refused(["merge", str(plain)], capsys, "not a shard's results")
    _refused(["merge", str(tmp_path / "nope.jsonl")], capsys, "no such results file")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"scenario": "x", "schema": 99}\n')
    _refused(["merge", str(garbage)], capsys, "not a cnlab results file")


@pytest.mark.parametrize(("argv", "expected"), [
    (["run", "--shard", "4/3"], "--shard wants K/N"),
    (["run", "--durations", "d.json"], "--durations goes with --shard"),
])
def test_bad_shard_options_are_one_line_and_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNLAB_CACHE", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
