"""The flight recorder on real guests: a failed scenario keeps its trace, a passing one keeps none.

Two scenarios on one guest.  A drain stalled behind a tiny queue limit drops messages and the module WARNs
on purpose, with nothing expecting either: it fails (loss, an unexpected kernel report, a new taint bit).
The quick set's self-check expects its WARN: it passes.  The failed one's record names a trace file in the
run's folder, bounded by ``max_kb``, holding the module's insert, drain, send and drop events with the
scheduler's and the softirqs'; its inserts, sends and drops agree with the CBUS counters the guest agent
read (two different sources), and it reaches the WARN's console time.  The HTML report draws its timeline.
Then the recorder's cost: the in-kernel BENCH (ns per ``cbus_insert``) and the CBUS rate to one reader,
recorder off and on, alternating in one guest.
"""

from __future__ import annotations

import io
import json
import re
import statistics

import pytest
from cnlab_plugins.flightrec import DEFAULT_BUFFER_KB, DEFAULT_MAX_KB, EVENTS, INSTANCE, start_steps, stop_steps

from lab.cli.trace import print_traces
from lab.engine.results import read_results
from lab.engine.run import plugin_manager, run_scenarios
from lab.engine.scenario import load_scenario
from lab.engine.sets import resolve_scenarios
from lab.guest.files import install_guest_programs
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape
from lab.plugin import agent_step
from lab.report.ftrace import read_trace
from lab.report.summary import finish_run

pytestmark = [pytest.mark.lab, pytest.mark.xdist_group("runner")]

REGISTRIES = plugin_manager(None).registries

FAILING = """\
name = "flightrec-warn"
description = "a stalled drain behind a tiny queue drops, and the module WARNs on purpose: nothing expects either"
duration = 1.5

[guest]
cpus = 2
memory = 512

[[emulators]]
name = "generator"
path = "cbus"
context = "kthread"
rate = 500
group = 2

[[faults]]
name = "queue-limit"
at = 0.0
limit = 32

[[faults]]
name = "drain-stall"
at = 0.2
ms = 400

[[faults]]
name = "warn"
at = 0.8
"""


def test_a_failed_scenario_keeps_its_trace_and_a_passing_one_none(cnlab_lab, tmp_path):
    source = tmp_path / "flightrec-warn.toml"
    source.write_text(FAILING)
    scenarios = [load_scenario(source, REGISTRIES)] + resolve_scenarios(["selfcheck-warn"], REGISTRIES, None)
    out = io.StringIO()
    outcome = run_scenarios(cnlab_lab, scenarios, 1, tmp_path / "run", out=out)
    finish_run(outcome, out, report_path=tmp_path / "report.html")
    records = {r.scenario: r for r in read_results(tmp_path / "run" / "results.jsonl")}

    passed = records["selfcheck-warn"]
    assert passed.status == "passed", out.getvalue()
    assert passed.data["flightrec"]["events"] == list(EVENTS)  # it recorded...
    assert "trace" not in passed.data["flightrec"]  # ...and kept nothing
    assert not list((tmp_path / "run" / "consoles").glob("*.selfcheck-warn.trace"))

    failed = records["flightrec-warn"]
    assert failed.status == "failed" and {v.name for v in failed.verdicts if not v.ok} >= {"kernel_problems", "loss"}
    kept = failed.data["flightrec"]["trace"]
    path = tmp_path / "run" / "consoles" / f"{kept['path'].rsplit('/', 1)[-1]}"
    assert path.is_file() and str(path) == kept["path"] and path.stat().st_size == kept["bytes"]
    assert 0 < kept["bytes"] <= DEFAULT_MAX_KB * 1024
    trace = read_trace(path)
    counts = trace.counts()
    print(f"trace: {kept['bytes']} bytes, {len(trace.events)} events over "
          f"{trace.events[-1].ts - trace.events[0].ts:.2f} s ({DEFAULT_BUFFER_KB} KiB buffer per CPU), "
          f"overwritten {trace.overwritten}: {json.dumps(counts, sort_keys=True)}")
    assert counts == kept["events"]
    for name in ("cnlab_insert", "cnlab_drain_start", "cnlab_drain_end", "cnlab_send", "cnlab_drop", "sched_switch",
                 "sched_wakeup", "softirq_entry"):
        assert counts.get(name, 0) > 0, (name, counts)
    assert trace.cpus == [0, 1]
    # the recorder's inserts against the module's own counters, as the agent read them
    cbus = failed.metrics["cbus"]
    if trace.overwritten == 0:
        assert counts["cnlab_insert"] == cbus["inserted"] - cbus["drop_full"] - cbus["drop_nomem"]
        sent = sum(int(e.fields["count"]) for e in trace.events
                   if e.name == "cnlab_send" and int(e.fields["result"]) >= 0)
        assert sent == cbus["sent"]
        full = sum(int(e.fields["count"]) for e in trace.events
                   if e.name == "cnlab_drop" and e.fields["cause"] == "full")
        assert full == cbus["drop_full"] > 0
    # the WARN happened while the recorder ran, and the report draws the milliseconds before it
    assert trace.events[0].ts < kept["failure_time"] < trace.end()
    assert trace.window(kept["failure_time"], 200)
    page = (tmp_path / "report.html").read_text()
    assert 'class="timeline"' in page and f"the kernel report at {kept['failure_time']:.6f} s" in page
    assert f"~ trace: {kept['path']}" in out.getvalue()
    # cnlab trace prints the events before the WARN, the module's among them (inserts, or drops at the full queue:
    # which, depends on where the stalled drain stood when the WARN fired on a loaded TCG host)
    text = io.StringIO()
    assert print_traces(tmp_path / "run", None, 50.0, 100000, text) == 0
    assert text.getvalue().startswith("flightrec-warn (failed): ")
    assert re.search(r" cnlab_(insert|drop|send|drain_start|drain_end): ", text.getvalue()), text.getvalue()[-3000:]


def _kmod_timing(guest, lib: str) -> dict:
    result = guest.run(["python3", f"{lib}/kmod_timing.py", "--skip", "latency", "--also-chunk", "0",
                        "--iterations", "5000", "--chunks", "60", "--rate-count", "30000"], timeout=600)
    assert result.ok, result.stderr.decode(errors="replace")[-2000:]
    return json.loads(result.text.strip().splitlines()[-1])


#: Runs steps with the guest agent's own code (``run_steps``), as it does at a scenario's start and end.
_RUN_STEPS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from agent import run_steps
from agent_faults import Actions
errors = []
print(json.dumps(run_steps(Actions(None, lambda signum: [], "/tmp"), json.load(sys.stdin), errors, "steps")))
sys.exit(1 if errors else 0)
"""


def _agent_steps(guest, lib: str, steps: list[dict]) -> list[dict]:
    result = guest.run(["python3", "-S", "-c", _RUN_STEPS, lib], stdin=json.dumps(steps).encode(), timeout=60)
    assert result.ok, result.text + result.stderr.decode(errors="replace")
    return json.loads(result.text)


def test_the_recorders_cost_side_by_side(cnlab_lab):
    """Recorder off and on, alternating twice in one guest: ns per insert (BENCH median) and the CBUS rate."""
    spec = cnlab_lab.guest_spec(GuestShape(cpus=2, memory_mb=1024), name="flightrec-cost")
    figures: dict[str, list[dict]] = {"off": [], "on": []}
    with Guest(spec) as guest:
        lib = install_guest_programs(guest)
        for _ in range(2):
            figures["off"].append(_kmod_timing(guest, lib))
            started = _agent_steps(guest, lib, start_steps(DEFAULT_BUFFER_KB))
            assert [s["action"] for s in started if not s["ok"] and s is not started[0]] == []  # every event there
            figures["on"].append(_kmod_timing(guest, lib))
            _agent_steps(guest, lib, stop_steps())
            head = guest.run(["head", "-c", "400", f"{INSTANCE}/trace"], check=True).text
            written = int(head.split("entries-written:")[1].split()[0].split("/")[1])
            assert written > 30000  # it recorded every insert of the rate run, at least
            _agent_steps(guest, lib, [agent_step("test", "rmdir", INSTANCE)])
    table = {}
    for mode, runs in figures.items():
        table[mode] = {"insert_ns_median": statistics.median(r["insert"]["cbus_insert_ns"] for r in runs),
                       "cbus_rate": statistics.median(r["rate"]["cbus"]["msgs_per_s"] for r in runs),
                       "direct_rate": statistics.median(r["rate"]["direct"]["msgs_per_s"] for r in runs)}
    print("recorder cost (median of 2 alternating rounds each):", json.dumps(table, indent=1))
    assert table["on"]["cbus_rate"] > 0 and table["off"]["cbus_rate"] > 0
