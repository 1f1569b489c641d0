"""``cnlab plugins``: every plugin with its kind, source and hooks."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from lab.config import config_from_args
from lab.plugin.manager import LabPluginManager, get_plugin_manager

__all__ = ["list_plugins", "format_plugins"]


def format_plugins(pm: LabPluginManager) -> str:
    """A table: name, kind, source (origin), hooks; then what the registries hold and each plugin's settings."""
    rows = []
    for name, info in pm.infos.items():
        source = info.source + (" (essential)" if info.essential else "")
        if info.blocked:
            rows.append((name, "-", f"{source}, blocked", info.origin, "-"))
            continue
        rows.append((name, pm.kind_of(name), source, info.origin, ", ".join(pm.hooks_of(name)) or "-"))
    head = ("NAME", "KIND", "SOURCE", "ORIGIN", "HOOKS")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
             for row in [head, *rows]]
    regs = pm.registries
    for reg, common in ((regs.emulators, ""), (regs.consumers, "every consumer also takes: groups (array of "
                                                               "integer 1..32, default: every emulator's group)"),
                        (regs.faults, "every fault also takes: at | every (seconds) | on (an event) [threshold "
                                      "(integer >= 1, default 1)], duration (seconds; default below)"),
                        (regs.events, "")):
        lines.append("")
        lines.append(f"{reg.kind}s (name = ... in a scenario's [[{reg.kind}s]] table)" if reg.kind != "event"
                     else "events (on = ... in a fault's table)")
        if common:
            lines.append(f"  ({common})")
        for spec in reg:
            head = f"  {spec.name:<16} {spec.plugin:<12} {spec.description}"
            if reg.kind == "fault":
                head += f" [target {spec.target}, duration {spec.duration:g} s]"
            lines.append(head)
            for s in getattr(spec, "settings", ()):
                rng = f", {s.range_text}" if s.range_text else ""
                default = list(s.default) if isinstance(s.default, tuple) else s.default
                lines.append(f"      {s.key} ({s.type_name}{rng}, default {default!r}): {s.description}")
    declared = [(n, s) for n, ss in pm.declared.items() for s in ss]
    if declared:
        lines.append("")
        lines.append("settings ([plugins.<name>] in the lab config):")
        for name, s in declared:
            rng = f", {s.range_text}" if s.range_text else ""
            lines.append(f"  {name}.{s.key} = {pm.settings[name][s.key]!r}  ({s.type_name}{rng}, default "
                         f"{s.default!r}) {s.description}")
    return "\n".join(lines)


def list_plugins(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """The ``cnlab plugins`` command: print the table, return the exit status (errors raise ``LabError``)."""
    pm = get_plugin_manager(config_from_args(args))
    try:
        print(format_plugins(pm), file=out or sys.stdout)
    finally:
        pm.unconfigure()
    return 0
