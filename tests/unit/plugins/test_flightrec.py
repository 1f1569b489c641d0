"""The flight recorder plugin through the one execution path, on the fake guest: the agent records every
scenario with the plugin's steps, a failed one's trace is kept (bounded, named in the record) and nothing of a
passing one, a recorder that cannot start fails its scenario, and it turns off."""

from __future__ import annotations

import json

import pytest
from cnlab_plugins.flightrec import (
    DEFAULT_BUFFER_KB,
    DEFAULT_MAX_KB,
    EVENTS,
    INSTANCE,
    RELOAD_NOTE,
    STOP_ARGV,
    event_enable,
    failure_time,
    start_steps,
    stop_steps,
)

from lab import hookimpl
from lab.config import LabConfig
from lab.engine.execute import execute_scenario
from lab.engine.scenario import scenario_from_dict
from lab.plugin import get_plugin_manager
from lab.report.ftrace import STOP_MARK

from ..engine.test_execute import ENV, FLIGHTREC_TRACE, FakeGuest


class Rigged:
    """Fails the scenario named ``fails``."""

    @hookimpl
    def lab_result_check(self, scenario):
        return ["rigged to fail"] if scenario.name == "fails" else []


def run(tmp_path, name: str, tables=None, args=()):
    pm = get_plugin_manager(LabConfig(env=ENV, plugin_tables=tables or {}, plugin_args=tuple(args)))
    pm.add_plugin(Rigged(), "rigged", "test", "here")
    guest = FakeGuest(tmp_path)
    scenario = scenario_from_dict({"name": name, "emulators": [{"name": "generator"}]}, "s.toml", pm.registries)
    return execute_scenario(pm, guest, scenario, "/run/cnlab/py"), guest


@pytest.fixture(autouse=True)
def _recorder_on(monkeypatch):
    monkeypatch.delenv("CNLAB_FLIGHTREC", raising=False)


def test_a_passing_scenario_is_recorded_by_the_agent_and_keeps_nothing(tmp_path):
    record, guest = run(tmp_path, "holds")
    assert record.passed
    assert guest.trace_commands == []  # no program of its own: the agent started and stopped it
    (plan,) = guest.plans
    assert plan["setup"] == start_steps(DEFAULT_BUFFER_KB) and plan["teardown"] == stop_steps()
    assert plan["setup"][0] == {"owner": "flightrec", "action": ["mkdir", INSTANCE], "optional": False}
    assert record.data["flightrec"] == {"buffer_kb": DEFAULT_BUFFER_KB, "clock": "local", "events": list(EVENTS),
                                        "missing": [],
                                        "failed": []}
    assert not [v for v in record.verdicts if v.name == "flight recorder"]  # only a failure adds a row
    assert not list(tmp_path.glob("*.trace"))


def test_a_failed_scenario_keeps_the_trace_bounded_and_named_in_its_record(tmp_path):
    record, guest = run(tmp_path, "fails")
    assert record.status == "failed" and guest.trace_commands == ["save"]
    save = next(c for c in guest.commands if c[2:4] == ["/run/cnlab/py/flightrec.py", "save"])
    assert save[4:] == ["--max-kb", str(DEFAULT_MAX_KB)]
    kept = record.data["flightrec"]["trace"]
    path = tmp_path / "fake.fails.trace"
    assert kept["path"] == str(path) and path.read_text() == FLIGHTREC_TRACE
    assert kept["bytes"] == len(FLIGHTREC_TRACE) and kept["truncated"] is False
    assert kept["events"] == {"cnlab_insert": 1, "tracing_mark_write": 1} and kept["cpus"] == [0, 1]
    assert kept["end"] == 27.8 and kept["overwritten"] == 0 and kept["failure_time"] is None
    json.dumps(record.to_json())  # the record stays JSON


def test_its_settings_size_the_buffer_and_the_kept_text(tmp_path):
    record, guest = run(tmp_path, "fails", tables={"flightrec": {"buffer_kb": 256, "max_kb": 64}})
    assert [f"{INSTANCE}/buffer_size_kb", "256"] in [s["action"][1:] for s in guest.plans[0]["setup"]]
    assert record.data["flightrec"]["buffer_kb"] == 256  # read back
    assert any(" ".join(c).endswith("save --max-kb 64") for c in guest.commands)


@pytest.mark.parametrize("how", ["setting", "env", "blocked"])
def test_it_turns_off(tmp_path, monkeypatch, how):
    tables, args = {}, ()
    if how == "setting":
        tables = {"flightrec": {"enabled": False}}
    elif how == "env":
        monkeypatch.setenv("CNLAB_FLIGHTREC", "0")
    else:
        args = ("no:flightrec",)
    record, guest = run(tmp_path, "fails", tables=tables, args=args)
    assert guest.trace_commands == [] and "flightrec" not in record.data and record.status == "failed"
    assert guest.plans[0]["setup"] == [] and guest.plans[0]["teardown"] == []


def _outcomes(failing: set[str]):
    """The fake agent's step outcomes, with the steps in ``failing`` (a path, or an action and its path) failed."""
    every_step_works = FakeGuest.steps

    def steps(steps):
        done = every_step_works(steps)
        for out in done:
            if out["action"][1] in failing or " ".join(out["action"][:2]) in failing:
                out.update(ok=False, error="FileNotFoundError: [Errno 2] No such file or directory")
        return done
    return staticmethod(steps)


def test_a_recorder_that_cannot_start_fails_the_scenario_in_one_line_and_saves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeGuest, "steps", _outcomes({f"mkdir {INSTANCE}"}))
    record, guest = run(tmp_path, "holds")
    (verdict,) = [v for v in record.verdicts if v.name == "flight recorder"]
    assert not verdict.ok and verdict.detail == (f"did not start: mkdir {INSTANCE}: FileNotFoundError: [Errno 2] "
                                                 "No such file or directory")
    assert record.status == "failed" and guest.trace_commands == []


def test_a_kernel_without_the_modules_tracepoints_fails_and_missing_events_are_listed(tmp_path, monkeypatch):
    cnlab_events = {event_enable(e) for e in EVENTS if e.startswith("cnlab:")}
    monkeypatch.setattr(FakeGuest, "steps", _outcomes(cnlab_events | {event_enable("irq:irq_handler_exit")}))
    record, _ = run(tmp_path, "holds")
    assert record.data["flightrec"]["missing"] == [e for e in EVENTS if e.startswith("cnlab:")] + [
        "irq:irq_handler_exit"]
    (verdict,) = [v for v in record.verdicts if v.name == "flight recorder"]
    assert not verdict.ok and "none of the module's tracepoints" in verdict.detail


def test_a_trace_on_another_clock_than_printks_fails_the_scenario(tmp_path, monkeypatch):
    kernel = FakeGuest.steps

    def steps(steps):
        done = kernel(steps)
        for out in done:
            if out["action"] == ["read", f"{INSTANCE}/trace_clock"]:
                out["value"] = "local [global] counter uptime perf mono"
        return done

    monkeypatch.setattr(FakeGuest, "steps", staticmethod(steps))
    record, _ = run(tmp_path, "holds")
    assert record.data["flightrec"]["clock"] == "global"
    (verdict,) = [v for v in record.verdicts if v.name == "flight recorder"]
    assert not verdict.ok and verdict.detail.startswith("records on the global clock, not local (printk's)")


def test_an_agent_that_did_not_stop_it_is_followed_by_one_shell_command(tmp_path):
    from cnlab_plugins import flightrec

    from lab.plugin import AGENT_REPORT, Stash

    stash = Stash()
    stash[flightrec.STARTED] = {"instance": INSTANCE}
    stash[AGENT_REPORT] = {"teardown": []}
    guest = FakeGuest(tmp_path)
    flightrec.lab_scenario_stop(None, guest, stash, None, {})
    (stop,) = [c for c in guest.commands if c[:2] == ["sh", "-c"]]
    assert stop == STOP_ARGV + [INSTANCE, STOP_MARK] and INSTANCE not in stop[2]
    stash[AGENT_REPORT] = {"teardown": FakeGuest.steps(flightrec.stop_steps())}
    guest = FakeGuest(tmp_path)
    flightrec.lab_scenario_stop(None, guest, stash, None, {})
    assert guest.commands == []  # the agent did it


def test_a_guest_that_died_in_the_load_is_not_asked_to_stop(tmp_path):
    from lab.errors import GuestCrashed, GuestError

    guest = FakeGuest(tmp_path, status=1, stderr=b"Traceback: boom\n")
    pm = get_plugin_manager(LabConfig(env=ENV))
    scenario = scenario_from_dict({"name": "s", "emulators": [{"name": "generator"}]}, "s.toml", pm.registries)
    with pytest.raises(GuestError):
        execute_scenario(pm, guest, scenario, "/run/cnlab/py")
    assert guest.trace_commands == []  # a guest error: the scenario goes to a fresh guest, nothing to keep
    from cnlab_plugins import flightrec

    from lab.plugin import Stash

    stash = Stash()
    stash[flightrec.STARTED] = {"instance": INSTANCE}
    guest = FakeGuest(tmp_path)
    flightrec.lab_scenario_stop(None, guest, stash, GuestCrashed("guest w1g1 is gone"), {})
    assert guest.trace_commands == []  # a crashed guest (maybe paused in a panic, being dumped) is left alone


def test_a_module_reload_is_noted_in_the_record(tmp_path):
    pm = get_plugin_manager(LabConfig(env=ENV))
    scenario = scenario_from_dict({"name": "r", "emulators": [{"name": "generator"}],
                                   "faults": [{"name": "module-reload", "at": 0.5}]}, "s.toml", pm.registries)
    record = execute_scenario(pm, FakeGuest(tmp_path), scenario, "/run/cnlab/py")
    assert record.data["flightrec"]["note"] == RELOAD_NOTE
    assert "note" not in run(tmp_path, "holds")[0].data["flightrec"]


def test_the_guest_program_and_the_report_agree_on_the_stop_mark():
    from ..guestside.guest_modules import load_guest_module

    assert load_guest_module("flightrec").STOP_MARK == STOP_MARK


def test_the_failure_time_is_the_kernel_reports_console_time():
    console = ("[   27.700000] cnlab: loaded\n"
               "[   27.773329] WARNING: CPU: 0 PID: 108 at src/ctl.c:266 cnlab_do_fault+0x17c/0x1c0 [cnlab]\r\n"
               "[   27.773400] Modules linked in: cnlab(OE)\n")
    data = {"kernel": {"reports": [{"title": "WARNING: CPU: 0 PID: 108 at src/ctl.c:266 cnlab_do_fault+0x17c/0x1c0",
                                    "excerpt": "no timestamps here"}]}}
    assert failure_time(data, console) == 27.773329
    assert failure_time({"kernel": {"reports": []}}, console) is None
    assert failure_time(data, "") is None
