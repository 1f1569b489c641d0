"""Built-in load runner: drives the ``load`` phase with the registries' objects.

In ``lab_phase_run`` (phase ``load``) it builds a plan from the scenario's
emulators (``GeneratorProfile`` GEN_START configs with generator ids handed
out in order; ``LiveSource`` drivers), consumers (``GuestProgram``) and the
faults that wrappers put in ``FAULT_PLAN``, runs ``runplan.py`` in the guest
and keeps its JSON report.  ``lab_result_collect`` returns the report;
``lab_result_check`` turns it into problems: runner errors, consumers that
saw nothing or out of order, loss that does not reconcile with the socket's
drops and the kernel's send failures, an unbalanced CBUS, failed fault
commands.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.errors import LabError, PluginError
from lab.guest.job import run_job
from lab.plugin import FAULT_PLAN, GUEST_PLUGIN_DIR, REGISTRIES, ScenarioInfo, Stash, StashKey
from lab.plugin.objects import GeneratorProfile, GuestProgram, LiveSource

LOAD_REPORT = StashKey[dict]()
MAX_GENERATORS = 16
#: Seconds the consumers get to bind their sockets before the generators start, times the accelerator's
#: timeout scale (3 under TCG).
BIND_SECONDS = 20


def build_plan(scenario: ScenarioInfo, stash: Stash) -> dict[str, Any]:
    """The JSON plan ``runplan.py`` runs (pure: registries and fault plan come from the stash)."""
    registries = stash[REGISTRIES]
    generators: list[dict[str, Any]] = []
    live: list[dict[str, Any]] = []
    groups: list[int] = []
    listen = False
    for name in scenario.emulators:
        emulator = registries.emulators.build(name, scenario.params.get(name))
        if isinstance(emulator, GeneratorProfile):
            first = len(generators)
            if first + len(emulator.generators) > MAX_GENERATORS:
                raise PluginError(f"scenario {scenario.name!r}: more than {MAX_GENERATORS} generators")
            generators += emulator.gen_start_configs(range(first, first + len(emulator.generators)), 0)
        elif isinstance(emulator, LiveSource):
            live.append(emulator.to_json())
            listen = listen or emulator.listen
        else:
            raise PluginError(f"emulator {name!r}: the runner drives GeneratorProfile and LiveSource objects, "
                              f"not {type(emulator).__name__}")
        groups.append(emulator.group)
    consumers = []
    for name in scenario.consumers:
        program = registries.consumers.build(name, scenario.params.get(name))
        if not isinstance(program, GuestProgram):
            raise PluginError(f"consumer {name!r}: the runner runs GuestProgram objects")
        argv = program.argv(GUEST_PLUGIN_DIR)
        if program.protocol == "checker":
            argv += ["--groups", ",".join(map(str, groups))]
        consumers.append({"name": name, "argv": argv, "instances": program.instances,
                          "listen": listen and program.protocol == "checker", "protocol": program.protocol})
    timeout = float(scenario.params.get("runner", {}).get("timeout_s", 240.0))
    return {"generators": generators, "live": live, "consumers": consumers, "faults": list(stash.get(FAULT_PLAN, [])),
            "timeout_s": timeout, "folder": f"{GUEST_PLUGIN_DIR}/out/{scenario.name}"}


@hookimpl
def lab_phase_run(scenario: ScenarioInfo, phase, guest, stash: Stash) -> None:
    if phase.name != "load" or not (scenario.emulators or scenario.consumers):
        return
    plan = build_plan(scenario, stash)
    # Consumers start Python programs (pyroute2's import is heavy): a TCG guest on a host busy with
    # other guests needed more than 20 s to bind one.
    plan["bind_timeout_s"] = BIND_SECONDS * guest.spec.accel.timeout_scale
    argv = ["python3", f"{GUEST_PLUGIN_DIR}/runplan.py"]
    if guest.link is None:
        result = guest.run(argv, stdin=json.dumps(plan).encode(), timeout=plan["timeout_s"] + 120)
    else:  # on the lab's own link, which link faults break: a job that outlives the connection
        result = run_job(guest, argv, stdin=json.dumps(plan).encode(),
                         timeout=(plan["timeout_s"] + 120) * guest.spec.accel.timeout_scale, name="runplan")
    if not result.ok:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise LabError(f"runplan.py exited with status {result.exit_status}: {' | '.join(tail)}")
    report = json.loads(result.text)
    report["plan"] = plan
    report["ssh_reconnects"] = result.extra.get("reconnects", 0)
    stash[LOAD_REPORT] = report


@hookimpl
def lab_result_collect(stash: Stash) -> dict[str, Any] | None:
    return stash.get(LOAD_REPORT, None)


def check_report(scenario: ScenarioInfo, report: Mapping[str, Any]) -> list[str]:
    """Problems in one runner report (see the module docstring)."""
    problems = [f"runner: {e}" for e in report.get("errors", ())]
    killing = "consumer-kill" in scenario.faults
    for c in report.get("consumers", ()):
        name = c.get("name", "?")
        if c.get("missing"):
            if not (killing and c.get("status") == -9):
                problems.append(f"consumer {name}: no report (status {c.get('status')}): {c.get('stderr', '')}")
            continue
        if "received" in c and c["received"] == 0 and scenario.emulators and not c.get("resync"):
            problems.append(f"consumer {name}: received nothing")
        if c.get("reordered"):
            problems.append(f"consumer {name}: {c['reordered']} messages out of order or duplicated")
        acc = c.get("accounting", {})
        if acc.get("exact") and not acc.get("reconciled"):
            problems.append(f"consumer {name}: lost {acc['lost']} != socket drops {acc['socket_drops']} + "
                            f"send failures {acc['pre_socket']} + CBUS send errors {acc['cbus_nlerr']}")
    cbus = report.get("cbus", {})
    if cbus and not cbus.get("balanced", True):
        problems.append(f"CBUS counters do not balance: {cbus}")
    for entry in report.get("faults", ()):
        if entry.get("status"):
            problems.append(f"{entry['what']}: {' '.join(entry['argv'])} exited {entry['status']}: "
                            f"{entry.get('stderr', '')}")
    for src in report.get("live", ()):
        if src.get("status"):
            problems.append(f"live source {src['name']}: driver exited {src['status']}: {src.get('stderr', '')}")
    return problems


@hookimpl
def lab_result_check(scenario: ScenarioInfo, data: Mapping[str, Any]) -> list[str]:
    report = data.get("runner")
    if report is None:
        return ["runner: no load report"] if scenario.emulators else []
    return check_report(scenario, report)
