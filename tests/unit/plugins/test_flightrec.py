"""The flight recorder plugin through the one execution path, on the fake guest: it records every scenario,
keeps a failed one's trace (bounded, named in the record) and nothing of a passing one, and turns off."""

from __future__ import annotations

import json

import pytest
from cnlab_plugins.flightrec import DEFAULT_BUFFER_KB, DEFAULT_MAX_KB, EVENTS, RELOAD_NOTE, STOP_ARGV, failure_time

from lab import hookimpl
from lab.config import LabConfig
from lab.engine.execute import execute_scenario
from lab.engine.scenario import scenario_from_dict
from lab.plugin import get_plugin_manager
from lab.report.ftrace import STOP_MARK

from ..engine.test_execute import ENV, FLIGHTREC_TRACE, FakeGuest

INSTANCE = "/sys/kernel/tracing/instances/cnlab"


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


def test_a_passing_scenario_is_recorded_and_keeps_nothing(tmp_path):
    record, guest = run(tmp_path, "holds")
    assert record.passed
    assert guest.trace_commands == ["start", f"stop {INSTANCE} {STOP_MARK}"]  # then nothing
    start = next(c for c in guest.commands if c[2:4] == ["/run/cnlab/py/flightrec.py", "start"])
    assert start[4:] == ["--buffer-kb", str(DEFAULT_BUFFER_KB), *EVENTS]
    assert record.data["flightrec"] == {"buffer_kb": DEFAULT_BUFFER_KB, "events": list(EVENTS), "missing": []}
    assert not list(tmp_path.glob("*.trace"))


def test_a_failed_scenario_keeps_the_trace_bounded_and_named_in_its_record(tmp_path):
    record, guest = run(tmp_path, "fails")
    assert record.status == "failed" and guest.trace_commands == ["start", f"stop {INSTANCE} {STOP_MARK}",
                                                                 "save"]
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
    _, guest = run(tmp_path, "fails", tables={"flightrec": {"buffer_kb": 256, "max_kb": 64}})
    flat = [" ".join(c) for c in guest.commands]
    assert any("start --buffer-kb 256 " in c for c in flat) and any(c.endswith("save --max-kb 64") for c in flat)


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


def test_a_recorder_that_cannot_start_fails_the_scenario_in_one_line(tmp_path, monkeypatch):
    def broken(self, argv):
        from lab.command import CommandResult

        return CommandResult(list(argv), 1, b"", b"flightrec: [Errno 2] cannot mount tracefs\n")

    monkeypatch.setattr(FakeGuest, "flightrec", broken)
    record, _ = run(tmp_path, "holds")
    (hooks,) = [v for v in record.verdicts if v.name == "hooks"]
    assert hooks.detail == ("plugin 'flightrec' failed in hook lab_scenario_start: PluginError: the flight "
                            "recorder did not start: flightrec: [Errno 2] cannot mount tracefs")
    assert record.status == "failed"  # like any plugin that cannot start: the load did not run


def test_the_stop_is_one_shell_command_with_its_values_as_arguments(tmp_path):
    _, guest = run(tmp_path, "holds")
    (stop,) = [c for c in guest.commands if c[:2] == ["sh", "-c"] and "kmemleak" not in c[2]]
    assert stop == STOP_ARGV + [INSTANCE, STOP_MARK] and INSTANCE not in stop[2]


def test_a_guest_that_died_in_the_load_is_not_asked_to_stop(tmp_path):
    from lab.errors import GuestCrashed, GuestError

    guest = FakeGuest(tmp_path, status=1, stderr=b"Traceback: boom\n")
    pm = get_plugin_manager(LabConfig(env=ENV))
    scenario = scenario_from_dict({"name": "s", "emulators": [{"name": "generator"}]}, "s.toml", pm.registries)
    with pytest.raises(GuestError):
        execute_scenario(pm, guest, scenario, "/run/cnlab/py")
    assert guest.trace_commands == ["start"]  # a guest error: the scenario goes to a fresh guest, nothing to keep
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
