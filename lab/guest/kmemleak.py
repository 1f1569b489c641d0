"""kmemleak on the debug kernel flavour: a scan after each scenario, the lab's own leaks as kernel reports.

The debug flavour (:mod:`lab.image.debug_kernel`) has ``CONFIG_DEBUG_KMEMLEAK``
without the background scan thread.  :func:`scan_leaks` asks the guest for a
scan and reads ``/sys/kernel/debug/kmemleak``; :func:`parse_kmemleak` turns
its records into report dicts shaped like
:class:`lab.guest.console_scan.KernelReport` (kind ``kmemleak``), kept only
when a frame of the allocation's backtrace lies in one of the lab's modules:
the rest of the kernel is not what a scenario tests, and kmemleak has known
false positives there.  The list is cleared after reading, so the next scan
shows only what is new.  On a kernel whose configuration has no kmemleak
(Debian's cloud kernel) nothing is sent; a kernel of unknown configuration
is asked, and one without the file answers with nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re

from lab.guest.console_scan import LAB_MODULES, module_names

__all__ = ["KMEMLEAK", "parse_kmemleak", "scan_leaks", "lab_modules", "MODULES"]

log = logging.getLogger(__name__)

KMEMLEAK = "/sys/kernel/debug/kmemleak"
#: Modules whose allocations count: the lab module (extra modules are named by the caller).
MODULES = LAB_MODULES
_HEADER = re.compile(r"^unreferenced object (0x[0-9a-f]+) \(size (\d+)\):")
_FRAME = re.compile(r"^\s*(?:\[<[0-9a-f]+>\]\s*)?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s+\[(\w+)\])?")
#: A frame kmemleak can no longer name (it resolves addresses when the file is read): in the module area, the
#: code of a module unloaded since (x86-64: MODULES_VADDR with the kernel's 1 GiB image space).
_UNNAMED = re.compile(r"^\s*\[<[0-9a-f]+>\]\s+0x([0-9a-f]+)\s*$")  # the bracket is a hashed %p
MODULE_AREA = 0xFFFFFFFFC0000000
UNLOADED = "(unloaded module)"

#: Scan twice (an object reported by one scan but referenced again by the next is not a leak), then read
#: and clear.  One shell command: one SSH round trip.
_SCAN = (f"[ -w {KMEMLEAK} ] || exit 3; echo scan > {KMEMLEAK} && echo scan > {KMEMLEAK} && cat {KMEMLEAK} "
         f"&& echo clear > {KMEMLEAK}")


def parse_kmemleak(text: str, modules: tuple[str, ...] = MODULES) -> list[dict]:
    """The records of ``text`` (the kmemleak file) whose backtrace has a frame in one of ``modules``, one report
    per allocation site (its ``count`` says how many objects)."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if _HEADER.match(line.strip()):
            records.append([line.strip()])
        elif records and line.strip():
            records[-1].append(line.rstrip())
    reports: dict[str, dict] = {}
    for lines in records:
        frames = []
        for line in lines[1:]:
            if m := _FRAME.match(line.strip()):
                frames.append((m.group(1), m.group(2)))
            elif (m := _UNNAMED.match(line)) and int(m.group(1), 16) >= MODULE_AREA:
                frames.append((f"0x{m.group(1)}", UNLOADED))
        # a frame in a lab module, or in a module unloaded since (the lab's own unload tests and faults)
        if not any(module in modules or module == UNLOADED for _, module in frames):
            continue
        names = [name for name, _ in frames]
        basis = "|".join(["kmemleak", *names[:5]])
        fingerprint = f"kmemleak:{hashlib.sha1(basis.encode()).hexdigest()[:12]}"
        if fingerprint in reports:  # one report per allocation site, however many objects it leaked
            reports[fingerprint]["count"] += 1
            continue
        reports[fingerprint] = {"kind": "kmemleak", "title": lines[0], "line": 0, "frames": names,
                                "excerpt": "\n".join(lines), "fingerprint": fingerprint, "count": 1}
    for report in reports.values():
        if report["count"] > 1:
            report["title"] += f" and {report['count'] - 1} more from the same place"
    return list(reports.values())


def lab_modules(guest) -> tuple[str, ...]:
    """The names of the modules the lab delivered to ``guest`` (cnlab.ko and any extra modules)."""
    return module_names(guest.spec)


def _kernel_lacks_kmemleak(guest) -> bool:
    """The guest's kernel configuration says it has no kmemleak (unknown: False, the guest is asked)."""
    try:
        return guest.spec.image.kernel.has_option("DEBUG_KMEMLEAK") is False
    except AttributeError:  # a guest without a known kernel
        return False


def scan_leaks(guest, modules: tuple[str, ...] | None = None, timeout: float = 120.0) -> list[dict]:
    """Scan the guest for leaks (when its kernel has kmemleak) and return those of ``modules`` (default: the
    lab's, :func:`lab_modules`), as report dicts."""
    if _kernel_lacks_kmemleak(guest):
        return []  # no command: the scan costs a TCG guest 0.2 s per scenario
    modules = lab_modules(guest) if modules is None else modules
    result = guest.run(["sh", "-c", _SCAN], timeout=timeout, check=False)
    if result.exit_status == 3:
        return []
    if result.exit_status != 0:  # kmemleak turned itself off (its object pool ran out): no verdict either way
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        log.warning("kmemleak scan failed (exit %d): %s", result.exit_status, detail[-1] if detail else "")
        return []
    return parse_kmemleak(result.stdout.decode(errors="replace"), modules)
