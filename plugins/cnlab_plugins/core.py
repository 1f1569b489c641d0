"""Essential plugin: what every scenario needs, loaded like any plugin and never blocked.

* ships ``lab/kabi.py`` to the plugins' guest folder (``lab_guest_files_add``),
  for guest programs that speak the module's ABI;
* registers the events the guest agent counts itself: ``received``,
  ``queue_depth``, ``drop``, ``gap``, ``enobufs`` (``lab_events_register``);
* runs the load: in phase ``load`` it hands the scenario's plan to the guest
  agent (``lab.engine.agent_run``) and keeps its report and the host-side
  fault records in the stash (``lab_phase_run``; other plugins can wrap it);
* answers ``lab_report_status`` last with PASS, FAIL or ERROR.
"""

from __future__ import annotations

from pathlib import Path

import lab
from lab import hookimpl
from lab.engine.agent_run import run_agent
from lab.engine.execute import HOST_FAULT_RECORDS, LIB, PROGRESS
from lab.plugin import AGENT_REPORT, GUEST_PLUGIN_DIR, PLAN, EventSpec, GuestFile, ScenarioResult
from lab.plugin.objects import AGENT_EVENTS, AgentCounter


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    """``kabi.py`` beside the plugins' guest programs."""
    return [GuestFile(Path(lab.__file__).resolve().parent / "kabi.py", f"{GUEST_PLUGIN_DIR}/kabi.py")]


@hookimpl
def lab_events_register(registry) -> None:
    """The events the guest agent counts itself."""
    for name, description in AGENT_EVENTS.items():
        registry.add_event(EventSpec(name, description, AgentCounter(name)))


@hookimpl
def lab_phase_run(scenario, phase, guest, stash) -> None:
    """Phase ``load``: the guest agent runs the scenario's plan."""
    if phase.name != "load":
        return
    progress = stash.get(PROGRESS, lambda _phase: None)
    report, host_records = run_agent(guest, stash[PLAN], stash[LIB], on_load=lambda: progress("load running"))
    stash[AGENT_REPORT] = report
    stash[HOST_FAULT_RECORDS] = host_records


@hookimpl(trylast=True)
def lab_report_status(result: ScenarioResult) -> str:
    """PASS, FAIL, or ERROR (the scenario could not run to its end)."""
    return "PASS" if result.passed else ("FAIL" if result.status == "failed" else "ERROR")
