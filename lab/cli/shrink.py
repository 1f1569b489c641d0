"""``cnlab shrink SCENARIO``: the reduction of :mod:`lab.engine.shrink`, one line per step, the result a file.

Exit status: 0 the shrunk scenario was written (the original itself when
nothing could go); 1 the scenario did not fail (nothing to shrink, nothing
written); 2 bad input (a malformed scenario, an unknown plugin or object, bad
options); 130 interrupted (the smallest scenario found so far is in the
output file already).
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from lab.engine.scenario import load_scenario
from lab.engine.shrink import STEP_KINDS, Runner, ShrinkReport, Step, Validator, dump_scenario, shrink
from lab.errors import ConfigError, UsageError
from lab.plugin.registry import Registries

__all__ = ["read_scenario_dict", "shrunk_name", "shrink_scenario", "step_line", "summary_lines",
           "check_limits", "EXIT_WRITTEN", "EXIT_NOTHING_TO_SHRINK"]

EXIT_WRITTEN, EXIT_NOTHING_TO_SHRINK = 0, 1
#: How a step's verdict reads in its line.
VERDICT_WORDS = {"fail": "FAIL", "same": "same", "pass": "pass", "other": "other", "no result": "no result",
                 "invalid": "invalid"}


def read_scenario_dict(source: str) -> dict:
    """The parsed TOML of a scenario file (already validated by the caller).

    :raises ConfigError: the file cannot be read or parsed.
    """
    try:
        return tomllib.loads(Path(source).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read the scenario: {exc}") from None


def shrunk_name(name: str) -> str:
    """The shrunk scenario's name (its runs are recorded under it, not the original's)."""
    return name if name.endswith("-shrunk") else f"{name}-shrunk"


def step_line(step: Step) -> str:
    """``[ 3] drop faults[1] cpu-offline                     same     9.8 s  kept``."""
    seconds = f"{step.seconds:6.1f} s" if step.ran else "     - "
    tail = "  kept" if step.kept else ""
    detail = f"  ({step.detail})" if step.detail and not step.kept else ""
    return f"[{step.number:2d}] {step.what:<44} {VERDICT_WORDS.get(step.verdict, step.verdict):<9} {seconds}{tail}" \
           + detail[:200]


def summary_lines(report: ShrinkReport) -> list[str]:
    """The final summary: steps, runs, seconds, why it stopped, what was removed."""
    stopped = {"done": "a whole pass removed nothing more", "max-runs": "the run limit (--max-runs) was reached",
               "budget": "the time budget (--budget) ran out"}.get(report.stopped, report.stopped)
    kept = sum(1 for s in report.steps if s.kept)
    by_kind = ", ".join(f"{kind} {n}" for kind in STEP_KINDS
                        if (n := sum(1 for s in report.steps if s.kind == kind)))
    return [f"cnlab shrink: {len(report.steps)} steps ({by_kind}), {kept} kept; {report.runs} runs in "
            f"{report.seconds:.1f} s; stopped: {stopped}",
            "removed: " + ("; ".join(report.removed) or "nothing")]


def _header(source: str, report: ShrinkReport) -> str:
    return "\n".join([f"Shrunk by cnlab shrink from {source}: {report.runs} runs, {report.seconds:.1f} s.",
                      f"Fails as: {report.failure.describe() if report.failure else '?'}",
                      "Removed: " + ("; ".join(report.removed) or "nothing")])


def shrink_scenario(data: dict, source: str, output: Path, runner: Runner, validate: Validator | None,
                    registries: Registries, max_runs: int, budget: float, out: TextIO, err: TextIO,
                    clock: Callable[[], float] = time.monotonic) -> int:
    """Shrink ``data`` (read from ``source``) with ``runner``, print each step on ``out``, write the result to
    ``output`` (after every kept step too, so an interrupted shrink leaves its best); the exit status."""

    def write(result: dict, header: str) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(dump_scenario(result, header))
        tmp.replace(output)

    def on_step(step: Step) -> None:
        print(step_line(step), file=out, flush=True)

    def on_kept(candidate: dict) -> None:
        write(candidate, f"Shrinking {source} with cnlab shrink: the smallest failing scenario so far")

    report = shrink(data, runner, validate=validate, max_runs=max_runs, budget=budget, clock=clock,
                    on_step=on_step, on_kept=on_kept)
    if report.failure is None:
        first = report.first
        why = {"passed": "passed", "not run": "did not run"}.get(first.status, f"ended {first.status}")
        print(f"cnlab shrink: {source} {why}: nothing to shrink (shrink needs a scenario that fails)"
              + (f": {first.detail}" if first.detail and first.status != "passed" else ""), file=err)
        return EXIT_NOTHING_TO_SHRINK
    write(report.result, _header(source, report))
    load_scenario(output, registries)  # what cnlab run will read: a failure here is a bug, not bad input
    for line in summary_lines(report):
        print(line, file=out)
    print(f"wrote {output}: fails as {report.failure.describe()}", file=out)
    return EXIT_WRITTEN


def check_limits(max_runs: int, budget: float) -> None:
    """:raises UsageError: limits that allow no useful shrink."""
    if max_runs < 1:
        raise UsageError(f"cnlab shrink: --max-runs must be at least 1 (the original's run), got {max_runs}")
    if not budget > 0:
        raise UsageError(f"cnlab shrink: --budget must be more than 0 seconds, got {budget:g}")
