"""Scenario files: what to load a guest with, what to break, what must hold.

A scenario is a TOML file, validated up front; every error names the file,
the key and what was expected.  Example::

    name = "proc-storm-cbus"
    duration = 3.0                 # seconds of load

    [guest]
    cpus = 2                       # 1..8
    memory = 1024                  # MB
    cmdline = ["slub_debug=FZPU"]

    [[emulators]]
    name = "procfork"
    path = "cbus"                  # direct | cbus
    context = "kthread"            # kthread | softirq | timer | hardirq
    rate = 2000                    # messages/s per CPU, 0 = as fast as possible
    payload = [40, 40]             # bytes, min and max
    group = 2                      # connector group the consumers join

    [[consumers]]
    name = "checker"
    groups = [2]

    [[faults]]
    kind = "cpu_offline"           # see FAULT_KINDS
    at = 1.0                       # seconds after the load starts (or every = N, or on = EVENT)
    duration = 0.5
    cpu = 1

    [[faults]]
    kind = "stall"                 # in-guest kinds can wait for an event instead of a time:
    on = "queue_depth"             # see FAULT_EVENTS
    threshold = 200                # CBUS messages queued (or messages received, for "received")

    [invariants]
    max_loss = 0
    p99_latency_us = 0             # 0: not checked
    min_rate = 0                   # delivered messages/s, 0: not checked

Instead of (or without) ``[[emulators]]``, a scenario may name objects that
plugins registered (see ``cnlab plugins``); they run through the plugin
hooks (``lab.plugin.run_scenario``)::

    [plugins]
    emulators = ["proc-events", "irq"]
    consumers = ["checker"]
    faults = ["cpu-offline"]
    params = { "proc-events" = { count = 500 } }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.guest.qemu_argv import MAX_CPUS

__all__ = ["Scenario", "PluginObjects", "EmulatorSpec", "ConsumerSpec", "FaultSpec", "Invariants", "load_scenario",
           "FAULT_KINDS", "FAULT_EVENTS", "IN_GUEST_FAULTS", "scenario_from_dict"]

PATHS = ("direct", "cbus")
CONTEXTS = ("kthread", "softirq", "timer", "hardirq")
#: Faults the engine applies on the timeline.
FAULT_KINDS = ("cpu_offline", "pause", "stall", "alloc_fail", "queue_limit", "warn", "crash")
#: Faults the guest agent applies itself, on time or on an event, without an SSH round trip.
IN_GUEST_FAULTS = ("cpu_offline", "stall", "alloc_fail", "queue_limit", "warn")
#: Events an in-guest fault can wait for (``on``), watched by the guest agent during the load:
#: ``received`` (the consumers got ``threshold`` messages in all), ``queue_depth`` (CBUS holds
#: ``threshold`` queued messages), ``drop`` (the kernel counted a dropped message: CBUS or a
#: direct send), ``gap`` (a consumer saw its first lost message), ``enobufs`` (a consumer's socket
#: overflowed).  Consumer-side events come as late as the consumer lags; kernel-side ones do not.
FAULT_EVENTS = ("received", "queue_depth", "drop", "gap", "enobufs")
THRESHOLD_EVENTS = ("received", "queue_depth")
MAX_DURATION = 600.0


@dataclass(frozen=True)
class EmulatorSpec:
    """One traffic generator in the module (a kernel subsystem stand-in)."""

    name: str
    path: str = "cbus"
    context: str = "kthread"
    rate: int = 1000
    count: int = 0
    payload: tuple[int, int] = (40, 40)
    cpus: tuple[int, ...] = ()
    group: int = 2
    bundle: bool = False


@dataclass(frozen=True)
class ConsumerSpec:
    """One userspace listener in the guest."""

    name: str
    groups: tuple[int, ...] = (2,)
    rcvbuf: int = 8 << 20
    slow_us: int = 0


@dataclass(frozen=True)
class FaultSpec:
    """A fault applied at a time (``at``), periodically (``every``) or once on an event (``on``)."""

    kind: str
    at: float | None = None
    every: float | None = None
    duration: float = 0.5
    cpu: int = 1
    value: int = 0
    on: str | None = None
    threshold: int = 0


@dataclass(frozen=True)
class Invariants:
    """What must hold after the run."""

    no_kernel_problems: bool = True
    no_new_taint: bool = True
    accounting: bool = True
    max_loss: int = 0
    p99_latency_us: float = 0.0
    min_rate: float = 0.0
    expect_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginObjects:
    """Registered emulators, consumers and faults (by name) a scenario runs through the hooks."""

    emulators: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    """A validated scenario."""

    name: str
    source: str
    duration: float = 3.0
    description: str = ""
    cpus: int = 2
    memory: int = 1024
    cmdline: tuple[str, ...] = ()
    emulators: tuple[EmulatorSpec, ...] = ()
    consumers: tuple[ConsumerSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    invariants: Invariants = field(default_factory=Invariants)
    plugins: PluginObjects | None = None

    @property
    def shape_key(self) -> tuple:
        """Scenarios with the same key can share a guest."""
        return (self.cpus, self.memory, self.cmdline)


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, source: str, where: str, table: Any) -> None:
        self.source, self.where = source, where
        if not isinstance(table, dict):
            self.fail("", "a table")
        self.table = dict(table)
        self.used: set[str] = set()

    def fail(self, key: str, expected: str, got: object = None) -> None:
        place = f"{self.where}.{key}" if self.where and key else (key or self.where or "(top level)")
        tail = f", got {got!r}" if got is not None else ""
        raise ConfigError(f"{self.source}: {place}: expected {expected}{tail}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., check=None, expected: str = ""):
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                self.fail(key, f"{expected or _type_name(kind)} (required)")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind in (int, float, (int, float)):
            self.fail(key, expected or _type_name(kind), value)
        if not isinstance(value, kind):
            self.fail(key, expected or _type_name(kind), value)
        if check is not None and not check(value):
            self.fail(key, expected, value)
        return value

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(f"{self.source}: {self.where + '.' if self.where else ''}{unknown[0]}: unknown key "
                              f"(allowed: {', '.join(sorted(self.used))})")


def _type_name(kind) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    if isinstance(kind, tuple):
        return "a number" if set(kind) == {int, float} else " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _int_list(reader: _Reader, key: str, default: tuple, low: int, high: int) -> tuple[int, ...]:
    values = reader.get(key, list, list(default))
    if not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values):
        reader.fail(key, f"a list of integers from {low} to {high}", values)
    return tuple(values)


def _emulator(source: str, i: int, table: Any, cpus: int) -> EmulatorSpec:
    r = _Reader(source, f"emulators[{i}]", table)
    payload = _int_list(r, "payload", (40, 40), 0, 8192)
    if len(payload) != 2 or payload[0] > payload[1]:
        r.fail("payload", "[min, max] with min <= max", list(payload))
    spec = EmulatorSpec(
        name=r.get("name", str),
        path=r.get("path", str, "cbus", lambda v: v in PATHS, f"one of {', '.join(PATHS)}"),
        context=r.get("context", str, "kthread", lambda v: v in CONTEXTS, f"one of {', '.join(CONTEXTS)}"),
        rate=r.get("rate", int, 1000, lambda v: 0 <= v <= 10_000_000, "an integer from 0 to 10000000"),
        count=r.get("count", int, 0, lambda v: v >= 0, "an integer >= 0"),
        payload=(payload[0], payload[1]),
        cpus=_int_list(r, "cpus", (), 0, cpus - 1),
        group=r.get("group", int, 2, lambda v: 1 <= v <= 32, "a connector group from 1 to 32"),
        bundle=r.get("bundle", bool, False),
    )
    r.done()
    if spec.path == "direct" and spec.context == "hardirq":
        r.fail("context", "not hardirq with path = \"direct\" (a direct send is not hard-IRQ safe)", "hardirq")
    return spec


def _consumer(source: str, i: int, table: Any) -> ConsumerSpec:
    r = _Reader(source, f"consumers[{i}]", table)
    spec = ConsumerSpec(
        name=r.get("name", str),
        groups=_int_list(r, "groups", (2,), 1, 32),
        rcvbuf=r.get("rcvbuf", int, 8 << 20, lambda v: 4096 <= v <= 1 << 30, "bytes from 4096 to 1 GiB"),
        slow_us=r.get("slow_us", int, 0, lambda v: 0 <= v <= 1_000_000, "microseconds from 0 to 1000000"),
    )
    r.done()
    return spec


def _fault(source: str, i: int, table: Any, cpus: int, duration: float) -> FaultSpec:
    r = _Reader(source, f"faults[{i}]", table)
    number = (int, float)
    spec = FaultSpec(
        kind=r.get("kind", str, ..., lambda v: v in FAULT_KINDS, f"one of {', '.join(FAULT_KINDS)}"),
        at=r.get("at", number, None, lambda v: 0 <= v <= duration, f"seconds from 0 to the duration ({duration})"),
        every=r.get("every", number, None, lambda v: 0.1 <= v <= duration, "seconds from 0.1 to the duration"),
        duration=float(r.get("duration", number, 0.5, lambda v: 0 <= v <= 60, "seconds from 0 to 60")),
        cpu=r.get("cpu", int, 1, lambda v: 1 <= v < max(cpus, 2), f"a CPU from 1 to {cpus - 1} (CPU 0 stays)"),
        value=r.get("value", int, 0, lambda v: v >= 0, "an integer >= 0"),
        on=r.get("on", str, None, lambda v: v in FAULT_EVENTS, f"one of {', '.join(FAULT_EVENTS)}"),
        threshold=r.get("threshold", int, 0, lambda v: v >= 0, "an integer >= 0"),
    )
    r.done()
    if sum(x is not None for x in (spec.at, spec.every, spec.on)) != 1:
        r.fail("at", "exactly one of 'at', 'every' or 'on'")
    if spec.on is not None and spec.kind not in IN_GUEST_FAULTS:
        r.fail("on", f"a fault the guest applies itself ({', '.join(IN_GUEST_FAULTS)}) for kind {spec.kind!r}",
               spec.on)
    if spec.on in THRESHOLD_EVENTS and spec.threshold < 1:
        r.fail("threshold", f"a count >= 1 for on = {spec.on!r}", spec.threshold)
    if spec.kind == "cpu_offline" and cpus < 2:
        r.fail("kind", "a guest with 2 or more CPUs for cpu_offline", cpus)
    return spec


def scenario_from_dict(data: dict, source: str) -> Scenario:
    """Validate a parsed scenario table."""
    top = _Reader(source, "", data)
    name = top.get("name", str, Path(source).stem)
    duration = float(top.get("duration", (int, float), 3.0, lambda v: 0 < v <= MAX_DURATION,
                             f"seconds, more than 0 and at most {MAX_DURATION:.0f}"))
    description = top.get("description", str, "")
    guest = _Reader(source, "guest", top.get("guest", dict, {}))
    cpus = guest.get("cpus", int, 2, lambda v: 1 <= v <= MAX_CPUS, f"an integer from 1 to {MAX_CPUS}")
    memory = guest.get("memory", int, 1024, lambda v: 256 <= v <= 16384, "MB from 256 to 16384")
    cmdline = tuple(guest.get("cmdline", list, [], lambda v: all(isinstance(x, str) for x in v), "a list of strings"))
    guest.done()
    emulators = tuple(_emulator(source, i, t, cpus) for i, t in enumerate(top.get("emulators", list, [])))
    consumers = tuple(_consumer(source, i, t) for i, t in enumerate(top.get("consumers", list, [])))
    faults = tuple(_fault(source, i, t, cpus, duration) for i, t in enumerate(top.get("faults", list, [])))
    inv = _Reader(source, "invariants", top.get("invariants", dict, {}))
    invariants = Invariants(
        no_kernel_problems=inv.get("no_kernel_problems", bool, True),
        no_new_taint=inv.get("no_new_taint", bool, True),
        accounting=inv.get("accounting", bool, True),
        max_loss=inv.get("max_loss", int, 0, lambda v: v >= 0, "an integer >= 0"),
        p99_latency_us=float(inv.get("p99_latency_us", (int, float), 0.0, lambda v: v >= 0, "microseconds >= 0")),
        min_rate=float(inv.get("min_rate", (int, float), 0.0, lambda v: v >= 0, "messages/s >= 0")),
        expect_problems=tuple(inv.get("expect_problems", list, [], lambda v: all(isinstance(x, str) for x in v),
                                      "a list of problem kinds")),
    )
    inv.done()
    plugins = None
    if "plugins" in top.table:
        table = _Reader(source, "plugins", top.get("plugins", dict))
        names = {}
        for key in ("emulators", "consumers", "faults"):
            names[key] = tuple(table.get(key, list, [], lambda v: all(isinstance(x, str) for x in v),
                                         "a list of registered names"))
        params = table.get("params", dict, {}, lambda v: all(isinstance(x, dict) for x in v.values()),
                           "a table of per-object tables")
        table.done()
        if not names["emulators"]:
            table.fail("emulators", "at least one registered emulator name")
        plugins = PluginObjects(names["emulators"], names["consumers"], names["faults"], params)
    top.done()
    if plugins is not None:
        if emulators or faults:
            raise ConfigError(f"{source}: plugins: expected either [plugins] or [[emulators]]/[[faults]], not both")
        return Scenario(name=name, source=source, duration=duration, description=description, cpus=cpus,
                        memory=memory, cmdline=cmdline, invariants=invariants, plugins=plugins)
    if not emulators:
        raise ConfigError(f"{source}: emulators: expected at least one [[emulators]] table (or a [plugins] table)")
    names = [e.name for e in emulators]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: emulators: names must be unique, got {names}")
    if not consumers:
        consumers = (ConsumerSpec("checker", tuple(sorted({e.group for e in emulators}))),)
    return Scenario(name=name, source=source, duration=duration, description=description, cpus=cpus,
                    memory=memory, cmdline=cmdline, emulators=emulators, consumers=consumers, faults=faults,
                    invariants=invariants)


def load_scenario(path: Path) -> Scenario:
    """Read and validate one scenario file."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return scenario_from_dict(data, str(path))
