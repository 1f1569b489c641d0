"""What a run reports while it runs: one :class:`RunEvent` per moment, to a callback.

:func:`lab.engine.run.run_scenarios` calls its ``on_event`` callback whenever
a run starts, a scenario's guest enters a phase, a crashed guest's scenario
is retried, a scenario finishes, or the run has something to say.  Without a
callback the events are printed as plain lines (:func:`print_events`), as a
CI log shows them; a front end can draw them live instead.  Standard library
only (the front end's progress module imports it before the virtual
environment exists).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

__all__ = ["RunEvent", "KINDS", "format_event", "print_events"]

#: start: the run began (``detail`` says on what); phase: a scenario's guest is in ``detail`` (boot, setup,
#: load, checks ...); retry: a crashed guest's scenario runs again on a fresh guest; result: a scenario
#: finished with status ``detail``; note: anything else worth a line.
KINDS = ("start", "phase", "retry", "result", "note")


@dataclasses.dataclass(frozen=True)
class RunEvent:
    """Something a run's front end may show as it happens.

    :param kind: one of :data:`KINDS`.
    :param elapsed: seconds since the run began.
    :param worker: the guest slot (0 for the run itself).
    :param scenario: the scenario concerned, or "".
    :param detail: the phase, the status, or the note.
    :param done: scenarios finished so far; :param failed: of which not passed; :param left: still to finish.
    :param outcome: for a result, the record's status (``passed``, ``failed``, ``error``...) or ``flaky``;
        ``detail`` is the word the ``lab_report_status`` plugins chose to show (PASS, XFAIL...).
    """

    kind: str
    elapsed: float
    worker: int = 0
    scenario: str = ""
    detail: str = ""
    done: int = 0
    failed: int = 0
    left: int = 0
    outcome: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run event kind {self.kind!r} (use {', '.join(KINDS)})")


def format_event(event: RunEvent, elapsed: float | None = None) -> str:
    """The plain line for ``event``: ``[  12.3s] guest 2: NAME: PHASE``, stamped with ``elapsed``
    (default: the event's own)."""
    stamp = f"[{event.elapsed if elapsed is None else elapsed:6.1f}s]"
    if event.kind == "start":
        return f"cnlab run: {event.detail}"
    if event.kind == "result":
        return (f"{stamp} guest {event.worker}: {event.scenario}: {event.detail.upper()} "
                f"({event.done} done, {event.failed} failed, {event.left} left)")
    if event.kind == "note":
        return f"{stamp} {event.detail}"
    return f"{stamp} guest {event.worker}: {event.scenario}: {event.detail}"


def print_events(out=sys.stdout) -> Callable[[RunEvent], None]:
    """The plain progress lines on ``out`` (what CI logs show): the run's default."""

    def show(event: RunEvent) -> None:
        print(format_event(event), file=out, flush=True)

    return show
