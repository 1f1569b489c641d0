"""Ending a guest command early when the guest's kernel is stuck.

A command running in a guest whose kernel has panicked, locked up or stalled never ends on its own: without
help the host waits for the command's whole timeout (15 minutes in a mutation run).  :class:`StuckWatch` reads
the console in a thread and, at the first report that means the kernel is stuck, sets an event that
:meth:`lab.guest.ssh.SSHSession.run` stops on (its ``abort``).
"""

from __future__ import annotations

import logging
import threading

from lab.guest.console_scan import PATTERNS, KernelReport, scan_console

__all__ = ["STUCK_KINDS", "StuckWatch"]

log = logging.getLogger(__name__)

#: Console report kinds (:data:`lab.guest.console_scan.PATTERNS`) after which a running command is not
#: expected to end: the kernel panicked, a CPU is locked up, RCU stalls, a task hangs in the kernel, or a task
#: died in it (an oops: a general protection fault, ``kernel BUG at``, ``BUG: unable to handle``), which leaves
#: whatever it held locked (measured: a KASAN null-pointer GPF in GEN_START froze a debug guest's console and
#: its command for the whole 40-minute timeout).
STUCK_KINDS = frozenset({"panic", "softlockup", "hardlockup", "rcu_stall", "hung_task", "gpf", "oops", "bug"})
_STUCK_PATTERNS = tuple(rx for kind, rx in PATTERNS if kind in STUCK_KINDS)


class StuckWatch:
    """While open, looks at ``guest``'s console every ``interval`` seconds, from where it stood when the watch
    was made, for a report of a :data:`STUCK_KINDS` kind.  ``tripped`` is set at the first one, which is kept
    in ``report``; pass ``tripped`` as a command's ``abort``."""

    def __init__(self, guest, interval: float = 1.0) -> None:
        self.guest = guest
        self.interval = interval
        self.tripped = threading.Event()
        self.report: KernelReport | None = None
        self._offset = len(guest.console_text())
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StuckWatch:
        self._thread = threading.Thread(target=self._watch, name="stuck-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join()

    def check(self) -> KernelReport | None:
        """Look once; the first stuck report since the start (also kept in ``report``), or None."""
        if self.report is None:
            lines = self.guest.console_text()[self._offset:].splitlines()
            # line by line: scan_console folds a report that follows another closely (a WARNING, then the
            # panic it led to) into the first one's excerpt
            for at, line in enumerate(lines):
                if any(rx.search(line) for rx in _STUCK_PATTERNS):
                    self.report = scan_console("\n".join(lines[at:]))[0]
                    self.tripped.set()
                    break
        return self.report

    def _watch(self) -> None:
        while not self._closing.wait(self.interval):
            try:
                if self.check() is not None:
                    return
            except Exception:  # noqa: BLE001 - a watch that stops would leave only the command's timeout
                log.exception("reading the console of %s failed; looking again", getattr(self.guest, "spec", "?"))
