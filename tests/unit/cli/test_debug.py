"""``cnlab debug VMCORE``: bad input is one line and exit 2 (a real dump is read in the lab test,
tests/integration/engine/test_diagnosis.py)."""

from __future__ import annotations

import pytest

from lab.cli.main import main


def _run(capsys, *argv):
    status = main(["debug", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return status, err


def test_a_missing_dump_is_named(capsys, tmp_path):
    status, err = _run(capsys, tmp_path / "nope.vmcore")
    assert status == 2 and err == f"cnlab: error: {tmp_path / 'nope.vmcore'}: no such file"


def test_a_dump_without_its_sidecar_asks_for_the_module(capsys, tmp_path):
    core = tmp_path / "g.vmcore"
    core.write_bytes(b"\x7fELF")
    status, err = _run(capsys, core)
    assert status == 2 and "--module PATH.ko" in err and len(err.splitlines()) == 1


def test_a_file_that_is_no_core_dump_is_refused(capsys, tmp_path):
    pytest.importorskip("drgn")
    core, ko = tmp_path / "g.vmcore", tmp_path / "cnlab.ko"
    core.write_text("not a dump\n")
    ko.write_bytes(b"")
    status, err = _run(capsys, core, "--module", ko)
    assert status == 2 and err.startswith(f"cnlab: error: {core}: not a readable core dump")
    assert len(err.splitlines()) == 1
