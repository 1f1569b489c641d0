"""Run events: the default printer writes the lines the engine always printed."""

import io

import pytest

from lab.engine.events import RunEvent, format_event, print_events


def test_the_plain_lines_are_the_engines_usual_ones():
    assert format_event(RunEvent("phase", 12.34, 2, "pause-resume", "boot")) == \
        "[  12.3s] guest 2: pause-resume: boot"
    assert format_event(RunEvent("result", 20.0, 1, "proc-storm-cbus", "passed", done=3, failed=1, left=5)) == \
        "[  20.0s] guest 1: proc-storm-cbus: PASSED (3 done, 1 failed, 5 left)"
    assert format_event(RunEvent("retry", 3.0, 1, "x", "ERROR (boom); retrying on a fresh guest")) == \
        "[   3.0s] guest 1: x: ERROR (boom); retrying on a fresh guest"
    assert format_event(RunEvent("start", 0.0, detail="9 scenarios on 2 guest(s)")) == \
        "cnlab run: 9 scenarios on 2 guest(s)"
    assert format_event(RunEvent("phase", 1.0, 1, "s", "load"), elapsed=99.0).startswith("[  99.0s]")


def test_print_events_prints_one_line_per_event():
    out = io.StringIO()
    show = print_events(out)
    show(RunEvent("note", 1.0, detail="guest 1: its worker exited"))
    show(RunEvent("phase", 2.0, 1, "s", "checks"))
    assert out.getvalue().splitlines() == ["[   1.0s] guest 1: its worker exited", "[   2.0s] guest 1: s: checks"]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError):
        RunEvent("finished", 0.0)
