"""Finding kernel problems in a guest's console output.

Recognises oopses, BUG, WARNING, general protection faults, panics, soft and
hard lockups, hung tasks, RCU stalls, list and slab corruption and refcount
warnings, and what the debug kernel flavour adds: KASAN, lockdep, sleeping in
atomic context and debug-objects (ODEBUG) reports.  After a match the report runs on for ``CONTEXT_LINES`` lines (or
to the end-of-trace marker), so the whole report is kept even when other
output is interleaved.  A report is fingerprinted by its kind plus its top
call-trace frames, so the same bug seen twice has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

__all__ = ["KernelReport", "scan_console", "PATTERNS"]

_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")

#: (kind, pattern) in priority order: the first that matches a line names it.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(rx))
    for kind, rx in (
        ("panic", r"Kernel panic - not syncing"),
        ("gpf", r"general protection fault"),
        ("kasan", r"BUG: KASAN: "),
        ("atomic_sleep", r"BUG: sleeping function called from invalid context|BUG: scheduling while atomic"),
        ("lockdep", r"WARNING: (possible (circular locking dependency|recursive locking|irq lock inversion)"
                    r"|inconsistent lock state|\w+-safe -> \w+-unsafe lock order|bad unlock balance"
                    r"|held lock freed|suspicious RCU usage|lock held when returning to user space"
                    r"|Nested lock was not taken|\S+ still has locks held|bad contention)"
                    r"|BUG: (MAX_LOCKDEP|held lock freed|key [0-9a-f]+ has not been registered"
                    r"|looking up invalid subclass)|INFO: trying to register non-static key"),
        ("debugobjects", r"ODEBUG: "),
        ("bug", r"kernel BUG at|BUG: (?!soft lockup|workqueue lockup)"),
        ("softlockup", r"BUG: soft lockup|watchdog: BUG: soft lockup"),
        ("hardlockup", r"Watchdog detected hard LOCKUP|NMI watchdog: .*hard LOCKUP"),
        ("hung_task", r"INFO: task .* blocked for more than \d+ seconds"),
        ("rcu_stall",
         r"rcu: INFO: rcu_(sched|preempt) (self-)?detected (stall|expedited stall)|rcu_.* detected stalls"),
        ("list_corruption", r"list_(add|del) corruption"),
        ("slab_corruption", r"=+\s*BUG [\w-]+ \(|Redzone overwritten|Poison overwritten|Object padding overwritten"),
        ("refcount", r"refcount_t: (underflow|overflow|saturated|addition on 0|decrement hit 0)"),
        ("oops", r"Oops: |Unable to handle kernel"),
        ("warning", r"WARNING: CPU: \d+ PID: \d+ at "),
        ("ubsan", r"UBSAN: "),
        ("connector_leak", r"Waiting for cqueue to become free"),
    )
)

CONTEXT_LINES = 60
FOLLOW_ON_LINES = 3
_END = re.compile(r"---\[ end trace|---\[ end Kernel panic")
_FRAME = re.compile(r"^\s*(?:\? )?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
_RIP = re.compile(r"RIP: \d+:([A-Za-z_][\w.]*)\+0x")
FINGERPRINT_FRAMES = 5


@dataclass
class KernelReport:
    """One problem report found on the console."""

    kind: str
    title: str
    line: int
    frames: list[str] = field(default_factory=list)
    excerpt: str = ""

    @property
    def fingerprint(self) -> str:
        basis = "|".join([self.kind, *self.frames[:FINGERPRINT_FRAMES]] or [self.kind, self.title])
        return f"{self.kind}:{hashlib.sha1(basis.encode()).hexdigest()[:12]}"

    def to_dict(self) -> dict:
        return asdict(self) | {"fingerprint": self.fingerprint}


def _strip(line: str) -> str:
    return _TIMESTAMP.sub("", line.rstrip("\r\n"))


def _classify(line: str) -> str | None:
    for kind, pattern in PATTERNS:
        if pattern.search(line):
            return kind
    return None


def _frames(lines: list[str]) -> list[str]:
    frames: list[str] = []
    for line in lines:
        if (rip := _RIP.search(line)) and not frames:
            frames.append(rip.group(1))
            continue
        match = _FRAME.match(line)
        if match and not line.lstrip().startswith("?"):
            name = match.group(1)
            if name not in frames:
                frames.append(name)
    return frames


def scan_console(text: str) -> list[KernelReport]:
    """All problem reports in ``text``, each with its excerpt and frames."""
    lines = [_strip(line) for line in text.splitlines()]
    reports: list[KernelReport] = []
    i = 0
    while i < len(lines):
        kind = _classify(lines[i])
        if kind is None:
            i += 1
            continue
        start = i
        for back in range(max(0, i - 3), i):
            if "cut here" in lines[back]:
                start = back
                break
        end = min(len(lines), i + CONTEXT_LINES)
        for j in range(i + 1, end):
            if _END.search(lines[j]):
                end = j + 1
                break
            # A problem line a few lines in belongs to this report (list corruption
            # is followed by its BUG, a refcount message by its WARNING); later, it
            # starts the next report.
            if j - i > FOLLOW_ON_LINES and _classify(lines[j]) is not None:
                end = j
                break
        body = lines[start:end]
        reports.append(KernelReport(kind=kind, title=lines[i].strip(), line=i + 1, frames=_frames(body[1:]),
                                    excerpt="\n".join(body)))
        i = end
    return reports
