"""Long steps announce themselves: a start, then a duration (or "cached", or a failure).

Any layer reports a step without knowing who shows it::

    with step("root disk", "mmdebstrap bookworm"):
        build()
    cached("module", key)            # nothing to do: one event, no duration

Each moment is a :class:`StepEvent` logged at INFO on the ``lab.steps``
logger (the event rides on the record as ``step_event``).  A front end
attaches a handler that renders them (a live status on a terminal, plain
timestamped lines otherwise: ``lab.cli.progress``); with no handler they go
nowhere, so library users and workers stay silent.  Standard library only:
the set-up before the virtual environment uses it too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["STEP_LOGGER", "StepEvent", "step", "cached", "emit"]

#: The logger step events go to (its level is set to INFO by whoever renders them).
STEP_LOGGER = "lab.steps"

STATES = ("start", "done", "cached", "failed")


@dataclass(frozen=True)
class StepEvent:
    """One moment of a long step.

    :param name: what the step makes or does, as a person would say it ("root disk").
    :param state: ``start``, ``done``, ``cached`` or ``failed``.
    :param detail: a short qualifier (a package list, a cache key, the error's first line).
    :param seconds: how long the step took (``done`` and ``failed`` only).
    """

    name: str
    state: str
    detail: str = ""
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown step state {self.state!r} (use {', '.join(STATES)})")

    def text(self) -> str:
        """The event as one line without a timestamp (what a log file or a plain renderer shows)."""
        detail = f" ({self.detail})" if self.detail else ""
        if self.state == "start":
            return f"{self.name}{detail} ..."
        if self.state == "cached":
            return f"{self.name}: cached{detail}"
        if self.state == "done":
            return f"{self.name}: done in {self.seconds:.1f} s"
        return f"{self.name}: failed after {self.seconds:.1f} s{detail}"


def emit(event: StepEvent) -> None:
    """Log ``event`` on the steps logger, for whichever renderer is attached."""
    logging.getLogger(STEP_LOGGER).info("%s", event.text(), extra={"step_event": event})


@contextlib.contextmanager
def step(name: str, detail: str = "") -> Iterator[None]:
    """Announce ``name``, run the block, then report its duration (or its failure, re-raised)."""
    emit(StepEvent(name, "start", detail))
    started = time.monotonic()
    try:
        yield
    except BaseException as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        emit(StepEvent(name, "failed", reason, time.monotonic() - started))
        raise
    emit(StepEvent(name, "done", seconds=time.monotonic() - started))


def cached(name: str, detail: str = "") -> None:
    """Report that ``name`` had nothing to do: its result was already in the cache."""
    emit(StepEvent(name, "cached", detail))
