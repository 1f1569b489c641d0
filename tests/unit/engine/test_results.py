"""The one result record: JSON lines, schema versions, and every reporter reading the same record."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET

import pytest

from lab.engine.metrics import headline
from lab.engine.results import ResultsWriter, final_records, read_results
from lab.plugin import ScenarioResult, Verdict
from lab.report.html import render_html
from lab.report.junit import write_junit
from lab.report.summary import print_summary


def record(name="hotplug", status="passed", **changes) -> ScenarioResult:
    base = dict(
        scenario=name, source=f"{name}.toml", status=status, duration=7.0, guest={"cpus": 2},
        env={"kernel": "6.1.0", "accel": "tcg", "qemu": "QEMU 7.2", "module_source_hash": "abc"},
        metrics={"rate": 2000.0, "lost": 0, "latency_us": {"p50": 10.0, "p99": 90.0}, "drain_s": 0.01},
        verdicts=(Verdict("loss", status == "passed", "worst consumer checker lost 0 (max 0)", "checks"),),
        series={"checker": [[0.0, 500, 0], [0.25, 480, 3], [0.5, 510, 0]]},
        faults=({"label": "cpu-offline", "trigger": "at 0.2 s", "start": 0.2, "restored": 0.4, "ok": True,
                 "delay_ms": 4.0},),
        kernel_reports=({"kind": "warning", "fingerprint": "warning:1a2b", "excerpt": "WARNING: <cpu>"},))
    return ScenarioResult(**(base | changes))


def test_a_record_survives_json_lines_and_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as writer:
        writer.write(record("a").to_json())
        writer.write(record("b", "failed").to_json())
    with open(path, "a") as handle:
        handle.write('{"scenario": "c", "sta')  # the writer was killed mid-line
    a, b = read_results(path)
    assert a == record("a") and b.status == "failed" and not b.passed
    assert b.problems == ("loss: worst consumer checker lost 0 (max 0)",)


def test_schema_1_records_are_read_and_newer_ones_refused():
    old = {"scenario": "x", "status": "failed", "kernel": "6.1", "accel": "tcg",
           "invariants": [{"name": "loss", "ok": False, "detail": "lost 5"}]}
    r = ScenarioResult.from_json(old)
    assert r.verdicts == (Verdict("loss", False, "lost 5"),) and r.env == {"kernel": "6.1", "accel": "tcg"}
    with pytest.raises(ValueError, match="schema 9 is newer"):
        ScenarioResult.from_json({"scenario": "x", "schema": 9})
    with pytest.raises(ValueError, match="status 'odd'"):
        ScenarioResult("x", status="odd")


def test_final_records_keep_the_last_attempt():
    first, retry = record("a", "error", attempt=1), record("a", attempt=2, retried=True)
    assert final_records([first, record("b"), retry]) == [retry, record("b")]


def test_junit_has_environment_failures_errors_and_skipped_interruptions(tmp_path):
    records = [record("ok"), record("bad", "failed"), record("err", "error", error="guest crashed"),
               record("cut", "interrupted", error="the run was interrupted (SIGINT) after 3.0 s")]
    path = tmp_path / "j.xml"
    write_junit(path, records, {"kernel": "6.1", "accel": "tcg"})
    suite = ET.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "1",
                                                                                                      "1")
    assert {p.get("name"): p.get("value") for p in suite.find("properties")} == {"kernel": "6.1", "accel": "tcg"}
    cases = suite.findall("testcase")
    assert "lost 0" in cases[1].find("failure").text and "warning:1a2b" in cases[1].find("failure").text
    assert cases[2].find("error").get("message") == "guest crashed"
    assert cases[3].find("skipped").get("message").startswith("interrupted: the run was interrupted")
    props = {p.get("name"): p.get("value") for p in cases[0].find("properties")}
    assert json.loads(props["metric.rate"]) == 2000.0


def test_html_has_table_plots_fault_marks_and_escaped_excerpts():
    page = render_html([record(), record("other", "failed")])
    assert page.startswith("<!doctype html>") and "1/2 passed" in page
    assert page.count("<svg") == 4 and page.count('class="fault"') == 4
    assert "cpu-offline (at 0.2 s) at 0.2 s, delay 4.0 ms" in page and "warning:1a2b" in page
    assert "WARNING: &lt;cpu&gt;" in page  # excerpts are escaped
    assert "consumer backlog included" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page


def test_summary_explains_its_columns_and_marks_figures_out_of_bounds():
    out = io.StringIO()
    late = record("late", "failed", verdicts=(Verdict("latency", False, "p99 9000 us (max 500)"),),
                  metrics={"rate": 10.0, "lost": 0, "latency_us": {"p50": 2000.0, "p99": 9000.0}, "drain_s": 0.0})
    print_summary([record(), late, record("cut", "not run", metrics={}, error="the run was interrupted")], out)
    text = out.getvalue()
    assert re.search(r"late\s+failed\s+2\s+10\s+0\s+2\.0\s+9\.0!", text), text
    assert "x latency: p99 9000 us (max 500)" in text and "! the run was interrupted" in text
    assert "from the kernel's timestamp when a message was made to the consumer's receipt" in text
    assert "! marks a figure outside the scenario's bounds" in text


def test_headline_figures_come_from_the_agent_report():
    agent = {"load_s": 2.0, "drain": {"waited_s": 0.5},
             "generators": {"0": {"cpus": {"0": {"generated": 900, "err_nomem": 2}, "1": {"generated": 100}}}},
             "cbus": {"drop_full": 3},
             "consumers": [{"received": 3000, "gaps": 4, "accounting": {"exact": True, "lost": 4},
                            "latency_us": {"p99": 80.0, "samples": 10}, "socket_drops": 2},
                           {"received": 1000, "accounting": {"exact": True, "lost": 9}, "socket_drops": -1},
                           {"name": "gone", "missing": True}]}
    m = headline(agent, {"0"})
    assert (m["generated"], m["received"], m["lost"], m["rate"], m["counted_drops"], m["socket_drops"]) == (
        1000, 4000, 9, 2000.0, 5, 2)
    assert headline(agent)["counted_drops"] == 3  # a CBUS generator's failed inserts are CBUS's drops: once
    assert m["latency_us"]["p99"] == 80.0 and m["drain_s"] == 0.5
    assert headline(None) == {}


def test_the_idle_reader_latency_shows_beside_p99_only_with_enough_messages():
    out = io.StringIO()
    behind = record("behind", metrics={"rate": 10.0, "lost": 0, "latency_us": {"p50": 1.2e6, "p99": 1.7e6},
                                       "idle_latency_us": {"p99": 4900.0, "samples": 1}, "drain_s": 0.0})
    keeping_up = record("keeping-up", metrics={"rate": 10.0, "lost": 0, "latency_us": {"p50": 900.0, "p99": 19000.0},
                                               "idle_latency_us": {"p99": 12000.0, "samples": 972}, "drain_s": 0.0})
    print_summary([behind, keeping_up], out)
    text = out.getvalue()
    assert re.search(r"behind\s+passed\s+2\s+10\s+0\s+1200\.0\s+1700\.0\s+-\s", text), text
    assert re.search(r"keeping-up\s+passed\s+2\s+10\s+0\s+0\.9\s+19\.0\s+12\.0\s", text), text
    assert "idle p99: the same over the messages that reached a consumer with nothing queued" in text


def test_the_headline_takes_both_latencies_from_one_consumer():
    agent = {"load_s": 1.0, "consumers": [
        {"received": 5, "latency_us": {"samples": 0}, "idle_latency_us": {"p99": 1.0, "samples": 5}},
        {"received": 9, "latency_us": {"p99": 80.0, "samples": 9}, "idle_latency_us": {"p99": 7.0, "samples": 3}},
        {"received": 2, "latency_us": {"p99": 5.0, "samples": 2}}]}
    m = headline(agent)
    assert m["latency_us"]["p99"] == 80.0 and m["idle_latency_us"]["p99"] == 7.0
    assert headline({"consumers": [{"latency_us": {"p99": 5.0, "samples": 2}}]})["idle_latency_us"] == {}
