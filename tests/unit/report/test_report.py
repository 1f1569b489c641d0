"""The HTML report is self-contained and shows plots with the faults marked."""

import re

from lab.report.html import render_html


def _record(status="passed"):
    return {
        "scenario": "hotplug", "status": status, "duration": 7.0, "guest": {"cpus": 2},
        "kernel": "6.1.0", "accel": "tcg", "qemu": "QEMU 7.2", "module_source_hash": "abc",
        "metrics": {"rate": 2000.0, "lost": 0, "latency_us": {"p50": 10.0, "p99": 90.0}},
        "invariants": [{"name": "loss", "ok": status == "passed", "detail": "lost 0 of 6000"}],
        "series": {"checker": [[0.0, 500, 0], [0.25, 480, 3], [0.5, 510, 0]]},
        "faults": [{"kind": "cpu_offline", "at": 0.2, "until": 0.4, "ok": True, "detail": "cpu1 offline"}],
        "kernel_reports": [{"kind": "warning", "fingerprint": "warning:1a2b", "excerpt": "WARNING: <cpu>"}],
    }


def test_report_has_table_plots_fault_marks_and_escaped_excerpts():
    page = render_html([_record(), _record("failed") | {"scenario": "other"}])
    assert page.startswith("<!doctype html>") and "1/2 passed" in page
    assert page.count("<svg") == 4 and page.count('class="fault"') == 4
    assert "cpu_offline" in page and "warning:1a2b" in page
    assert "WARNING: &lt;cpu&gt;" in page  # excerpts are escaped


def test_report_needs_no_network():
    page = render_html([_record()])
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
