"""Value types passed to and returned from hooks.

The scenario engine resolves a scenario file into a :class:`Scenario` (every
object it uses, as an :class:`ObjectUse` with validated parameters), runs it
and writes one :class:`ScenarioResult` per scenario: the one typed result
record that the JSON lines, the summary, JUnit, HTML, the timings and the
hooks all read.  Everything is frozen: hooks describe, the engine acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

__all__ = [
    "GuestFile",
    "Trigger",
    "ObjectUse",
    "Invariants",
    "Scenario",
    "ScenarioInfo",
    "PhaseInfo",
    "Verdict",
    "ScenarioResult",
    "RESULT_SCHEMA",
    "RESULT_STATUSES",
    "Stash",
    "StashKey",
    "SETTINGS",
    "PLAN",
    "AGENT_REPORT",
    "AGENT_STEP_ACTIONS",
    "agent_step",
    "GUEST_PLUGIN_DIR",
]

#: Where files contributed by ``lab_guest_files_add`` land by default (a tmpfs in the guest).
GUEST_PLUGIN_DIR = "/run/cnlab/plugins"
#: Version of the :class:`ScenarioResult` JSON layout (records without ``schema`` are version 1).
RESULT_SCHEMA = 2
#: What a scenario can end as.
RESULT_STATUSES = ("passed", "failed", "error", "interrupted", "not run")


def _empty() -> dict[str, Any]:
    return {}  # plain dicts: scenarios and results cross process boundaries (pickle)


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
class Trigger:
    """When a fault fires: at a time, periodically, or once on an event.

    :param at: seconds after the load starts (0: before the consumers start).
    :param every: period in seconds, from ``every`` until the load ends.
    :param on: an event name (``cnlab plugins`` lists them: ``received``, ``queue_depth``, ``drop``, ``gap``,
        ``enobufs`` and events plugins declare); the fault fires once, when the event's count reaches
        ``threshold``.
    :param threshold: the count ``on`` waits for (1: the first occurrence).
    """

    at: float | None = None
    every: float | None = None
    on: str | None = None
    threshold: int = 1

    def describe(self) -> str:
        """``at 1.0 s``, ``every 0.5 s``, ``on queue_depth >= 200``."""
        if self.at is not None:
            return f"at {self.at:g} s"
        if self.every is not None:
            return f"every {self.every:g} s"
        return f"on {self.on}" + (f" >= {self.threshold}" if self.threshold != 1 else "")

    def times(self, duration: float) -> list[float]:
        """The planned times (seconds after the load starts) for ``at``/``every``; [] for ``on``."""
        if self.at is not None:
            return [self.at]
        out: list[float] = []
        if self.every is not None:
            t = self.every
            while t < duration - 1e-9 and len(out) < 10_000:
                out.append(round(t, 6))
                t += self.every
        return out


@dataclass(frozen=True)
class ObjectUse:
    """One emulator, consumer or fault a scenario uses, with its validated parameters.

    :param kind: ``emulator``, ``consumer`` or ``fault``.
    :param name: the registered name (``cnlab plugins`` lists them).
    :param label: unique within the scenario (defaults to the name; ``name-2``... for repeats).
    :param plugin: the plugin that registered it.
    :param params: the object's own parameters, every declared key with defaults filled in (read-only).
    :param where: the table as the scenario wrote it (``emulators[1]``), for messages.
    :param groups: consumers: the connector groups to join (empty: every emulator's group).
    :param trigger: faults: when it fires.
    :param duration: faults: seconds until it is undone (0: when the load ends).
    """

    kind: str
    name: str
    label: str
    plugin: str = ""
    params: Mapping[str, Any] = field(default_factory=_empty)
    where: str = ""
    groups: tuple[int, ...] = ()
    trigger: Trigger | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class Invariants:
    """What must hold after the run, beyond every plugin's own checks.

    :param no_kernel_problems: no oops, BUG, WARNING, lockup... on the console.
    :param no_new_taint: no taint bit beyond the out-of-tree module's.
    :param accounting: every consumer's loss reconciles exactly with what the kernel counted.
    :param max_loss: most messages any one consumer may lose.
    :param p99_latency_us: bound on every consumer's p99 latency, written for KVM (x the accelerator's
        slowdown under TCG); 0: not checked.
    :param min_rate: smallest delivered rate in messages/s (all consumers); 0: not checked.
    :param expect_problems: kernel report kinds that must appear (``warning`` for a deliberate WARN).
    """

    no_kernel_problems: bool = True
    no_new_taint: bool = True
    accounting: bool = True
    max_loss: int = 0
    p99_latency_us: float = 0.0
    min_rate: float = 0.0
    expect_problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: its guest, the objects it uses and what must hold.

    :param name: unique within a run.
    :param source: the file it came from (or ``<...>`` for generated ones).
    :param duration: seconds of load.
    :param cpus: vCPUs of its guest; :param memory: MB; :param cmdline: extra kernel arguments.
    :param emulators: the emulators, in file order; :param consumers: the consumers (a ``checker`` when the
        file names none); :param faults: the faults.
    :param invariants: the engine's checks.
    :param phases: the phases ``lab_phase_run`` is called for, in order.
    """

    name: str
    source: str
    duration: float = 3.0
    description: str = ""
    cpus: int = 2
    memory: int = 1024
    cmdline: tuple[str, ...] = ()
    emulators: tuple[ObjectUse, ...] = ()
    consumers: tuple[ObjectUse, ...] = ()
    faults: tuple[ObjectUse, ...] = ()
    invariants: Invariants = field(default_factory=Invariants)
    phases: tuple[str, ...] = ("setup", "load", "drain", "verify")

    @property
    def shape_key(self) -> tuple:
        """Scenarios with the same key can share a guest."""
        return (self.cpus, self.memory, self.cmdline)

    @property
    def objects(self) -> tuple[ObjectUse, ...]:
        """Every object, emulators first."""
        return self.emulators + self.consumers + self.faults

    def uses(self, name: str) -> bool:
        """True when the scenario uses a registered object of that name (any kind)."""
        return any(o.name == name for o in self.objects)

    def get(self, label: str) -> ObjectUse:
        """The object with that label.

        :raises KeyError: no such label.
        """
        for o in self.objects:
            if o.label == label:
                return o
        raise KeyError(label)


#: The name hooks used before the one scenario engine (same type).
ScenarioInfo = Scenario


@dataclass(frozen=True)
class PhaseInfo:
    """One phase of a running scenario.

    :param name: the phase name (one of ``Scenario.phases``).
    :param index: position in ``Scenario.phases``.
    :param duration_s: planned length of the phase (0: as long as its work takes).
    """

    name: str
    index: int
    duration_s: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """One check of a finished scenario.

    :param name: short name (``accounting``, ``loss``, ``my-plugin``...).
    :param ok: it held.
    :param detail: one line: the numbers compared.
    :param plugin: the plugin whose check it is ("" for the engine's own).
    """

    name: str
    ok: bool
    detail: str
    plugin: str = ""


@dataclass(frozen=True)
class ScenarioResult:
    """The one result record of a scenario, written once as a JSON line and read by every reporter.

    :param scenario: the scenario's name; :param source: its file.
    :param status: one of :data:`RESULT_STATUSES`.
    :param verdicts: every check, passed or failed.
    :param metrics: headline figures (generated, received, lost, rate, latency_us, ...).
    :param data: what plugins collected (``lab_result_collect``), by plugin name; ``agent`` is the guest
        agent's report.
    :param faults: each fault as it happened: label, trigger, due, start, end, ok, detail.
    :param series: per consumer, ``[[t, received, gaps, max_latency_us], ...]`` in 250 ms bins (older records: three).
    :param kernel_reports: oops/WARN/... found on the console since the scenario started.
    :param taint: ``{"before": n, "after": n}``.
    :param console: ``{"path", "offset", "tail"}``.
    :param duration: seconds the scenario took on its guest; :param boot_s: its guest's boot, if it booted one;
        :param wall_s: both.
    :param attempt: 1, or 2 for the retry on a fresh guest; :param retried: a second attempt ran;
        :param flaky: the retry passed after the first attempt's guest crashed.
    :param worker: the guest slot it ran in; :param guest: cpus, memory, cmdline, accel.
    :param env: kernel, accelerator, QEMU, module source hash of the run.
    :param error: why it ended early (status ``error``, ``interrupted``, ``not run``), one line.
    :param schema: :data:`RESULT_SCHEMA`.
    """

    scenario: str
    source: str = ""
    status: str = "passed"
    verdicts: tuple[Verdict, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=_empty)
    data: Mapping[str, Any] = field(default_factory=_empty)
    faults: tuple[Mapping[str, Any], ...] = ()
    series: Mapping[str, Any] = field(default_factory=_empty)
    kernel_reports: tuple[Mapping[str, Any], ...] = ()
    taint: Mapping[str, Any] = field(default_factory=_empty)
    console: Mapping[str, Any] = field(default_factory=_empty)
    duration: float = 0.0
    boot_s: float = 0.0
    wall_s: float = 0.0
    attempt: int = 1
    retried: bool = False
    flaky: bool = False
    worker: int = 0
    guest: Mapping[str, Any] = field(default_factory=_empty)
    env: Mapping[str, Any] = field(default_factory=_empty)
    error: str = ""
    schema: int = RESULT_SCHEMA

    def __post_init__(self) -> None:
        if self.status not in RESULT_STATUSES:
            raise ValueError(f"result status {self.status!r} is not one of {RESULT_STATUSES}")

    @property
    def passed(self) -> bool:
        """Finished and every check held."""
        return self.status == "passed"

    @property
    def problems(self) -> tuple[str, ...]:
        """The failed checks, one line each (``name: detail``)."""
        return tuple(f"{v.name}: {v.detail}" for v in self.verdicts if not v.ok)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the JSON-lines record)."""
        out = asdict(self)
        out["verdicts"] = [asdict(v) for v in self.verdicts]
        return _plain(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScenarioResult:
        """Read a record back, including schema 1 records (``invariants`` instead of ``verdicts``)."""
        data = dict(data)
        schema = int(data.get("schema", 1))
        if schema > RESULT_SCHEMA:
            raise ValueError(f"result record schema {schema} is newer than this cnlab ({RESULT_SCHEMA})")
        if schema == 1:
            data["verdicts"] = data.pop("invariants", [])
            env_keys = ("kernel", "kernel_package", "accel", "accel_reason", "qemu", "module_source_hash",
                        "host_cpus")
            data["env"] = {k: data.pop(k) for k in env_keys if k in data}
            data["schema"] = RESULT_SCHEMA
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["verdicts"] = tuple(Verdict(**{k: v[k] for k in ("name", "ok", "detail", "plugin") if k in v})
                                   for v in kwargs.get("verdicts", ()))
        for key in ("faults", "kernel_reports"):
            kwargs[key] = tuple(kwargs.get(key, ()))
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    """Mappings and tuples as JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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


#: Every plugin's validated settings by plugin name (for broadcast hooks such as ``lab_phase_run``).
SETTINGS = StashKey[Mapping[str, Mapping[str, Any]]]()
#: The guest agent's plan for the scenario (``lab.engine.plan``), filled before the phases run.
PLAN = StashKey[dict]()
#: The guest agent's report, once the load ran (also ``data["agent"]`` in the result hooks).
AGENT_REPORT = StashKey[dict]()

#: What a setup or teardown step may do in the guest agent (``lab/guestside/agent_faults.py``, ``Actions``):
#: ``write PATH TEXT``, ``mkdir PATH`` (present is fine), ``rmdir PATH`` (absent is fine), ``read PATH`` (the text
#: is in the outcome's ``value``), ``exec ARGV...`` (a program, waited for).
AGENT_STEP_ACTIONS = ("write", "mkdir", "rmdir", "read", "exec")


def agent_step(owner: str, *action: str | int, optional: bool = False) -> dict[str, Any]:
    """One step for the guest agent to run in its own process, for ``stash[PLAN]["setup"]`` (before the
    consumers start and the faults ``at = 0`` fire) or ``stash[PLAN]["teardown"]`` (after the consumers
    stopped); append it in ``lab_scenario_start``.  The agent reports every step's outcome, in order, as
    ``{"owner", "action" (the list given), "optional", "ok", "error"?, "value"?}`` under ``setup`` and
    ``teardown`` in its report (``stash[AGENT_REPORT]``, ``data["agent"]``); a failed step that is not
    ``optional`` is an agent error, which fails the scenario.  A step costs no program start in the guest,
    unlike a ``guest.run``.  Arguments are passed as text.

    :raises ValueError: an action the agent does not know, or one without its path.
    """
    if not action or action[0] not in AGENT_STEP_ACTIONS:
        raise ValueError(f"agent step of {owner}: unknown action {action[:1]!r}; known: "
                         f"{', '.join(AGENT_STEP_ACTIONS)}")
    if len(action) < 2:
        raise ValueError(f"agent step of {owner}: {action[0]} needs an argument")
    return {"owner": owner, "action": [str(a) for a in action],
            "optional": optional}
