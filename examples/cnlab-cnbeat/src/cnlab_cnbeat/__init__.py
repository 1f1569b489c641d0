"""cnlab-cnbeat: your own kernel module under test (cnlab's docs/plugins.md, "Bringing your own module").

Registered through the ``cnlab`` entry point ``cnbeat`` (pyproject.toml): ``-p no:cnbeat`` blocks it.

========= ============ ==========================================================================
kind      name         what it is
========= ============ ==========================================================================
module    cnbeat       ``kmod/cnbeat.c``: timers on every CPU insert events with cbus_insert_group()
                       (connector 0x1c:1, group 28) and count what CBUS accepted; built and loaded by
                       cnlab after cnlab.ko (``lab_kernel_modules_add``)
emulator  cnbeat       a live source: ``guest/drive.py`` starts the module's timers at ``rate`` for
                       ``seconds``, stops them and prints each module instance's own counts
consumer  cnbeat-watch ``checker`` protocol (``guest/watch.py``): events per module instance,
                       duplicates
========= ============ ==========================================================================

Its result check gives the verdict ``cnbeat``: every cnbeat-watch received exactly the events each cnbeat
instance (a reload makes a new one) says CBUS accepted, none twice, none from an instance the module did
not report; with a ``module-reload`` fault, more than one instance.
"""

from __future__ import annotations

import json
from pathlib import Path

from lab import hookimpl
from lab.config import Setting
from lab.plugin import GUEST_PLUGIN_DIR, ConsumerSpec, EmulatorSpec, GuestFile, Verdict
from lab.plugin.objects import GuestProgram, LiveSource

#: The plugin's name as its entry point registers it.
PLUGIN = "cnbeat"
IDX, VAL, GROUP = 0x1C, 1, 28  # kmod/cnbeat.c: CNBEAT_IDX, CNBEAT_VAL, CNBEAT_GROUP
HERE = Path(__file__).resolve().parent
#: Guest programs: file in guest/ -> file in the plugins' guest folder (prefixed: one folder for all plugins).
PROGRAMS = {"drive.py": "cnbeat_drive.py", "watch.py": "cnbeat_watch.py"}
RATE_MAX = 100_000  # kmod/cnbeat.c: CNBEAT_RATE_MAX


@hookimpl
def lab_kernel_modules_add(config):
    """The cnbeat module's sources: cnlab builds them against the guest kernel and cnlab.ko, loads them after it."""
    return [HERE / "kmod"]


@hookimpl
def lab_guest_files_add(config):
    """The driver and the consumer, beside kabi.py in the plugins' guest folder."""
    return [GuestFile(HERE / "guest" / source, f"{GUEST_PLUGIN_DIR}/{dest}", 0o755)
            for source, dest in PROGRAMS.items()]


@hookimpl
def lab_emulators_register(registry):
    """cnbeat: the module's own timers, started and stopped by the driver."""
    def factory(params):
        driver = ("python3", f"{GUEST_PLUGIN_DIR}/cnbeat_drive.py", "--rate", str(params["rate"]),
                  "--seconds", str(params["seconds"]))
        return LiveSource("cnbeat", IDX, VAL, GROUP, driver)

    registry.add_emulator(EmulatorSpec(
        "cnbeat", "the cnbeat module's timer events through CBUS on every online CPU", IDX, VAL, GROUP, factory,
        settings=(Setting("rate", int, 200, "events per second per online CPU", min=1, max=RATE_MAX),
                  Setting("seconds", float, 3.0, "how long the timers run (within the scenario's duration)",
                          min=0.1, max=600.0))))


@hookimpl
def lab_consumers_register(registry):
    """cnbeat-watch (checker protocol)."""
    def watch(params):
        return GuestProgram("cnbeat-watch", "cnbeat_watch.py", {"rcvbuf": params["rcvbuf"]})

    registry.add_consumer(ConsumerSpec(
        "cnbeat-watch", "counts cnbeat's events per module instance, and duplicates (checker protocol)", watch,
        settings=(Setting("rcvbuf", int, 1 << 21, "receive buffer in bytes", min=4096, max=1 << 30),)))


def module_counts(agent):
    """What the driver printed: each cnbeat instance's own counts (None if it did not run or print)."""
    for live in agent.get("live") or ():
        if live.get("name") == "cnbeat":
            if live.get("status") != 0:
                return None
            lines = [line for line in (live.get("stdout") or "").splitlines() if line.startswith("{")]
            try:
                return json.loads(lines[-1])["instances"] if lines else None
            except (ValueError, KeyError):
                return None
    return None


def reconcile(module, received):
    """Problems between the module's counts and a consumer's (``[]``: they agree)."""
    problems = []
    for instance, counts in sorted(module.items()):
        got = received.get(instance, {"received": 0, "duplicates": 0})
        if got["received"] != counts["inserted"]:
            problems.append(f"instance {instance}: received {got['received']} of {counts['inserted']} inserted")
        if got["duplicates"]:
            problems.append(f"instance {instance}: {got['duplicates']} duplicates")
    for instance in sorted(set(received) - set(module)):
        problems.append(f"instance {instance}: {received[instance]['received']} events from an instance the "
                        "module did not report")
    return problems


@hookimpl
def lab_result_check(scenario, data):
    """cnbeat: receipts reconciled against the module's own counts, per instance."""
    if not scenario.uses("cnbeat"):
        return None
    agent = data.get("agent") or {}
    module = module_counts(agent)
    if not module:
        return [Verdict("cnbeat", False, "the cnbeat driver reported no module counts (see the agent's live[])")]
    inserted = sum(c["inserted"] for c in module.values())
    failed = sum(c["failed"] for c in module.values())
    reports = {c.get("name"): c for c in agent.get("consumers", ())}
    verdicts = []
    for use in scenario.consumers:
        if use.name != "cnbeat-watch":
            continue
        report = reports.get(use.label, {})
        problems = ["no report"] if report.get("missing") or not report else reconcile(module, report["instances"])
        if inserted == 0:
            problems.append("the module inserted nothing")
        if scenario.uses("module-reload") and len(module) < 2:
            problems.append(f"a module-reload fault ran but the module reported {len(module)} instance(s)")
        per = ", ".join(f"{k}: {(report.get('instances') or {}).get(k, {}).get('received', 0)}/{v['inserted']}"
                        for k, v in sorted(module.items()))
        verdicts.append(Verdict("cnbeat", not problems,
                                f"{use.label} received {report.get('received', 0)} of the {inserted} events "
                                f"{len(module)} cnbeat instance(s) inserted ({per}; CBUS refused {failed})"
                                + (": " + "; ".join(problems) if problems else "")))
    return verdicts
