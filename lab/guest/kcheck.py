"""Kernel health checks for lab tests: console problems and new taint.

A lab test ends by asserting that the guest kernel said nothing alarming on
its console (oops, BUG, WARNING, call traces, refcount_t saturation, a
leaked connector queue, ...) and that the taint mask gained nothing beyond
what loading an out-of-tree, unsigned module sets::

    watch = KernelWatch(guest)          # remembers console offset and taint
    ...                                 # the test
    watch.assert_clean()                # AssertionError with the evidence

The pure functions (:func:`console_problems`, :func:`unexpected_taint`,
:func:`taint_letters`) take text and integers, so they are unit tested
without a guest.

:func:`console_problems` is a deliberately blunt line gate for tests (any
"Call Trace" or "BUG" fails); :mod:`lab.guest.console_scan` is what the scenario
engine uses to cut whole reports out and fingerprint them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lab.guest.console_scan import LAB_MODULES, without_foreign_races

__all__ = [
    "ALLOWED_TAINT",
    "CONSOLE_PATTERNS",
    "KernelReport",
    "KernelWatch",
    "console_problems",
    "problems_before_module_load",
    "taint_letters",
    "unexpected_taint",
]

#: Taint bits, in kernel order (Documentation/admin-guide/tainted-kernels.rst).
TAINT_LETTERS = "PFSRMBUDAWCIOELKXT"
TAINT_OOT_MODULE = 1 << 12  # O: out-of-tree module loaded
TAINT_UNSIGNED_MODULE = 1 << 13  # E: unsigned module loaded
#: The only taint a lab module may add.
ALLOWED_TAINT = TAINT_OOT_MODULE | TAINT_UNSIGNED_MODULE

#: (name, regex) of console lines that fail a test.
CONSOLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx))
    for name, rx in (
        ("kcsan", r"BUG: KCSAN: "),  # before BUG, to name it
        ("oops", r"\bOops\b"),
        ("BUG", r"\bBUG\b"),  # "BUG: ...", "kernel BUG at", slub_debug "BUG kmalloc-64"
        ("WARNING", r"\bWARNING\b"),
        ("call trace", r"Call Trace"),
        ("refcount_t", r"refcount_t"),
        ("cqueue leak", r"Waiting for cqueue"),
        ("panic", r"Kernel panic"),
        ("gpf", r"general protection fault"),
        ("soft lockup", r"soft lockup"),
        ("hung task", r"blocked for more than \d+ seconds"),
        ("rcu stall", r"rcu: INFO: .* detected stalls"),
        ("list corruption", r"list_(add|del) corruption"),
        ("ubsan", r"UBSAN:"),
        ("debug objects", r"ODEBUG:"),
        ("lockdep", r"INFO: trying to register non-static key"),
        ("kmemleak", r"unreferenced object 0x"),
    )
)


def console_problems(text: str, modules: tuple[str, ...] = LAB_MODULES) -> list[str]:
    """Console lines that show a kernel problem, each prefixed with its kind; a KCSAN kernel's data-race
    reports count only when an access lies in one of ``modules`` (:func:`without_foreign_races`)."""
    found = []
    for line in without_foreign_races(text, modules).splitlines():
        clean = line.strip("\r\n\x00")
        for name, rx in CONSOLE_PATTERNS:
            if rx.search(clean):
                found.append(f"{name}: {clean.strip()}")
                break
    return found


#: The kernel's line as it loads the first out-of-tree module, before that module's init runs.
_OOT_MODULE_LOAD = re.compile(r"^\[\s*[\d.]+\]\s+(\S+): loading out-of-tree module taints kernel", re.M)


def problems_before_module_load(text: str, modules: list[str]) -> list[str]:
    """The console problems of ``text`` printed before the first of ``modules`` began to load (the kernel's
    out-of-tree taint line for it): the kernel's own, which nothing in those modules can have caused. None
    are found when that line is not there (the load cannot be placed)."""
    for m in _OOT_MODULE_LOAD.finditer(text):
        if m.group(1) in modules:
            return console_problems(text[:m.start()], tuple(modules))
    return []


def taint_letters(mask: int) -> str:
    """The taint mask as the kernel prints it ("OE"); unknown bits as "?N"."""
    out = []
    for bit in range(max(mask.bit_length(), 0)):
        if mask >> bit & 1:
            out.append(TAINT_LETTERS[bit] if bit < len(TAINT_LETTERS) else f"?{bit}")
    return "".join(out)


def unexpected_taint(before: int, after: int, allowed: int = ALLOWED_TAINT) -> int:
    """Taint bits set after but not before, besides the ``allowed`` ones."""
    if before < 0 or after < 0:
        raise ValueError("taint masks are non-negative")
    return (after & ~before) & ~allowed


@dataclass
class KernelReport:
    """What a :class:`KernelWatch` saw between its start and its check."""

    taint_before: int
    taint_after: int
    problems: list[str] = field(default_factory=list)

    @property
    def new_taint(self) -> int:
        return unexpected_taint(self.taint_before, self.taint_after)

    @property
    def clean(self) -> bool:
        return not self.problems and not self.new_taint

    def describe(self) -> str:
        parts = []
        if self.new_taint:
            parts.append(f"new taint {self.new_taint:#x} ({taint_letters(self.new_taint)}); "
                         f"before {self.taint_before:#x} ({taint_letters(self.taint_before)}), "
                         f"after {self.taint_after:#x} ({taint_letters(self.taint_after)})")
        if self.problems:
            parts.append(f"{len(self.problems)} console problem line(s):\n  " + "\n  ".join(self.problems[:30]))
        return "; ".join(parts) or "clean"


class KernelWatch:
    """Console and taint of one guest from now on (guests may be shared), or with ``from_boot`` from the
    guest's start: then what its boot did (a report while the module loaded, a taint it set, a leak of its
    init) counts too, which a guest that is the test's own needs."""

    def __init__(self, guest, from_boot: bool = False) -> None:
        from lab.guest.kmemleak import scan_leaks

        self.guest = guest
        self.console_offset = 0 if from_boot else len(guest.console_text())
        self.taint_before = 0 if from_boot else guest.tainted()
        # the debug flavour: what leaked before the watch began is read and cleared here (and kept from boot)
        leaks = scan_leaks(guest)
        self.early_leaks = leaks if from_boot else []

    def report(self, leaks: bool = True) -> KernelReport:
        """Taint, console problems and (debug kernel flavour; not without ``leaks``) the lab module's kmemleak
        leaks since the start."""
        from lab.guest.kmemleak import lab_modules, scan_leaks

        taint_after = self.guest.tainted()
        text = self.guest.console_text()[self.console_offset:]
        found = [f"kmemleak: {leak['title']} from {' <- '.join(leak['frames'][:4])}"
                 for leak in self.early_leaks + scan_leaks(self.guest)] if leaks else []
        return KernelReport(self.taint_before, taint_after, console_problems(text, lab_modules(self.guest)) + found)

    def assert_clean(self) -> KernelReport:
        report = self.report()
        assert report.clean, f"guest kernel not clean: {report.describe()}"
        return report
