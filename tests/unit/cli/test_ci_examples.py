"""The CI definitions in examples/ci/ run cnlab commands that this cnlab accepts: shards of the full set
planned from one durations file, and a merge of every shard's results."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli.main import build_parser

CI = Path(__file__).resolve().parents[3] / "examples" / "ci"


def _commands(text: str) -> list[list[str]]:
    """Every ``python3 -m lab ...`` command, continuation lines joined, CI variables given sample values."""
    text = re.sub(r"\\\n\s*", " ", text)
    text = re.sub(r"\n\s{6,}(?=--)", " ", text)  # GitLab folds a long script line onto indented lines
    text = re.sub(r"\$\{\{[^}]*shard[^}]*\}\}", "2", text)
    text = re.sub(r"\$\{\{[^}]*SHARDS[^}]*\}\}", "4", text)
    text = text.replace('"$SHARD/$SHARDS"', "2/4").replace("$SHARD", "2").replace('"$(nproc)"', "2")
    commands = []
    for line in text.splitlines():
        if "python3 -m lab " in line:
            argv = shlex.split(line.split("python3 -m lab ", 1)[1])
            commands.append(argv)
    return commands


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_the_ci_definitions_shard_the_full_set_and_merge_it(name):
    commands = _commands((CI / name).read_text())
    parser = build_parser()
    parsed = [parser.parse_args(argv) for argv in commands]
    runs = [a for a in parsed if a.command == "run"]
    merges = [a for a in parsed if a.command == "merge"]
    assert runs and merges
    for run in runs:
        assert run.shard == "2/4" and run.scenario_set == "full" and run.durations is not None
    assert all(str(p).endswith("results.jsonl") for m in merges for p in m.results)


@pytest.mark.parametrize(("name", "schema"), [("github-actions.yml", "vendor.github-workflows"),
                                              ("gitlab-ci.yml", "vendor.gitlab-ci")])
def test_the_ci_definitions_follow_their_services_schemas(name, schema):
    """GitHub's workflow schema and GitLab's CI schema, as check-jsonschema vendors them (no network)."""
    pytest.importorskip("check_jsonschema")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(CI / name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_definition_fails_the_schema_check(tmp_path):
    """The check can fail: a job without steps is not a GitHub workflow."""
    pytest.importorskip("check_jsonschema")
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  shard:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(broken)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
