"""Checks that can fail: the engine's verdicts on a deliberately broken module (convention 17).

The module is built from a copy of ``kmod/`` with one bug seeded; a short CBUS scenario runs on it through
the engine, and the check meant to catch that class of bug must fail, naming what it saw.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from lab.engine.plan import plan_scenario
from lab.engine.results import read_results
from lab.engine.run import plugin_manager, run_scenarios
from lab.engine.scenario import scenario_from_dict
from lab.guest.labsetup import Lab
from lab.image.module import kmod_dir

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("seeded")]

#: cbus_insert_group(): every 64th accepted message is freed without being queued or counted.
SILENT_PRODUCER_LOSS = ("\tcc->enq++;\n", "\tif (!(cc->inserted & 63)) {\n\t\tret = 0;\n\t\tgoto out_free;\n\t}\n"
                                         "\tcc->enq++;\n")
SCENARIO = {"name": "seeded", "duration": 2.0, "guest": {"cpus": 2},
            "emulators": [{"name": "generator", "path": "cbus", "context": "kthread", "rate": 500}]}


def _mutant(cnlab_lab, tmp_path, old: str, new: str) -> Lab:
    source = tmp_path / "kmod"
    shutil.copytree(kmod_dir(), source, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*"))
    cbus = source / "cbus.c"
    text = cbus.read_text()
    assert text.count(old) == 1, "the seed no longer applies: update it to the module's code"
    cbus.write_text(text.replace(old, new))
    return Lab(dataclasses.replace(cnlab_lab.options, module_source=source))


def test_a_message_lost_silently_by_the_producer_fails_the_ledger_and_the_accounting(cnlab_lab, tmp_path):
    lab = _mutant(cnlab_lab, tmp_path, *SILENT_PRODUCER_LOSS)
    registries = plugin_manager(None).registries
    scenario = scenario_from_dict(SCENARIO, "<seeded>", registries)
    plan_scenario(scenario, registries)
    with open(tmp_path / "out.txt", "w") as out:
        run_scenarios(lab, [scenario], 1, tmp_path / "run", out=out)
    (record,) = read_results(tmp_path / "run" / "results.jsonl")
    verdicts = {v.name: v for v in record.verdicts}
    assert record.status == "failed"
    assert not verdicts["cbus_ledger"].ok and "!= enqueued" in verdicts["cbus_ledger"].detail, verdicts["cbus_ledger"]
    assert not verdicts["accounting"].ok and "silent loss" in verdicts["accounting"].detail
    # the derived invariant cannot see it: the lost messages count as "queued" there
    assert record.data["agent"]["cbus"]["balanced"] is True
