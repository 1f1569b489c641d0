"""The CI definitions in examples/ci/ run cnlab commands that this cnlab accepts: shards of the full set
planned from one durations file, and a merge of every shard's results."""

from __future__ import annotations

import re
import shlex
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
