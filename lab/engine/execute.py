"""Running one scenario on a ready guest: the plan, the agent, the checks.

:func:`execute_scenario` runs a scenario's generators and consumers through
the guest agent (``lab/guestside/agent.py``) with its fault
timeline; :func:`execute_plugin_scenario` runs a ``[plugins]`` scenario
through the plugin hooks.  Both read the console and the taint around the
run and return the result record.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from lab.engine.host_faults import FaultTimeline
from lab.engine.scenario import IN_GUEST_FAULTS, Scenario
from lab.engine.verdicts import TAINT_FOR_KIND, evaluate, verdict
from lab.errors import GuestError
from lab.guest.console_scan import scan_console
from lab.guest.kcheck import ALLOWED_TAINT, read_taint, unexpected_taint
from lab.guest.machine import Guest

__all__ = ["agent_plan", "execute_scenario", "execute_plugin_scenario", "IN_GUEST_FAULTS"]

GEN_IDX_BASE = 0x20
NS = 1_000_000_000


# ----------------------------------------------------------------- planning
def agent_plan(scenario: Scenario, timeout_scale: int) -> dict:
    """What the guest agent runs: generator configs per the module ABI and consumers."""
    generators = []
    for i, emu in enumerate(scenario.emulators):
        generators.append({
            "gen_id": i + 1,
            "idx": GEN_IDX_BASE + 2 * i,  # each emulator its own (even) connector id
            "val": 1,
            "group": emu.group,
            "count": emu.count,
            "duration_ns": 0 if emu.count else int(scenario.duration * NS),
            "cpu_mask": sum(1 << c for c in emu.cpus),
            "rate": emu.rate,
            "size_min": emu.payload[0],
            "size_max": emu.payload[1],
            "context": emu.context,
            "path": emu.path,
            "flags": 1 if emu.bundle else 0,
            "burst": 0,
        })
    consumers = [asdict(c) | {"groups": list(c.groups)} for c in scenario.consumers]
    in_guest = [asdict(f) for f in scenario.faults if f.kind in IN_GUEST_FAULTS]
    return {"duration": scenario.duration, "generators": generators, "consumers": consumers,
            "faults": in_guest, "timeout_scale": timeout_scale}



# ---------------------------------------------------------------- execution
#: After a report starts, how long the console may keep growing before we read it.
REPORT_SETTLE_SECONDS = 3.0


def _console_since(guest: Guest, offset: int) -> str:
    """The console from ``offset``; once a problem shows, keep reading until the
    report stops growing (bounded), so a report still being printed is whole."""

    def read() -> str:
        with open(guest.console_log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    text = read()
    if not scan_console(text):
        return text
    deadline = time.monotonic() + REPORT_SETTLE_SECONDS * guest.spec.accel.timeout_scale
    while time.monotonic() < deadline:
        time.sleep(0.25)  # the console is a file QEMU appends to: no notification to wait on
        newer = read()
        if newer == text:
            break
        text = newer
    return text


def execute_scenario(guest: Guest, lib: str, scenario: Scenario, progress) -> dict:
    """Run one scenario on a ready guest; returns the result record (without env)."""
    started = time.monotonic()
    console_start = guest.console_log.stat().st_size if guest.console_log.exists() else 0
    taint_before = read_taint(guest)
    plan = agent_plan(scenario, guest.spec.accel.timeout_scale)
    host_faults = tuple(f for f in scenario.faults if f.kind not in IN_GUEST_FAULTS)
    timeline = FaultTimeline(guest, lib, host_faults, scenario.duration)

    def sink(stream: str, chunk: bytes) -> None:
        if stream == "stderr" and b"CNLAB-AGENT started" in chunk and not timeline.started:
            progress("load")
            timeline.start()

    progress("setup")
    result = guest.run(["python3", f"{lib}/agent.py"], stdin=json.dumps(plan).encode(),
                       timeout=scenario.duration + 120, sink=sink)
    applied = [f.to_dict() for f in timeline.stop()]
    progress("checks")
    if not result.ok:
        raise GuestError(f"scenario agent failed (status {result.exit_status}): "
                         f"{result.stderr.decode(errors='replace').strip()[-400:]}")
    report = json.loads(result.text)
    applied = sorted(applied + report.get("faults", []), key=lambda f: f["at"])
    taint_after = read_taint(guest)
    console_slice = _console_since(guest, console_start)
    kernel_reports = [r.to_dict() for r in scan_console(console_slice)]
    verdicts, metrics = evaluate(scenario, report, kernel_reports, taint_before, taint_after,
                                 guest.spec.accel.slowdown)
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "status": "passed" if all(v["ok"] for v in verdicts) else "failed",
        "invariants": verdicts,
        "metrics": metrics,
        "series": {c["name"]: c["series"] for c in report["consumers"]},
        "faults": applied,
        "kernel_reports": kernel_reports,
        "taint": {"before": taint_before, "after": taint_after},
        "console": {"path": str(guest.console_log), "offset": console_start,
                    "tail": "\n".join(console_slice.splitlines()[-40:])},
        "duration": round(time.monotonic() - started, 3),
    }


def execute_plugin_scenario(pm, guest: Guest, scenario: Scenario, progress) -> dict:
    """Run a ``[plugins]`` scenario through the plugin hooks (``lab.plugin.run_scenario``).

    The plugins' own checks (``lab_result_check``) become one verdict; the
    console scan and the taint check are the engine's, as for any scenario.
    """
    from lab.plugin import ScenarioInfo, run_scenario

    started = time.monotonic()
    console_start = guest.console_log.stat().st_size if guest.console_log.exists() else 0
    taint_before = read_taint(guest)
    info = ScenarioInfo(scenario.name, scenario.plugins.emulators, scenario.plugins.consumers,
                        scenario.plugins.faults, cpus=scenario.cpus, params=scenario.plugins.params)
    progress("load")
    result = run_scenario(pm, guest, info, durations={"load": scenario.duration})
    progress("checks")
    taint_after = read_taint(guest)
    kernel_reports = [r.to_dict() for r in scan_console(_console_since(guest, console_start))]
    detail = result.error or "; ".join(result.problems) or "no problems"
    verdicts = [verdict("plugins", result.error == "" and not result.problems, detail)]
    expected = set(scenario.invariants.expect_problems)
    kinds = {r["kind"] for r in kernel_reports}
    verdicts.append(verdict("kernel_problems", kinds == expected,
                             f"unexpected: {sorted(kinds - expected) or 'none'}; "
                             f"expected but absent: {sorted(expected - kinds) or 'none'}"))
    allowed = ALLOWED_TAINT | sum(TAINT_FOR_KIND.get(k, 0) for k in expected)
    new = unexpected_taint(taint_before, taint_after, allowed)
    verdicts.append(verdict("taint", new == 0, f"before {taint_before}, after {taint_after}, new bits {new:#x}"))
    data = json.loads(json.dumps(dict(result.data), default=str))
    headline = _plugin_headline(data)
    if "lost" in headline:
        max_loss = scenario.invariants.max_loss
        verdicts.append(verdict("loss", headline["lost"] <= max_loss,
                                 f"lost {headline['lost']} of {headline['received'] + headline['lost']} "
                                 f"(max {max_loss})"))
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "status": "passed" if all(v["ok"] for v in verdicts) else "failed",
        "invariants": verdicts,
        "metrics": headline | {"plugins": data},
        "plugins": {"emulators": list(info.emulators), "consumers": list(info.consumers),
                    "faults": list(info.faults), "status": pm.hook.lab_report_status(result=result)},
        "faults": [],
        "kernel_reports": kernel_reports,
        "taint": {"before": taint_before, "after": taint_after},
        "console": {"path": str(guest.console_log), "offset": console_start},
        "duration": round(time.monotonic() - started, 3),
    }



def _plugin_headline(data: dict) -> dict:
    """The summary table's figures from the built-in runner plugin's report, if it ran."""
    runner = data.get("runner") or {}
    consumers = runner.get("consumers") or []
    if not consumers:
        return {}
    received = sum(c.get("received", 0) for c in consumers)
    load_s = runner.get("load_s") or 0
    return {
        "received": received,
        "rate": round(received / load_s, 1) if load_s else 0.0,  # all consumers together, over the load
        "lost": sum((c.get("accounting") or {}).get("lost", 0) for c in consumers),
        "latency_us": consumers[0].get("latency_us") or {},
    }


