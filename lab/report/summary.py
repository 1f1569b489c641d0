"""The end of a run as a person reads it: the summary table, then where the files are."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from lab.engine.run import RunOutcome
from lab.plugin.model import ScenarioResult
from lab.report.html import write_html
from lab.report.junit import write_junit

__all__ = ["print_summary", "finish_run", "report_lines"]


#: An idle-reader p99 over fewer messages is not shown: the first message of a run alone would stand for it.
MIN_IDLE_SAMPLES = 10
#: Verdicts whose failure marks a figure of the table with "!" (figure column -> verdict name).
_MARKS = {"lost": "loss", "p99": "latency", "rate": "throughput", "drain": "drain"}
LEGEND = ("rate/s: messages all consumers received per second of load.  p50/p99 ms: from the kernel's timestamp "
          "when a message was made to the consumer's receipt, so a consumer's backlog is included.  idle p99: the "
          "same over the messages that reached a consumer with nothing queued (what the kernel path and the "
          "wake-up add, without the backlog); far below p99, the backlog dominates; - with fewer than "
          f"{MIN_IDLE_SAMPLES} such messages (the consumer was behind for nearly the whole load).  drain s: how long "
          "CBUS took to empty after the load.  ! marks a figure outside the scenario's bounds.")


def _idle_p99(idle: dict) -> str:
    """The idle-reader p99 in ms, or "-" when too few messages reached an idle consumer to say."""
    return _ms(idle.get("p99")) if (idle.get("samples") or 0) >= MIN_IDLE_SAMPLES else "-"


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.1f}"


def report_lines(record: ScenarioResult) -> list[str]:
    """Per kernel report: kind, fingerprint and title, then each decoded frame; then the vmcore and the flight
    recorder's trace, if any."""
    lines = []
    for report in record.kernel_reports:
        lines.append(f"~ {report['kind']} {report['fingerprint']}: {report.get('title', '')[:120]}")
        lines += [f"    at {frame['text']}" for frame in report.get("decoded") or ()]
    vmcore = (record.data or {}).get("vmcore")
    if vmcore:
        lines.append(f"~ no vmcore: {vmcore['skipped']}" if vmcore.get("skipped") else
                     f"~ vmcore: {vmcore['path']} ({vmcore.get('bytes', 0) / 2**20:.0f} MiB; cnlab debug VMCORE "
                     "reads it)")
    trace = ((record.data or {}).get("flightrec") or {}).get("trace")
    if trace:
        lines.append(f"~ trace: {trace['path']} ({trace.get('bytes', 0) / 2**10:,.0f} KiB; cnlab trace "
                     "RESULTS prints its last milliseconds)")
    return lines


def print_summary(records: list[ScenarioResult], out: TextIO) -> None:
    """One line per scenario with its headline figures, then the checks that failed, then the legend."""
    print(f"\n{'scenario':30} {'status':11} {'vCPU':>4} {'rate/s':>8} {'lost':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'idle p99':>8} {'drain s':>7} {'time s':>6}", file=out)
    for r in records:
        m = r.metrics
        failed = {v.name for v in r.verdicts if not v.ok}

        latency, idle = m.get("latency_us") or {}, m.get("idle_latency_us") or {}
        lost, drain = m.get("lost"), m.get("drain_s")
        cells = {"rate": f"{m.get('rate', 0):.0f}", "lost": "-" if lost is None else str(lost),
                 "p99": _ms(latency.get("p99")), "drain": "-" if drain is None else f"{drain:.2f}"}
        cells = {k: v + ("!" if _MARKS[k] in failed else "") for k, v in cells.items()}
        status = r.status + ("*" if r.flaky else "")
        print(f"{r.scenario[:30]:30} {status:11} {r.guest.get('cpus', '-'):>4} {cells['rate']:>8} "
              f"{cells['lost']:>7} {_ms(latency.get('p50')):>8} {cells['p99']:>8} {_idle_p99(idle):>8} "
              f"{cells['drain']:>7} "
              f"{r.duration:>6.1f}", file=out)
        for v in r.verdicts:
            if not v.ok:
                print(f"    x {v.name}: {v.detail}", file=out)
        if r.error:
            print(f"    ! {r.error[:200]}", file=out)
        for line in report_lines(r):
            print(f"    {line}", file=out)
    print(LEGEND, file=out)
    if any(r.flaky for r in records):
        print("* flaky: failed with a crashed guest, passed on retry", file=out)


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
    if outcome.interrupted:
        cut = [r.scenario for r in outcome.records if r.status in ("interrupted", "not run")]
        print(f"cnlab run: interrupted; not finished: {', '.join(cut) or 'none'}", file=out)
    return outcome.exit_status
