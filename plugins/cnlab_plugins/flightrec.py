"""The flight recorder (issue 15): every scenario runs with a bounded ftrace buffer, kept when it fails.

At ``lab_scenario_start`` the guest program ``lab/guestside/flightrec.py`` creates the tracefs instance
``instances/cnlab`` with ``buffer_kb`` KiB per CPU in overwrite mode and enables the module's CBUS
tracepoints (``cnlab:*``, ``kmod/cnlab_trace.h``) with the scheduler's switches and wake-ups and the hard
and soft IRQ entries and exits.  ``lab_scenario_stop`` marks the end and freezes the buffer.  Once the
scenario is judged (``lab_result_judged``): a failure saves the trace text, its last ``max_kb`` KiB, to
``<results>/consoles/<guest>.<scenario>.trace`` and names it in the record (``data.flightrec.trace``,
with its size, the events by name, what the ring buffer overwrote and, for a kernel report, the
report's console time); a pass saves and fetches nothing.  The next scenario's start replaces the
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
from lab.plugin import StashKey
from lab.report.ftrace import STOP_MARK, parse_trace

#: ``CNLAB_FLIGHTREC=0`` turns the recorder off for a run.
ENV = "CNLAB_FLIGHTREC"
PROGRAM = "flightrec.py"
#: What is recorded: the module's tracepoints, then the scheduler's and the IRQs' (those the kernel has).
EVENTS = ("cnlab:cnlab_insert", "cnlab:cnlab_drain_start", "cnlab:cnlab_drain_end", "cnlab:cnlab_send",
          "cnlab:cnlab_drop", "sched:sched_switch", "sched:sched_wakeup", "irq:irq_handler_entry",
          "irq:irq_handler_exit", "irq:softirq_entry", "irq:softirq_exit")
DEFAULT_BUFFER_KB, DEFAULT_MAX_KB = 1024, 4096
#: Said in the record of a scenario with a ``module-reload`` fault (seen on the Debian 6.1 kernel).
RELOAD_NOTE = ("module-reload: the kernel empties every trace buffer when a module whose events were recorded "
               "unloads, and does not enable them again when it loads: the trace holds the scheduler and IRQ "
               "events from the unload on, no cnlab events")
#: What ``start`` said: the instance, its buffer size and the events enabled (None: the recorder is off).
STARTED = StashKey[dict]()
#: The stop: the end mark, then the buffer frozen (instance and mark as positional arguments, never in the script).
STOP_ARGV = ["sh", "-c", 'printf %s "$2" > "$1/trace_marker" && echo 0 > "$1/tracing_on"', "flightrec-stop"]
_CONSOLE_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$", re.MULTILINE)
_SECONDS = 30


class _State:
    enabled = True


def trace_path(log_dir: Path, guest_name: str, scenario: str) -> Path:
    """Where a failed scenario's trace goes (beside the console logs and the vmcores)."""
    return log_dir / f"{guest_name}.{scenario}.trace"


def _program(guest, stash, *args: str, timeout: float = _SECONDS):
    lib = stash.get(LIB, "/run/cnlab/py")
    return guest.run(["python3", "-S", f"{lib}/{PROGRAM}", *args], timeout=timeout)


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


@hookimpl
def lab_plugin_configure(config, settings: Mapping[str, Any]) -> None:
    """Read the settings and the environment's opt-out."""
    _State.enabled = bool(settings.get("enabled", True)) and os.environ.get(ENV, "1") != "0"


@hookimpl
def lab_scenario_start(scenario, guest, stash, settings: Mapping[str, Any]) -> None:
    """Create the guest's instance and start recording (no guest, as in a dry run of the hooks: nothing to do)."""
    if not _State.enabled or guest is None:
        return
    result = _program(guest, stash, "start", "--buffer-kb", str(settings.get("buffer_kb", DEFAULT_BUFFER_KB)),
                      *EVENTS)
    if not result.ok:
        raise PluginError(f"the flight recorder did not start: {result.stderr.decode(errors='replace').strip()}")
    started = json.loads(result.stdout)
    if not any(e.startswith("cnlab:") for e in started["enabled"]):
        raise PluginError("the flight recorder found none of the module's tracepoints (events/cnlab/ in tracefs)")
    stash[STARTED] = started


@hookimpl
def lab_scenario_stop(scenario, guest, stash, error, settings: Mapping[str, Any]) -> None:
    """Mark the end and freeze the buffer (a dead guest keeps what it had: nothing to fetch).  One shell
    command, not the guest program: a Python start costs 0.8 s of a TCG guest, ``sh`` a tenth of that."""
    cause = getattr(error, "original", error)  # a phase's HookCallError carries what the plugin raised
    if STARTED not in stash or not guest.alive() or isinstance(cause, GuestError):
        return  # a guest that crashed or lost SSH may be paused in a panic (the vmcore plugin dumps it): no waiting
    done = guest.run(STOP_ARGV + [stash[STARTED]["instance"], STOP_MARK], timeout=_SECONDS)
    if not done.ok:
        raise PluginError(f"the flight recorder did not stop: {done.stderr.decode(errors='replace').strip()}")


@hookimpl
def lab_result_collect(scenario, guest, stash, settings: Mapping[str, Any]) -> dict | None:
    """What was recorded: the buffer size and the events enabled, and those the kernel lacks."""
    started = stash.get(STARTED, None)
    if started is None:
        return None
    out = {"buffer_kb": started["buffer_kb"], "events": started["enabled"], "missing": started["missing"]}
    if scenario.uses("module-reload"):
        out["note"] = RELOAD_NOTE
    return out


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
    if STARTED not in stash or passed:
        return None
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
