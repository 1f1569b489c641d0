"""cnlab-example-plugin: the end of the walk-through in cnlab's docs/plugins.md.

Registered through the ``cnlab`` entry point ``example`` (pyproject.toml), so its plugin name is
``example``: ``[plugins.example]`` in the lab config, ``-p no:example`` to block it.

======== ============ ===========================================================================
kind     name         what it is
======== ============ ===========================================================================
emulator heartbeat    48-byte heartbeats from softirq context on every CPU (connector 0x1a:1, group 26)
consumer beat-watch   ``checker`` protocol (guest/watch.py): per-stream counts the agent reconciles
consumer beat-counter ``oneshot`` protocol (guest/counter.py): beats per CPU for a while, one JSON line
fault    cpu-hog      runs the plugin's own guest program (guest/hog.py): every CPU busy for ``ms``
event    softirqs     softirqs the guest kernel ran since the load began (``/proc/stat``)
======== ============ ===========================================================================

Its result check gives three verdicts: ``beats`` (beat-watch received every heartbeat the module
generated), ``beat-counter`` (the oneshot counter heard some and no more than were generated) and
``hog`` (every firing of cpu-hog left the program's mark, and kept the CPUs busy as long as asked).
"""

from __future__ import annotations

import json
from pathlib import Path

from lab import hookimpl
from lab.config import Setting
from lab.plugin import (
    GUEST_PLUGIN_DIR,
    PLAN,
    ConsumerSpec,
    EmulatorSpec,
    EventSpec,
    FaultSpec,
    GuestFile,
    Verdict,
)
from lab.plugin.objects import Fault, FileCounter, GeneratorProfile, GuestProgram, run

#: The plugin's name as its entry point registers it: where ``lab_result_check`` finds what
#: ``lab_result_collect`` returned (``data["example"]``).
PLUGIN = "example"
IDX, VAL, GROUP = 0x1A, 1, 26  # an even idx: only root may join its group (connector.md section 3)
HERE = Path(__file__).resolve().parent
#: Guest programs, file in guest/ -> file in the guest (one folder for every plugin: prefix the names).
PROGRAMS = {"counter.py": "heartbeat_counter.py", "watch.py": "heartbeat_watch.py", "hog.py": "heartbeat_hog.py"}
#: Where cpu-hog's program leaves one JSON line per run (cleared when a scenario starts).
MARKS = "/run/cnlab/example/marks.jsonl"


@hookimpl
def lab_settings_declare():
    """[plugins.example] beat_rate."""
    return [Setting("beat_rate", int, 50, "heartbeats per second per CPU", min=1, max=10_000)]


@hookimpl
def lab_emulators_register(registry, settings):
    """heartbeat: one softirq generator on every CPU, direct sends, one beat per wake-up."""
    def factory(params):
        beat = {"count": params["beats"], "rate": settings["beat_rate"], "size_min": 48, "size_max": 48,
                "context": "softirq", "path": "direct", "burst": 1}
        return GeneratorProfile("heartbeat", IDX, VAL, GROUP, (beat,))

    registry.add_emulator(EmulatorSpec(
        "heartbeat", "steady 48-byte heartbeats from softirq context on every CPU", IDX, VAL, GROUP, factory,
        settings=(Setting("beats", int, 100, "heartbeats per CPU", min=1, max=1_000_000),)))


@hookimpl
def lab_guest_files_add(config):
    """The three guest programs, beside kabi.py in the plugins' guest folder."""
    return [GuestFile(HERE / "guest" / source, f"{GUEST_PLUGIN_DIR}/{dest}", 0o755)
            for source, dest in PROGRAMS.items()]


@hookimpl
def lab_consumers_register(registry):
    """beat-counter (oneshot protocol) and beat-watch (checker protocol)."""
    def counter(params):
        return GuestProgram("beat-counter", "heartbeat_counter.py", {"group": GROUP, "seconds": params["seconds"]},
                            protocol="oneshot")

    registry.add_consumer(ConsumerSpec(
        "beat-counter", "counts heartbeats per CPU for a while, prints one JSON line (oneshot protocol)", counter,
        settings=(Setting("seconds", float, 5.0, "how long to listen (cover the load)", min=0.1, max=600.0),)))

    def watch(params):
        return GuestProgram("beat-watch", "heartbeat_watch.py", {"rcvbuf": params["rcvbuf"]})

    registry.add_consumer(ConsumerSpec(
        "beat-watch", "counts heartbeats per stream, exact accounting, longest silence (checker protocol)", watch,
        settings=(Setting("rcvbuf", int, 1 << 20, "receive buffer in bytes", min=4096, max=1 << 30),)))


@hookimpl
def lab_faults_register(registry):
    """cpu-hog: an exec action running the plugin's own guest program."""
    def factory(params):
        argv = ("python3", f"{GUEST_PLUGIN_DIR}/heartbeat_hog.py", "--ms", str(params["ms"]), "--marks", MARKS)
        return Fault(inject=(run(*argv),), summary=f"every CPU busy for {params['ms']} ms")

    registry.add_fault(FaultSpec(
        "cpu-hog", "keep every guest CPU busy for a moment (the plugin's own guest program)", "guest", factory,
        settings=(Setting("ms", int, 200, "milliseconds of busy CPUs", min=1, max=10_000),)))


@hookimpl
def lab_events_register(registry):
    """softirqs: the first number of /proc/stat's softirq line, counted from the start of the load."""
    registry.add_event(EventSpec("softirqs", "softirqs the guest kernel ran since the load began",
                                 FileCounter("/proc/stat", r"softirq (\d+)")))


@hookimpl
def lab_scenario_start(scenario, guest):
    """A guest may run several scenarios: clear cpu-hog's marks of the one before."""
    if scenario.uses("cpu-hog"):
        guest.run(["rm", "-f", MARKS], check=True)


@hookimpl
def lab_result_collect(scenario, guest, stash):
    """cpu-hog's marks, and which module generators are the heartbeat's (from the agent's plan)."""
    if not any(scenario.uses(name) for name in ("heartbeat", "cpu-hog")):
        return None
    gen_ids = [gid for e in stash[PLAN]["emulators"] if e["name"] == "heartbeat" for gid in e["gen_ids"]]
    marks = []
    if scenario.uses("cpu-hog"):
        text = guest.run(["cat", MARKS]).text  # no file: no firing ran the program
        marks = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {"heartbeat_gen_ids": gen_ids, "marks": marks}


def _generated(agent, gen_ids):
    """Heartbeats the module says it generated (its own counts, not a consumer's)."""
    gens = agent.get("generators") or {}
    return sum(cpu["generated"] for gid in gen_ids for cpu in ((gens.get(str(gid)) or {}).get("cpus") or {}).values())


@hookimpl
def lab_result_check(scenario, data):
    """beats, beat-counter and hog (see the module docstring); nothing for scenarios without its objects."""
    mine = data.get(PLUGIN) or {}
    agent = data.get("agent") or {}
    reports = {c.get("name"): c for c in agent.get("consumers", ())}
    generated = _generated(agent, mine.get("heartbeat_gen_ids", []))
    verdicts = []
    for use in scenario.consumers:
        report = reports.get(use.label, {"missing": True})
        if use.name == "beat-watch":
            received, gaps = report.get("received", 0), report.get("gaps", 0)
            verdicts.append(Verdict("beats", not report.get("missing") and received == generated and gaps == 0,
                                    f"{use.label} received {received} of the {generated} heartbeats the module "
                                    f"generated, {gaps} missing; longest silence {report.get('max_interval_ms')} ms"))
        elif use.name == "beat-counter":
            beats = report.get("beats", 0)
            verdicts.append(Verdict("beat-counter", 0 < beats <= generated,
                                    f"{use.label} counted {beats} of the {generated} heartbeats the module "
                                    "generated"))
    if scenario.uses("cpu-hog"):
        firings = [f for f in data.get("faults", ()) if f.get("name") == "cpu-hog"]
        marks = mine.get("marks", [])
        short = [m for m in marks if m["busy_ms"] < m["ms"]]
        verdicts.append(Verdict(
            "hog", 0 < len(firings) == len(marks) and all(f.get("ok") for f in firings) and not short,
            f"{len(firings)} firing(s) of cpu-hog, {len(marks)} mark(s) of its program, busy "
            f"{[m['busy_ms'] for m in marks]} ms, run as {sorted({m['policy'] for m in marks})}"))
    return verdicts
