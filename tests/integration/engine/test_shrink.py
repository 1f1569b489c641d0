"""``cnlab shrink`` on real guests: the quick set's self-check, made to fail and padded, shrinks and still fails.

The self-check scenario (``selfcheck-warn``: the module WARNs on purpose) passes as shipped, since it expects
the WARN.  Without ``expect_problems`` the WARN is a failure with a known fingerprint; padded with a second
emulator, an explicit consumer, a CPU going offline, a longer load and higher rates
(``examples/shrink/selfcheck-warn-padded.toml``), it is worth shrinking.
Every candidate runs through the engine on a guest restored from its saved state.
"""

from __future__ import annotations

import io
import tomllib
from pathlib import Path

import pytest

from lab.cli.shrink import shrink_scenario
from lab.engine.run import plugin_manager, run_scenarios
from lab.engine.sets import builtin_sets, resolve_scenarios
from lab.engine.shrink import Failure, engine_runner, engine_validator

pytestmark = [pytest.mark.lab, pytest.mark.nightly, pytest.mark.xdist_group("runner")]  # nine runs: nightly

REGISTRIES = plugin_manager(None).registries


PADDED = Path(__file__).resolve().parents[3] / "examples" / "shrink" / "selfcheck-warn-padded.toml"


def padded_selfcheck() -> dict:
    """The example's padded self-check, checked to be the quick set's self-check plus padding."""
    (path,) = [p for p in builtin_sets()["quick"] if p.stem == "selfcheck-warn"]
    selfcheck, data = tomllib.loads(path.read_text()), tomllib.loads(PADDED.read_text())
    assert "invariants" not in data and selfcheck["invariants"] == {"expect_problems": ["warning"]}
    assert data["faults"][0] == selfcheck["faults"][0] and len(data["faults"]) > 1
    assert data["emulators"][0]["context"] == selfcheck["emulators"][0]["context"] and len(data["emulators"]) > 1
    return data


def load_size(data: dict) -> tuple:
    return (len(data.get("faults", [])) + len(data.get("consumers", [])) + len(data["emulators"]),
            sum(e.get("rate", 0) for e in data["emulators"]), data.get("guest", {}).get("cpus", 2),
            data.get("duration", 3.0))


def test_the_failing_selfcheck_shrinks_to_a_smaller_scenario_that_fails_the_same_way(cnlab_lab, tmp_path):
    data = padded_selfcheck()
    output = tmp_path / "shrunk.toml"
    out, err = io.StringIO(), io.StringIO()
    runner = engine_runner(cnlab_lab, REGISTRIES, None, tmp_path / "runs")
    status = shrink_scenario(data, str(PADDED), output, runner, engine_validator(REGISTRIES),
                             REGISTRIES, max_runs=25, budget=900, out=out, err=err)
    text = out.getvalue()
    assert status == 0, text + err.getvalue()
    lines = text.splitlines()
    first = lines[0]
    assert first.startswith("[ 1] the scenario as given") and "FAIL" in first and "kernel warning:" in first, text
    original_failure = first.split("(", 1)[1].rstrip(")")
    assert "verdicts kernel_problems, taint" in original_failure, text
    # what the summary says it removed, and the file it wrote: smaller on every count, the WARN kept
    shrunk = tomllib.loads(output.read_text())
    assert [f["name"] for f in shrunk["faults"]] == ["warn"], text
    assert load_size(shrunk) < load_size(data) and all(a <= b for a, b in zip(load_size(shrunk), load_size(data),
                                                                               strict=True)), text
    assert "removed: fault cpu-offline" in text and "wrote " in text
    # cnlab run reads the file and it fails with the same failure as the original
    (scenario,) = resolve_scenarios([str(output)], REGISTRIES)
    outcome = run_scenarios(cnlab_lab, [scenario], 1, tmp_path / "rerun", out=io.StringIO())
    (record,) = outcome.records
    assert Failure.of(record) is not None and Failure.of(record).describe() == original_failure, record.problems
    assert "cnlab_do_fault" in record.kernel_reports[0]["frames"]
