"""Shards on real guests: a selection run as three shards (cnlab run --shard K/3), merged by cnlab merge.

Cost: three shard runs one after another, each one 1-vCPU guest boot and one or two 1-second scenarios
(about 35 s under TCG on the 2-core CI host), plus two merges (no guest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from lab.engine.results import read_results

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("shards")]

NAMES = ["shard-a", "shard-b", "shard-c", "shard-d"]


def _scenario(name: str) -> str:
    return (f'name = "{name}"\nduration = 1.0\n[guest]\ncpus = 1\n'
            '[[emulators]]\nname = "generator"\npath = "cbus"\ncontext = "kthread"\nrate = 200\n'
            '[invariants]\nmax_loss = 0\n')


def _cnlab(cnlab_lab, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CNLAB_CACHE=str(cnlab_lab.cache))
    return subprocess.run([sys.executable, "-m", "lab.cli", "-q", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_three_shards_run_the_selection_once_and_merge_into_one_run(cnlab_lab, tmp_path):
    files = []
    for name in NAMES:
        path = tmp_path / f"{name}.toml"
        path.write_text(_scenario(name))
        files.append(str(path))
    durations = tmp_path / "durations.json"  # every shard job plans from the same durations
    durations.write_text(json.dumps({"shard-a": 4.0, "shard-b": 3.0, "shard-c": 3.0, "shard-d": 2.0}))
    results = []
    for index in (1, 2, 3):
        out = tmp_path / f"shard{index}"
        done = _cnlab(cnlab_lab, "run", "-n", "1", "--shard", f"{index}/3", "--durations", str(durations),
                      "--out", str(out), *files)
        assert done.returncode == 0, done.stdout + done.stderr
        results.append(out / "results.jsonl")
    ran = [r.scenario for path in results for r in read_results(path)]
    assert sorted(ran) == sorted(NAMES)  # each scenario in exactly one shard
    assert all(read_results(path) for path in results)  # balanced: no shard left empty

    merged_dir = tmp_path / "merged"
    done = _cnlab(cnlab_lab, "merge", *map(str, results), "--out", str(merged_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    merged = read_results(merged_dir / "results.jsonl")
    assert [r.scenario for r in merged] == NAMES and all(r.passed for r in merged)
    assert {r.env["shard"]["index"] for r in merged} == {1, 2, 3}
    assert ET.parse(merged_dir / "junit.xml").getroot().get("tests") == "4"
    assert "shard-d" in (merged_dir / "report.html").read_text()

    partial = _cnlab(cnlab_lab, "merge", str(results[0]), str(results[2]), "--out", str(tmp_path / "partial"))
    assert partial.returncode == 3
    missing = sorted(r.scenario for r in read_results(results[1]))
    assert f"no shard ran: {', '.join(n for n in NAMES if n in missing)}" in partial.stdout
