"""Running one scenario on a ready guest: the one execution path every scenario takes.

:func:`execute_scenario` copies the plugins' guest files in, then calls the
hooks in order: ``lab_guest_ready``, ``lab_scenario_start``,
``lab_phase_run`` for each phase (in ``load`` the essential ``core`` plugin
runs the guest agent with the scenario's plan), ``lab_scenario_stop``
(always, once started), ``lab_result_collect``, ``lab_result_check`` and
``lab_result_judged`` (a failure's evidence is fetched then).
It reads the console and the taint around the run and returns the
scenario's :class:`~lab.plugin.model.ScenarioResult`.

A plugin raising in a hook fails the scenario with a verdict naming the plugin
and the hook; a guest that died (or an agent that could not run) raises
:class:`~lab.errors.GuestError` for the caller, which retries on a fresh guest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lab.engine.diagnose import kernel_report_dicts
from lab.engine.hooks import install_guest_files
from lab.engine.metrics import headline
from lab.engine.plan import NS, plan_scenario
from lab.errors import GuestError, LabError, TransportError
from lab.guest.console_scan import scan_console
from lab.guest.kmemleak import scan_leaks
from lab.guest.machine import Guest
from lab.plugin.manager import HookCallError, LabPluginManager, call_hook
from lab.plugin.model import (
    AGENT_REPORT,
    PLAN,
    SETTINGS,
    PhaseInfo,
    Scenario,
    ScenarioResult,
    Stash,
    StashKey,
    Verdict,
)

__all__ = ["execute_scenario", "runtime_plan", "fault_records", "LIB", "PROGRESS", "HOST_FAULT_RECORDS"]

#: The guest folder of the lab's guest programs (the agent), for the core plugin.
LIB = StashKey[str]()
#: ``progress(phase)`` of the scenario's worker.
PROGRESS = StashKey[Callable[[str], None]]()
#: Host-side fault records of the load (``lab.engine.host_faults``), filled by the core plugin.
HOST_FAULT_RECORDS = StashKey[list]()

#: After a report starts, how long the console may keep growing before we read it.
REPORT_SETTLE_SECONDS = 3.0
#: Seconds consumers get to bind their sockets, times the accelerator's timeout scale (3 under TCG): Python
#: consumers with heavy imports (pyroute2) needed more than 20 s on a TCG guest of a busy host.
BIND_SECONDS = 20


def runtime_plan(scenario: Scenario, pm: LabPluginManager, timeout_scale: int) -> dict[str, Any]:
    """The agent's plan with the timeouts of this guest's accelerator."""
    plan = plan_scenario(scenario, pm.registries)
    plan["timeout_scale"] = timeout_scale
    plan["bind_timeout_s"] = BIND_SECONDS * timeout_scale
    faults = [(f["trigger"]["at"] or f["trigger"]["every"] or 0) + f["duration"] for f in plan["faults"]]
    longest = max([scenario.duration] + [g.get("duration_ns", 0) / NS for g in plan["generators"]] + faults)
    plan["timeout_s"] = longest + 60 * timeout_scale
    return plan


def _console_since(guest: Guest, offset: int) -> str:
    """The console from ``offset``; once a problem shows, keep reading until the report stops growing
    (bounded), so a report still being printed is whole."""

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


def fault_records(agent: dict[str, Any] | None, host: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every firing as it happened: the agent's records with the host's steps merged into host-side ones,
    each with ``delay_ms`` (start of injection minus when it was due, or when its event was seen).

    A host-side firing starts by the host's clock but is due by the guest's, which stands still while QEMU
    is stopped: the time earlier firings kept the guest stopped (``guest_clock_lag_ms``) is taken off its
    delay, or every pause would make the next host fault look late by that pause's length."""
    records = [dict(r) for r in (agent or {}).get("faults", ())]
    by_key = {(h["label"], h["n"]): h for h in host}
    for n, record in enumerate(records, start=1):
        if record.get("side") == "host":
            done = by_key.get((record["label"], n))
            if done is None:
                record.update(ok=False, detail="the host never received the request")
            else:
                record["requested_at"] = record.get("start")  # the agent's clock, when it sent the request
                record.update({k: done[k] for k in ("received", "start", "end", "restored", "ok", "actions")})
    for record in records:
        if record.get("start") is not None and record.get("due") is not None and not record.get("before_load"):
            lag = _guest_clock_lag(record, records) if record.get("side") == "host" else 0.0
            if lag:
                record["guest_clock_lag_ms"] = round(lag * 1000, 1)
            record["delay_ms"] = round((record["start"] - lag - record["due"]) * 1000, 1)
    return records


def _stops_the_guest(record: dict[str, Any]) -> bool:
    return any(a.get("action") == "qmp stop" and not a.get("restore") for a in record.get("actions") or ())


def _guest_clock_lag(record: dict[str, Any], records: list[dict[str, Any]]) -> float:
    """Seconds (host clock) that host-side firings finished before ``record`` started kept the guest stopped."""
    return sum(other["restored"] - other["start"] for other in records
               if other is not record and other.get("side") == "host" and _stops_the_guest(other)
               and other.get("start") is not None and other.get("restored") is not None
               and other["restored"] <= record["start"])


def _verdicts(pm: LabPluginManager, scenario: Scenario, data: dict[str, Any]) -> list[Verdict]:
    """Every plugin's checks; a plugin that raises fails with a verdict of its own, the others still judge."""
    verdicts = []
    errors: list[HookCallError] = []
    for plugin, results in pm.call_each("lab_result_check", errors, scenario=scenario, data=data).items():
        for item in (results[0] if results else None) or ():
            if isinstance(item, Verdict):
                verdicts.append(Verdict(item.name, item.ok, item.detail, plugin))
            else:
                verdicts.append(Verdict(plugin, False, str(item), plugin))
    verdicts += [Verdict("hooks", False, str(e).partition("\n")[0], e.plugin) for e in errors]
    return verdicts


def execute_scenario(pm: LabPluginManager, guest: Guest, scenario: Scenario, lib: str,
                     progress: Callable[[str], None] = lambda phase: None,
                     files_installed: bool = False, from_boot: bool = False) -> ScenarioResult:
    """Run ``scenario`` on ``guest`` (guest programs installed in ``lib``); its result record.

    :param files_installed: the plugins' guest files are in the guest already (copied when it booted).
    :param from_boot: the guest's first scenario: its console and taint are judged from the guest's start
        (a restored guest's console is headed by its saved boot), so a report or taint while the module
        loaded fails the scenario instead of passing unseen.

    :raises GuestError: the guest died or the agent could not run (the caller retries on a fresh guest).
    """
    started = time.monotonic()
    console_start = 0 if from_boot or not guest.console_log.exists() else guest.console_log.stat().st_size
    taint_before = 0 if from_boot else guest.tainted()
    stash = Stash()
    stash[SETTINGS] = pm.settings
    stash[PLAN] = runtime_plan(scenario, pm, guest.spec.accel.timeout_scale)
    stash[LIB] = lib
    stash[PROGRESS] = progress
    error: LabError | None = None
    hooks_started = False
    times: dict[str, float] = {}

    def mark(name: str) -> None:
        times[name] = round(time.monotonic() - started, 3)

    try:
        if not files_installed:
            install_guest_files(pm, guest)
        mark("files")
        pm.call_each("lab_guest_ready", guest=guest, scenario=scenario)
        hooks_started = True
        pm.call_each("lab_scenario_start", scenario=scenario, guest=guest, stash=stash)
        for index, name in enumerate(scenario.phases):
            progress(name)
            phase = PhaseInfo(name, index, scenario.duration if name == "load" else 0.0)
            call_hook(pm, "lab_phase_run", scenario=scenario, phase=phase, guest=guest, stash=stash)
            mark(name)
    except LabError as exc:
        error = exc
    finally:
        if hooks_started:
            try:
                pm.call_each("lab_scenario_stop", scenario=scenario, guest=guest, stash=stash, error=error)
            except HookCallError as exc:
                error = error or exc
    cause = error.original if isinstance(error, HookCallError) else error
    if isinstance(cause, GuestError | TransportError) or (error is not None and not guest.alive()):
        raise cause if isinstance(cause, LabError) else error
    progress("checks")
    mark("stopped")
    taint_after = guest.tainted()
    console = _console_since(guest, console_start)
    kernel_reports = list(kernel_report_dicts(console, guest.spec)) + scan_leaks(guest)
    agent = stash.get(AGENT_REPORT, None)
    host_records = stash.get(HOST_FAULT_RECORDS, [])
    faults = fault_records(agent, host_records)
    data: dict[str, Any] = {"agent": agent, "faults": faults,
                            "kernel": {"reports": kernel_reports, "taint_before": taint_before,
                                       "taint_after": taint_after},
                            "guest": {"cpus": scenario.cpus, "accel": guest.spec.accel.name,
                                      "slowdown": guest.spec.accel.slowdown}}
    collect_errors: list[HookCallError] = []
    for plugin, results in pm.call_each("lab_result_collect", collect_errors, scenario=scenario, guest=guest,
                                        stash=stash).items():
        if results and results[0] is not None:
            data[plugin] = results[0]
    verdicts = _verdicts(pm, scenario, data)
    verdicts += [Verdict("hooks", False, str(e).partition("\n")[0], e.plugin) for e in collect_errors]
    if error is not None:
        verdicts.append(Verdict("hooks", False, str(error).partition("\n")[0]))
    judged_errors: list[HookCallError] = []
    for plugin, results in pm.call_each("lab_result_judged", judged_errors, scenario=scenario, guest=guest,
                                        stash=stash, data=data, passed=all(v.ok for v in verdicts)).items():
        if results and results[0] is not None:
            data[plugin] = {**(data.get(plugin) or {}), **results[0]}
    verdicts += [Verdict("hooks", False, str(e).partition("\n")[0], e.plugin) for e in judged_errors]
    mark("checked")
    return ScenarioResult(
        scenario=scenario.name, source=scenario.source,
        status="passed" if all(v.ok for v in verdicts) else "failed",
        verdicts=tuple(verdicts),
        metrics=headline(agent, {str(g["gen_id"]) for g in stash[PLAN]["generators"] if g["path"] == "direct"})
        | {"paths": sorted({str(g["path"]) for g in stash[PLAN]["generators"]})}
        | {"timeline_s": times | {f"agent.{k}": v for k, v in ((agent or {}).get("marks") or {}).items()}
           | {f"host.{k}": v for k, v in ((agent or {}).get("host_marks") or {}).items()}},
        data={k: v for k, v in data.items() if k not in ("kernel", "faults", "guest")}, faults=tuple(faults),
        series={c.get("name", "?"): c.get("series", []) for c in (agent or {}).get("consumers", ())},
        kernel_reports=tuple(kernel_reports), taint={"before": taint_before, "after": taint_after},
        console={"path": str(guest.console_log), "offset": console_start,
                 "tail": "\n".join(console.splitlines()[-40:])},
        duration=round(time.monotonic() - started, 3))

