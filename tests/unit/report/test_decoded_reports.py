"""Decoded kernel-report frames and the vmcore reach the summary, the JUnit file and the HTML report."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

from lab.plugin.model import ScenarioResult, Verdict
from lab.report.html import render_html
from lab.report.junit import write_junit
from lab.report.summary import print_summary, report_lines

FRAME = {"frame": "cnlab_do_fault+0xb1/0x180 [cnlab]", "function": "cnlab_do_fault", "module": "cnlab",
         "location": "kmod/ctl.c:240", "source_function": "cnlab_do_fault", "inlined": [],
         "text": "cnlab_do_fault+0xb1/0x180 [cnlab] -> kmod/ctl.c:240"}
REPORT = {"kind": "warning", "title": "WARNING: CPU: 0 PID: 131 at ctl.c:222 cnlab_do_fault+0xb1/0x180 [cnlab]",
          "line": 3, "frames": ["cnlab_do_fault"], "excerpt": "WARNING: ...", "fingerprint": "warning:1a2b3c",
          "decoded": [FRAME]}
VMCORE = {"path": "/r/consoles/w1g1.s.vmcore", "bytes": 512 << 20, "seconds": 0.8}


def _records():
    warned = ScenarioResult("selfcheck-warn", status="passed", verdicts=(Verdict("problems", True, "expected"),),
                            kernel_reports=(REPORT,), guest={"cpus": 2})
    crashed = ScenarioResult("panics", status="error", error="guest w1g1 is gone (QEMU exited)",
                             kernel_reports=(REPORT | {"kind": "panic", "decoded": []},),
                             data={"vmcore": VMCORE}, guest={"cpus": 2})
    return [warned, crashed]


def test_the_summary_shows_each_decoded_frame_and_the_vmcore():
    out = io.StringIO()
    print_summary(_records(), out)
    text = out.getvalue()
    assert "~ warning warning:1a2b3c" in text
    assert "at cnlab_do_fault+0xb1/0x180 [cnlab] -> kmod/ctl.c:240" in text
    assert "~ vmcore: /r/consoles/w1g1.s.vmcore (512 MiB; cnlab debug VMCORE reads it)" in text
    assert report_lines(ScenarioResult("x")) == []  # nothing to say, nothing said


def test_a_skipped_dump_says_why():
    record = ScenarioResult("big", status="error", data={"vmcore": {"path": "p", "skipped": "guest RAM too big"}})
    assert report_lines(record) == ["~ no vmcore: guest RAM too big"]


def test_junit_carries_the_decoded_lines_for_passed_and_errored_scenarios(tmp_path):
    path = tmp_path / "j.xml"
    write_junit(path, _records(), {})
    passed, errored = ET.parse(path).getroot().findall("testcase")
    assert "at cnlab_do_fault+0xb1/0x180 [cnlab] -> kmod/ctl.c:240" in passed.find("system-out").text
    assert "vmcore: /r/consoles/w1g1.s.vmcore" in errored.find("error").text


def test_html_lists_the_decoded_frames_and_the_vmcore():
    page = render_html(_records())
    assert "<code>kmod/ctl.c:240</code>" in page and "cnlab_do_fault+0xb1/0x180 [cnlab]" in page
    assert "/r/consoles/w1g1.s.vmcore" in page


def test_a_kept_trace_is_named_in_the_summary_and_in_junit(tmp_path):
    kept = {"path": "/r/consoles/w1g1.s.trace", "bytes": 2_254_830}
    record = ScenarioResult("dropped", status="failed", verdicts=(Verdict("loss", False, "349 lost"),),
                            data={"flightrec": {"trace": kept}}, guest={"cpus": 2})
    assert report_lines(record) == ["~ trace: /r/consoles/w1g1.s.trace (2,202 KiB; cnlab trace RESULTS prints its "
                                    "last milliseconds)"]
    write_junit(tmp_path / "j.xml", [record], {})
    (case,) = ET.parse(tmp_path / "j.xml").getroot().findall("testcase")
    assert case.find("failure").text.endswith("\n\nflight recorder trace: /r/consoles/w1g1.s.trace")
    passed = ScenarioResult("fine", data={"flightrec": {"events": ["cnlab:cnlab_insert"]}})
    assert report_lines(passed) == []
