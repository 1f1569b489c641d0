"""Shrinking a failing scenario to a smaller one that fails the same way (``cnlab shrink``).

A greedy, deterministic reduction in the spirit of delta debugging.  The
scenario is handled as the dict its TOML file parses to, so what is written
back is the user's own tables and keys, minus what was taken away.  Each pass
tries, in this order, and keeps every change whose candidate still fails the
same way:

1. ``drop-fault``: each ``[[faults]]`` table dropped, one at a time, in file order;
2. ``drop-consumer``: each ``[[consumers]]`` table dropped (with none left, the engine's default
   ``checker`` runs);
3. ``drop-emulator``: each ``[[emulators]]`` table dropped, while more than one is left (a scenario needs
   one);
4. ``lower``: every rate and count written in an object's table (the keys in :data:`LOAD_KEYS`, positive
   integers only: a generator's ``rate = 0`` means "as fast as possible" and is left alone);
5. ``cpus``: ``[guest] cpus``;
6. ``duration``: the scenario's ``duration``, down to :data:`MIN_DURATION` or the latest fault's
   ``at``/``every``, whichever is later.

Passes repeat until one keeps nothing.  A number is lowered by trying its floor
first (1; the duration's floor above), then by halving from the current value
while each half still fails the same way.

Every candidate is first validated as ``cnlab run`` would read it (an invalid
one is skipped and costs no run; the validator is a parameter), then run by a
*runner*: a function from the scenario dict to an :class:`Outcome`
(:func:`engine_runner` runs it on a guest through the one engine; unit tests
pass a fake).  A candidate seen before is not run again.

**Same failure.**  The :class:`Failure` of a result record is what the record
carries about how it failed: its ``status`` (``failed``, or ``error`` when the
guest died), the sorted names of its failed verdicts, and the sorted distinct
fingerprints of its kernel reports (``kind:sha1`` of the report's kind and top
five call-trace frames, :mod:`lab.guest.console_scan`; the same bug seen twice
has the same fingerprint).  Two failures are the same when all three are equal.
Error messages, figures and verdict details are not compared: they carry times,
counts and addresses that change from run to run.  A candidate is kept only
if its failure is the same as the original's: one that passes, fails
differently (another verdict, another or an extra kernel report) or did not
finish is dropped.

**Bounds.**  The original's run counts.  No run starts once ``max_runs`` runs
were made or ``budget`` seconds have passed since the shrink began (a run in
progress finishes, so the total can exceed the budget by one run).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.engine.plan import plan_scenario
from lab.engine.run import EXIT_INTERRUPTED, PluginOptions, run_scenarios
from lab.engine.scenario import DEFAULT_CPUS, DEFAULT_DURATION, load_scenario, scenario_from_dict
from lab.errors import LabError
from lab.guest.labsetup import Lab
from lab.plugin.model import ScenarioResult
from lab.plugin.registry import Registries

__all__ = ["Failure", "Outcome", "Step", "ShrinkReport", "Runner", "Validator", "shrink", "dump_scenario",
           "engine_runner", "engine_validator", "LOAD_KEYS", "MIN_DURATION", "DEFAULT_MAX_RUNS",
           "DEFAULT_BUDGET", "STEP_KINDS"]

#: Keys of an object's table that are rates or counts (lowered by step 4 where the file writes them).
LOAD_KEYS = ("rate", "count", "instances", "workers")
#: The shortest duration step 6 tries (seconds).
MIN_DURATION = 0.5
DEFAULT_MAX_RUNS = 40
DEFAULT_BUDGET = 1200.0
#: The kinds of step, in the order a pass tries them (``original`` is the first run).
STEP_KINDS = ("original", "drop-fault", "drop-consumer", "drop-emulator", "lower", "cpus", "duration")
#: Statuses that are failures (``passed``, ``interrupted`` and ``not run`` are not).
FAILING = ("failed", "error")


@dataclass(frozen=True)
class Failure:
    """How a scenario failed, as far as shrinking compares it (see the module docstring).

    :param status: ``failed`` or ``error``.
    :param verdicts: names of the failed verdicts, sorted.
    :param reports: distinct kernel report fingerprints, sorted.
    """

    status: str
    verdicts: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: ScenarioResult) -> Failure | None:
        """The failure of a result record; None when it passed or did not finish."""
        if record.status not in FAILING:
            return None
        return cls(record.status, tuple(sorted({v.name for v in record.verdicts if not v.ok})),
                   tuple(sorted({str(r.get("fingerprint") or r.get("kind") or "?") for r in record.kernel_reports})))

    def describe(self) -> str:
        """``failed; verdicts kernel_problems, taint; kernel warning:b5774984e41a``."""
        return "; ".join([self.status,
                          "verdicts " + ", ".join(self.verdicts) if self.verdicts else "no failed verdict",
                          "kernel " + ", ".join(self.reports) if self.reports else "no kernel report"])


@dataclass(frozen=True)
class Outcome:
    """What one run of a candidate ended as.

    :param status: the record's status (``passed``, ``failed``, ``error``, ``interrupted``, ``not run``).
    :param failure: its :class:`Failure`, None unless it failed.
    :param detail: one line for the person watching (the failed checks, or the error).
    """

    status: str
    failure: Failure | None = None
    detail: str = ""

    @classmethod
    def from_record(cls, record: ScenarioResult) -> Outcome:
        return cls(record.status, Failure.of(record), record.error or "; ".join(record.problems))


@dataclass(frozen=True)
class Step:
    """One candidate tried.

    :param number: 1 for the original's run, then in order.
    :param kind: one of :data:`STEP_KINDS`.
    :param what: what the candidate changed (``drop faults[1] cpu-offline``, ``emulators[0].rate 500 -> 1``).
    :param verdict: ``fail`` (the original), ``same`` (kept), ``pass``, ``other`` (failed differently),
        ``no result`` (did not finish), ``invalid`` (not run: the message is in ``detail``).
    :param seconds: the run's wall time (0 when not run).
    :param kept: the candidate became the current scenario.
    :param ran: a run was made for it (not for an invalid candidate or one seen before).
    :param detail: the outcome's failure or message.
    """

    number: int
    kind: str
    what: str
    verdict: str
    seconds: float = 0.0
    kept: bool = False
    ran: bool = True
    detail: str = ""


@dataclass
class ShrinkReport:
    """What a shrink did.

    :param original: the scenario dict it started from; :param result: the smallest one that still fails
        the same way (the original when nothing could go).
    :param failure: the original's failure; None when the original did not fail (nothing was shrunk).
    :param first: the original's outcome.
    :param steps: every candidate tried, in order; :param removed: what each kept step took away.
    :param runs: runs made (the original's included); :param seconds: wall time of the whole shrink.
    :param stopped: ``done`` (a pass kept nothing), ``max-runs`` or ``budget``.
    """

    original: dict
    result: dict
    failure: Failure | None
    first: Outcome
    steps: list[Step] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0
    stopped: str = "done"


#: A function from a scenario dict to how its run ended.
Runner = Callable[[dict], Outcome]
#: A function from a scenario dict to why it is not a valid scenario, or None.
Validator = Callable[[dict], "str | None"]


def _key(data: dict) -> str:
    return json.dumps(data, sort_keys=True)


class _Shrinker:
    """The bookkeeping of one shrink: runs, the clock, steps, candidates seen."""

    def __init__(self, runner: Runner, validate: Validator | None, max_runs: int, budget: float,
                 clock: Callable[[], float], on_step: Callable[[Step], None] | None,
                 on_kept: Callable[[dict], None] | None) -> None:
        self.runner, self.validate = runner, validate
        self.on_kept = on_kept or (lambda data: None)
        self.max_runs, self.budget, self.clock = max_runs, budget, clock
        self.on_step = on_step or (lambda step: None)
        self.started = clock()
        self.runs = 0
        self.steps: list[Step] = []
        self.removed: list[str] = []
        self.seen: dict[str, Outcome] = {}
        self.stopped = ""
        self.failure: Failure | None = None

    def _limit(self) -> str:
        if self.runs >= self.max_runs:
            return "max-runs"
        if self.clock() - self.started >= self.budget:
            return "budget"
        return ""

    def _run(self, data: dict) -> tuple[Outcome, float]:
        began = self.clock()
        outcome = self.runner(copy.deepcopy(data))
        self.runs += 1
        seconds = round(self.clock() - began, 3)
        self.seen[_key(data)] = outcome
        return outcome, seconds

    def _record(self, step: Step) -> None:
        self.steps.append(step)
        self.on_step(step)

    def original(self, data: dict) -> Outcome | None:
        """Run the original; its outcome (None: the limits allow no run at all)."""
        if why := self._limit():
            self.stopped = why
            return None
        outcome, seconds = self._run(data)
        self.failure = outcome.failure
        verdict = "fail" if outcome.failure else ("pass" if outcome.status == "passed" else "no result")
        self._record(Step(1, "original", "the scenario as given", verdict, seconds, False, True,
                          outcome.failure.describe() if outcome.failure else outcome.detail or outcome.status))
        return outcome

    def attempt(self, kind: str, what: str, candidate: dict) -> bool:
        """Whether ``candidate`` fails the same way as the original (then it is kept)."""
        if self.stopped:
            return False
        number = len(self.steps) + 1
        problem = self.validate(candidate) if self.validate is not None else None
        if problem:
            self._record(Step(number, kind, what, "invalid", 0.0, False, False, problem))
            return False
        cached = self.seen.get(_key(candidate))
        if cached is not None:
            outcome, seconds, ran = cached, 0.0, False
        else:
            if why := self._limit():
                self.stopped = why
                return False
            outcome, seconds = self._run(candidate)
            ran = True
        if outcome.failure is not None and outcome.failure == self.failure:
            verdict = "same"
        elif outcome.status == "passed":
            verdict = "pass"
        elif outcome.failure is not None:
            verdict = "other"
        else:
            verdict = "no result"
        detail = outcome.failure.describe() if outcome.failure else outcome.detail
        if not ran:
            detail = f"seen before, not run again: {detail}"
        self._record(Step(number, kind, what, verdict, seconds, verdict == "same", ran, detail))
        if verdict == "same":
            self.on_kept(copy.deepcopy(candidate))
        return verdict == "same"


# ----------------------------------------------------------------- the steps
def _object_name(table: dict) -> str:
    name = str(table.get("name", "?"))
    label = table.get("label")
    return f"{name} ({label})" if isinstance(label, str) and label != name else name


def _drop(s: _Shrinker, current: dict, key: str, kind: str, keep: int) -> tuple[dict, bool]:
    """Drop each table of ``current[key]`` in turn while more than ``keep`` are left."""
    changed = False
    index = 0
    while isinstance(current.get(key), list) and keep < len(current[key]) and index < len(current[key]):
        table = current[key][index]
        candidate = copy.deepcopy(current)
        del candidate[key][index]
        if not candidate[key]:
            del candidate[key]
        name = _object_name(table) if isinstance(table, dict) else "?"
        if s.attempt(kind, f"drop {key}[{index}] {name}", candidate):
            s.removed.append(f"{key[:-1]} {name}")
            current, changed = candidate, True
        else:
            index += 1
    return current, changed


def _lower(s: _Shrinker, current: dict, kind: str, what: str, get: Callable[[dict], Any],
           put: Callable[[dict, Any], None], floor: Any, half: Callable[[Any], Any]) -> tuple[dict, bool]:
    """Lower one number: its floor first, then halving from the current value while the half fails the same."""
    value = start = get(current)
    if value <= floor:
        return current, False

    def with_value(v: Any) -> dict:
        candidate = copy.deepcopy(current)
        put(candidate, v)
        return candidate

    candidate = with_value(floor)
    if s.attempt(kind, f"{what} {value:g} -> {floor:g}", candidate):
        s.removed.append(f"{what} {start:g} -> {floor:g}")
        return candidate, True
    changed = False
    while True:
        lower = half(value)
        if lower <= floor or lower >= value:
            break
        candidate = with_value(lower)
        if not s.attempt(kind, f"{what} {value:g} -> {lower:g}", candidate):
            break
        current, value, changed = candidate, lower, True
    if changed:
        s.removed.append(f"{what} {start:g} -> {value:g}")
    return current, changed


def _step_faults(s: _Shrinker, current: dict) -> tuple[dict, bool]:
    return _drop(s, current, "faults", "drop-fault", 0)


def _step_consumers(s: _Shrinker, current: dict) -> tuple[dict, bool]:
    return _drop(s, current, "consumers", "drop-consumer", 0)


def _step_emulators(s: _Shrinker, current: dict) -> tuple[dict, bool]:
    return _drop(s, current, "emulators", "drop-emulator", 1)


def _load_numbers(current: dict) -> Iterator[tuple[str, int, str]]:
    """(array, index, key) of every positive integer rate or count written in an object's table."""
    for array in ("emulators", "consumers", "faults"):
        tables = current.get(array)
        if not isinstance(tables, list):
            continue
        for index, table in enumerate(tables):
            if not isinstance(table, dict):
                continue
            for key in LOAD_KEYS:
                value = table.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                    yield array, index, key


def _step_load(s: _Shrinker, current: dict) -> tuple[dict, bool]:
    changed = False
    for array, index, key in list(_load_numbers(current)):
        def get(data: dict, array=array, index=index, key=key) -> int:
            return data[array][index][key]

        def put(data: dict, value: int, array=array, index=index, key=key) -> None:
            data[array][index][key] = value

        table = current[array][index]
        name = table.get("label") if isinstance(table.get("label"), str) else table.get("name", "?")
        current, kept = _lower(s, current, "lower", f"{array}[{index}] {name}: {key}", get, put, 1,
                               lambda v: v // 2)
        changed |= kept
    return current, changed


def _step_cpus(s: _Shrinker, current: dict) -> tuple[dict, bool]:
    guest = current.get("guest", {})
    cpus = guest.get("cpus", DEFAULT_CPUS) if isinstance(guest, dict) else None
    if not isinstance(cpus, int) or isinstance(cpus, bool):
        return current, False

    def put(data: dict, value: int) -> None:
        data.setdefault("guest", {})["cpus"] = value

    return _lower(s, current, "cpus", "guest.cpus", lambda d: d.get("guest", {}).get("cpus", DEFAULT_CPUS), put,
                  1, lambda v: v // 2)


def duration_floor(data: dict) -> float:
    """The shortest duration the duration step tries: :data:`MIN_DURATION`, or the latest fault's ``at`` or
    ``every`` if later (a fault must fall within the load)."""
    times = [MIN_DURATION]
    for table in data.get("faults", ()) if isinstance(data.get("faults"), list) else ():
        for key in ("at", "every"):
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, int | float) and not isinstance(value, bool):
                times.append(float(value))
    return max(times)


def _step_duration(s: _Shrinker, current: dict) -> tuple[dict, bool]:
    duration = current.get("duration", DEFAULT_DURATION)
    if not isinstance(duration, int | float) or isinstance(duration, bool):
        return current, False

    def put(data: dict, value: float) -> None:
        data["duration"] = float(value)

    return _lower(s, current, "duration", "duration", lambda d: float(d.get("duration", DEFAULT_DURATION)), put,
                  duration_floor(current), lambda v: round(v / 2, 2))


_STEPS = (_step_faults, _step_consumers, _step_emulators, _step_load, _step_cpus, _step_duration)


def shrink(data: dict, runner: Runner, *, validate: Validator | None = None, max_runs: int = DEFAULT_MAX_RUNS,
           budget: float = DEFAULT_BUDGET, clock: Callable[[], float] = time.monotonic,
           on_step: Callable[[Step], None] | None = None,
           on_kept: Callable[[dict], None] | None = None) -> ShrinkReport:
    """Reduce ``data`` (a parsed scenario) to a smaller one that fails the same way (the module docstring
    says how).

    :param runner: runs a scenario dict, returns its :class:`Outcome`.
    :param validate: why a candidate is not a valid scenario, or None (default: every candidate is valid).
    :param max_runs: most runs, the original's included; :param budget: seconds after which no run starts.
    :param clock: monotonic seconds (a fake one in tests).
    :param on_step: sees every step as it is decided.
    :param on_kept: sees every kept candidate, the new smallest scenario (a front end saves it at once).
    :returns: the report; its ``failure`` is None when the original did not fail (nothing was shrunk).
    """
    s = _Shrinker(runner, validate, max_runs, budget, clock, on_step, on_kept)
    original = copy.deepcopy(data)
    first = s.original(original)
    if first is None:
        return ShrinkReport(original, original, None, Outcome("not run", None, "no run allowed"), s.steps,
                            runs=0, seconds=0.0, stopped=s.stopped)
    current = copy.deepcopy(original)
    if first.failure is not None:
        while not s.stopped:
            changed = False
            for step in _STEPS:
                current, kept = step(s, current)
                changed |= kept
                if s.stopped:
                    break
            if not changed:
                break
    return ShrinkReport(original, current, first.failure, first, s.steps, s.removed, s.runs,
                        round(clock() - s.started, 3), s.stopped or "done")


# ------------------------------------------------------------------ TOML out
def _toml_key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON's escapes (\" \\ \n \t \uXXXX) are TOML's; TOML also wants DEL escaped
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} as TOML: {value!r}")


def _table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_scenario(data: dict, header: str = "") -> str:
    """``data`` as a TOML scenario file: top-level keys, then tables (``[guest]``), then arrays of tables
    (``[[emulators]]``), each in the dict's order; ``header`` as comment lines first.

    :raises TypeError: a value TOML cannot hold (None, an object).
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("")
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in data.items() if _table_array(v)}
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if k not in tables and k not in arrays]
    for key, table in tables.items():
        lines += ["", f"[{_toml_key(key)}]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    for key, items in arrays.items():
        for item in items:
            lines += ["", f"[[{_toml_key(key)}]]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


# ------------------------------------------------------ the engine's side
def engine_validator(registries: Registries) -> Validator:
    """A validator that reads and plans a candidate as ``cnlab run`` would."""

    def validate(data: dict) -> str | None:
        try:
            plan_scenario(scenario_from_dict(copy.deepcopy(data), "<candidate>", registries), registries)
        except LabError as exc:
            return str(exc).partition("\n")[0]
        return None

    return validate


def engine_runner(lab: Lab, registries: Registries, plugin_config: PluginOptions | None, work_dir: Path,
                  on_note: Callable[[str], None] | None = None) -> Runner:
    """A runner that writes each candidate to ``work_dir/run-NN/scenario.toml`` and runs that file through
    :func:`~lab.engine.run.run_scenarios` on one guest (restored from its saved state when the lab has one),
    results and consoles beside it.

    A candidate whose guest dies is retried once on a fresh guest, as in every run of the engine.

    :raises KeyboardInterrupt: the run was interrupted by SIGINT; :raises SystemExit: by another signal (the
        shrink stops either way).
    """
    numbers = itertools.count(1)
    note = on_note or (lambda text: None)

    def run(data: dict) -> Outcome:
        folder = work_dir / f"run-{next(numbers):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "scenario.toml"
        path.write_text(dump_scenario(data))
        scenario = load_scenario(path, registries)

        def on_event(event) -> None:
            if event.kind in ("note", "retry"):
                note(f"{event.scenario + ': ' if event.scenario else ''}{event.detail}")

        outcome = run_scenarios(lab, [scenario], 1, folder, plugin_config=plugin_config, on_event=on_event)
        if outcome.interrupted == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if outcome.interrupted:
            raise SystemExit(outcome.interrupted)  # SIGTERM: the front end exits with the run's status
        if not outcome.records:
            return Outcome("not run", None, f"{scenario.name} never ran (its worker died twice)")
        return Outcome.from_record(outcome.records[0])

    return run
