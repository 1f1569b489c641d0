"""``cnlab trace RESULTS`` through the command line: a kept trace's last milliseconds, one-line errors (exit 2)."""

from __future__ import annotations

from lab.cli.main import main

from ..report.test_flightrec import TRACE, WARN_AT
from ..report.test_history import record, write_run


def test_it_prints_the_kept_trace_and_says_when_there_is_none(capsys, tmp_path):
    kept = {"path": str(TRACE), "bytes": TRACE.stat().st_size, "failure_time": WARN_AT}
    run = write_run(tmp_path / "run", [record("warned", status="failed", data={"flightrec": {"trace": kept}}),
                                      record("fine")])
    assert main(["trace", str(run), "--ms", "1", "--lines", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"warned (failed): {TRACE} (") and out.count("\n  2") == 3
    assert main(["trace", str(run), "--scenario", "fine"]) == 1


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    assert main(["trace", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == f"cnlab: error: cnlab trace: no such results file: {tmp_path / 'none'}"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("")
    assert main(["trace", str(bad), "--ms", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cnlab: error: cnlab trace: --ms must be more than 0 and at most 60000, got 0"
