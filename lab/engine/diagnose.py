"""From a guest's console to its kernel reports, each decoded to source lines.

One helper for every path that records kernel reports (a finished scenario,
a scenario whose guest died), so all of them decode frames the same way:
with the unstripped copies of the modules the guest loaded and, when the
host has it, the guest kernel's vmlinux with debug info.
"""

from __future__ import annotations

import json

from lab.guest.console_scan import module_names, scan_console
from lab.guest.machine import Guest, GuestSpec
from lab.guest.symbolize import Symbolizer, find_vmlinux, symbolize_reports
from lab.image.module import debug_copy

__all__ = ["kernel_report_dicts", "symbolizer_for", "post_mortem"]


def symbolizer_for(spec: GuestSpec | None) -> Symbolizer:
    """A symbolizer for the modules (and kernel) of a guest; one that decodes nothing without a spec."""
    if spec is None:
        return Symbolizer(())
    return Symbolizer([debug_copy(m) for m in spec.modules], find_vmlinux(spec.image.kernel.release))


def kernel_report_dicts(console: str, spec: GuestSpec | None) -> tuple[dict, ...]:
    """Every report on ``console`` as a record entry (kind, title, frames, excerpt, fingerprint, decoded)."""
    reports = [r.to_dict() for r in scan_console(console, module_names(spec))]
    if not reports:
        return ()
    return tuple(symbolize_reports(reports, symbolizer_for(spec)))


def post_mortem(dead: Guest | None) -> dict:
    """What a guest that died left behind: ``{"vmcore": sidecar}`` when it panicked and a dump was written
    (or the reason none was), else nothing."""
    if dead is None:
        return {}
    cores = []
    for sidecar in sorted(dead.log_dir.glob(f"{dead.spec.name}.*.vmcore.json")):
        try:
            cores.append(json.loads(sidecar.read_text()))
        except (OSError, ValueError):
            continue
    return {"vmcore": cores[-1]} if cores else {}
