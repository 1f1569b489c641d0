"""``cnlab trace RESULTS``: the flight recorder's trace of each failed scenario, its last milliseconds as text.

RESULTS is a results file (JSON lines) or a run's folder holding ``results.jsonl``.  For every failed scenario
whose record names a kept trace (``data.flightrec.trace``), prints where the trace is, its events by name, and
the events of the last ``--ms`` milliseconds before the failure (the kernel report's time when there is
one, else the end of the recording), at most ``--lines`` of them, oldest first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from lab.engine.results import final_records, read_results
from lab.errors import UsageError
from lab.report.ftrace import read_trace

__all__ = ["print_traces"]


def _results_file(path: Path) -> Path:
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise UsageError(f"cnlab trace: no such results file: {path}")
    return path


def print_traces(results: Path, scenario: str | None, ms: float, lines: int, out: TextIO) -> int:
    """Print the kept traces; 0 when at least one was printed, 1 when no failed scenario kept one."""
    path = _results_file(results)
    try:
        records = final_records(read_results(path))
    except ValueError as exc:
        raise UsageError(f"cnlab trace: {path}: not a cnlab results file ({exc})") from None
    if scenario is not None and scenario not in {r.scenario for r in records}:
        raise UsageError(f"cnlab trace: {path} has no scenario {scenario!r}")
    printed = 0
    for record in records:
        if scenario is not None and record.scenario != scenario:
            continue
        kept = ((record.data or {}).get("flightrec") or {}).get("trace")
        if not kept:
            continue
        try:
            trace = read_trace(Path(kept["path"]))
        except OSError as exc:
            print(f"{record.scenario}: trace {kept['path']}: cannot read it ({exc.strerror})", file=out)
            continue
        end = trace.end()
        failed_at = kept.get("failure_time")
        where = "the end of the recording"
        if failed_at is not None and trace.events and trace.events[0].ts <= failed_at <= (end or 0):
            end, where = failed_at, f"the kernel report at {failed_at:.6f} s"
        counts = ", ".join(f"{n} {name}" for name, n in sorted(trace.counts().items()))
        print(f"{record.scenario} ({record.status}): {kept['path']} ({kept.get('bytes')} bytes; {counts})", file=out)
        window = trace.window(end, ms) if end is not None else []
        print(f"  the last {ms:g} ms before {where}: {len(window)} events"
              + (f", the last {lines} below" if len(window) > lines else ""), file=out)
        for event in window[-lines:]:
            print(f"  {event.ts:.6f} [{event.cpu:03d}] {event.task}-{event.pid} {event.name}: {event.body}",
                  file=out)
        printed += 1
    if not printed:
        print(f"{path}: no failed scenario kept a trace" + (f" ({scenario})" if scenario else ""), file=out)
    return 0 if printed else 1
