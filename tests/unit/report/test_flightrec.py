"""The flight recorder's trace: parsing a real guest trace, the timeline SVG, the report's section, cnlab trace.

``data/flightrec-warn.trace`` is a real ``trace`` file the recorder kept for a scenario whose module WARNed on
purpose (2 vCPUs under TCG, 500 msgs/s through CBUS): its header, the 30 ms from 27.750 s to 27.780 s around
the WARN (at 27.773329 s on the console) and the recorder's stop mark.  The header's counts are the whole
buffer's.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from lab.cli.trace import print_traces
from lab.errors import UsageError
from lab.report.ftrace import CNLAB_EVENTS, parse_trace, read_trace
from lab.report.html import render_html
from lab.report.timeline import COLOURS, timeline_svg

from .test_history import record, write_run

DATA = Path(__file__).parent / "data"
TRACE = DATA / "flightrec-warn.trace"
WARN_AT = 27.773329


def test_a_real_trace_parses_into_every_event_in_time_order():
    trace = read_trace(TRACE)
    counts = trace.counts()
    assert counts == {"sched_wakeup": 55, "sched_switch": 99, "cnlab_insert": 28, "cnlab_drain_start": 23,
                      "cnlab_send": 28, "cnlab_drain_end": 23, "softirq_entry": 16, "softirq_exit": 16,
                      "tracing_mark_write": 1}
    assert sum(counts.values()) == sum(1 for line in TRACE.read_text().splitlines() if not line.startswith("#"))
    assert trace.cpus == [0, 1] and (trace.entries_in_buffer, trace.entries_written) == (21874, 21874)
    assert trace.overwritten == 0 and trace.other_lines == 0
    assert [e.ts for e in trace.events] == sorted(e.ts for e in trace.events)
    assert trace.end() == 29.441867  # the stop mark, not the last CBUS event
    insert = next(e for e in trace.events if e.name == "cnlab_insert")
    assert insert.task.startswith("cnlab_g0/") and set(insert.fields) == {"cpu", "depth", "bytes"}
    switch = next(e for e in trace.events if e.name == "sched_switch")
    assert {"prev_comm", "next_comm", "next_pid"} <= set(switch.fields)
    send = next(e for e in trace.events if e.name == "cnlab_send")
    assert send.fields["result"] == "0" and int(send.fields["size"]) > int(send.fields["count"])
    assert set(CNLAB_EVENTS) >= {n for n in counts if n.startswith("cnlab_")}


def test_the_parser_takes_overwrites_lost_events_notes_and_task_names_with_dashes():
    trace = parse_trace("# entries-in-buffer/entries-written: 10/25   #P:2\n"
                        "CPU:1 [LOST 12 EVENTS]\n"
                        "     kworker/u4:1-30      [001] d.h2.   5.000002: irq_handler_entry: irq=11 name=virtio0\n"
                        "   my-prog-name-77     [000] .....     5.000001: cnlab_drop: cpu=0 cause=full count=1\n")
    assert trace.overwritten == 15 and trace.other_lines == 1
    assert [(e.task, e.pid, e.cpu, e.name) for e in trace.events] == [
        ("my-prog-name", 77, 0, "cnlab_drop"), ("kworker/u4:1", 30, 1, "irq_handler_entry")]
    assert trace.events[0].fields == {"cpu": "0", "cause": "full", "count": "1"}
    assert parse_trace("").end() is None and parse_trace("").overwritten is None


def _svg_items(svg: str, colour: str) -> int:
    return len(re.findall(rf'(?:fill|stroke)="{colour}"', svg))


def test_the_timeline_draws_lanes_tasks_drains_inserts_sends_and_softirqs_of_the_window():
    trace = read_trace(TRACE)
    svg = timeline_svg(trace, WARN_AT, window_ms=10)
    assert svg.startswith('<svg class="timeline"') and svg.endswith("</svg>")
    assert "CPU 0" in svg and "CPU 1" in svg and "the last 10 ms" in svg
    window = trace.window(WARN_AT, 10)
    assert f"{len(window)} events in the window" in svg
    # one bar per drain (start to end) and per softirq in the window; an insert tick and a send dot each
    drains = sum(1 for e in window if e.name == "cnlab_drain_end")
    assert _svg_items(svg, COLOURS["drain"]) == drains + 1  # and the legend's swatch
    assert _svg_items(svg, COLOURS["softirq"]) == sum(1 for e in window if e.name == "softirq_exit") + 1
    assert 0 < _svg_items(svg, COLOURS["insert"]) - 1 <= sum(1 for e in window if e.name == "cnlab_insert")
    assert _svg_items(svg, COLOURS["cbus_task"]) > 1 and "cbus/" in svg  # the drain threads ran
    # a wider window holds more; nothing after the end is drawn
    assert len(trace.window(WARN_AT, 30)) > len(window)
    assert all(e.ts <= WARN_AT for e in window)


def test_the_timeline_is_bounded_by_pixels_not_events():
    lines = [f"  cnlab_g0/0-105  [000] d..1.  1.{i:06d}: cnlab_insert: cpu=0 depth=1 bytes=60" for i in range(20000)]
    svg = timeline_svg(parse_trace("\n".join(lines)), window_ms=20)
    assert svg.count("<rect") < 800  # 20,000 inserts in 20 ms: one tick per pixel column
    assert "20000 events in the window" in svg
    assert "no events" in timeline_svg(parse_trace(""))


def test_the_report_draws_a_failed_scenarios_timeline_up_to_its_kernel_report(tmp_path):
    kept = {"path": str(TRACE), "bytes": TRACE.stat().st_size, "truncated": False, "overwritten": 0,
            "failure_time": WARN_AT}
    page = render_html([record("warned", status="failed", data={"flightrec": {"trace": kept}}),
                        record("fine", data={"flightrec": {"events": ["cnlab:cnlab_insert"]}})])
    assert page.count('<svg class="timeline"') == 1
    assert f"up to the kernel report at {WARN_AT:.6f} s" in page
    kept_outside = kept | {"failure_time": 99.0}  # a report outside the recording: its end instead
    page = render_html([record("warned", status="failed", data={"flightrec": {"trace": kept_outside}})])
    assert "up to the recording&#x27;s end" in page
    page = render_html([record("warned", status="failed",
                               data={"flightrec": {"trace": kept | {"path": str(tmp_path / "gone")}}})])
    assert "the trace cannot be read" in page and "<svg class=\"timeline\"" not in page


def test_cnlab_trace_prints_the_last_milliseconds_of_each_kept_trace(tmp_path):
    kept = {"path": str(TRACE), "bytes": 1, "failure_time": WARN_AT}
    run = write_run(tmp_path / "run", [record("warned", status="failed", data={"flightrec": {"trace": kept}}),
                                      record("fine")])
    out = io.StringIO()
    assert print_traces(run, None, 2.0, 5, out) == 0
    text = out.getvalue()
    window = read_trace(TRACE).window(WARN_AT, 2.0)
    assert f"the last 2 ms before the kernel report at {WARN_AT:.6f} s: {len(window)} events" in text
    assert text.count("\n  2") == 5 and f"{window[-1].ts:.6f}" in text and "fine" not in text
    out = io.StringIO()
    assert print_traces(run / "results.jsonl", "fine", 2.0, 5, out) == 1
    assert "no failed scenario kept a trace (fine)" in out.getvalue()
    with pytest.raises(UsageError, match="no scenario 'other'"):
        print_traces(run, "other", 2.0, 5, io.StringIO())
    with pytest.raises(UsageError, match="no such results file"):
        print_traces(tmp_path / "none", None, 2.0, 5, io.StringIO())
