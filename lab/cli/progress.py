"""How progress reaches the person (or the log) watching: a view per output, chosen once per command.

Lower layers report long steps through :mod:`lab.host.steps` (logging) and
the engine reports a run through :class:`~lab.engine.events.RunEvent`
callbacks; a *view* renders both, plus log messages:

* :class:`PlainView`: one timestamped line per event (``[  41.3s] root disk:
  done in 41.2 s``), for pipes, files and CI logs.  The default whenever the
  output is not a terminal.
* :class:`TickerView`: on a terminal without ``rich`` (the first-run set-up
  runs on the system Python), plain lines plus one line that ticks (spinner,
  seconds) while a step runs.
* ``lab.cli.live.LiveView``: on a terminal, a live status drawn with ``rich``.

Verbosity: ``-q`` shows only what a run is about, warnings, errors and
results; the default adds steps and progress; ``-v`` adds cnlab's INFO log
messages and ``-vv`` its DEBUG ones.  Standard library only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Protocol, TextIO

from lab.engine.events import RunEvent, format_event
from lab.host.steps import STEP_LOGGER, StepEvent

__all__ = ["QUIET", "NORMAL", "VERBOSE", "View", "PlainView", "TickerView", "choose_view", "progress_output",
           "step_line", "terminal_step_line", "verbosity_from_argv", "is_terminal"]

QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class View(Protocol):
    """What renders progress: long steps, run events and log messages."""

    def step(self, event: StepEvent) -> None:
        """A long step started, ended, was cached or failed."""

    def run_event(self, event: RunEvent) -> None:
        """Something happened in a scenario run."""

    def message(self, text: str) -> None:
        """A log message (already formatted) that passed the verbosity threshold."""

    def start(self) -> None:
        """Begin drawing (a live view takes over the terminal here)."""

    def stop(self) -> None:
        """Stop drawing and leave the terminal as plain text (idempotent)."""


def step_line(event: StepEvent) -> str:
    """One line for a step event (a failure's reason is left to the error message that follows)."""
    if event.state == "failed":
        return f"{event.name}: failed after {event.seconds:.1f} s"
    return event.text()


def terminal_step_line(event: StepEvent) -> str:
    """A finished step as a terminal shows it (no timestamp: the terminal is watched as it happens)."""
    if event.state == "done":
        return f"✓ {event.name} {event.seconds:.1f} s"
    if event.state == "cached":
        return f"· {step_line(event)}"
    return f"✗ {step_line(event)}"


def is_terminal(stream: TextIO) -> bool:
    """True if ``stream`` is a terminal that can be redrawn (not a pipe, a file, or ``TERM=dumb``)."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class PlainView:
    """One timestamped line per event, seconds since the view started."""

    def __init__(self, stream: TextIO, verbosity: int = NORMAL, clock=time.monotonic) -> None:
        self.stream = stream
        self.verbosity = verbosity
        self._clock = clock
        self._started = clock()

    def elapsed(self) -> float:
        """Seconds since the view was made."""
        return self._clock() - self._started

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def step(self, event: StepEvent) -> None:
        """One stamped line per step event (none with -q)."""
        if self.verbosity >= NORMAL:
            self._print(f"[{self.elapsed():6.1f}s] {step_line(event)}")

    def run_event(self, event: RunEvent) -> None:
        """The engine's plain line, stamped with this view's clock (-q: only the start and notes)."""
        if self.verbosity >= NORMAL or event.kind in ("start", "note"):
            self._print(format_event(event, self.elapsed()))

    def message(self, text: str) -> None:
        """A log message, as it is."""
        self._print(text)

    def start(self) -> None:
        """Nothing to set up."""

    def stop(self) -> None:
        """Nothing to tear down."""


class TickerView(PlainView):
    """Plain lines, plus a line that ticks while a step runs (a terminal without ``rich``)."""

    def __init__(self, stream: TextIO, verbosity: int = NORMAL, clock=time.monotonic, interval: float = 0.25) -> None:
        super().__init__(stream, verbosity, clock)
        self._running: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._interval = interval
        self._thread: threading.Thread | None = None
        self._frame = 0
        self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def _draw(self) -> None:
        if not self._running:
            return
        name, (detail, since) = next(reversed(self._running.items()))
        self._frame = (self._frame + 1) % len(SPINNER)
        text = f"{SPINNER[self._frame]} {name}" + (f" ({detail})" if detail else "")
        self.stream.write(f"\r\x1b[K{text} {self._clock() - since:.0f} s")
        self.stream.flush()
        self._drawn = True

    def _print(self, text: str) -> None:
        with self._lock:
            self._clear()
            print(text, file=self.stream, flush=True)
            self._draw()

    def _tick(self) -> None:
        while not self._wake.wait(self._interval):
            with self._lock:
                self._draw()

    def step(self, event: StepEvent) -> None:
        """A started step ticks on the last line; a finished one becomes a ✓/·/✗ line."""
        with self._lock:
            if event.state == "start":
                self._running[event.name] = (event.detail, self._clock())
            else:
                self._running.pop(event.name, None)
        if event.state != "start":
            self._print(terminal_step_line(event))
        else:
            with self._lock:
                self._draw()

    def start(self) -> None:
        """Start the thread that redraws the ticking line."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="cnlab-ticker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop ticking and clear the ticking line."""
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._clear()
            self.stream.flush()


def choose_view(stream: TextIO, verbosity: int = NORMAL, live: bool = True) -> View:
    """The view for ``stream``: live on a terminal (``rich`` if it can be imported), else plain lines.

    :param live: False for commands whose terminal is needed by something else (a guest's shell).
    """
    if verbosity < NORMAL or not live or not is_terminal(stream):
        return PlainView(stream, verbosity)
    try:
        from lab.cli.live import LiveView
    except ImportError:
        return TickerView(stream, verbosity)
    return LiveView(stream, verbosity)


class _ViewHandler(logging.Handler):
    """Routes step events and log records that pass the threshold to a view."""

    def __init__(self, view: View, threshold: int) -> None:
        super().__init__()
        self.view = view
        self.threshold = threshold
        self.setFormatter(logging.Formatter("cnlab: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Hand a step event or a loud enough log record to the view."""
        try:
            event = getattr(record, "step_event", None)
            if event is not None:
                self.view.step(event)
            elif record.levelno >= self.threshold:
                self.view.message(self.format(record))
        except Exception:  # a broken view must not break the build it reports on
            self.handleError(record)


def _threshold(verbosity: int) -> int:
    return {QUIET: logging.WARNING, NORMAL: logging.WARNING, VERBOSE: logging.INFO}.get(verbosity, logging.DEBUG)


@contextlib.contextmanager
def progress_output(stream: TextIO | None = None, verbosity: int = NORMAL, live: bool = True,
                    view: View | None = None) -> Iterator[View]:
    """Render steps, log messages (and, through the view, run events) on ``stream`` for the block.

    Installs a handler on the root logger and restores the loggers' levels afterwards.
    """
    view = view or choose_view(stream or sys.stdout, verbosity, live)
    threshold = _threshold(verbosity)
    handler = _ViewHandler(view, threshold)
    root, steps = logging.getLogger(), logging.getLogger(STEP_LOGGER)
    saved = (root.level, steps.level)
    root.addHandler(handler)
    root.setLevel(threshold)
    steps.setLevel(logging.INFO)
    view.start()
    try:
        yield view
    finally:
        view.stop()
        root.removeHandler(handler)
        root.setLevel(saved[0])
        steps.setLevel(saved[1])


def verbosity_from_argv(argv: list[str]) -> int:
    """-q / -v / -vv among the options before ``--`` (for the set-up, which runs before the argument parser)."""
    level = NORMAL
    for arg in argv:
        if arg == "--":
            break
        if arg in ("-q", "--quiet"):
            return QUIET
        if arg == "--verbose":
            level += 1
        elif arg.startswith("-v") and set(arg[1:]) == {"v"}:
            level += len(arg) - 1
    return min(level, DEBUG)
