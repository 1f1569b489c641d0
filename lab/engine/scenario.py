"""Scenario files: what to load a guest with, what to break, what must hold.

A scenario is a TOML file.  Every emulator, consumer and fault it uses is an
object a plugin registered (``cnlab plugins`` lists them with their
parameters), named by ``name`` in its own table, with its parameters in the
same table.  Everything is checked when the file is read, before any guest
boots; an error names the file, the table and key as written, and what was
expected, with a suggestion where one fits.  Example::

    name = "proc-storm-cbus"
    duration = 3.0                 # seconds of load

    [guest]
    cpus = 2                       # 1..8
    memory = 1024                  # MB
    cmdline = ["slub_debug=FZPU"]

    [[emulators]]
    name = "generator"             # the lab module's raw generator: every load shape is a parameter
    label = "procfork"             # optional: unique name in this scenario (default: the name)
    path = "cbus"                  # direct | cbus
    context = "kthread"            # kthread | softirq | timer | hardirq
    rate = 2000                    # messages/s per CPU, 0 = as fast as possible
    payload = [40, 40]             # bytes, min and max
    group = 2

    [[emulators]]
    name = "proc-events"           # an emulator a plugin registered, with its own parameters
    count = 500

    [[consumers]]
    name = "checker"               # none listed: one checker on every emulator's group
    groups = [2]                   # every consumer takes groups (default: every emulator's group)

    [[faults]]
    name = "cpu-offline"
    at = 1.0                       # when: at = seconds, every = seconds, or on = an event
    duration = 0.5                 # seconds until it is undone (0: when the load ends)
    cpu = 1

    [[faults]]
    name = "drain-stall"
    on = "queue_depth"             # events: received, queue_depth, drop, gap, enobufs, and plugins' own
    threshold = 200                # fires once the event's count reaches this (default 1)

    [invariants]
    max_loss = 0
    p99_latency_us = 0             # 0: not checked (bounds are for KVM, x10 under TCG)
    min_rate = 0                   # delivered messages/s, 0: not checked
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, PluginError
from lab.guest.qemu_argv import MAX_CPUS
from lab.plugin.model import Invariants, ObjectUse, Scenario, Trigger
from lab.plugin.registry import Registries

__all__ = ["load_scenario", "scenario_from_dict", "MAX_DURATION", "OLD_FAULT_KINDS", "DEFAULT_DURATION",
           "DEFAULT_CPUS"]

MAX_DURATION = 600.0
#: A scenario's seconds of load and its guest's vCPUs when the file does not say.
DEFAULT_DURATION, DEFAULT_CPUS = 3.0, 2
MAX_FAULT_SECONDS = 600.0
#: The fault kinds of the old ``[[faults]] kind = ...`` form and the registered faults that replace them.
OLD_FAULT_KINDS = {"cpu_offline": "cpu-offline", "pause": "pause", "stall": "drain-stall",
                   "alloc_fail": "alloc-fail", "queue_limit": "queue-limit", "warn": "warn", "crash": "crash"}
_GENERATOR_KEYS = {"path", "context", "rate", "payload", "bundle", "cpus", "group", "count"}
_TOP_KEYS = ("name", "description", "duration", "guest", "emulators", "consumers", "faults", "invariants")


class _Table:
    """One TOML table with typed getters; every error names file and key as the user wrote them."""

    def __init__(self, source: str, where: str, value: Any) -> None:
        self.source, self.where = source, where
        if not isinstance(value, dict):
            raise self.error("", "a table", value)
        self.values = dict(value)
        self.read: set[str] = set()

    def place(self, key: str) -> str:
        path = f"{self.where}.{key}" if self.where and key else (key or self.where or "(top level)")
        return f"{self.source}: {path}"

    def error(self, key: str, expected: str, got: object = ..., hint: str = "") -> ConfigError:
        tail = "" if got is ... else f", got {got!r}"
        return ConfigError(f"{self.place(key)}: expected {expected}{tail}" + (f" ({hint})" if hint else ""))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., ok: Callable[[Any], bool] | None = None,
            expected: str = "") -> Any:
        self.read.add(key)
        if key not in self.values:
            if default is ...:
                raise self.error(key, (expected or _type_name(kind)) + " (required)")
            return default
        value = self.values[key]
        numeric = kind in (int, float, (int, float))
        if (isinstance(value, bool) and numeric) or not isinstance(value, kind) or (ok is not None and not ok(value)):
            raise self.error(key, expected or _type_name(kind), value)
        return value

    def rest(self) -> dict[str, Any]:
        """The keys not read yet (an object's own parameters)."""
        return {k: v for k, v in self.values.items() if k not in self.read}

    def done(self, allowed: tuple[str, ...] = ()) -> None:
        unknown = sorted(set(self.values) - self.read)
        if unknown:
            names = allowed or tuple(sorted(self.read))
            hint = difflib.get_close_matches(unknown[0], names, n=1)
            raise ConfigError(f"{self.place(unknown[0])}: unknown key ("
                              + (f"did you mean {hint[0]!r}? " if hint else "")
                              + f"allowed: {', '.join(names)})")


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "an array",
             dict: "a table"}
    if isinstance(kind, tuple):
        return "a number" if set(kind) == {int, float} else " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _label_ok(label: str) -> bool:
    return bool(label) and all(c.isalnum() or c in "-_" for c in label)


class _Reader:
    """Reads one scenario file's tables into a :class:`Scenario` against the registries."""

    def __init__(self, source: str, registries: Registries) -> None:
        self.source = source
        self.registries = registries
        self.labels: dict[str, str] = {}

    def object_table(self, kind: str, index: int, value: Any) -> tuple[_Table, str, str]:
        table = _Table(self.source, f"{kind}s[{index}]", value)
        if kind == "fault" and "kind" in table.values and "name" not in table.values:
            old = table.values["kind"]
            new = OLD_FAULT_KINDS.get(old) if isinstance(old, str) else None
            raise ConfigError(f"{table.place('kind')}: faults are named with name = \"<registered fault>\" "
                              + (f"(kind = {old!r} is now name = {new!r}; " if new else "(")
                              + "see cnlab plugins for each fault's parameters)")
        name = table.get("name", str, ..., expected="a registered " + kind + " name")
        registry = self.registries.by_kind(kind)
        if name not in registry:
            hint = ""
            if kind == "emulator" and _GENERATOR_KEYS & set(table.values):
                hint = (f"; the lab module's raw generator is name = \"generator\", with label = {name!r} "
                        "to keep your name for it")
            try:
                registry.get(name)
            except PluginError as exc:
                raise ConfigError(f"{table.place('name')}: {exc}{hint}") from None
        label = table.get("label", str, "", lambda v: _label_ok(v), "a label of letters, digits, '-' and '_'")
        if not label:
            label = name
            n = 2
            while label in self.labels:
                label = f"{name}-{n}"
                n += 1
        elif label in self.labels:
            raise table.error("label", "a label used once in the scenario", label,
                              f"{self.labels[label]} has it already")
        self.labels[label] = table.where
        return table, name, label

    def params(self, kind: str, name: str, table: _Table) -> dict[str, Any]:
        registry = self.registries.by_kind(kind)
        return dict(registry.validate(name, table.rest(), place=table.place))  # a dict: scenarios go to workers

    def emulator(self, index: int, value: Any) -> ObjectUse:
        table, name, label = self.object_table("emulator", index, value)
        params = self.params("emulator", name, table)
        spec = self.registries.emulators.get(name)
        return ObjectUse("emulator", name, label, spec.plugin, params, table.where)

    def consumer(self, index: int, value: Any) -> ObjectUse:
        table, name, label = self.object_table("consumer", index, value)
        groups = table.get("groups", list, [], lambda v: all(isinstance(g, int) and not isinstance(g, bool)
                                                              and 1 <= g <= 32 for g in v),
                           "an array of connector groups from 1 to 32")
        params = self.params("consumer", name, table)
        spec = self.registries.consumers.get(name)
        return ObjectUse("consumer", name, label, spec.plugin, params, table.where, groups=tuple(groups))

    def fault(self, index: int, value: Any, duration: float) -> ObjectUse:
        table, name, label = self.object_table("fault", index, value)
        spec = self.registries.faults.get(name)
        number = (int, float)
        at = table.get("at", number, None, lambda v: 0 <= v <= duration,
                       f"seconds from 0 to the scenario's duration ({duration:g})")
        every = table.get("every", number, None, lambda v: 0.05 <= v <= duration,
                          f"seconds from 0.05 to the scenario's duration ({duration:g})")
        on = table.get("on", str, None, expected="an event name")
        threshold = table.get("threshold", int, 1, lambda v: v >= 1, "a count >= 1")
        hold = table.get("duration", number, spec.duration, lambda v: 0 <= v <= MAX_FAULT_SECONDS,
                         f"seconds from 0 to {MAX_FAULT_SECONDS:g} (0: undone when the load ends)")
        given = [k for k in ("at", "every", "on") if k in table.values]
        if len(given) != 1:
            raise table.error(given[1] if len(given) > 1 else "at",
                              "exactly one of 'at' (seconds), 'every' (seconds) or 'on' (an event)",
                              hint=f"this table has {', '.join(given) or 'none'}")
        if "threshold" in table.values and on is None:
            raise table.error("threshold", "a threshold only with on = EVENT")
        if on is not None and on not in self.registries.events:
            try:
                self.registries.events.get(on)
            except PluginError as exc:
                raise ConfigError(f"{table.place('on')}: {exc}") from None
        params = self.params("fault", name, table)
        trigger = Trigger(at=None if at is None else float(at), every=None if every is None else float(every),
                          on=on, threshold=threshold)
        return ObjectUse("fault", name, label, spec.plugin, params, table.where, trigger=trigger,
                         duration=float(hold))


def _invariants(source: str, value: Any) -> Invariants:
    inv = _Table(source, "invariants", value)
    out = Invariants(
        no_kernel_problems=inv.get("no_kernel_problems", bool, True),
        no_new_taint=inv.get("no_new_taint", bool, True),
        accounting=inv.get("accounting", bool, True),
        max_loss=inv.get("max_loss", int, 0, lambda v: v >= 0, "an integer >= 0"),
        p99_latency_us=float(inv.get("p99_latency_us", (int, float), 0.0, lambda v: v >= 0, "microseconds >= 0")),
        min_rate=float(inv.get("min_rate", (int, float), 0.0, lambda v: v >= 0, "messages/s >= 0")),
        expect_problems=tuple(inv.get("expect_problems", list, [], lambda v: all(isinstance(x, str) for x in v),
                                      "an array of kernel report kinds (warning, oops, bug...)")),
    )
    inv.done()
    return out


def scenario_from_dict(data: dict, source: str, registries: Registries) -> Scenario:
    """Validate a parsed scenario against the registries (see the module docstring for the format).

    :raises ConfigError: the first problem, naming ``source``, the table and key, and what was expected.
    """
    top = _Table(source, "", data)
    if "plugins" in top.values:
        raise ConfigError(f"{source}: plugins: the [plugins] table is gone: give each object its own table, "
                          "[[emulators]], [[consumers]] or [[faults]], with name = \"<registered name>\" and its "
                          "parameters in the same table (docs/plugins.md)")
    name = top.get("name", str, Path(source).stem, _label_ok, "a name of letters, digits, '-' and '_'")
    duration = float(top.get("duration", (int, float), DEFAULT_DURATION, lambda v: 0 < v <= MAX_DURATION,
                             f"seconds, more than 0 and at most {MAX_DURATION:g}"))
    description = top.get("description", str, "")
    guest = _Table(source, "guest", top.get("guest", dict, {}))
    cpus = guest.get("cpus", int, DEFAULT_CPUS, lambda v: 1 <= v <= MAX_CPUS, f"an integer from 1 to {MAX_CPUS}")
    memory = guest.get("memory", int, 1024, lambda v: 256 <= v <= 16384, "MB from 256 to 16384")
    cmdline = tuple(guest.get("cmdline", list, [], lambda v: all(isinstance(x, str) for x in v),
                              "an array of strings"))
    guest.done()
    reader = _Reader(source, registries)
    lists = {key: top.get(key, list, [], lambda v: all(isinstance(x, dict) for x in v),
                          f"an array of tables ([[{key}]])") for key in ("emulators", "consumers", "faults")}
    emulators = tuple(reader.emulator(i, t) for i, t in enumerate(lists["emulators"]))
    consumers = tuple(reader.consumer(i, t) for i, t in enumerate(lists["consumers"]))
    faults = tuple(reader.fault(i, t, duration) for i, t in enumerate(lists["faults"]))
    invariants = _invariants(source, top.get("invariants", dict, {}))
    top.done(_TOP_KEYS)
    if not emulators:
        raise ConfigError(f"{source}: emulators: expected at least one [[emulators]] table (cnlab plugins lists "
                          "the emulators)")
    if not consumers:
        params = dict(registries.consumers.validate("checker", {}, place=lambda key: f"{source}: consumers.{key}"))
        consumers = (ObjectUse("consumer", "checker", "checker", registries.consumers.get("checker").plugin, params,
                               "consumers (default)"),)
    return Scenario(name=name, source=source, duration=duration, description=description, cpus=cpus,
                    memory=memory, cmdline=cmdline, emulators=emulators, consumers=consumers, faults=faults,
                    invariants=invariants)


def load_scenario(path: Path, registries: Registries) -> Scenario:
    """Read and validate one scenario file.

    :raises ConfigError: a missing or unreadable file, bad TOML, or the first problem in it.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such scenario file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the scenario: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return scenario_from_dict(data, str(path), registries)
