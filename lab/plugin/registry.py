"""Registries that ``lab_*_register`` hooks fill: emulators, consumers, faults, events.

A plugin gets the registry as a hook argument and calls ``add_*`` with a spec.
The manager hands every plugin its own view (``for_plugin``), so each spec
records the plugin that added it, and a name clash names both plugins.

Specs only *declare*: a scenario's table for an object is validated against
``spec.settings`` when the scenario is read (before any guest boots), and
``factory(params)`` builds the runnable object (``lab.plugin.objects``) when
the scenario is planned.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from lab.config import Setting, validate_settings
from lab.errors import ConfigError, PluginError

__all__ = [
    "EmulatorSpec",
    "ConsumerSpec",
    "FaultSpec",
    "EventSpec",
    "EmulatorRegistry",
    "ConsumerRegistry",
    "FaultRegistry",
    "EventRegistry",
    "Registries",
    "FAULT_TARGETS",
]

#: Where a fault acts.
FAULT_TARGETS = ("module", "guest", "consumer", "host-link", "qemu")


#: Keys of a scenario's object tables that the engine itself reads (a spec may not declare them).
RESERVED_KEYS = ("name", "label")
RESERVED_CONSUMER_KEYS = RESERVED_KEYS + ("groups",)
RESERVED_FAULT_KEYS = RESERVED_KEYS + ("at", "every", "on", "threshold", "duration")


def _check_name(kind: str, name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise PluginError(f"{kind} name {name!r}: use letters, digits, '-' and '_'")


def _check_settings(kind: str, name: str, settings: tuple[Setting, ...], reserved: tuple[str, ...]) -> None:
    for s in settings:
        if not isinstance(s, Setting):
            raise PluginError(f"{kind} {name!r}: setting {s!r} is not a lab.config.Setting")
        if s.key in reserved:
            raise PluginError(f"{kind} {name!r}: setting {s.key!r} is a key the engine reads itself "
                              f"({', '.join(reserved)})")


@dataclass(frozen=True)
class EmulatorSpec:
    """A kernel-subsystem emulator: a connector id, a group, and a traffic shape.

    :param name: unique emulator name (``proc-events``).
    :param description: one line.
    :param idx: connector idx of its messages (even for emulated sources; see connector.md §3).
    :param val: connector val.
    :param group: netlink group (1..32) consumers join.
    :param factory: ``factory(params) -> GeneratorProfile | LiveSource`` (``lab.plugin.objects``); the object
        the scenario engine drives.
    :param settings: keys accepted in a scenario's per-emulator table.
    :param real: a real kernel source (cn_proc) rather than the lab module's generators.
    :param plugin: the plugin that added it (filled by the registry).
    """

    name: str
    description: str
    idx: int
    val: int
    group: int
    factory: Callable[[Mapping[str, Any]], Any]
    settings: tuple[Setting, ...] = ()
    real: bool = False
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_name("emulator", self.name)
        if not 1 <= self.group <= 32:
            raise PluginError(f"emulator {self.name!r}: group {self.group} is not in 1..32")
        if not self.real and self.idx % 2:
            raise PluginError(f"emulator {self.name!r}: idx {self.idx:#x} is odd (odd groups are open to "
                              "non-root on 6.6+; use an even idx)")
        _check_settings("emulator", self.name, self.settings, RESERVED_KEYS)


@dataclass(frozen=True)
class ConsumerSpec:
    """A userspace consumer that runs in the guest and reports JSON.

    :param name: unique consumer name.
    :param description: one line.
    :param factory: ``factory(params) -> lab.plugin.objects.GuestProgram``.
    :param settings: keys accepted in a scenario's per-consumer table (besides ``groups``, which every
        consumer takes).
    :param plugin: the plugin that added it (filled by the registry).
    """

    name: str
    description: str
    factory: Callable[[Mapping[str, Any]], Any]
    settings: tuple[Setting, ...] = ()
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_name("consumer", self.name)
        _check_settings("consumer", self.name, self.settings, RESERVED_CONSUMER_KEYS)


@dataclass(frozen=True)
class FaultSpec:
    """A fault injector.

    :param name: unique fault name.
    :param description: one line.
    :param target: one of :data:`FAULT_TARGETS` (``host-link``: the scenario's guest sits on the lab's own
        link, a tap in a namespace the lab makes, and its load rides out SSH breaking).
    :param factory: ``factory(params) -> lab.plugin.objects.Fault`` (inject and restore actions).
    :param settings: keys accepted in a scenario's per-fault table (besides the trigger keys ``at``, ``every``,
        ``on``, ``threshold`` and ``duration``, which every fault takes).
    :param duration: default seconds between inject and restore (0: restore when the load ends).
    :param plugin: the plugin that added it (filled by the registry).
    """

    name: str
    description: str
    target: str
    factory: Callable[[Mapping[str, Any]], Any]
    settings: tuple[Setting, ...] = ()
    duration: float = 0.0
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_name("fault", self.name)
        if self.target not in FAULT_TARGETS:
            raise PluginError(f"fault {self.name!r}: target {self.target!r} is not one of {FAULT_TARGETS}")
        if self.duration < 0:
            raise PluginError(f"fault {self.name!r}: duration {self.duration} is negative")
        _check_settings("fault", self.name, self.settings, RESERVED_FAULT_KEYS)


@dataclass(frozen=True)
class EventSpec:
    """An event a fault can wait for (``on = NAME``): something the guest agent counts.

    :param name: unique event name.
    :param description: one line (what is counted).
    :param probe: how it is counted: :class:`lab.plugin.objects.AgentCounter` or
        :class:`lab.plugin.objects.FileCounter`.
    :param plugin: the plugin that added it (filled by the registry).
    """

    name: str
    description: str
    probe: Any
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_name("event", self.name)
        if not hasattr(self.probe, "to_json"):
            raise PluginError(f"event {self.name!r}: probe {self.probe!r} is not an AgentCounter or FileCounter")


S = TypeVar("S", EmulatorSpec, ConsumerSpec, FaultSpec, EventSpec)


class _Registry(Generic[S]):
    kind = "object"

    def __init__(self, _store: dict[str, S] | None = None, _owner: str = "") -> None:
        self._store: dict[str, S] = {} if _store is None else _store
        self.owner = _owner

    def for_plugin(self, plugin: str):
        """A view of this registry that stamps ``plugin`` on every spec added through it."""
        return type(self)(self._store, plugin)

    def _add(self, spec: S) -> S:
        spec = replace(spec, plugin=self.owner or spec.plugin)
        old = self._store.get(spec.name)
        if old is not None:
            raise PluginError(f"{self.kind} {spec.name!r} added by plugin {spec.plugin!r} "
                              f"is already registered by plugin {old.plugin!r}")
        self._check(spec)
        self._store[spec.name] = spec
        return spec

    def _check(self, spec: S) -> None:
        pass

    def get(self, name: str) -> S:
        """The spec registered as ``name``.

        :raises PluginError: no such name (the message suggests the closest one and lists the known ones).
        """
        try:
            return self._store[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self._store), n=1)
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise PluginError(f"no {self.kind} named {name!r} ({suggestion}known: "
                              f"{', '.join(sorted(self._store)) or '-'})") from None

    def validate(self, name: str, table: Mapping[str, Any], place: Callable[[str], str]) -> Mapping[str, Any]:
        """``table`` checked against the spec's settings, defaults filled in (read-only).

        :param place: ``place(key)`` says where the key was written, for messages.
        :raises ConfigError: unknown key (with a suggestion), wrong type, out of range.
        """
        spec = self.get(name)
        return validate_settings(spec.plugin, spec.settings, table, place=place,
                                 what=f"{self.kind} {name!r} (plugin {spec.plugin!r})")

    def build(self, name: str, params: Mapping[str, Any]) -> Any:
        """Call the spec's factory with validated ``params``; a factory error names the object and plugin.

        :raises PluginError: the factory raised.
        """
        spec = self.get(name)
        try:
            return spec.factory(params)
        except (PluginError, ConfigError):
            raise
        except Exception as exc:
            raise PluginError(f"{self.kind} {name!r} of plugin {spec.plugin!r}: its factory raised "
                              f"{type(exc).__name__}: {exc}") from exc

    def __iter__(self) -> Iterator[S]:
        return iter(sorted(self._store.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, name: object) -> bool:
        return name in self._store

    def names(self) -> list[str]:
        return sorted(self._store)


class EmulatorRegistry(_Registry[EmulatorSpec]):
    """Emulators by name; connector ids and groups must not clash."""

    kind = "emulator"

    def add_emulator(self, spec: EmulatorSpec) -> EmulatorSpec:
        """Register ``spec``; returns it with ``plugin`` filled in.

        :raises PluginError: name, connector id or group already taken.
        """
        return self._add(spec)

    def _check(self, spec: EmulatorSpec) -> None:
        for other in self._store.values():
            if (other.idx, other.val) == (spec.idx, spec.val):
                raise PluginError(f"emulator {spec.name!r} (plugin {spec.plugin!r}) uses connector id "
                                  f"{spec.idx:#x}:{spec.val:#x} of emulator {other.name!r} (plugin {other.plugin!r})")
            if other.group == spec.group:
                raise PluginError(f"emulator {spec.name!r} (plugin {spec.plugin!r}) uses group {spec.group} "
                                  f"of emulator {other.name!r} (plugin {other.plugin!r})")


class ConsumerRegistry(_Registry[ConsumerSpec]):
    """Consumers by name."""

    kind = "consumer"

    def add_consumer(self, spec: ConsumerSpec) -> ConsumerSpec:
        """Register ``spec``; returns it with ``plugin`` filled in.

        :raises PluginError: the name is taken.
        """
        return self._add(spec)


class FaultRegistry(_Registry[FaultSpec]):
    """Fault injectors by name."""

    kind = "fault"

    def add_fault(self, spec: FaultSpec) -> FaultSpec:
        """Register ``spec``; returns it with ``plugin`` filled in.

        :raises PluginError: the name is taken.
        """
        return self._add(spec)


class EventRegistry(_Registry[EventSpec]):
    """Events faults can wait for, by name."""

    kind = "event"

    def add_event(self, spec: EventSpec) -> EventSpec:
        """Register ``spec``; returns it with ``plugin`` filled in.

        :raises PluginError: the name is taken.
        """
        return self._add(spec)


@dataclass
class Registries:
    """The four registries, filled once per plugin manager."""

    emulators: EmulatorRegistry = field(default_factory=EmulatorRegistry)
    consumers: ConsumerRegistry = field(default_factory=ConsumerRegistry)
    faults: FaultRegistry = field(default_factory=FaultRegistry)
    events: EventRegistry = field(default_factory=EventRegistry)

    def by_kind(self, kind: str) -> _Registry:
        """The registry of ``emulator``, ``consumer``, ``fault`` or ``event``."""
        return {"emulator": self.emulators, "consumer": self.consumers, "fault": self.faults,
                "event": self.events}[kind]
