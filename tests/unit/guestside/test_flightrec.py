"""flightrec.py (the flight recorder's guest program) on a fake tracefs: the instance it makes, the events it
enables or reports missing, the end mark, and a saved trace bounded to its tail in whole lines."""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest

from .guest_modules import load_guest_module

flightrec = load_guest_module("flightrec")

KERNEL_EVENTS = ("cnlab/cnlab_insert", "cnlab/cnlab_send", "sched/sched_switch", "irq/softirq_entry")


@pytest.fixture
def tracefs(tmp_path, monkeypatch):
    """A tracefs whose new instances come with the files and events a 6.1 kernel's have (minus some events)."""
    root = tmp_path / "tracing"
    (root / "instances").mkdir(parents=True)
    monkeypatch.setattr(flightrec, "TRACEFS", str(root))
    monkeypatch.setattr(flightrec, "INSTANCE", str(root / "instances" / "cnlab"))
    class Os:
        """os for the program, with tracefs's mkdir and rmdir of an instance."""

        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def mkdir(path, *args):
            os.mkdir(path, *args)
            instance = root / "instances" / "cnlab"
            for name in ("tracing_on", "buffer_size_kb", "trace_clock", "trace_marker", "trace"):
                (instance / name).write_text("")
            (instance / "options").mkdir()
            for event in KERNEL_EVENTS:
                (instance / "events" / event).mkdir(parents=True)
                (instance / "events" / event / "enable").write_text("0")

        @staticmethod
        def rmdir(path):
            shutil.rmtree(path)

    monkeypatch.setattr(flightrec, "os", Os())
    return root / "instances" / "cnlab"


def test_start_makes_a_bounded_overwriting_instance_and_says_which_events_are_missing(tracefs, capsys):
    assert flightrec.main(["start", "--buffer-kb", "2048", "cnlab:cnlab_insert", "cnlab:cnlab_send",
                           "sched:sched_switch", "irq:softirq_entry", "irq:nmi_handler"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["enabled"] == ["cnlab:cnlab_insert", "cnlab:cnlab_send", "sched:sched_switch",
                                  "irq:softirq_entry"]
    assert started["missing"] == ["irq:nmi_handler"] and started["buffer_kb"] == 2048
    assert (tracefs / "buffer_size_kb").read_text() == "2048" and (tracefs / "options" / "overwrite").read_text() == "1"
    assert (tracefs / "trace_clock").read_text() == "local"  # printk's clock: the console's times line up
    assert (tracefs / "tracing_on").read_text() == "1"
    assert (tracefs / "events" / "cnlab" / "cnlab_insert" / "enable").read_text() == "1"


def test_stop_marks_the_end_and_freezes_and_discard_removes_the_instance(tracefs, capsys):
    flightrec.main(["start", "--buffer-kb", "64", "cnlab:cnlab_insert"])
    assert flightrec.main(["stop"]) == 0
    assert (tracefs / "trace_marker").read_text() == flightrec.STOP_MARK
    assert (tracefs / "tracing_on").read_text() == "0"
    assert flightrec.main(["discard"]) == 0 and not tracefs.exists()
    assert flightrec.main(["stop"]) == 0 and json.loads(capsys.readouterr().out.splitlines()[-1]) == {"running": False}


def test_save_keeps_the_tail_in_whole_lines_within_the_bound(tracefs):
    flightrec.main(["start", "--buffer-kb", "64", "cnlab:cnlab_insert"])
    lines = [f"  cnlab_g0/0-105 [000] d..1. {i / 1e4:.6f}: cnlab_insert: cpu=0 depth={i} bytes=60\n"
             for i in range(40000)]
    (tracefs / "trace").write_text("".join(lines))
    out = io.BytesIO()
    total, kept = flightrec.save(16, out)
    data = out.getvalue()
    assert total == sum(len(x) for x in lines) and kept == len(data) <= 16 * 1024
    assert kept > 16 * 1024 - len(lines[-1])  # all but a part line
    assert data.decode().endswith(lines[-1]) and data.decode().startswith("  cnlab_g0/0-105")
    out = io.BytesIO()
    assert flightrec.save(1 << 20, out) == (total, total)  # under the bound: all of it


def test_failures_are_one_line_and_exit_1(tracefs, capsys, monkeypatch):
    assert flightrec.main(["start", "--buffer-kb", "x"]) == 1
    assert capsys.readouterr().err.strip() == "flightrec: start needs --buffer-kb N"
    assert flightrec.main(["bogus"]) == 2
    capsys.readouterr()
    monkeypatch.setattr(flightrec, "TRACEFS", str(tracefs.parent / "nowhere"))
    monkeypatch.setattr(flightrec.ctypes, "CDLL", lambda *a, **k: type("libc", (), {"mount": lambda *a: -1})())
    monkeypatch.setattr(flightrec.ctypes, "get_errno", lambda: 1)
    assert flightrec.main(["start", "--buffer-kb", "64"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("flightrec: ") and "cannot mount tracefs" in err and "\n" not in err
