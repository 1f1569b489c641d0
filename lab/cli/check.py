"""``cnlab check SCENARIO...``: validate scenarios and print what each would run, without booting."""

from __future__ import annotations

from typing import Any, TextIO

from lab.engine.plan import plan_scenario
from lab.plugin.manager import LabPluginManager
from lab.plugin.model import ObjectUse, Scenario

__all__ = ["format_plan", "check_scenarios"]


def _params(pm: LabPluginManager, use: ObjectUse) -> str:
    spec = pm.registries.by_kind(use.kind).get(use.name)
    defaults = {s.key: (tuple(s.default) if s.type is list else s.default) for s in spec.settings}
    parts = []
    for key, value in use.params.items():
        shown = list(value) if isinstance(value, tuple) else value
        parts.append(f"{key}={shown!r}" + ("" if defaults.get(key) != value else " (default)"))
    return ", ".join(parts) or "no parameters"


def _timeline(scenario: Scenario) -> list[str]:
    events: list[tuple[float, str]] = [(0.0, "load starts"), (scenario.duration, "load ends (generators' own "
                                                                                  "counts may end it sooner)")]
    for use in scenario.faults:
        trigger = use.trigger
        assert trigger is not None
        if trigger.on:
            events.append((-1.0, f"{use.label} fires once {trigger.describe()[3:]}"
                           + (f", undone {use.duration:g} s later" if use.duration else "")))
            continue
        for t in trigger.times(scenario.duration):
            text = f"{use.label} fires" + (" (before the consumers start)" if t == 0 else "")
            events.append((t, text))
            if use.duration:
                events.append((t + use.duration, f"{use.label} undone"))
    lines = []
    for t, text in sorted(events, key=lambda e: e[0]):
        lines.append(("  on event  " if t < 0 else f"  {t:7.2f} s  ") + text)
    return lines


def format_plan(pm: LabPluginManager, scenario: Scenario, plan: dict[str, Any]) -> str:
    """The resolved scenario: guest, every object with its parameters, the generators, the fault timeline."""
    lines = [f"{scenario.name} ({scenario.source}): {scenario.duration:g} s of load"
             + (f": {scenario.description}" if scenario.description else ""),
             f"  guest: {scenario.cpus} vCPUs, {scenario.memory} MB, kernel arguments "
             f"{' '.join(scenario.cmdline) or '-'}, network {plan['network']}"]
    for kind, uses in (("emulators", scenario.emulators), ("consumers", scenario.consumers),
                       ("faults", scenario.faults)):
        lines.append(f"  {kind}:")
        for use in uses:
            extra = ""
            if use.kind == "consumer":
                consumer = next(c for c in plan["consumers"] if c["label"] == use.label)
                extra = f"; groups {consumer['groups']}"
            if use.kind == "fault":
                fault = next(f for f in plan["faults"] if f["label"] == use.label)
                extra = (f"; {fault['trigger']['text']}, held {use.duration:g} s"
                         f"; {fault['side']}-side: {fault['summary'] or fault['name']}")
            lines.append(f"    {use.label} = {use.name} (plugin {use.plugin}): {_params(pm, use)}{extra}")
    lines.append("  module generators:")
    for g in plan["generators"]:
        shape = (f"bursts of {g['burst']} messages, {g['rate']} a second per CPU" if g.get("flags", 0) & 2
                 else f"rate {g['rate']}/s per CPU")
        lines.append(f"    {g['gen_id']:2} {g['label']}: idx {g['idx']:#x} group {g['group']} {g['path']}/"
                     f"{g['context']} {shape}, {g['size_min']}..{g['size_max']} B, "
                     + (f"{g['count']} per CPU" if g.get("count") else f"{g['duration_ns'] / 1e9:g} s"))
    for src in plan["live"]:
        lines.append(f"    live {src['label']}: {' '.join(src['driver'])}")
    lines.append("  timeline:")
    lines += _timeline(scenario)
    inv = scenario.invariants
    lines.append(f"  must hold: max_loss {inv.max_loss}, p99 "
                 f"{f'{inv.p99_latency_us:g} us (x the accelerator slowdown)' if inv.p99_latency_us else 'not checked'}"
                 f", min_rate {inv.min_rate:g}/s, expected kernel reports {list(inv.expect_problems) or 'none'}")
    return "\n".join(lines)


def check_scenarios(pm: LabPluginManager, scenarios: list[Scenario], out: TextIO) -> int:
    """Print every scenario's plan (they are already validated); exit status 0."""
    for n, scenario in enumerate(scenarios):
        if n:
            print(file=out)
        print(format_plan(pm, scenario, plan_scenario(scenario, pm.registries)), file=out)
    print(f"\n{len(scenarios)} scenario(s) valid", file=out)
    return 0
