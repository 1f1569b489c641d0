"""From a failure to its cause on real guests: decoded report frames and a vmcore of a panic.

The quick set's self-check scenario (the module WARNs on purpose) must carry the WARN's source line in
its record; a scenario whose module panics on purpose must leave a vmcore in its results, from which
``cnlab debug`` reads the module's state back (the stalled drain thread, the queued messages, the
generator, and the control request that panicked, still pending).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.engine.results import read_results
from lab.engine.run import plugin_manager, run_scenarios
from lab.engine.scenario import load_scenario
from lab.engine.sets import resolve_scenarios
from lab.guest.symbolize import find_vmlinux
from lab.image.module import kmod_dir
from lab.report.summary import finish_run

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("runner")]

REGISTRIES = plugin_manager(None).registries

PANIC_SCENARIO = """\
name = "module-panic-selfcheck"
description = "the module panics on purpose with a stalled, filled queue: the lab must keep a vmcore"
duration = 3.0

[guest]
cpus = 2
memory = 512

[[emulators]]
name = "generator"
path = "cbus"
context = "kthread"
rate = 400
group = 2

[[faults]]
name = "drain-stall"
at = 0.2
ms = 20000

[[faults]]
name = "module-panic"
at = 1.5
"""


def _source_line(location: str) -> str:
    path, line = location.rsplit(":", 1)
    return (kmod_dir().parent / path).read_text().splitlines()[int(line) - 1]


def test_the_self_check_warning_names_its_line_in_kmod(cnlab_lab, tmp_path):
    scenarios = resolve_scenarios(["selfcheck-warn"], REGISTRIES, None)
    out = io.StringIO()
    outcome = run_scenarios(cnlab_lab, scenarios, 1, tmp_path, out=out)
    finish_run(outcome, out, junit_path=tmp_path / "junit.xml", report_path=tmp_path / "report.html")
    (record,) = read_results(tmp_path / "results.jsonl")
    assert record.status == "passed", out.getvalue()
    (warning,) = record.kernel_reports
    decoded = {f["function"]: f for f in warning["decoded"]}
    fault = decoded["cnlab_do_fault"]
    assert re.fullmatch(r"kmod/ctl\.c:\d+", fault["location"]), fault
    assert "WARN(" in _source_line(fault["location"])
    assert re.fullmatch(r"kmod/ctl\.c:\d+", decoded["cnlab_ctl_callback"]["location"])
    # the fingerprint is still names only
    assert warning["fingerprint"].startswith("warning:") and "+0x" not in json.dumps(warning["frames"])
    summary = out.getvalue()
    assert f"-> {fault['location']}" in summary
    assert fault["location"] in (tmp_path / "junit.xml").read_text()
    assert fault["location"] in (tmp_path / "report.html").read_text()


def test_kernel_frames_decode_with_the_kernels_debug_package(cnlab_lab, tmp_path):
    if find_vmlinux(cnlab_lab.kernel.release) is None:
        pytest.skip(f"no vmlinux with debug info for {cnlab_lab.kernel.release} (linux-image-"
                    f"{cnlab_lab.kernel.release}-dbg, or CNLAB_VMLINUX): opt-in, not installed by the lab")
    scenarios = resolve_scenarios(["selfcheck-warn"], REGISTRIES, None)
    run_scenarios(cnlab_lab, scenarios, 1, tmp_path, out=io.StringIO())
    (record,) = read_results(tmp_path / "results.jsonl")
    kernel = [f for f in record.kernel_reports[0]["decoded"] if f["module"] == "vmlinux"]
    assert any(f["function"] == "cn_rx_skb" and "connector" in f["location"] for f in kernel), kernel


def test_a_module_panic_leaves_a_vmcore_that_cnlab_debug_reads(cnlab_lab, tmp_path):
    source = tmp_path / "module-panic.toml"
    source.write_text(PANIC_SCENARIO)
    scenario = load_scenario(source, REGISTRIES)
    out = io.StringIO()
    outcome = run_scenarios(cnlab_lab, [scenario], 1, tmp_path / "run", out=out)
    finish_run(outcome, out)
    record = outcome.records[0]
    assert record.status == "error" and record.retried, out.getvalue()  # panicked twice: two guests, two dumps
    vmcore = record.data["vmcore"]
    core = Path(vmcore["path"])
    assert core.parent == tmp_path / "run" / "consoles" and core.name.endswith(".module-panic-selfcheck.vmcore")
    assert vmcore["bytes"] == core.stat().st_size and vmcore["bytes"] >= 512 << 20
    assert vmcore["panic"]["action"] == "pause"
    print(f"vmcore: {vmcore['bytes']} bytes written in {vmcore['seconds']} s")
    assert f"~ vmcore: {core}" in out.getvalue()
    (panic,) = [r for r in record.kernel_reports if r["kind"] == "panic"]
    assert "panic requested by SET_FAULT" in panic["title"]
    assert any(re.fullmatch(r"kmod/ctl\.c:\d+", f["location"]) and "panic(" in _source_line(f["location"])
               for f in panic["decoded"]), panic["decoded"]

    result = subprocess.run([sys.executable, "-m", "lab.cli", "debug", str(core), "--json"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    # the request that panicked is the last one, never answered
    last = state["control"][-1]
    assert (last["type"], last["status"]) == ("set_fault", "pending")
    assert [r["type"] for r in state["control"]].count("gen_start") >= 1
    # the drain threads were held by the stall: their queues kept what the generator inserted
    assert len(state["cpus"]) == 2
    held = [c for c in state["cpus"] if c["queued"] > 0]
    assert held, state["cpus"]
    for cpu in held:
        assert cpu["drain"]["state"] == "stalled" and cpu["drain"]["thread"]["comm"] == f"cbus/{cpu['cpu']}"
        assert 0.5 < cpu["oldest_age_s"] < 20
    assert sum(c["queued"] for c in state["cpus"]) == state["counters"]["cbus"]["queued"] > 0
    (gen,) = state["generators"]
    assert gen["path"] == "cbus" and gen["context"] == "kthread" and gen["generated"] > 0
    assert state["counters"]["ctl_requests"] >= len(state["control"])

    text = subprocess.run([sys.executable, "-m", "lab.cli", "debug", str(core)], capture_output=True, text=True,
                          timeout=300).stdout
    assert "set_fault    status pending" in text and "stalled" in text


def test_opting_out_writes_no_vmcore(cnlab_lab, tmp_path, monkeypatch):
    monkeypatch.setenv("CNLAB_VMCORE", "0")
    source = tmp_path / "module-panic.toml"
    source.write_text(PANIC_SCENARIO)
    outcome = run_scenarios(cnlab_lab, [load_scenario(source, REGISTRIES)], 1, tmp_path / "run", out=io.StringIO())
    record = outcome.records[0]
    assert record.status == "error" and "vmcore" not in (record.data or {})
    assert not list((tmp_path / "run" / "consoles").glob("*.vmcore*"))
