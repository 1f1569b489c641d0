"""examples/cnlab-cnbeat end to end on a real guest, as a developer runs it: ``cnlab -p cnlab_cnbeat run
SCENARIO``: the plugin declares its module (built and loaded after cnlab.ko), its timers send through CBUS under
CPU hotplug and a module reload, and cnbeat-watch's receipts are reconciled against each module instance's own
count.  Then the same with a copy of the module carrying the bug the example's first run had (the payload put
after a padded struct, so every event's instance reads 0): the ``cnbeat`` verdict must fail, naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("cnbeat")]

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "examples" / "cnlab-cnbeat"
SCENARIO = PACKAGE / "scenarios" / "cnbeat-faults.toml"

#: The padding bug: the event laid out right after a struct cn_msg in one struct (4 bytes of padding between).
PADDED = ("""\tmemcpy(msg->data, &ev, sizeof(ev));\n""",
          """\tmemcpy(msg->data + 4, &ev, sizeof(ev) - 4);\n\tmemset(msg->data, 0, 4);\n""")


def _run(src: Path, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "lab", "-p", "cnlab_cnbeat", "run", "-n", "1", "--out", str(out),
                           str(SCENARIO)], capture_output=True, text=True, timeout=900, env=env, cwd=out.parent)
    lines = (out / "results.jsonl").read_text().splitlines() if (out / "results.jsonl").exists() else []
    return proc, json.loads(lines[-1]) if lines else {}


def test_the_cnbeat_scenario_passes_with_every_instance_reconciled(tmp_path):
    proc, record = _run(PACKAGE / "src", tmp_path / "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    verdicts = {v["name"]: v for v in record["verdicts"]}
    assert all(v["ok"] for v in verdicts.values()), verdicts
    assert "2 cnbeat instance(s) inserted" in verdicts["cnbeat"]["detail"], verdicts["cnbeat"]
    assert {f["name"] for f in record["faults"]} == {"cpu-offline", "module-reload"}
    assert all(f["ok"] for f in record["faults"])
    assert record["data"]["agent"]["unloads"] == 1  # cnlab's final counts came from the kernel log
    live = record["data"]["agent"]["live"][0]
    instances = json.loads(live["stdout"])["instances"]
    # 200 events/s per CPU for 4 s less the offline CPU and the reload: 498 under CI load, 1,209 on a quiet host
    assert sum(i["inserted"] for i in instances.values()) > 250 and any(i["final"] for i in instances.values())


def test_a_seeded_layout_bug_in_the_module_fails_the_cnbeat_verdict(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    module = src / "cnlab_cnbeat" / "kmod" / "cnbeat.c"
    text = module.read_text()
    assert text.count(PADDED[0]) == 1, "the seed no longer applies: update it to the module's code"
    module.write_text(text.replace(*PADDED))
    proc, record = _run(src, tmp_path / "run")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    verdicts = {v["name"]: v for v in record["verdicts"]}
    assert not verdicts["cnbeat"]["ok"]
    assert "instance 00000000: " in verdicts["cnbeat"]["detail"] and "from an instance the module did not report" \
        in verdicts["cnbeat"]["detail"], verdicts["cnbeat"]
    # the lab's own checks cannot see it: every message was delivered and counted
    assert verdicts["cbus_ledger"]["ok"] and verdicts["accounting"]["ok"]
