"""The end of a run as a person reads it: the summary table, then where the files are."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from lab.engine.run import RunOutcome
from lab.report.html import write_html
from lab.report.junit import write_junit

__all__ = ["print_summary", "finish_run"]


def print_summary(records: list[dict], out) -> None:
    print(f"\n{'scenario':32} {'status':8} {'vCPU':>4} {'rate/s':>9} {'lost':>6} {'p99 us':>8} {'time s':>7}",
          file=out)
    for r in records:
        m = r.get("metrics", {})
        p99 = (m.get("latency_us") or {}).get("p99")
        status = r["status"] + ("*" if r.get("flaky") else "")
        print(f"{r['scenario'][:32]:32} {status:8} {r['guest']['cpus']:>4} {m.get('rate', 0):>9.0f} "
              f"{str(m.get('lost', '-')):>6} {str(p99 if p99 is not None else '-'):>8} {r['duration']:>7.1f}", file=out)
        for v in r.get("invariants", []):
            if not v["ok"]:
                print(f"    x {v['name']}: {v['detail']}", file=out)
        if r["status"] == "error":
            print(f"    ! {r.get('error', '')[:200]}", file=out)
    flaky = [r for r in records if r.get("flaky")]
    if flaky:
        print("  * flaky: failed with a crashed guest, passed on retry", file=out)


def finish_run(outcome: RunOutcome, out: TextIO, junit_path: Path | None = None,
               report_path: Path | None = None) -> int:
    """Print the summary, write the JUnit and HTML files asked for; returns the run's exit status."""
    print_summary(outcome.records, out)
    if junit_path is not None:
        write_junit(junit_path, outcome.records, outcome.environment)
    if report_path is not None:
        write_html(outcome.records, report_path)
    extras = [str(p) for p in (junit_path, report_path) if p is not None] + list(outcome.plugin_reports)
    print(f"results: {outcome.json_path}" + "".join(f", {p}" for p in extras), file=out)
    if outcome.never_ran:
        print(f"cnlab run: never ran: {', '.join(outcome.never_ran)}", file=out)
    return outcome.exit_status
