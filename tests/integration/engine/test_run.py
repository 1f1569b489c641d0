"""Scenario engine on real guests: the quick set, a killed run, a caught WARN."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.engine.results import read_results
from lab.engine.run import EXIT_OK, run_scenarios
from lab.engine.sets import resolve_scenarios
from lab.report.summary import finish_run

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("runner")]


def test_quick_set_passes_on_two_parallel_guests(cnlab_lab, tmp_path):
    scenarios = resolve_scenarios([], "quick")
    with open(tmp_path / "out.txt", "w") as out:
        outcome = run_scenarios(cnlab_lab, scenarios, 2, tmp_path, out=out)
        status = finish_run(outcome, out, junit_path=tmp_path / "junit.xml")
    text = (tmp_path / "out.txt").read_text()
    records = {r["scenario"]: r for r in read_results(tmp_path / "results.jsonl")}
    assert status == EXIT_OK, text
    assert set(records) == {s.name for s in scenarios}
    for record in records.values():
        assert record["accel"] == cnlab_lab.accel.name and record["kernel"] == cnlab_lab.kernel.release
        assert record["module_source_hash"] == cnlab_lab.module.source_hash
    warn = records["selfcheck-warn"]
    assert [r["kind"] for r in warn["kernel_reports"]] == ["warning"]
    assert warn["kernel_reports"][0]["fingerprint"].startswith("warning:")
    assert "cnlab_do_fault" in warn["kernel_reports"][0]["frames"]
    stall = records["queue-full-stall"]["metrics"]
    assert stall["lost"] > 0 and stall["lost"] == stall["counted_drops"]
    assert (tmp_path / "junit.xml").read_text().count("<testcase") == len(scenarios)


def test_a_killed_run_keeps_finished_results_and_leaves_no_qemu(cnlab_lab, tmp_path):
    env = dict(os.environ, CNLAB_CACHE=str(cnlab_lab.cache))
    argv = [sys.executable, "-m", "lab.cli", "run", "-n", "1", "--out", str(tmp_path),
            "proc-storm-cbus", "pause-resume", "uevent-burst-bundle"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = tmp_path / "results.jsonl"
    deadline = time.monotonic() + 300
    finished_one = False
    for line in proc.stdout:  # progress lines are the readiness signal
        finished_one = finished_one or "PASSED" in line or "FAILED" in line
        # every scenario gets a fresh guest: wait for the next one to be up (its setup phase)
        if (finished_one and line.rstrip().endswith(": setup")) or time.monotonic() > deadline:
            break
    consoles = list((tmp_path / "consoles").glob("*.console.log"))
    qemu_pids = [int(p) for p in subprocess.run(["pgrep", "-f", str(tmp_path / "consoles")], capture_output=True,
                                                 text=True).stdout.split()]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    finished = read_results(results)
    assert len(finished) >= 1 and finished[0]["status"] == "passed"
    assert consoles and qemu_pids
    for pid in qemu_pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([fd], [], [], 30)[0], f"QEMU {pid} outlived the killed run"
        finally:
            os.close(fd)
    # The run plans its order from remembered durations (lab.engine.schedule), so which one finished first is not fixed.
    assert json.loads(results.read_text().splitlines()[0])["scenario"] in argv[-3:]
    assert Path(results).stat().st_size > 0


def test_a_guest_that_panics_is_replaced_retried_and_reported(cnlab_lab, tmp_path):
    crash = tmp_path / "crash.toml"
    crash.write_text(
        'name = "crash"\nduration = 3.0\n[guest]\ncpus = 2\n'
        '[[emulators]]\nname = "p"\nrate = 200\n'
        '[[faults]]\nkind = "crash"\nat = 0.5\n'
    )
    scenarios = resolve_scenarios([str(crash), "proc-storm-direct"])
    with open(tmp_path / "out.txt", "w") as out:
        status = run_scenarios(cnlab_lab, scenarios, 1, tmp_path / "run", out=out).exit_status
    records = read_results(tmp_path / "run" / "results.jsonl")
    crashed = [r for r in records if r["scenario"] == "crash"]
    assert status != EXIT_OK
    assert [r["attempt"] for r in crashed] == [1, 2]  # retried once on a fresh guest
    for record in crashed:
        assert record["status"] == "error"
        panics = [k for k in record["kernel_reports"] if k["kind"] == "panic"]
        assert panics and "sysrq_handle_crash" in panics[0]["frames"]
    # The next scenario got a fresh, healthy guest and passed.
    assert [r["status"] for r in records if r["scenario"] == "proc-storm-direct"] == ["passed"]
