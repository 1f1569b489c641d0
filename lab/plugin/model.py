"""Value types passed to and returned from hooks.

The scenario engine builds :class:`ScenarioInfo` and :class:`PhaseInfo` and
collects :class:`ScenarioResult`; guest set-up hooks return :class:`GuestFile`.
Everything is frozen: hooks describe, the engine acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, TypeVar, cast

__all__ = ["GuestFile", "ScenarioInfo", "PhaseInfo", "ScenarioResult", "Stash", "StashKey", "GUEST_PLUGIN_DIR"]

#: Where files contributed by ``lab_guest_files_add`` land by default (a tmpfs in the guest).
GUEST_PLUGIN_DIR = "/run/cnlab/plugins"


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class GuestFile:
    """A host file to copy into every guest before the scenario starts.

    :param source: host path.
    :param dest: absolute guest path.
    :param mode: file mode in the guest.
    """

    source: Path
    dest: str
    mode: int = 0o644

    def __post_init__(self) -> None:
        if not self.dest.startswith("/"):
            raise ValueError(f"GuestFile dest must be absolute: {self.dest!r}")


@dataclass(frozen=True)
class ScenarioInfo:
    """What a scenario runs: names from the registries plus their settings.

    :param name: scenario name (unique within a run).
    :param emulators: emulator names (``EmulatorRegistry``) to run.
    :param consumers: consumer names (``ConsumerRegistry``) to run.
    :param faults: fault names (``FaultRegistry``) to inject.
    :param phases: ordered phase names, e.g. ``("setup", "load", "drain", "verify")``.
    :param cpus: vCPUs of the scenario's guest.
    :param params: per-object settings, keyed by emulator/consumer/fault name.
    """

    name: str
    emulators: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    faults: tuple[str, ...] = ()
    phases: tuple[str, ...] = ("setup", "load", "drain", "verify")
    cpus: int = 2
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=_empty)


@dataclass(frozen=True)
class PhaseInfo:
    """One phase of a running scenario.

    :param name: the phase name (one of ``ScenarioInfo.phases``).
    :param index: position in ``ScenarioInfo.phases``.
    :param duration_s: planned length of the phase (0: as long as its work takes).
    """

    name: str
    index: int
    duration_s: float = 0.0


@dataclass(frozen=True)
class ScenarioResult:
    """The outcome of one scenario.

    :param scenario: what ran.
    :param passed: no error and no problem.
    :param data: merged ``lab_result_collect`` contributions, keyed by contributing plugin.
    :param problems: ``lab_result_check`` findings (one line each).
    :param error: the error that ended the scenario early, as one line, or "".
    """

    scenario: ScenarioInfo
    passed: bool
    data: Mapping[str, Any] = field(default_factory=_empty)
    problems: tuple[str, ...] = ()
    error: str = ""


T = TypeVar("T")


class StashKey(Generic[T]):
    """A typed key for :class:`Stash`; create one per module at import time (``KEY = StashKey[int]()``)."""

    __slots__ = ()


class Stash:
    """Per-scenario plugin state, keyed by :class:`StashKey` objects (no string clashes between plugins)."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], object] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def get(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.get(key, default))

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.setdefault(key, default))

    def __delitem__(self, key: StashKey[T]) -> None:
        del self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)
