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
from lab.engine.run import EXIT_OK, plugin_manager, run_scenarios
from lab.engine.sets import resolve_scenarios
from lab.report.summary import finish_run

REGISTRIES = plugin_manager(None).registries


def assert_gone(pids: list[int], what: str) -> None:
    """Every one of ``pids`` (QEMUs) ends within 30 s, waited for on a pidfd."""
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            assert select.select([fd], [], [], 30)[0], f"QEMU {pid} outlived {what}"
        finally:
            os.close(fd)

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("runner")]


def test_quick_set_passes_on_two_parallel_guests(cnlab_lab, tmp_path):
    scenarios = resolve_scenarios([], REGISTRIES, "quick")
    with open(tmp_path / "out.txt", "w") as out:
        outcome = run_scenarios(cnlab_lab, scenarios, 2, tmp_path, out=out)
        status = finish_run(outcome, out, junit_path=tmp_path / "junit.xml")
    text = (tmp_path / "out.txt").read_text()
    records = {r.scenario: r for r in read_results(tmp_path / "results.jsonl")}
    assert status == EXIT_OK, text
    assert set(records) == {s.name for s in scenarios}
    for record in records.values():
        assert record.env["accel"] == cnlab_lab.accel.name and record.env["kernel"] == cnlab_lab.kernel.release
        assert record.env["module_source_hash"] == cnlab_lab.module.source_hash
    warn = records["selfcheck-warn"]
    assert [r["kind"] for r in warn.kernel_reports] == ["warning"]
    assert warn.kernel_reports[0]["fingerprint"].startswith("warning:")
    assert "cnlab_do_fault" in warn.kernel_reports[0]["frames"]
    stall = records["queue-full-stall"]
    assert stall.metrics["lost"] > 0 and stall.metrics["lost"] == stall.metrics["counted_drops"]
    # the fault chained on the kernel's first drop fired, and the record says when
    (on_drop,) = [f for f in stall.faults if f["trigger"] == "on drop"]
    assert on_drop["ok"] and on_drop["seen"]["count"] >= 1 and on_drop["restored"] > on_drop["start"]
    pause = records["pause-resume"].faults[0]
    assert [a["action"] for a in pause["actions"]] == ["qmp stop", "expect-qmp paused", "qmp cont"] and pause["ok"]
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
        finished_one = finished_one or "PASS (" in line or "FAIL (" in line
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
    assert len(finished) >= 1 and finished[0].status == "passed"
    assert consoles and qemu_pids
    assert_gone(qemu_pids, "the killed run")
    # The run plans its order from remembered durations (lab.engine.schedule), so which one finished first is not fixed.
    assert json.loads(results.read_text().splitlines()[0])["scenario"] in argv[-3:]
    assert Path(results).stat().st_size > 0


def test_a_guest_that_panics_is_replaced_retried_and_reported(cnlab_lab, tmp_path):
    crash = tmp_path / "crash.toml"
    crash.write_text(
        'name = "crash"\nduration = 3.0\n[guest]\ncpus = 2\n'
        '[[emulators]]\nname = "generator"\nrate = 200\n'
        '[[faults]]\nname = "crash"\nat = 0.5\n'
    )
    scenarios = resolve_scenarios([str(crash), "proc-storm-direct"], REGISTRIES)
    with open(tmp_path / "out.txt", "w") as out:
        status = run_scenarios(cnlab_lab, scenarios, 1, tmp_path / "run", out=out).exit_status
    records = read_results(tmp_path / "run" / "results.jsonl")
    crashed = [r for r in records if r.scenario == "crash"]
    assert status != EXIT_OK
    assert [r.attempt for r in crashed] == [1, 2]  # retried once on a fresh guest
    for record in crashed:
        assert record.status == "error"
        panics = [k for k in record.kernel_reports if k["kind"] == "panic"]
        assert panics and "sysrq_handle_crash" in panics[0]["frames"]
    # The next scenario got a fresh, healthy guest and passed.
    assert [r.status for r in records if r.scenario == "proc-storm-direct"] == ["passed"]


def test_an_interrupted_run_records_what_did_not_finish(cnlab_lab, tmp_path):
    """SIGINT (Ctrl-C) after the first result: exit 130, the finished scenario kept, the running one recorded as
    interrupted and the waiting one as not run, in the JSON lines and the summary; no QEMU left."""
    env = dict(os.environ, CNLAB_CACHE=str(cnlab_lab.cache))
    names = ["proc-storm-cbus", "pause-resume", "uevent-burst-bundle"]
    argv = [sys.executable, "-m", "lab.cli", "run", "-n", "1", "--out", str(tmp_path), *names]
    # Ctrl-C as at a terminal: a test run started in the background (as CI scripts may start it) passes SIGINT on
    # ignored, and cnlab, like any program, leaves an inherited ignored SIGINT alone
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        seen.append(line)
        if "PASS (" in line or "FAIL (" in line or time.monotonic() > deadline:
            break
    for line in proc.stdout:  # wait until the next scenario is running in its guest
        seen.append(line)
        if ": load" in line or time.monotonic() > deadline:
            break
    qemu_pids = [int(p) for p in subprocess.run(["pgrep", "-f", str(tmp_path / "consoles")], capture_output=True,
                                                 text=True).stdout.split()]
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(seen) + rest
    assert proc.returncode == 130, output
    records = {r.scenario: r for r in read_results(tmp_path / "results.jsonl")}
    statuses = sorted(r.status for r in records.values())
    assert set(records) == set(names) and statuses in (["interrupted", "not run", "passed"],
                                                        ["interrupted", "interrupted", "passed"]), statuses
    assert "cnlab run: interrupted; not finished: " in output and "interrupted" in output.split("scenario")[-1]
    assert_gone(qemu_pids, "the interrupted run")
