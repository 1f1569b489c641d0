"""cnlab report --history: pass rates, flaky scenarios and figure trends over result folders; bad input is one line
and exit status 2; and the run report's latency CDF by path."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from lab.cli.main import main
from lab.errors import UsageError
from lab.plugin.model import ScenarioResult, Verdict
from lab.report.history import build_history, load_run, load_runs, print_history, render_history_html
from lab.report.html import latency_cdf_plot, path_label, render_html


def record(name: str, status: str = "passed", rate: float = 1000.0, lost: int | None = 0,
           p99: float | None = 2000.0, boot: float = 1.0, paths: list[str] | None = None, flaky: bool = False,
           **extra) -> ScenarioResult:
    latency = {} if p99 is None else {"p50": p99 / 4, "p99": p99, "p999": p99 * 1.2, "max": p99 * 1.5,
                                      "samples": 500}
    metrics = {"rate": rate, "lost": lost, "latency_us": latency}
    if paths is not None:
        metrics["paths"] = paths
    verdicts = (Verdict("loss", status == "passed", "rigged"),)
    return ScenarioResult(name, status=status, metrics=metrics, boot_s=boot, duration=5.0, flaky=flaky,
                          verdicts=verdicts, guest={"cpus": 2}, env={"kernel": "6.1.0-test"}, **extra)


def write_run(folder: Path, records: list[ScenarioResult]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    return folder


@pytest.fixture
def three_nights(tmp_path):
    """stable passes every night with a falling rate; wobbly passes, fails, passes; broken always fails;
    late appears only in the last run; retried passed on a retry once."""
    nights = []
    for i, (wobbly, rate) in enumerate((("passed", 1000.0), ("failed", 900.0), ("passed", 500.0))):
        records = [record("stable", rate=rate, p99=1000.0 * (i + 1), boot=1.0 + i / 10, paths=["cbus"]),
                   record("wobbly", status=wobbly, lost=0 if wobbly == "passed" else 7, paths=["direct"]),
                   record("broken", status="failed", lost=3),
                   record("retried", flaky=i == 1)]
        if i == 2:
            records.append(record("late", p99=None, boot=0.0))
        nights.append(write_run(tmp_path / f"2026-12-0{i + 1}", records))
    return nights


def test_pass_rates_flips_and_flaky_scenarios(three_nights):
    runs = load_runs(three_nights)
    assert [r.label for r in runs] == ["2026-12-01", "2026-12-02", "2026-12-03"]
    by_name = {h.name: h for h in build_history(runs)}
    assert list(by_name) == ["stable", "wobbly", "broken", "retried", "late"]
    assert (by_name["stable"].passed, len(by_name["stable"].counted), by_name["stable"].flaky) == (3, 3, False)
    wobbly = by_name["wobbly"]
    assert (wobbly.passed, wobbly.pass_rate, wobbly.flips, wobbly.flaky) == (2, 2 / 3, 2, True)
    broken = by_name["broken"]  # always failing is a failure, not flakiness
    assert (broken.pass_rate, broken.flips, broken.flaky) == (0.0, 0, False)
    assert by_name["retried"].flaky and by_name["retried"].flips == 0  # passed only on a retry in one run
    late = by_name["late"]
    assert late.statuses == [None, None, "passed"] and late.pass_rate == 1.0 and not late.flaky


def test_trends_follow_each_figure_over_the_runs(three_nights):
    stable = build_history(load_runs(three_nights))[0]
    assert stable.values["rate"] == [1000.0, 900.0, 500.0]
    assert stable.values["p99_us"] == [1000.0, 2000.0, 3000.0]
    assert stable.values["boot_s"] == [1.0, 1.1, 1.2]
    rate = stable.trend("rate")
    assert (rate["first"], rate["last"], rate["min"], rate["max"], rate["median"]) == (1000, 500, 500, 1000, 900)
    assert rate["change_pct"] == -47.4  # 500 against the median of 1000 and 900
    assert stable.trend("p99_us")["change_pct"] == 100.0
    late = build_history(load_runs(three_nights))[-1]
    assert late.trend("p99_us") is None and late.trend("boot_s") is None  # not carried: no latency, no boot
    assert late.trend("rate") == {"n": 1, "first": 1000, "last": 1000, "min": 1000, "median": 1000, "max": 1000}


def test_text_summary_and_page(three_nights):
    runs = load_runs(three_nights)
    histories = build_history(runs)
    out = io.StringIO()
    print_history(runs, histories, out)
    text = out.getvalue()
    assert "3 runs, 5 scenarios: 2026-12-01, 2026-12-02, 2026-12-03" in text
    assert re.search(r"^wobbly\s+2/3\s+2 .* PFP  FLAKY$", text, re.M)
    assert re.search(r"^stable\s+3/3\s+0\s+500 \(-47%\)", text, re.M)  # 500 against median(1000, 900) = 950
    assert "flaky (2): wobbly, retried" in text
    page = render_history_html(runs, histories)
    assert "<script" not in page and "http" not in page  # self-contained
    assert page.count("<svg") >= 5 * 5  # a trend plot per figure and scenario at least
    assert "2/3 passed, flaky" in page and 'aria-label="stable outcomes"' in page


def test_the_order_given_is_the_order_of_the_runs(three_nights):
    assert [r.label for r in load_runs(three_nights[::-1])] == ["2026-12-03", "2026-12-02", "2026-12-01"]
    assert len(load_runs([three_nights[0], three_nights[0]])) == 1


def test_bad_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such results folder"):
        load_run(tmp_path / "missing")
    with pytest.raises(UsageError, match="has no results.jsonl"):
        load_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.jsonl").write_text("")
    with pytest.raises(UsageError, match="holds no results"):
        load_run(empty)
    (empty / "results.jsonl").write_text("this is not json\n")
    with pytest.raises(UsageError, match="not a cnlab results file"):
        load_run(empty)
    (empty / "results.jsonl").write_text('{"scenario": "x", "status": "exploded"}\n')
    with pytest.raises(UsageError, match="not a cnlab results file .*'exploded'"):
        load_run(empty)
    (empty / "results.jsonl").write_text('[1, 2]\n')
    with pytest.raises(UsageError, match="not a cnlab results file"):
        load_run(empty)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nope", "no such results folder"),
    (lambda d: d, "has no results.jsonl"),
    (lambda d: (d / "bad").mkdir() or (d / "bad" / "results.jsonl").write_text("{{{\n") and d / "bad",
     "not a cnlab results file"),
])
def test_the_command_says_one_line_and_exits_2(tmp_path, capsys, three_nights, make, message):
    status = main(["report", "--history", str(three_nights[0]), str(make(tmp_path))])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("cnlab: error: ") and message in err
    assert "Traceback" not in err


def test_the_command_writes_the_page_and_prints_the_summary(tmp_path, capsys, three_nights):
    output = tmp_path / "out" / "h.html"
    assert main(["report", "--history", *map(str, three_nights), "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert "flaky (2): wobbly, retried" in out and f"wrote {output} (5 scenarios over 3 runs)" in out
    assert output.read_text().startswith("<!doctype html>")
    assert main(["report", str(three_nights[0] / "results.jsonl"), "--history", str(three_nights[0])]) == 2
    assert main(["report"]) == 2


def test_paths_are_recorded_or_inferred_from_the_cbus_counters():
    assert path_label(record("x", paths=["cbus", "direct"])) == "cbus+direct"
    old = ScenarioResult("old", metrics={"generated": 100, "cbus": {"inserted": 100}})
    assert path_label(old) == "cbus"
    assert path_label(ScenarioResult("old", metrics={"generated": 100, "cbus": {"inserted": 0}})) == "direct"
    assert path_label(ScenarioResult("none")) == "no generator"


def test_run_report_has_a_latency_cdf_per_path_from_the_percentiles():
    page = render_html([record("a", paths=["cbus"], p99=1000.0), record("b", paths=["direct"], p99=8000.0),
                        record("c", p99=None)])
    overview = page[page.index('<section id="latency">'):page.index('<section id="a">')]
    assert "through the consumers' p50, p99, p99.9 and max only" in overview
    assert "a (cbus)" in overview and "b (direct)" in overview and "c (" not in overview
    assert 'stroke="#0969da"' in overview and 'stroke="#bc4c00"' in overview  # cbus blue, direct orange
    # b's p99 (8 ms) lies right of a's (1 ms): the x axis is latency
    xs = {name: float(cx) for cx, name in re.findall(r'<circle cx="([\d.]+)"[^>]*><title>([ab]): p99', overview)}
    assert xs["b"] > xs["a"]
    assert latency_cdf_plot("t", [("x", "cbus", {})]) == "<p>t: no latency samples</p>"


def test_run_report_plots_latency_over_time_when_the_series_carries_it():
    new = record("new", paths=["direct"], series={"checker": [[0.0, 10, 0, 1500.0], [0.25, 12, 1, 4500.0],
                                                              [0.5, 3, 0, None]]})
    old = record("old", paths=["cbus"], series={"checker": [[0.0, 10, 0], [0.25, 12, 1]]})
    page = render_html([new, old])
    new_part, old_part = page[page.index('<section id="new">'):page.index('<section id="old">')], \
        page[page.index('<section id="old">'):]
    assert "checker: latency over time, largest in each 0.25 s (direct)" in new_part
    assert "ms, max 4.5)" in new_part and 'stroke="#bc4c00"' in new_part
    assert "latency over time" not in old_part and "checker: delivered" in old_part  # three-column rows still draw
