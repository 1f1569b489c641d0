"""A live status on a terminal, drawn with ``rich``: running steps, then the run's guests and tallies.

Finished steps, scenario results, retries, notes and log messages are
printed above the live area as ordinary lines (they stay in the terminal's
scroll-back); the area itself shows what is happening now and disappears
when the view stops::

    · cached: kernel, root disk, module disk, initramfs, PVH kernel
    ✓ module build 3.1 s
    ✓ proc-storm-cbus      PASSED  guest 1   6.2 s   (1 done, 0 failed, 8 left)
    ⠴ cnlab run 0:14 · 2 guests · 2 running · 1 done · 0 failed · 6 waiting
      guest 1  irq-producer-cbus     checks   3.0 s
      guest 2  pause-resume          boot     1.2 s
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from lab.cli.progress import NORMAL, VERBOSE, step_line
from lab.engine.events import RunEvent, format_event
from lab.host.steps import StepEvent

__all__ = ["LiveView"]

_STATUS_STYLE = {"passed": "green", "flaky": "yellow", "failed": "red", "error": "bold red"}
_STATUS_MARK = {"passed": "✓", "flaky": "✓", "failed": "✗", "error": "!"}


@dataclass
class _Guest:
    scenario: str
    phase: str
    scenario_since: float
    phase_since: float


@dataclass
class _Tally:
    done: int = 0
    failed: int = 0
    left: int = 0
    guests: int = 0  # the highest guest slot seen so far


class LiveView:
    """Draws running steps and a run's state live on a terminal; prints everything final above it."""

    def __init__(self, stream: TextIO, verbosity: int = NORMAL, clock=time.monotonic) -> None:
        self.verbosity = verbosity
        self._clock = clock
        self.console = Console(file=stream, highlight=False)
        self._lock = threading.RLock()  # re-entered when Ctrl-C stops the view in the middle of an event
        self._steps: dict[str, tuple[str, float]] = {}
        self._cached: list[str] = []  # cached steps not printed yet (they go out as one line)
        self._guests: dict[int, _Guest] = {}
        self._tally: _Tally | None = None
        self._run_since: float | None = None
        self._spinner = Spinner("dots")
        self._previous_sigint = None
        self._live = Live(console=self.console, get_renderable=self._render, transient=True,
                          refresh_per_second=8, redirect_stdout=True, redirect_stderr=True)

    # ------------------------------------------------------------ drawing
    def _render(self) -> Group:
        now = self._clock()
        with self._lock:
            parts = []
            if self._steps:
                name, (detail, since) = next(reversed(self._steps.items()))
                self._spinner.update(text=Text.assemble((name, "bold"), f" ({detail})" if detail else "",
                                                        (f"  {now - since:.0f} s", "cyan")))
                parts.append(self._spinner)
            if self._tally is not None and self._run_since is not None:
                parts.append(self._run_status(now))
            return Group(*parts)

    def _run_status(self, now: float) -> Group:
        counts = self._tally
        assert counts is not None and self._run_since is not None
        minutes, seconds = divmod(int(now - self._run_since), 60)
        running = len(self._guests)
        header = Text.assemble(("cnlab run ", "bold"), f"{minutes}:{seconds:02d}",
                               f" · {counts.guests} guest{'s' if counts.guests != 1 else ''}",
                               f" · {running} running · ", (f"{counts.done} done", "green"), " · ",
                               (f"{counts.failed} failed", "red" if counts.failed else ""),
                               f" · {max(counts.left - running, 0)} waiting")
        guests = Table.grid(padding=(0, 2))
        for column in ("guest", "scenario", "phase", "time"):
            guests.add_column(column, justify="right" if column == "time" else "left")
        for number in range(1, counts.guests + 1):
            guest = self._guests.get(number)
            if guest is None:
                guests.add_row(f"  guest {number}", Text("idle", "dim"), "", "")
            else:
                guests.add_row(f"  guest {number}", guest.scenario, Text(guest.phase, "cyan"),
                               f"{now - guest.scenario_since:.1f} s")
        if not self._steps:
            self._spinner.update(text=header)
            return Group(self._spinner, guests)
        return Group(header, guests)

    def _above(self, text: Text | str) -> None:
        self._flush_cached()
        self.console.print(text if isinstance(text, Text) else Text(text), soft_wrap=True)

    def _flush_cached(self) -> None:
        """Consecutive cached steps as one line: ``· cached: kernel, root disk, module``."""
        with self._lock:
            names, self._cached = self._cached, []
        if names:
            self.console.print(Text("· cached: " + ", ".join(names), "dim"), soft_wrap=True)

    # -------------------------------------------------------------- events
    def step(self, event: StepEvent) -> None:
        """A started step spins in the live area; a finished one is printed above it."""
        with self._lock:
            if event.state == "start":
                self._steps[event.name] = (event.detail, self._clock())
                return
            self._steps.pop(event.name, None)
        if event.state == "done":
            self._above(Text.assemble(("✓ ", "green"), event.name, (f" {event.seconds:.1f} s", "cyan")))
        elif event.state == "cached":
            with self._lock:
                self._cached.append(event.name)
        else:
            self._above(Text("✗ " + step_line(event), "red"))

    def run_event(self, event: RunEvent) -> None:
        """Update the guests and tallies; print results, retries and notes above the live area."""
        now = self._clock()
        guest = None
        with self._lock:
            if event.kind == "start":
                self._run_since = now
                self._tally = _Tally(left=event.left)
            tally = self._tally = self._tally or _Tally()
            tally.guests = max(tally.guests, event.worker)
            if event.kind == "result":
                tally.done, tally.failed, tally.left = event.done, event.failed, event.left
            if event.kind == "phase" and event.worker:
                guest = self._guests.get(event.worker)
                if guest is None or guest.scenario != event.scenario:
                    self._guests[event.worker] = _Guest(event.scenario, event.detail, now, now)
                else:
                    guest.phase, guest.phase_since = event.detail, now
            elif event.kind in ("result", "retry") and event.worker:
                guest = self._guests.pop(event.worker, None)
        if event.kind == "start":
            self._above(format_event(event))
        elif event.kind == "note":
            self._above(event.detail)
        elif event.kind == "phase":
            if self.verbosity >= VERBOSE:
                self._above(Text(format_event(event, now - (self._run_since or now)), "dim"))
        elif event.kind == "retry":
            self._above(Text(f"↻ guest {event.worker}: {event.scenario}: {event.detail}", "yellow"))
        elif event.kind == "result":
            took = f"{now - guest.scenario_since:5.1f} s" if guest is not None else ""
            status = event.outcome or event.detail.lower()
            style = _STATUS_STYLE.get(status, "yellow")
            self._above(Text.assemble((f"{_STATUS_MARK.get(status, '?')} ", style),
                                      f"{event.scenario:<28} ", (f"{event.detail.upper():<7}", style),
                                      f" guest {event.worker}  {took}  ",
                                      (f"({event.done} done, {event.failed} failed, {event.left} left)", "dim")))

    def message(self, text: str) -> None:
        """A log message, printed above the live area."""
        self._above(text)

    # ----------------------------------------------------------- lifetime
    def start(self) -> None:
        """Take over the terminal's last lines; Ctrl-C gives them back at once (before any clean-up)."""
        self._live.start()
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous_sigint = signal.signal(signal.SIGINT, self._interrupted)

    def _interrupted(self, signum, frame) -> None:
        self.stop()
        raise KeyboardInterrupt

    def stop(self) -> None:
        """Erase the live area and give the terminal back (idempotent)."""
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
        self._flush_cached()
        self._live.stop()
