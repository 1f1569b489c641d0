"""Registries that ``lab_*_register`` hooks fill: emulators, consumers, faults.

A plugin gets the registry as a hook argument and calls ``add_*`` with a spec.
The manager hands every plugin its own view (``for_plugin``), so each spec
records the plugin that added it, and a name clash names both plugins.

Specs only *declare*: ``factory(settings)`` builds the runnable object when a
scenario asks for it, with ``settings`` validated against ``spec.settings``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from lab.config import Setting, validate_settings
from lab.errors import PluginError

__all__ = [
    "EmulatorSpec",
    "ConsumerSpec",
    "FaultSpec",
    "EmulatorRegistry",
    "ConsumerRegistry",
    "FaultRegistry",
    "FAULT_TARGETS",
]

#: Where a fault acts.
FAULT_TARGETS = ("module", "guest", "consumer", "host-link", "qemu")


def _check_name(kind: str, name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise PluginError(f"{kind} name {name!r}: use letters, digits, '-' and '_'")


@dataclass(frozen=True)
class EmulatorSpec:
    """A kernel-subsystem emulator: a connector id, a group, and a traffic shape.

    :param name: unique emulator name (``proc-events``).
    :param description: one line.
    :param idx: connector idx of its messages (even for emulated sources; see connector.md §3).
    :param val: connector val.
    :param group: netlink group (1..32) consumers join.
    :param factory: ``factory(settings) -> emulator``; the object the scenario engine drives.
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


@dataclass(frozen=True)
class ConsumerSpec:
    """A userspace consumer that runs in the guest and reports JSON.

    :param name: unique consumer name.
    :param description: one line.
    :param factory: ``factory(settings) -> consumer`` (e.g. a guest program and its arguments).
    :param settings: keys accepted in a scenario's per-consumer table.
    :param plugin: the plugin that added it (filled by the registry).
    """

    name: str
    description: str
    factory: Callable[[Mapping[str, Any]], Any]
    settings: tuple[Setting, ...] = ()
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_name("consumer", self.name)


@dataclass(frozen=True)
class FaultSpec:
    """A fault injector.

    :param name: unique fault name.
    :param description: one line.
    :param target: one of :data:`FAULT_TARGETS`.
    :param factory: ``factory(settings) -> fault`` with ``inject(ctx)`` and ``restore(ctx)``.
    :param settings: keys accepted in a scenario's per-fault table.
    :param plugin: the plugin that added it (filled by the registry).
    """

    name: str
    description: str
    target: str
    factory: Callable[[Mapping[str, Any]], Any]
    settings: tuple[Setting, ...] = ()
    plugin: str = ""

    def __post_init__(self) -> None:
        _check_name("fault", self.name)
        if self.target not in FAULT_TARGETS:
            raise PluginError(f"fault {self.name!r}: target {self.target!r} is not one of {FAULT_TARGETS}")


S = TypeVar("S", EmulatorSpec, ConsumerSpec, FaultSpec)


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
        try:
            return self._store[name]
        except KeyError:
            raise PluginError(f"no {self.kind} named {name!r} (known: {', '.join(sorted(self._store)) or '-'})") \
                from None

    def build(self, name: str, table: Mapping[str, Any] | None = None) -> Any:
        """Validate ``table`` against the spec's settings and call its factory."""
        spec = self.get(name)
        settings = validate_settings(f"{spec.plugin}.{self.kind}s.{name}", spec.settings, table or {})
        return spec.factory(settings)

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


@dataclass
class Registries:
    """The three registries, filled once per plugin manager."""

    emulators: EmulatorRegistry = field(default_factory=EmulatorRegistry)
    consumers: ConsumerRegistry = field(default_factory=ConsumerRegistry)
    faults: FaultRegistry = field(default_factory=FaultRegistry)
