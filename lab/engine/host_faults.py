"""Faults applied to a running guest from the host side of a scenario.

The guest agent applies the in-guest faults itself, on time (see
``lab/guestside/agent.py``); this timeline runs the ones only the host can do,
such as pausing the whole guest over QMP, and can also drive the in-guest
kinds over SSH (CPU hotplug, module knobs through ``fault_ctl.py``) for
callers that have no agent running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab.engine.scenario import FaultSpec
from lab.errors import LabError
from lab.guest.machine import Guest

__all__ = ["FaultTimeline", "AppliedFault"]


@dataclass
class AppliedFault:
    """A fault as it actually happened (seconds from the start of the load)."""

    kind: str
    at: float
    until: float | None = None
    ok: bool = True
    detail: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "at": round(self.at, 3),
                "until": None if self.until is None else round(self.until, 3), "ok": self.ok, "detail": self.detail}


def _knob(guest: Guest, lib: str, kind: str, value: int) -> str:
    result = guest.run(["python3", f"{lib}/fault_ctl.py", kind, str(value)], timeout=30)
    if not result.ok:
        raise LabError(result.stderr.decode(errors="replace").strip() or f"fault_ctl {kind} failed")
    return f"{kind}={value}"


def _cpu_online(guest: Guest, cpu: int, online: bool) -> None:
    path = f"/sys/devices/system/cpu/cpu{cpu}/online"
    guest.run(["sh", "-c", f"echo {1 if online else 0} > {path}"], timeout=30, check=True)


@dataclass
class FaultTimeline:
    """Applies a scenario's faults on schedule in a background thread."""

    guest: Guest
    lib: str
    faults: tuple[FaultSpec, ...]
    duration: float
    applied: list[AppliedFault] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the clock: called when the guest agent says the load began."""
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="fault-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> list[AppliedFault]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        return self.applied

    def _schedule(self) -> list[tuple[float, FaultSpec]]:
        events = []
        for fault in self.faults:
            if fault.at is not None:
                events.append((fault.at, fault))
            else:
                t = fault.every
                while t is not None and t < self.duration:
                    events.append((t, fault))
                    t += fault.every
        return sorted(events, key=lambda e: e[0])

    def _wait_until(self, t: float) -> bool:
        """Wait for a scheduled time; False if the run is stopping."""
        return not self._stop.wait(max(0.0, self._t0 + t - time.monotonic()))

    def _run(self) -> None:
        for at, fault in self._schedule():
            if not self._wait_until(at):
                return
            record = AppliedFault(fault.kind, time.monotonic() - self._t0)
            self.applied.append(record)
            try:
                record.detail = self._apply(fault, record)
            except Exception as exc:  # a fault that cannot be applied is recorded, not fatal
                record.ok = False
                record.detail = f"{type(exc).__name__}: {exc}"

    def _hold(self, fault: FaultSpec, undo: Callable[[], None], record: AppliedFault) -> None:
        self._stop.wait(fault.duration)
        undo()
        record.until = time.monotonic() - self._t0

    def _apply(self, fault: FaultSpec, record: AppliedFault) -> str:
        guest, lib = self.guest, self.lib
        if fault.kind == "cpu_offline":
            _cpu_online(guest, fault.cpu, False)
            self._hold(fault, lambda: _cpu_online(guest, fault.cpu, True), record)
            return f"cpu{fault.cpu} offline for {fault.duration} s"
        if fault.kind == "pause":
            guest.pause()
            self._hold(fault, guest.resume, record)
            return f"guest paused for {fault.duration} s"
        if fault.kind == "stall":
            return _knob(guest, lib, "stall", fault.value or int(fault.duration * 1000))
        if fault.kind == "alloc_fail":
            detail = _knob(guest, lib, "alloc_fail", fault.value or 10)
            self._hold(fault, lambda: _knob(guest, lib, "alloc_fail", 0), record)
            return detail
        if fault.kind == "queue_limit":
            return _knob(guest, lib, "queue_limit", fault.value or 64)
        if fault.kind == "crash":
            # The guest panics (sysrq 'c'): the scenario must end as a crash, with the report.
            guest.run(["sh", "-c", "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger"], timeout=10)
            return "sysrq crash triggered"
        if fault.kind == "warn":
            guest.run(["sh", "-c", "echo 1 > /sys/module/cnlab/parameters/debug_warn"], timeout=30, check=True)
            return _knob(guest, lib, "warn", 1)
        raise LabError(f"unknown fault kind {fault.kind}")
