"""Reading an ftrace buffer's text form (a tracefs ``trace`` file), as the flight recorder saves it.

One line per event::

    cbus/0-15      [000] d..1.   123.456789: cnlab_insert: cpu=0 depth=3 bytes=60

:func:`parse_trace` turns the text into a :class:`Trace`: its events in time order, the CPUs seen, and the
header's ``entries-in-buffer/entries-written`` counts (written minus in buffer: events the ring buffer
overwrote).  Other lines but the ``#`` header (a ``CPU:N [LOST n EVENTS]`` note) are counted, not fatal.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["TraceEvent", "Trace", "parse_trace", "read_trace", "STOP_MARK", "CNLAB_EVENTS"]

#: What the recorder writes into the buffer when the scenario stops (``lab/guestside/flightrec.py``).
STOP_MARK = "cnlab-flightrec: stop"
#: The module's tracepoints (``kmod/cnlab_trace.h``).
CNLAB_EVENTS = ("cnlab_insert", "cnlab_drain_start", "cnlab_drain_end", "cnlab_send", "cnlab_drop")

_EVENT = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                    r"(?:(?P<flags>[^\s\d][^\s]*)\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<body>.*)$")
_ENTRIES = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class TraceEvent:
    """One event: when (seconds of the trace clock), where, who, what, and its ``key=value`` fields."""

    ts: float
    cpu: int
    task: str
    pid: int
    name: str
    body: str

    @property
    def fields(self) -> dict[str, str]:
        """``key=value`` pairs of the body (``sched_switch``'s ``prev_comm=…``, ``cnlab_insert``'s ``depth=…``)."""
        return dict(_FIELD.findall(self.body))


@dataclass
class Trace:
    """A parsed trace: events in time order and what the header said."""

    events: list[TraceEvent] = field(default_factory=list)
    entries_in_buffer: int | None = None
    entries_written: int | None = None
    other_lines: int = 0

    @property
    def cpus(self) -> list[int]:
        return sorted({e.cpu for e in self.events})

    @property
    def overwritten(self) -> int | None:
        """Events the ring buffer dropped to make room (overwrite mode), if the header said."""
        if self.entries_in_buffer is None or self.entries_written is None:
            return None
        return max(self.entries_written - self.entries_in_buffer, 0)

    def counts(self) -> dict[str, int]:
        """Events by name."""
        return dict(Counter(e.name for e in self.events))

    def end(self) -> float | None:
        """Where the recording ends: the recorder's stop mark, else the last event."""
        for event in reversed(self.events):
            if event.name == "tracing_mark_write" and STOP_MARK in event.body:
                return event.ts
        return self.events[-1].ts if self.events else None

    def window(self, end: float, ms: float) -> list[TraceEvent]:
        """The events of the ``ms`` milliseconds up to ``end``."""
        start = end - ms / 1000
        return [e for e in self.events if start <= e.ts <= end]


def parse_trace(text: str) -> Trace:
    """Parse a ``trace`` file's text."""
    trace = Trace()
    for line in text.splitlines():
        match = _EVENT.match(line)
        if match:
            trace.events.append(TraceEvent(float(match["ts"]), int(match["cpu"]), match["task"].strip(),
                                           int(match["pid"]), match["event"], match["body"]))
            continue
        entries = _ENTRIES.search(line)
        if entries:
            trace.entries_in_buffer, trace.entries_written = int(entries[1]), int(entries[2])
        elif line.strip() and not line.startswith("#"):
            trace.other_lines += 1
    trace.events.sort(key=lambda e: e.ts)  # per-CPU buffers merge in order already; a stable sort keeps ties
    return trace


def read_trace(path: Path) -> Trace:
    """Parse a saved trace file.

    :raises OSError: it cannot be read.
    """
    return parse_trace(Path(path).read_text(encoding="utf-8", errors="replace"))
