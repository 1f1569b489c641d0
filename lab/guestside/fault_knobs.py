"""The kernel's fault-injection knobs, set for the length of a check and put back after it (in a guest, as root).

``failslab``, ``fail_page_alloc`` and ``fail_function`` each have a folder under ``/sys/kernel/debug`` with the
same attributes (``probability``, ``interval``, ``times``, ``space``, ``verbose``, ``task-filter``, ...; the
kernel's Documentation/fault-injection/fault-injection.rst).  A ``task-filter``-ed capability fails only
tasks whose ``/proc/<pid>/make-it-fail`` is 1.  Knobs are named by their path under debugfs
(``failslab/times``).
"""

from __future__ import annotations

import contextlib
import os
import re

DEBUGFS = "/sys/kernel/debug"


def read(name: str) -> str:
    """A knob's value, as the kernel prints it (``failslab/times`` -> ``"1"``)."""
    with open(f"{DEBUGFS}/{name}") as fh:
        return fh.read().strip()


def write(name: str, value: str) -> None:
    with open(f"{DEBUGFS}/{name}", "w") as fh:
        fh.write(value)


@contextlib.contextmanager
def knobs_set(values: dict[str, str]):
    """Set each knob of ``values`` in its order (set ``probability`` last, so the rest is in place when
    failures start); put each back in the reverse order however the block ends."""
    old: list[tuple[str, str]] = []
    try:
        for name, value in values.items():
            old.append((name, read(name)))
            write(name, value)
        yield
    finally:
        for name, value in reversed(old):
            write(name, value)


def kworkers_of(cpu: int, proc: str = "/proc") -> list[int]:
    """The pids of the workqueue workers bound to CPU ``cpu`` (``kworker/1:0``, ``kworker/1:1H``,
    ``kworker/1:2-events``): where work queued on that CPU runs."""
    name = re.compile(rf"kworker/{cpu}:\d")
    pids = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                with open(f"{proc}/{entry}/comm") as fh:
                    if name.match(fh.read()):
                        pids.append(int(entry))
            except OSError:  # gone meanwhile
                continue
    return sorted(pids)


@contextlib.contextmanager
def tasks_made_to_fail(pids: list[int], proc: str = "/proc"):
    """``make-it-fail`` set for each of ``pids`` (a task gone meanwhile is left out), cleared after the block;
    the block gets the pids it was set for."""
    marked = []
    try:
        for pid in pids:
            try:
                with open(f"{proc}/{pid}/make-it-fail", "w") as fh:
                    fh.write("1")
            except OSError:
                continue
            marked.append(pid)
        yield marked
    finally:
        for pid in marked:
            with contextlib.suppress(OSError):
                with open(f"{proc}/{pid}/make-it-fail", "w") as fh:
                    fh.write("0")
