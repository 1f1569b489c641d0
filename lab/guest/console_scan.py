"""Finding kernel problems in a guest's console output.

Recognises oopses, BUG, WARNING, general protection faults, panics, soft and
hard lockups, hung tasks, RCU stalls, list and slab corruption and refcount
warnings, and what the debug kernel flavours add: KASAN, lockdep, sleeping in
atomic context, debug-objects (ODEBUG) and KCSAN data-race reports.  After a
match the report runs on for ``CONTEXT_LINES`` lines (or to the end-of-trace
marker), so the whole report is kept even when other output is interleaved.

A KCSAN kernel reports the data races of the whole kernel; only those with an
access in a lab module (a frame ``[cnlab]``, or one in the module area that
kallsyms no longer names) are the lab's business.  :func:`without_foreign_races`
cuts the others out of the text before any scan.  A report is fingerprinted by its kind plus its top
call-trace frames, so the same bug seen twice has the same fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

__all__ = ["KernelReport", "scan_console", "without_foreign_races", "module_names", "PATTERNS", "LAB_MODULES"]

#: The lab's own module; callers add the extra modules a guest carries.
LAB_MODULES = ("cnlab",)

_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")

#: (kind, pattern) in priority order: the first that matches a line names it.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(rx))
    for kind, rx in (
        ("panic", r"Kernel panic - not syncing"),
        ("gpf", r"general protection fault"),
        ("kasan", r"BUG: KASAN: "),
        ("kcsan", r"BUG: KCSAN: "),
        ("atomic_sleep", r"BUG: sleeping function called from invalid context|BUG: scheduling while atomic"),
        ("lockdep", r"WARNING: (possible (circular locking dependency|recursive locking|irq lock inversion)"
                    r"|inconsistent lock state|\w+-safe -> \w+-unsafe lock order|bad unlock balance"
                    r"|held lock freed|suspicious RCU usage|lock held when returning to user space"
                    r"|Nested lock was not taken|\S+ still has locks held|bad contention)"
                    r"|BUG: (MAX_LOCKDEP|held lock freed|key [0-9a-f]+ has not been registered"
                    r"|looking up invalid subclass)|INFO: trying to register non-static key"),
        ("debugobjects", r"ODEBUG: "),
        ("bug", r"kernel BUG at|BUG: (?!soft lockup|workqueue lockup|KCSAN: )"),
        ("softlockup", r"BUG: soft lockup|watchdog: BUG: soft lockup"),
        ("hardlockup", r"Watchdog detected hard LOCKUP|NMI watchdog: .*hard LOCKUP"),
        ("hung_task", r"INFO: task .* blocked for more than \d+ seconds"),
        ("rcu_stall",
         r"rcu: INFO: rcu_(sched|preempt) (self-)?detected (stall|expedited stall)|rcu_.* detected stalls"),
        ("list_corruption", r"list_(add|del) corruption"),
        ("slab_corruption", r"^BUG [\w-]+ \(|Redzone overwritten|Poison overwritten|Object padding overwritten"),
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
#: Reports printed between two rules of ``=`` (the one before the title opens it, the next one closes it).  Other
#: reports are not ended by a rule: one may open the next report (SLUB's), which then follows on.
RULED_KINDS = frozenset({"kasan", "kcsan", "ubsan"})
_RULE = re.compile(r"^={20,}$")
#: How far a KCSAN report may run to its closing rule: two stacks of up to 64 frames and their headers.
KCSAN_REPORT_LINES = 2 * 64 + 24
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


_KCSAN_TITLE = re.compile(r"BUG: KCSAN: ")
_MODULE_TAG = re.compile(r"\[(\w+)\]\s*$|\[(\w+)\] /")
#: A frame the kernel prints as a bare address in the module area: the code of a module unloaded since.
_UNNAMED_MODULE_FRAME = re.compile(r"^\s*0xffffffffc[0-9a-f]{7}\b")


def module_names(spec) -> tuple[str, ...]:
    """The modules a guest of ``spec`` carries from the lab, as the kernel names them: ``cnlab`` and each
    extra module (its file name without ``.ko``, dashes as underscores)."""
    extra = (path.name.split(".ko")[0].replace("-", "_") for path in getattr(spec, "modules", ()) or ())
    return tuple(dict.fromkeys([*LAB_MODULES, *extra]))


def without_foreign_races(text: str, modules: tuple[str, ...] = LAB_MODULES) -> str:
    """``text`` without the KCSAN reports that have no access in ``modules``: each report from the rule of
    ``=`` before its ``BUG: KCSAN:`` title to the rule that closes it (or ``KCSAN_REPORT_LINES`` lines on).  A
    line of another report printed in between (another CPU's panic, say) is kept."""
    if "BUG: KCSAN: " not in text:
        return text
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    i = 0
    while i < len(lines):
        if not _KCSAN_TITLE.search(lines[i]):
            kept.append(lines[i])
            i += 1
            continue
        start = len(kept) - 1 if kept and _RULE.match(_strip(kept[-1])) else len(kept)
        end = min(len(lines), i + KCSAN_REPORT_LINES)
        for j in range(i + 1, end):
            if _RULE.match(_strip(lines[j])):
                end = j + 1
                break
        block = lines[i:end]
        if _touches(block, modules):
            kept.extend(block)
        else:
            del kept[start:]
            kept.extend(line for line in block if _classify(_strip(line)) not in (None, "kcsan"))
        i = end
    return "".join(kept)


def _touches(block: list[str], modules: tuple[str, ...]) -> bool:
    for line in block:
        clean = _strip(line)
        if _UNNAMED_MODULE_FRAME.match(clean):
            return True
        for match in _MODULE_TAG.finditer(clean):
            if (match.group(1) or match.group(2)) in modules:
                return True
    return False


def scan_console(text: str, modules: tuple[str, ...] = LAB_MODULES) -> list[KernelReport]:
    """All problem reports in ``text``, each with its excerpt and frames; of KCSAN's data-race reports only
    those with an access in one of ``modules``."""
    lines = [_strip(line) for line in without_foreign_races(text, modules).splitlines()]
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
        end = min(len(lines), i + (KCSAN_REPORT_LINES if kind == "kcsan" else CONTEXT_LINES))
        for j in range(i + 1, end):
            if _END.search(lines[j]) or (kind in RULED_KINDS and _RULE.match(lines[j])):
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
