"""The flight recorder in the guest, on a fake tracefs: the plugin's steps run by the agent's own
``run_steps`` (the instance they make, the events they enable or find missing, the end mark), and the save
program's trace bounded to its tail in whole lines."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from cnlab_plugins import flightrec as plugin

from .guest_modules import load_guest_module

flightrec = load_guest_module("flightrec")
agent = load_guest_module("agent")

#: The events a new instance has on the fake kernel: all of the recorder's but the hard-IRQ exit.
KERNEL_EVENTS = tuple(e.replace(":", "/") for e in plugin.EVENTS if e != "irq:irq_handler_exit")


@pytest.fixture
def tracefs(tmp_path, monkeypatch):
    """A tracefs whose new instances come with the files and events a 6.1 kernel's have (minus one event)."""
    instance = tmp_path / "tracing" / "instances" / "cnlab"
    instance.parent.mkdir(parents=True)
    monkeypatch.setattr(flightrec, "INSTANCE", str(instance))
    monkeypatch.setattr(plugin, "INSTANCE", str(instance))

    class Os:
        """os for the agent's actions, with tracefs's mkdir and rmdir of an instance."""

        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def mkdir(path, *args):
            os.mkdir(path, *args)
            for name in ("tracing_on", "buffer_size_kb", "trace_marker", "trace"):
                (instance / name).write_text("")
            (instance / "trace_clock").write_text("[local] global counter uptime perf mono\n")
            (instance / "options").mkdir()
            for event in KERNEL_EVENTS:
                (instance / "events" / event).mkdir(parents=True)
                (instance / "events" / event / "enable").write_text("0")

        @staticmethod
        def rmdir(path):
            shutil.rmtree(path)

    monkeypatch.setitem(agent.Actions.run.__globals__, "os", Os())  # agent_faults' os
    return instance


def actions():
    return agent.Actions(None, lambda signum: [], "/tmp")


def test_the_agent_runs_the_start_steps_into_a_bounded_overwriting_instance(tracefs):
    errors = []
    done = agent.run_steps(actions(), plugin.start_steps(2048), errors, "setup")
    assert errors == []  # the missing event is optional
    assert (tracefs / "buffer_size_kb").read_text() == "2048" and (tracefs / "options" / "overwrite").read_text() == "1"
    assert done[-1]["value"].startswith("[local]")  # printk's clock, read back: the console's times line up
    assert (tracefs / "tracing_on").read_text() == "1"
    assert (tracefs / "events" / "cnlab" / "cnlab_insert" / "enable").read_text() == "1"
    failed = [s["action"][1] for s in done if not s["ok"]]
    assert failed == [plugin.event_enable("irq:irq_handler_exit")]
    assert all(s["owner"] == "flightrec" for s in done) and done[-2]["value"] == "2048"


def test_a_second_start_resets_the_instance_and_the_stop_marks_the_end(tracefs):
    agent.run_steps(actions(), plugin.start_steps(64), [], "setup")
    (tracefs / "trace").write_text("old events\n")
    (tracefs / "events" / "sched" / "sched_switch" / "enable").write_text("0")
    errors = []
    done = agent.run_steps(actions(), plugin.start_steps(64), errors, "setup")
    assert errors == [] and all(s["ok"] for s in done[:5]) and (tracefs / "trace").read_text() == ""
    assert (tracefs / "events" / "enable").read_text() == "0"  # whatever was on went off first
    assert (tracefs / "events" / "sched" / "sched_switch" / "enable").read_text() == "1"
    assert agent.run_steps(actions(), plugin.stop_steps(), errors, "teardown")[-1]["ok"]
    assert (tracefs / "trace_marker").read_text() == flightrec.STOP_MARK
    assert (tracefs / "tracing_on").read_text() == "0" and errors == []


def test_a_step_that_must_work_and_fails_is_an_agent_error_naming_its_owner(tmp_path, monkeypatch):
    monkeypatch.setattr(plugin, "INSTANCE", str(tmp_path / "no" / "tracefs" / "cnlab"))
    errors = []
    agent.run_steps(actions(), plugin.start_steps(64), errors, "setup")
    assert errors[0].startswith(f"setup step of flightrec failed: mkdir {tmp_path}/no/tracefs/cnlab: "
                                "FileNotFoundError")


def test_save_keeps_the_tail_in_whole_lines_within_the_bound(tracefs):
    tracefs.mkdir()
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


def test_save_failures_are_one_line_and_exit_1(tracefs, capsys):
    assert flightrec.main(["save", "--max-kb", "x"]) == 2
    assert capsys.readouterr().err.strip() == "usage: flightrec.py save --max-kb N"
    assert flightrec.main(["save", "--max-kb", "64"]) == 1  # no instance
    err = capsys.readouterr().err.strip()
    assert err.startswith("flightrec: ") and "No such file" in err and "\n" not in err
