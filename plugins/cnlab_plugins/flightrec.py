"""The flight recorder (issue 15): every scenario runs with a bounded ftrace buffer, kept when it fails.

Every guest boots with the tracefs instance ``instances/cnlab`` made by its init (``cnlab.trace_instance=cnlab``
on the kernel command line, ``lab_kernel_cmdline_add``): making one costs a TCG guest 0.2-0.3 s, paid once by
the guest whose state is saved instead of by every scenario.  At ``lab_scenario_start`` the plugin gives the
guest agent its steps (``lab.plugin.agent_step``): the agent, before anything else of the load, resets that
instance (made now if it is missing): recording off, every event off, ``buffer_kb`` KiB per CPU, the buffer
emptied, overwrite mode; then it enables the module's CBUS tracepoints
(``cnlab:*``, ``kmod/cnlab_trace.h``) with the scheduler's switches and wake-ups and the hard and soft IRQ
entries and exits (those the kernel lacks are listed as missing), and reads back the buffer size and the clock,
which must be ``local`` (printk's, so a kernel report's console time places it in the trace; it is the
kernel's default, and writing it would reset the buffer once more, 0.1 s under TCG); after the consumers
stopped, it marks the
end and freezes the buffer.  No program starts for it in the guest: a separate Python program cost 2 to
3.7 s per scenario under TCG.  Once the scenario is judged (``lab_result_judged``): a failure saves the
trace text, its last ``max_kb`` KiB, with the guest program ``lab/guestside/flightrec.py`` to
``<results>/consoles/<guest>.<scenario>.trace`` and names it in the record (``data.flightrec.trace``,
with its size, the events by name, what the ring buffer overwrote and, for a kernel report, the
report's console time); a pass saves and fetches nothing.  The next scenario's start resets the
instance.  The HTML report draws
the kept trace's last milliseconds as a timeline (``lab.report.timeline``); ``cnlab trace RECORDS``
prints its tail.

Opt out with ``[plugins.flightrec] enabled = false``, ``CNLAB_FLIGHTREC=0`` or ``-p no:flightrec``.
The tracepoints are static-key no-ops when nothing records them.  A ``module-reload`` fault empties the
buffer (the kernel resets every buffer when a module whose events were used unloads) and the module's
events stay off after the reload: such a scenario's record says so (``data.flightrec.note``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.engine.execute import LIB
from lab.errors import GuestError, PluginError
from lab.plugin import AGENT_REPORT, PLAN, StashKey, Verdict, agent_step
from lab.report.ftrace import STOP_MARK, parse_trace

#: ``CNLAB_FLIGHTREC=0`` turns the recorder off for a run.
ENV = "CNLAB_FLIGHTREC"
PROGRAM = "flightrec.py"
OWNER = "flightrec"
#: tracefs as the guest sees it: debugfs is mounted by the lab's init and mounts tracefs here when first used.
INSTANCE = "/sys/kernel/debug/tracing/instances/cnlab"
#: What is recorded: the module's tracepoints, then the scheduler's and the IRQs' (those the kernel has).
EVENTS = ("cnlab:cnlab_insert", "cnlab:cnlab_drain_start", "cnlab:cnlab_drain_end", "cnlab:cnlab_send",
          "cnlab:cnlab_drop", "sched:sched_switch", "sched:sched_wakeup", "irq:irq_handler_entry",
          "irq:irq_handler_exit", "irq:softirq_entry", "irq:softirq_exit")
DEFAULT_BUFFER_KB, DEFAULT_MAX_KB = 1024, 4096
#: Said in the record of a scenario with a ``module-reload`` fault (seen on the Debian 6.1 kernel).
RELOAD_NOTE = ("module-reload: the kernel empties every trace buffer when a module whose events were recorded "
               "unloads, and does not enable them again when it loads: the trace holds the scheduler and IRQ "
               "events from the unload on, no cnlab events")
#: The instance and the buffer size asked for, once the agent was given the steps (None: the recorder is off).
STARTED = StashKey[dict]()
#: The stop when the agent could not do it: the end mark, then the buffer frozen (instance and mark as
#: positional arguments, never in the script).
STOP_ARGV = ["sh", "-c", 'printf %s "$2" > "$1/trace_marker" && echo 0 > "$1/tracing_on"', "flightrec-stop"]
_CONSOLE_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$", re.MULTILINE)
_SECONDS = 30


def trace_path(log_dir: Path, guest_name: str, scenario: str) -> Path:
    """Where a failed scenario's trace goes (beside the console logs and the vmcores)."""
    return log_dir / f"{guest_name}.{scenario}.trace"


def _program(guest, stash, *args: str, timeout: float = _SECONDS):
    lib = stash.get(LIB, "/run/cnlab/py")
    return guest.run(["python3", "-S", f"{lib}/{PROGRAM}", *args], timeout=timeout)


def event_enable(event: str) -> str:
    """The instance's enable file of ``system:event``."""
    return f"{INSTANCE}/events/{event.replace(':', '/')}/enable"


def start_steps(buffer_kb: int) -> list[dict]:
    """The agent's setup: the instance (the init made it at boot; made now if not) reset as new: recording and
    every event off, bounded, emptied, overwriting; then the events that exist enabled (each optional: the
    kernel may lack one), recording on, the buffer size and the clock read back."""
    def write(path: str, text: str | int, optional: bool = False) -> dict:
        return agent_step(OWNER, "write", path, text, optional=optional)

    return [agent_step(OWNER, "mkdir", INSTANCE),
            write(f"{INSTANCE}/tracing_on", 0), write(f"{INSTANCE}/events/enable", 0),
            write(f"{INSTANCE}/buffer_size_kb", buffer_kb), write(f"{INSTANCE}/trace", ""),
            write(f"{INSTANCE}/options/overwrite", 1),
            *(write(event_enable(e), 1, optional=True) for e in EVENTS),
            write(f"{INSTANCE}/tracing_on", 1), agent_step(OWNER, "read", f"{INSTANCE}/buffer_size_kb"),
            agent_step(OWNER, "read", f"{INSTANCE}/trace_clock")]


def stop_steps() -> list[dict]:
    """The agent's teardown: the end mark, then the buffer frozen."""
    return [agent_step(OWNER, "write", f"{INSTANCE}/trace_marker", STOP_MARK),
            agent_step(OWNER, "write", f"{INSTANCE}/tracing_on", 0)]


def _own(report: Mapping[str, Any] | None, when: str) -> list[dict]:
    return [s for s in (report or {}).get(when) or () if s.get("owner") == OWNER]


@hookimpl
def lab_settings_declare() -> list[Setting]:
    """``enabled``, ``buffer_kb`` and ``max_kb``."""
    return [Setting("enabled", bool, True, "record CBUS, scheduler and IRQ events in a bounded ftrace buffer "
                                           "and keep it when a scenario fails (CNLAB_FLIGHTREC=0 also turns it "
                                           "off)"),
            Setting("buffer_kb", int, DEFAULT_BUFFER_KB, "ring buffer size per guest CPU, in KiB (overwrite "
                                                         "mode: the oldest events go)", min=64, max=65536),
            Setting("max_kb", int, DEFAULT_MAX_KB, "the most trace text kept for a failed scenario, in KiB "
                                                   "(its tail)", min=16, max=262144)]


class _State:
    enabled = True


@hookimpl
def lab_plugin_configure(config, settings: Mapping[str, Any]) -> None:
    """Read the settings and the environment's opt-out."""
    _State.enabled = bool(settings.get("enabled", True)) and os.environ.get(ENV, "1") != "0"


@hookimpl
def lab_kernel_cmdline_add(config, shape) -> list[str]:
    """``cnlab.trace_instance=cnlab``: the guest's init makes the instance before the guest is ready."""
    return [f"cnlab.trace_instance={INSTANCE.rsplit('/', 1)[1]}"] if _State.enabled else []


@hookimpl
def lab_scenario_start(scenario, guest, stash, settings: Mapping[str, Any]) -> None:
    """Give the guest agent the recorder's start and stop steps (no guest, as in a dry run of the hooks:
    nothing to do)."""
    if not _State.enabled or guest is None:
        return
    buffer_kb = int(settings.get("buffer_kb", DEFAULT_BUFFER_KB))
    plan = stash[PLAN]
    plan.setdefault("setup", []).extend(start_steps(buffer_kb))
    plan.setdefault("teardown", []).extend(stop_steps())
    stash[STARTED] = {"instance": INSTANCE, "buffer_kb": buffer_kb}


@hookimpl
def lab_scenario_stop(scenario, guest, stash, error, settings: Mapping[str, Any]) -> None:
    """Stop the recording when the agent did not get to (it failed after its setup): mark the end and freeze
    the buffer with one shell command.  A dead guest keeps what it had: nothing to fetch."""
    cause = getattr(error, "original", error)  # a phase's HookCallError carries what the plugin raised
    if STARTED not in stash or not guest.alive() or isinstance(cause, GuestError):
        return  # a guest that crashed or lost SSH may be paused in a panic (the vmcore plugin dumps it): no waiting
    if _own(stash.get(AGENT_REPORT, None), "teardown"):
        return
    done = guest.run(STOP_ARGV + [stash[STARTED]["instance"], STOP_MARK], timeout=_SECONDS)
    if not done.ok and "No such file" not in done.stderr.decode(errors="replace"):
        raise PluginError(f"the flight recorder did not stop: {done.stderr.decode(errors='replace').strip()}")


@hookimpl
def lab_result_collect(scenario, guest, stash, settings: Mapping[str, Any]) -> dict | None:
    """What was recorded: the buffer size and clock read back, the events enabled, and those the kernel lacks."""
    started, report = stash.get(STARTED, None), stash.get(AGENT_REPORT, None)
    if started is None or report is None:
        return None  # off, or the agent never reported (its failure is the scenario's verdict)
    setup = _own(report, "setup")
    enables = {s["action"][1]: s["ok"] for s in setup if s["action"][0] == "write"
               and s["action"][1].endswith("/enable")}
    read_back = {s["action"][1]: s.get("value", "") for s in setup if s["action"][0] == "read" and s["ok"]}
    size = read_back.get(f"{INSTANCE}/buffer_size_kb")
    clock = re.search(r"\[(\S+)\]", read_back.get(f"{INSTANCE}/trace_clock", ""))
    out = {"buffer_kb": int(size) if size and size.isdigit() else (size or started["buffer_kb"]),
           "clock": clock[1] if clock else None,
           "events": [e for e in EVENTS if enables.get(event_enable(e))],
           "missing": [e for e in EVENTS if event_enable(e) in enables and not enables[event_enable(e)]],
           "failed": [f"{' '.join(map(str, s['action']))}: {s.get('error')}" for s in setup
                      if not s["ok"] and not s["optional"]]}
    if not setup:
        out["failed"] = ["the agent ran none of the recorder's steps"]
    if scenario.uses("module-reload"):
        out["note"] = RELOAD_NOTE
    return out


@hookimpl
def lab_result_check(scenario, data: Mapping[str, Any], settings: Mapping[str, Any]) -> list[Verdict] | None:
    """A recorder that did not start fails the scenario: its instance was not made, none of the module's
    tracepoints could be enabled, or it records on another clock than printk's."""
    mine = data.get(OWNER)
    if not mine:
        return None
    if mine["failed"]:
        return [Verdict("flight recorder", False, f"did not start: {mine['failed'][0]}")]
    if not any(e.startswith("cnlab:") for e in mine["events"]):
        return [Verdict("flight recorder", False, "found none of the module's tracepoints (events/cnlab/ in "
                                                  "tracefs)")]
    if mine.get("clock") not in (None, "local"):
        return [Verdict("flight recorder", False, f"records on the {mine['clock']} clock, not local (printk's): "
                                                  "its times would not match the console's (trace_clock set?)")]
    return None  # what it recorded is in data.flightrec: a check that held would add a row to every scenario


def failure_time(data: Mapping[str, Any], console: str) -> float | None:
    """The console time (seconds since boot: printk's clock, the buffer's ``local`` clock too) of the scenario's
    first kernel report, found by its title on the guest's console (the record's excerpt has no timestamps)."""
    for report in (data.get("kernel") or {}).get("reports") or ():
        title = (report.get("title") or "").strip()
        if not title:
            continue
        stamps = [m[1] for m in _CONSOLE_LINE.finditer(console) if title in m[2]]
        if stamps:
            return float(stamps[-1])
    return None


def _console(guest) -> str:
    try:
        return Path(guest.console_log).read_text(errors="replace")
    except (OSError, AttributeError, TypeError):
        return ""


@hookimpl
def lab_result_judged(scenario, guest, stash, data, passed: bool, settings: Mapping[str, Any]) -> dict | None:
    """A failure keeps the trace's tail; a pass keeps nothing and fetches nothing.  The stopped instance stays
    in the guest until the next scenario's start replaces it (or the guest goes): removing it costs a
    second of a TCG guest per scenario, and holds nothing a later scenario could see."""
    if not data.get(OWNER) or data[OWNER]["failed"] or passed:
        return None  # off, never started, or nothing to keep
    max_kb = int(settings.get("max_kb", DEFAULT_MAX_KB))
    result = _program(guest, stash, "save", "--max-kb", str(max_kb), timeout=_SECONDS * 4)
    if not result.ok:
        raise PluginError(f"the flight recorder could not read its buffer: "
                          f"{result.stderr.decode(errors='replace').strip()}")
    sizes = json.loads(result.stderr.decode().strip().splitlines()[-1])
    path = trace_path(guest.log_dir, guest.spec.name, scenario.name)
    path.write_bytes(result.stdout)
    trace = parse_trace(result.stdout.decode(errors="replace"))
    return {"trace": {"path": str(path), "bytes": len(result.stdout), "buffer_text_bytes": sizes["bytes"],
                      "truncated": sizes["bytes"] > sizes["kept"], "events": trace.counts(),
                      "cpus": trace.cpus, "overwritten": trace.overwritten, "end": trace.end(),
                      "failure_time": failure_time(data, _console(guest))}}
