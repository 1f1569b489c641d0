"""docs/plugins.md's walk-through on a real guest, end to end, through the path ``cnlab run`` takes.

1. The one-file plugin of steps 1 and 2, written from the page's own text (``my-plugins/heartbeat.py``,
   its guest counter, ``heartbeat.toml``), loaded from a plugins directory: the built-in checker's loss
   reconciles exactly and the plugin's verdict is in the record.
2. The example package, pip-installed into a temporary folder and found through its ``cnlab`` entry
   point, runs its scenario: both cpu-hog faults fire on their events (one the agent counts, one the
   plugin declares), each running the package's own guest program; the package's verdicts hold; the
   ``checker``-protocol example consumer's accounting is exact.

Both check the guest contract against what real programs reported: every key of the built-in
checker's report and of the agent's report is listed in docs/guest-contract.md.  With
``CNLAB_WALKTHROUGH_OUT=DIR`` the two result records are also written there (the figures quoted on
the page come from such a run).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

# tests/ is on sys.path (no tests/__init__.py): the page's snippets and the package installer are shared
from unit.docs.snippets import contract_keys, steps
from unit.plugin.example_package import ROOT, SCENARIO, install_example

from lab.engine.run import EXIT_OK, PluginOptions, plugin_manager, run_scenarios
from lab.engine.scenario import load_scenario
from lab.plugin import ScenarioResult

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("walkthrough")]

PAGE = (ROOT / "docs" / "plugins.md").read_text()


def _run(cnlab_lab, tmp_path: Path, name: str, options: PluginOptions, scenario_path: Path) -> ScenarioResult:
    scenario = load_scenario(scenario_path, plugin_manager(options).registries)
    with open(tmp_path / f"{name}.txt", "w") as out:
        outcome = run_scenarios(cnlab_lab, [scenario], 1, tmp_path / name, out=out, plugin_config=options)
    (record,) = outcome.records
    keep = os.environ.get("CNLAB_WALKTHROUGH_OUT")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        Path(keep, f"{name}.json").write_text(json.dumps(record.to_json(), indent=1, sort_keys=True))
    assert outcome.exit_status == EXIT_OK and record.passed, (record.problems, record.error,
                                                              (tmp_path / f"{name}.txt").read_text())
    return record


def _page_files(folder: Path) -> None:
    """The walk-through's files as the page leaves them at the end of step 2."""
    for step in steps(PAGE):
        if step.kind == "folder" or step.path == "heartbeat-faults.toml":
            break
        if step.kind == "file" and step.path != "cnlab.toml":
            (folder / step.path).parent.mkdir(parents=True, exist_ok=True)
            (folder / step.path).write_text(step.text)


def test_the_walkthrough_from_one_file_to_the_installed_package(cnlab_lab, tmp_path, monkeypatch):
    # Steps 1-2: the one-file plugin from a plugins directory.
    walk = tmp_path / "walk"
    _page_files(walk)
    options = PluginOptions(plugins_dirs=(walk / "my-plugins",))
    one_file = _run(cnlab_lab, tmp_path, "one-file", options, walk / "heartbeat.toml")
    verdicts = {(v.plugin, v.name): v for v in one_file.verdicts}
    assert verdicts[("heartbeat", "beat-counter")].ok, verdicts
    assert verdicts[("checks", "accounting")].ok and verdicts[("checks", "loss")].ok
    checker = next(c for c in one_file.data["agent"]["consumers"] if c["name"] == "checker")
    assert checker["accounting"]["exact"] and checker["accounting"]["reconciled"], checker["accounting"]
    assert one_file.metrics["generated"] == 200 and checker["received"] == 200  # 100 beats x 2 vCPUs
    documented = contract_keys()
    assert set(checker) - {"accounting"} == documented["checker"], "docs/guest-contract.md: the checker's keys"
    assert set(one_file.data["agent"]) == documented["agent"], "docs/guest-contract.md: the agent's keys"

    # Steps 3-4: the package, installed with pip and found through its entry point.
    monkeypatch.syspath_prepend(str(install_example(tmp_path / "site")))
    options = PluginOptions()
    assert plugin_manager(options).infos["example"].source == "entry point"
    record = _run(cnlab_lab, tmp_path, "package", options, SCENARIO)

    faults = {f["label"]: f for f in record.faults}
    assert set(faults) == {"hog-on-beats", "hog-on-softirqs"} and len(record.faults) == 2, record.faults
    for label, event, threshold in (("hog-on-beats", "received", 100), ("hog-on-softirqs", "softirqs", 300)):
        fault = faults[label]
        assert fault["ok"] and fault["trigger"] == f"on {event} >= {threshold}", fault
        assert fault["seen"]["count"] >= threshold and fault["delay_ms"] >= 0, fault
        assert [a["ok"] for a in fault["actions"]] == [True], fault
        assert re.fullmatch(r"exec python3 /run/cnlab/plugins/heartbeat_hog\.py --ms \d+ --marks \S+",
                            fault["actions"][0]["action"]), fault
    mine = {v.name: v for v in record.verdicts if v.plugin == "example"}
    assert set(mine) == {"beats", "beat-counter", "hog"} and all(v.ok for v in mine.values()), mine
    assert len(record.data["example"]["marks"]) == 2
    watch = next(c for c in record.data["agent"]["consumers"] if c["name"] == "beat-watch")
    assert watch["accounting"]["exact"] and watch["accounting"]["reconciled"] and watch["accounting"]["lost"] == 0
    assert watch["received"] == record.metrics["generated"] == 300
    assert {v.name for v in record.verdicts if v.plugin == "checks" and v.ok} >= {"accounting", "loss", "faults",
                                                                                 "consumers", "order"}
    print(f"\nwalk-through on {record.guest.get('accel')}: "
          + "; ".join(f"{label}: due {f['due']} s, start {f['start']} s, delay {f['delay_ms']} ms, "
                      f"seen {f['seen']['count']}" for label, f in sorted(faults.items()))
          + "; " + "; ".join(f"{v.name}: {v.detail}" for v in mine.values()))
