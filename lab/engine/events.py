"""What a run reports while it runs: one :class:`RunEvent` per moment, to a callback.

:func:`lab.engine.run.run_scenarios` calls its ``progress`` callback with an
event whenever a run starts, a scenario enters a phase, fails and is retried,
finishes, or the run has something to say.  Without a callback the events
are printed as plain lines (:func:`plain_printer`), as a log would show them;
a front end can draw them live instead.  Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["RunCounts", "RunEvent", "ProgressCallback", "format_event", "plain_printer", "KINDS"]

#: start: the run begins (``text`` says on what); phase: a scenario enters ``phase``; retry: a scenario's
#: guest failed and it runs again on a fresh one (``text``: the error); result: a scenario finished with
#: ``status``; note: anything else worth a line (``text``).
KINDS = ("start", "phase", "retry", "result", "note")


@dataclass(frozen=True)
class RunCounts:
    """Where the run stands: scenarios finished, failed among them, not finished yet; guests in parallel."""

    done: int
    failed: int
    left: int
    guests: int


@dataclass(frozen=True)
class RunEvent:
    """One moment of a run.

    :param kind: one of :data:`KINDS`.
    :param elapsed: seconds since the run started.
    :param worker: the guest (1-based) the event concerns, if any.
    :param scenario: the scenario's name, if any.
    :param phase: ``boot``, ``load``, ``setup``, ``checks`` … (kind ``phase``).
    :param status: ``passed``, ``failed`` or ``error`` (kind ``result``).
    :param counts: where the run stands after this event.
    :param text: the line for ``start``, ``note`` and ``retry`` events.
    """

    kind: str
    elapsed: float
    worker: int | None = None
    scenario: str = ""
    phase: str = ""
    status: str = ""
    counts: RunCounts | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run event kind {self.kind!r} (use {', '.join(KINDS)})")


ProgressCallback = Callable[[RunEvent], None]


def format_event(event: RunEvent, elapsed: float | None = None) -> str:
    """The plain line for ``event``, stamped with ``elapsed`` (default: the event's own)."""
    stamp = f"[{event.elapsed if elapsed is None else elapsed:6.1f}s]"
    if event.kind in ("start", "note"):
        return event.text
    where = f"{stamp} guest {event.worker}: {event.scenario}"
    if event.kind == "phase":
        return f"{where}: {event.phase}"
    if event.kind == "retry":
        return f"{where}: ERROR ({event.text[:120]}); retrying on a fresh guest"
    counts = event.counts
    tally = f" ({counts.done} done, {counts.failed} failed, {counts.left} left)" if counts else ""
    return f"{where}: {event.status.upper()}{tally}"


def plain_printer(out: TextIO) -> ProgressCallback:
    """A callback that prints each event as a plain line on ``out`` (the run's default)."""

    def show(event: RunEvent) -> None:
        print(format_event(event), file=out, flush=True)

    return show
