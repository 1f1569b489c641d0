"""The forkstat plugin: its hook adds the package, its guest program reads real forkstat output (captured on a
host running ``storm.py``), and its verdict fails on every rigged report that breaks the reconciliation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from cnlab_plugins.forkstat import reconcile

from lab import hookimpl
from lab.config import LabConfig
from lab.engine.hooks import guest_packages
from lab.errors import PluginError
from lab.plugin.manager import get_plugin_manager

from ..guestside.guest_modules import PLUGIN_GUESTSIDE, load_guest_module

HERE = Path(__file__).resolve().parent / "forkstat"
CONFIG = LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})


@pytest.fixture(scope="module")
def watch():
    return load_guest_module("forkstat_watch", PLUGIN_GUESTSIDE)


def pm_with(*plugins, config=CONFIG):
    pm = get_plugin_manager(config)
    for plugin in plugins:
        pm.register(plugin)
    return pm


def test_hook_lab_guest_packages_add():
    class A:
        @hookimpl
        def lab_guest_packages_add(self, config):
            return ["strace", "forkstat"]

    class B:
        @hookimpl
        def lab_guest_packages_add(self):
            return None

    config = LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}, packages=("trace-cmd", "strace"))
    assert guest_packages(pm_with(A(), B(), config=config)) == ("forkstat", "strace", "trace-cmd")
    assert guest_packages(pm_with(B())) == ()

    class Bare:
        @hookimpl
        def lab_guest_packages_add(self, config):
            return "forkstat"

    class Odd:
        @hookimpl
        def lab_guest_packages_add(self, config):
            return ["forkstat; reboot"]

    with pytest.raises(PluginError, match="return a list of package names"):
        guest_packages(pm_with(Bare()))
    with pytest.raises(PluginError, match=r"'forkstat; reboot', not a Debian package name"):
        guest_packages(pm_with(Odd()))


def test_the_built_ins_add_no_package_and_the_opt_in_plugin_adds_forkstat_and_its_consumer():
    assert guest_packages(get_plugin_manager(CONFIG)) == ()
    pm = get_plugin_manager(LabConfig(plugin_args=("cnlab_plugins.forkstat",),
                                      env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    assert guest_packages(pm) == ("forkstat",)
    assert "forkstat" in pm.registries.consumers.names()


def test_real_forkstat_output_counts_every_storm_process_by_pid(watch):
    parsed = watch.parse((HERE / "host-storm.forkstat").read_text())
    storm = json.loads((HERE / "storm.json").read_text())
    counts = watch.storm_counts(storm, parsed["events"])
    procs = len(storm["workers"]) + len(storm["children"])
    assert counts["expected"] == {"fork": procs, "exec": storm["execs"], "exit": procs}
    assert counts["seen"] == counts["expected"] and counts["extra"] == 0
    assert parsed["headings"] >= 1 and parsed["nobufs"] == 0  # forkstat repeats its heading every screenful
    # the child line of a fork carries the child's PID; the parent line's PID forkstat reads from /proc later
    assert all(len(kinds) <= 3 for kinds in parsed["events"].values())


def test_nobufs_lines_are_counted_and_a_lost_or_doubled_event_shows(watch):
    text = (HERE / "host-storm.forkstat").read_text()
    storm = json.loads((HERE / "storm.json").read_text())
    child = storm["children"][0]
    lines = [line for line in text.splitlines() if not (line.split()[1:3] == ["exit", str(child)])]
    lines.append("23:58:45 recv ----- nobufs          (No buffer space available)")
    lines.append(f"23:58:45 exec  {storm['children'][1]}                 true")
    parsed = watch.parse("\n".join(lines))
    counts = watch.storm_counts(storm, parsed["events"])
    assert parsed["nobufs"] == 1
    assert counts["expected"]["exit"] - counts["seen"]["exit"] == 1 and counts["extra"] == 1


def _report(missing=0, drops=0, nobufs=0, extra=0, drained=True, storms=True):
    procs = 59
    seen = {"fork": procs, "exec": 57, "exit": procs - missing}
    return {"name": "forkstat", "forkstat": {"socket_drops": drops, "nobufs": nobufs, "drained": drained,
                                             "sentinels": 1, "status": 0, "lines": 240},
            "storms": [{"pid": 107, "workers": 2, "children": 57, "expected": {"fork": procs, "exec": 57,
                                                                              "exit": procs},
                        "seen": seen, "extra": extra}] if storms else []}


def test_the_verdict_holds_when_forkstat_printed_every_event():
    verdict = reconcile("forkstat", _report())
    assert verdict.ok, verdict.detail
    assert "59/59 forks, 57/57 execs, 59/59 exits; missing 0, socket drops 0" in verdict.detail


def test_events_missing_within_the_kernels_drops_and_reported_enobufs_are_allowed():
    assert reconcile("forkstat", _report(missing=3, drops=5, nobufs=1)).ok


@pytest.mark.parametrize("report, problem", [
    (_report(missing=1), "1 event(s) missing but the kernel dropped only 0 for forkstat (silent loss)"),
    (_report(missing=6, drops=5, nobufs=1), "6 event(s) missing but the kernel dropped only 5"),
    (_report(drops=2), "the kernel dropped 2 message(s) for forkstat but it never reported ENOBUFS"),
    (_report(extra=1), "1 event(s) printed twice for one process"),
    (_report(drained=False), "it was not drained"),
    (_report(storms=False), "no storm record to reconcile against"),
    (_report(drops=-1), "not found in /proc/net/netlink"),
    ({"missing": True, "status": 3, "stderr": "forkstat is not installed in the guest"},
     "no report (exit status 3): forkstat is not installed"),
])
def test_the_verdict_fails_on_a_rigged_report(report, problem):
    verdict = reconcile("forkstat", report)
    assert not verdict.ok and problem in verdict.detail, verdict.detail


def test_more_events_than_the_storm_made_fail():
    report = copy.deepcopy(_report())
    report["storms"][0]["seen"]["exec"] = 58
    verdict = reconcile("forkstat", report)
    assert not verdict.ok and "printed more than the storm made" in verdict.detail


def test_the_stall_fault_stops_and_continues_forkstat_and_checks_it_stopped():
    pm = get_plugin_manager(LabConfig(plugin_args=("cnlab_plugins.forkstat",),
                                      env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    fault = pm.registries.faults.get("forkstat-stall").factory({})
    assert [a.args for a in fault.inject] == [("pkill", "-STOP", "-x", "forkstat")]
    assert [a.args for a in fault.restore] == [("pkill", "-CONT", "-x", "forkstat")]
    assert [a.args for a in fault.evidence] == [("output", "T", "ps", "-C", "forkstat", "-o", "stat=")]
