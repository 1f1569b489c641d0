"""examples/cnlab-example-plugin: pip-installs, cnlab loads it through its ``cnlab`` entry point, its
objects build and plan, its hooks run through the engine, its verdicts fail on rigged results, and the
commands docs/plugins.md runs with it installed print what the page says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import LabConfig
from lab.engine.execute import execute_scenario
from lab.engine.plan import plan_scenario
from lab.engine.scenario import load_scenario
from lab.plugin import Verdict, get_plugin_manager
from lab.plugin.objects import Fault, FileCounter, GeneratorProfile, GuestProgram

from ..docs.snippets import run_steps, steps
from ..engine.test_execute import FakeGuest, agent_report
from .example_package import EXAMPLE, ROOT, SCENARIO, install_example

PAGE = (ROOT / "docs" / "plugins.md").read_text()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    return install_example(tmp_path_factory.mktemp("example") / "site")


@pytest.fixture
def pm(installed, monkeypatch):
    """A plugin manager that finds the installed package through its entry point, as ``cnlab`` does."""
    monkeypatch.syspath_prepend(str(installed))
    return get_plugin_manager(LabConfig(plugin_tables={"example": {"beat_rate": 75}}))


def _env(target: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT)])
    return env


def test_example_is_loaded_through_its_entry_point_and_its_objects_build(pm):
    info = pm.infos["example"]
    assert (info.source, info.origin) == ("entry point", "cnlab-example-plugin 0.2.0")
    assert pm.kind_of("example") == "emulator+consumer+fault+event"
    assert set(pm.hooks_of("example")) == {
        "lab_settings_declare", "lab_emulators_register", "lab_consumers_register", "lab_faults_register",
        "lab_events_register", "lab_guest_files_add", "lab_scenario_start", "lab_result_collect",
        "lab_result_check"}
    regs = pm.registries
    profile = regs.emulators.build("heartbeat", regs.emulators.validate("heartbeat", {"beats": 10}, str))
    assert isinstance(profile, GeneratorProfile) and (profile.idx, profile.group) == (0x1A, 26)
    assert profile.generators[0]["rate"] == 75 and profile.generators[0]["count"] == 10  # [plugins.example]
    watch = regs.consumers.build("beat-watch", regs.consumers.validate("beat-watch", {}, str))
    counter = regs.consumers.build("beat-counter", regs.consumers.validate("beat-counter", {}, str))
    assert isinstance(watch, GuestProgram) and watch.protocol == "checker"
    assert watch.argv("/g") == ["python3", "/g/heartbeat_watch.py", "--rcvbuf", "1048576"]
    assert counter.protocol == "oneshot" and counter.argv("/g")[1:] == ["/g/heartbeat_counter.py", "--group", "26",
                                                                        "--seconds", "5.0"]
    hog = regs.faults.build("cpu-hog", regs.faults.validate("cpu-hog", {"ms": 50}, str))
    assert isinstance(hog, Fault) and hog.side == "guest" and hog.restore == ()
    assert hog.inject[0].to_json() == ["exec", "python3", "/run/cnlab/plugins/heartbeat_hog.py", "--ms", "50",
                                       "--marks", "/run/cnlab/example/marks.jsonl"]
    assert regs.events.get("softirqs").probe == FileCounter("/proc/stat", r"softirq (\d+)")


def test_the_example_scenario_plans_with_the_installed_package(pm):
    plan = plan_scenario(load_scenario(SCENARIO, pm.registries), pm.registries)
    assert [(g["idx"], g["group"], g["context"], g["count"]) for g in plan["generators"]] == [(0x1A, 26, "softirq",
                                                                                               150)]
    assert [c["argv"][1:] for c in plan["consumers"]] == [
        ["/run/cnlab/plugins/heartbeat_watch.py", "--rcvbuf", "1048576", "--groups", "26"],
        ["/run/cnlab/plugins/heartbeat_counter.py", "--group", "26", "--seconds", "5.0"]]
    assert [(f["label"], f["trigger"]["text"]) for f in plan["faults"]] == [("hog-on-beats", "on received >= 100"),
                                                                           ("hog-on-softirqs", "on softirqs >= 300")]
    assert plan["events"]["softirqs"] == {"kind": "file", "path": "/proc/stat", "pattern": r"softirq (\d+)",
                                          "relative": True}


class ExampleGuest(FakeGuest):
    """Answers like a guest whose agent ran the example scenario, and whose cpu-hog program left ``marks``."""

    def __init__(self, tmp_path, report, marks):
        super().__init__(tmp_path, report)
        self.marks = marks

    def run(self, argv, **kwargs):
        if argv[:2] == ["cat", "/run/cnlab/example/marks.jsonl"]:
            self.commands.append(list(argv))
            from lab.command import CommandResult
            return CommandResult(list(argv), 0, "".join(m + "\n" for m in self.marks).encode(), b"")
        return super().run(argv, **kwargs)


def _example_report(received=300, beats=300, firings=2, ok=True):
    watch = {"name": "beat-watch", "schema": 1, "groups": [26], "received": received, "gaps": 0, "reordered": 0,
             "enobufs": 0, "socket_drops": 0, "max_interval_ms": 21.0,
             "streams": {"0/0": {"received": received // 2, "gaps": 0, "reordered": 0, "next": received // 2},
                         "0/1": {"received": received - received // 2, "gaps": 0, "reordered": 0,
                                 "next": received - received // 2}},
             "accounting": {"exact": True, "lost": 300 - received, "socket_drops": 0, "pre_socket": 0,
                            "cbus_nlerr": 0, "reconciled": received == 300}}
    counter = {"name": "beat-counter", "protocol": "oneshot", "beats": beats, "per_cpu": {"0": beats},
               "accounting": {"exact": False, "reason": "one-shot consumer: no per-stream report"}}
    faults = [{"label": label, "name": "cpu-hog", "side": "guest", "trigger": f"on {event}", "due": 1.0 + n,
               "start": 1.0 + n, "end": 1.5 + n, "restored": None, "ok": ok, "seen": {"count": 100},
               "actions": [{"action": "exec python3 /run/cnlab/plugins/heartbeat_hog.py", "ok": ok}],
               "summary": ""} for n, (label, event) in enumerate([("hog-on-beats", "received >= 100"),
                                                                   ("hog-on-softirqs", "softirqs >= 300")][:firings])]
    return agent_report(consumers=[watch, counter], faults=faults,
                        generators={"0": {"state": 2, "cpus": {"0": {"generated": 150}, "1": {"generated": 150}}}})


MARK = '{"ms": 200, "busy_ms": 230.8, "cpus": [0, 1], "policy": "SCHED_FIFO", "pid": 9}'


def _verdicts(record):
    return {v.name: v for v in record.verdicts if v.plugin == "example"}


def test_its_hooks_run_through_the_engine_and_its_verdicts_hold(pm, tmp_path):
    scenario = load_scenario(SCENARIO, pm.registries)
    guest = ExampleGuest(tmp_path, _example_report(), [MARK, MARK])
    record = execute_scenario(pm, guest, scenario, "/run/cnlab/py")
    assert record.passed, record.problems
    assert ["rm", "-f", "/run/cnlab/example/marks.jsonl"] in guest.commands  # lab_scenario_start
    assert record.data["example"]["heartbeat_gen_ids"] == [0] and len(record.data["example"]["marks"]) == 2
    mine = _verdicts(record)
    assert set(mine) == {"beats", "beat-counter", "hog"} and all(v.ok for v in mine.values())
    assert mine["beats"].detail == ("beat-watch received 300 of the 300 heartbeats the module generated, 0 missing; "
                                    "longest silence 21.0 ms")
    files = {dest for dest in guest.files}
    assert {"/run/cnlab/plugins/heartbeat_watch.py", "/run/cnlab/plugins/heartbeat_counter.py",
            "/run/cnlab/plugins/heartbeat_hog.py"} <= files


@pytest.mark.parametrize(("rig", "verdict", "detail"), [
    ({"received": 290}, "beats", "beat-watch received 290 of the 300 heartbeats"),
    ({"beats": 0}, "beat-counter", "beat-counter counted 0 of the 300 heartbeats"),
    ({"beats": 301}, "beat-counter", "beat-counter counted 301 of the 300 heartbeats"),
    ({"marks": [MARK]}, "hog", "2 firing(s) of cpu-hog, 1 mark(s) of its program"),
    ({"ok": False}, "hog", "2 firing(s) of cpu-hog, 2 mark(s)"),
    ({"firings": 0, "marks": []}, "hog", "0 firing(s) of cpu-hog, 0 mark(s)"),
    ({"marks": [MARK.replace("230.8", "150.0")] * 2}, "hog", "busy [150.0, 150.0] ms"),
])
def test_each_of_its_verdicts_fails_on_a_rigged_result(pm, tmp_path, rig, verdict, detail):
    marks = rig.pop("marks", [MARK, MARK])
    guest = ExampleGuest(tmp_path, _example_report(**rig), marks)
    record = execute_scenario(pm, guest, load_scenario(SCENARIO, pm.registries), "/run/cnlab/py")
    failed = _verdicts(record)[verdict]
    assert not failed.ok and detail in failed.detail, failed
    assert not record.passed


def test_its_check_says_nothing_about_scenarios_without_its_objects(pm):
    from lab.engine.scenario import scenario_from_dict

    scenario = scenario_from_dict({"emulators": [{"name": "generator"}]}, "plain.toml", pm.registries)
    answers = pm.call_each("lab_result_check", scenario=scenario, data={"agent": agent_report()})
    assert answers["example"] == [[]]
    assert all(isinstance(v, Verdict) for v in answers["checks"][0])


def test_cnlab_plugins_lists_and_blocks_the_example(installed, tmp_path):
    run = [sys.executable, "-m", "lab"]
    listed = subprocess.run(run + ["plugins"], capture_output=True, text=True, cwd=tmp_path, env=_env(installed),
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("example "))
    assert "emulator+consumer+fault+event" in row and "entry point" in row and "cnlab-example-plugin 0.2.0" in row
    for name in ("heartbeat", "beat-watch", "beat-counter", "cpu-hog", "softirqs"):
        assert f"\n  {name} " in listed.stdout, name
    blocked = subprocess.run(run + ["-p", "no:example", "plugins"], capture_output=True, text=True, cwd=tmp_path,
                             env=_env(installed), timeout=60)
    assert blocked.returncode == 0, blocked.stderr
    assert "heartbeat" not in blocked.stdout
    (tmp_path / "cnlab.toml").write_text("[plugins.example]\nbeat_rate = 'fast'\n")
    failed = subprocess.run(run + ["plugins"], capture_output=True, text=True, cwd=tmp_path, env=_env(installed),
                            timeout=60)
    assert failed.returncode == 2
    assert failed.stderr == "cnlab: error: [plugins.example] beat_rate: expected an integer in 1..10000, got string " \
                            "'fast'\n"


def test_the_pages_commands_with_the_example_installed_print_what_it_says(installed, tmp_path):
    def cnlab(argv, folder):
        proc = subprocess.run([sys.executable, "-m", "lab", *argv], capture_output=True, text=True, cwd=folder,
                              env=_env(installed), timeout=60)
        return proc.returncode, proc.stdout + proc.stderr

    page_steps = steps(PAGE, tag="example")
    assert run_steps(page_steps, tmp_path, cnlab, tag="example") >= 3


def test_the_pages_scenario_format_example_reads_and_plans(pm):
    from lab.engine.scenario import scenario_from_dict

    text = next(s.text for s in steps(PAGE) if s.kind == "file" and s.path == "scenario-format.toml")
    import tomllib

    scenario = scenario_from_dict(tomllib.loads(text), "scenario-format.toml", pm.registries)
    plan = plan_scenario(scenario, pm.registries)
    assert [c["groups"] for c in plan["consumers"]] == [[26]] and plan["faults"][0]["label"] == "hog-on-beats"


def test_the_pages_scenario_is_the_packages():
    page = next(s.text for s in steps(PAGE) if s.kind == "file" and s.path == "heartbeat-faults.toml")
    assert page == SCENARIO.read_text()
    assert EXAMPLE.joinpath("README.md").is_file()
