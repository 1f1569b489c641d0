"""From a validated scenario to the plan the guest agent runs (pure: no guest needed).

:func:`plan_scenario` builds every object through its registry's factory and
lays the result out as JSON for ``lab/guestside/agent.py``: generator configs
with module generator ids, live sources, consumer command lines, faults as
actions with their triggers, and the probes of the events those triggers wait
for.  It runs when a scenario is read, so a factory's error or an impossible
combination stops the run before any guest boots; ``cnlab check`` prints it.
"""

from __future__ import annotations

from typing import Any

from lab import kabi
from lab.errors import ConfigError, PluginError
from lab.plugin.model import GUEST_PLUGIN_DIR, ObjectUse, Scenario
from lab.plugin.objects import Fault, GeneratorProfile, GuestProgram, LiveSource
from lab.plugin.registry import Registries

__all__ = ["plan_scenario", "guest_network", "AUTO_IDX_BASE", "NS"]

#: Emulators that leave their connector idx to the engine get 0x20, 0x22, ... (even: connector.md section 3).
AUTO_IDX_BASE = 0x20
NS = 1_000_000_000


def _fail(scenario: Scenario, use: ObjectUse, message: str) -> ConfigError:
    return ConfigError(f"{scenario.source}: {use.where}: {use.kind} {use.name!r}: {message}")


def _build(registries: Registries, scenario: Scenario, use: ObjectUse) -> Any:
    try:
        return registries.by_kind(use.kind).build(use.name, use.params)
    except PluginError as exc:
        message = str(exc).removeprefix(f"{use.kind} {use.name!r}: ")
        raise _fail(scenario, use, message) from None


def guest_network(registries: Registries, scenario: Scenario) -> str:
    """``"tap"`` when a fault acts on the lab's own link (its guest sits on a tap the lab owns), else ``"user"``."""
    targets = {registries.faults.get(f.name).target for f in scenario.faults}
    return "tap" if "host-link" in targets else "user"


def _emulators(registries: Registries, scenario: Scenario) -> tuple[list, list, list, dict[str, int]]:
    generators: list[dict[str, Any]] = []
    live: list[dict[str, Any]] = []
    emulators: list[dict[str, Any]] = []
    groups: dict[str, int] = {}
    next_auto = AUTO_IDX_BASE
    for use in scenario.emulators:
        built = _build(registries, scenario, use)
        if isinstance(built, GeneratorProfile):
            idx = built.idx
            if idx == 0:
                idx, next_auto = next_auto, next_auto + 2
            first = len(generators)
            if first + len(built.generators) > kabi.CNLAB_MAX_GENS:
                raise _fail(scenario, use, f"the scenario needs more than {kabi.CNLAB_MAX_GENS} module generators")
            for offset, cfg in enumerate(built.generators):
                cfg = dict(cfg)
                if not cfg.get("count") and not cfg.get("duration_ns"):
                    cfg["duration_ns"] = int(scenario.duration * NS)
                mask = cfg.get("cpu_mask", 0)
                if mask and mask >> scenario.cpus:
                    raise _fail(scenario, use, f"CPU mask {mask:#x} names CPUs the {scenario.cpus}-vCPU guest "
                                               "does not have")
                generators.append(dict(cfg, gen_id=first + offset, idx=idx, val=built.val, group=built.group,
                                       cpu_mask=mask, label=use.label))
            emulators.append({"label": use.label, "name": use.name, "kind": "generators", "idx": idx,
                              "val": built.val, "group": built.group,
                              "gen_ids": list(range(first, first + len(built.generators)))})
        elif isinstance(built, LiveSource):
            live.append(built.to_json() | {"label": use.label})
            emulators.append({"label": use.label, "name": use.name, "kind": "live", "idx": built.idx,
                              "val": built.val, "group": built.group, "listen": built.listen})
        else:
            raise _fail(scenario, use, f"its factory returned {type(built).__name__}, not a GeneratorProfile or "
                                       "LiveSource (lab.plugin.objects)")
        groups[use.label] = built.group
    return generators, live, emulators, groups


def _consumers(registries: Registries, scenario: Scenario, all_groups: list[int], listen: bool) -> list[dict]:
    out = []
    for use in scenario.consumers:
        program = _build(registries, scenario, use)
        if not isinstance(program, GuestProgram):
            raise _fail(scenario, use, f"its factory returned {type(program).__name__}, not a GuestProgram")
        groups = list(use.groups) or all_groups
        argv = program.argv(GUEST_PLUGIN_DIR)
        if program.protocol == "checker":
            argv += ["--groups", ",".join(map(str, groups))]
        out.append({"label": use.label, "name": use.name, "argv": argv, "instances": program.instances,
                    "protocol": program.protocol, "groups": groups, "start": program.start,
                    "listen": listen and program.protocol == "checker"})
    return out


def _faults(registries: Registries, scenario: Scenario, network: str) -> tuple[list[dict], dict[str, dict]]:
    faults = []
    events: dict[str, dict] = {}
    for use in scenario.faults:
        fault = _build(registries, scenario, use)
        if not isinstance(fault, Fault):
            raise _fail(scenario, use, f"its factory returned {type(fault).__name__}, not a lab.plugin.objects.Fault")
        trigger = use.trigger
        assert trigger is not None
        if fault.side == "host" and network == "tap":
            raise _fail(scenario, use, "it acts from the host, which cannot hear the guest while a fault on the "
                                       "lab's own link breaks it; use it in a scenario without link faults")
        for action in fault.inject + fault.restore:
            if action.kind == "cpu" and action.args[0] >= scenario.cpus:
                raise _fail(scenario, use, f"CPU {action.args[0]} does not exist in the {scenario.cpus}-vCPU guest "
                                           f"(CPUs 1..{scenario.cpus - 1} can go offline)")
        if fault.side == "host" and fault.restore and use.duration <= 0:
            raise ConfigError(f"{scenario.source}: {use.where}.duration: expected more than 0 s for a host-side "
                              "fault that is undone (a paused guest cannot end its load)")
        if trigger.every is not None and fault.restore and not 0 < use.duration < trigger.every:
            raise ConfigError(f"{scenario.source}: {use.where}.duration: expected seconds more than 0 and less than "
                              f"every ({trigger.every:g}) for a periodic fault that is undone, got {use.duration:g}")
        if trigger.on is not None:
            events[trigger.on] = registries.events.get(trigger.on).probe.to_json()
        spec = registries.faults.get(use.name)
        faults.append({"label": use.label, "name": use.name, "target": spec.target, **fault.to_json(),
                       "trigger": {"at": trigger.at, "every": trigger.every, "on": trigger.on,
                                   "threshold": trigger.threshold, "text": trigger.describe()},
                       "duration": use.duration})
    return faults, events


def plan_scenario(scenario: Scenario, registries: Registries) -> dict[str, Any]:
    """The guest agent's plan for ``scenario`` (runtime fields, such as timeouts, are added when it runs).

    :raises ConfigError: a factory failed or returned the wrong kind of object, too many generators, a CPU the
        guest lacks, a host-side fault beside a link fault, a periodic fault undone after its next firing.
    """
    generators, live, emulators, groups = _emulators(registries, scenario)
    all_groups = sorted(set(groups.values()))
    listen = any(e.get("listen") for e in emulators)
    network = guest_network(registries, scenario)
    faults, events = _faults(registries, scenario, network)
    return {
        "scenario": scenario.name,
        "duration": scenario.duration,
        "folder": f"{GUEST_PLUGIN_DIR}/out/{scenario.name}",
        "network": network,
        "emulators": emulators,
        "generators": generators,
        "live": live,
        "consumers": _consumers(registries, scenario, all_groups, listen),
        "faults": faults,
        "events": events,
        "setup": [],  # plugins' steps (lab.plugin.agent_step), appended in lab_scenario_start
        "teardown": [],
    }
