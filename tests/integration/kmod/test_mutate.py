"""cnlab mutate end to end on a few chosen mutants (nightly: it builds modules and boots a guest per mutant).

Chosen so that each outcome shows: deleting ``cc->enq++`` in ``cbus_insert_group()`` (a message queued
without being counted: the ledger must kill it), ``WRITE_ONCE(cbus_accepting, true)`` made a plain store (the
compiler emits the same code: filtered out as ``unchanged`` before any guest), and deleting the ``kicks``
statistic, which no verdict of the chosen scenario may look at (killed or survived, both are accepted).
"""

from __future__ import annotations

import json

import pytest

from lab.cli.main import main
from lab.image.module import kmod_dir
from lab.image.mutants import generate_mutants

pytestmark = [pytest.mark.lab, pytest.mark.nightly, pytest.mark.xdist_group("mutate")]


def _one(mutants, description: str, file: str = "cbus.c"):
    found = [m for m in mutants if m.file == file and m.description == description]
    assert found, f"no mutant {description!r} in {file}: update the test to the module's code"
    return found[0]


def test_mutate_kills_an_uncounted_message_filters_an_equivalent_and_writes_the_table(tmp_path, capsys):
    mutants = generate_mutants(kmod_dir(), ["cbus.c"])
    enq = _one(mutants, "delete cc->enq++;")
    kicks = _one(mutants, "delete cc->kicks++;")
    same = next(m for m in mutants if m.operator == "once" and "+\tcbus_accepting = true;" in m.diff)
    chosen = [enq, kicks, same]
    argv = ["mutate", "--suite", "quick", "--select", "proc-storm-cbus", "--out", str(tmp_path / "out")]
    for m in chosen:
        argv += ["--id", m.mutant_id]
    assert main(argv) == 0
    table = json.loads((tmp_path / "out" / "mutants.json").read_text())
    status = {r["id"]: r for r in table["mutants"]}
    assert status[enq.mutant_id]["status"] == "killed", status[enq.mutant_id]
    assert "cbus_ledger" in status[enq.mutant_id]["detail"] or "accounting" in status[enq.mutant_id]["detail"]
    assert status[kicks.mutant_id]["status"] in ("killed", "survived")
    assert status[same.mutant_id]["status"] == "unchanged" and "suite" not in status[same.mutant_id]
    assert table["score"]["killed"] >= 1
    page = (tmp_path / "out" / "mutants.html").read_text()
    assert enq.mutant_id in page and "cc-&gt;enq++" in page
    # resumable: a second run does nothing but rewrite the table
    capsys.readouterr()
    assert main(argv) == 0
    assert f"{len(chosen)} done before, 0 to do" in capsys.readouterr().out
