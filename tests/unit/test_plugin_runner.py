"""The hook driver, the built-in runner and fault wrapper, and the guest-side accounting (no QEMU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import hookimpl, kabi
from lab.command import CommandResult
from lab.config import LabConfig
from lab.errors import ConfigError, PluginError
from lab.plugin import (
    FAULT_PLAN,
    REGISTRIES,
    GuestFile,
    ScenarioInfo,
    Stash,
    get_plugin_manager,
    guest_setup_args,
    install_guest_files,
    run_scenario,
)
from lab.plugin.emulation import CommandFault, GeneratorProfile, GuestProgram

ROOT = Path(__file__).resolve().parents[2]
GUESTSIDE = ROOT / "plugins" / "guestside"
ENV = {"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}


def load_guest_module(name: str):
    sys.path.insert(0, str(ROOT / "lab"))  # the guest programs import kabi from their own folder
    try:
        spec = importlib.util.spec_from_file_location(f"guestside_{name}", GUESTSIDE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "lab"))


class FakeGuest:
    """Records commands and files; answers runplan.py with a canned report."""

    def __init__(self, report: dict | None = None, status: int = 0) -> None:
        self.commands: list[tuple[list[str], bytes | None]] = []
        self.files: dict[str, tuple[Path, int]] = {}
        self.qmp_calls: list[str] = []
        self.report = report or {"errors": [], "consumers": [], "generators": {}, "cbus": {}, "live": [],
                                 "faults": []}
        self.status = status
        self.ssh = SimpleNamespace(put=lambda src, dest, mode=None: self.files.__setitem__(dest, (src, mode)))
        self.link = None  # user networking: no lab link

    def run(self, argv, timeout=None, check=False, stdin=None):
        self.commands.append((list(argv), stdin))
        out = json.dumps(self.report).encode() if argv[-1].endswith("runplan.py") else b""
        return CommandResult(list(argv), self.status, out, b"boom\n" if self.status else b"")

    def qmp(self, command):
        self.qmp_calls.append(command)


def manager(*plugin_args: str, tables=None):
    return get_plugin_manager(LabConfig(env=ENV, plugin_args=plugin_args, plugin_tables=tables or {}))


def plan_of(guest: FakeGuest) -> dict:
    return json.loads(next(stdin for argv, stdin in guest.commands if argv[-1].endswith("runplan.py")))


def test_install_guest_files_copies_every_contribution():
    pm = manager()
    guest = FakeGuest()
    files = install_guest_files(pm, guest)
    assert {Path(f.dest).name for f in files} >= {"kabi.py", "consume.py", "runplan.py", "storm.py"}
    assert guest.commands[0][0] == ["mkdir", "-p", "/run/cnlab/plugins"]
    assert guest.files["/run/cnlab/plugins/consume.py"][1] == 0o755


def test_two_plugins_installing_one_destination_is_an_error(tmp_path):
    class Clash:
        @hookimpl
        def lab_guest_files_add(self):
            return [GuestFile(tmp_path / "other.py", "/run/cnlab/plugins/kabi.py")]

    pm = manager()
    pm.add_plugin(Clash(), "clash", "test", "here")
    with pytest.raises(Exception, match="two plugins install /run/cnlab/plugins/kabi.py"):
        install_guest_files(pm, FakeGuest())


def test_guest_setup_args_collects_cmdline_and_qemu_args():
    class P:
        @hookimpl
        def lab_kernel_cmdline_add(self):
            return ["slub_debug=FZPU"]

        @hookimpl
        def lab_qemu_args_add(self):
            return ["-device", "virtio-rng-pci"]

    pm = manager()
    pm.add_plugin(P(), "p", "test", "here")
    assert guest_setup_args(pm, None) == (("slub_debug=FZPU",), ("-device", "virtio-rng-pci"))


def test_runner_plan_from_registries():
    pm = manager()
    guest = FakeGuest()
    scenario = ScenarioInfo("mix", emulators=("proc-events", "irq", "cn_proc"), consumers=("checker", "multi"),
                            params={"proc-events": {"count": 10}})
    result = run_scenario(pm, guest, scenario)
    assert result.passed, result
    plan = plan_of(guest)
    assert [g["gen_id"] for g in plan["generators"]] == [0, 1, 2, 3, 4]  # 3 proc-events + 2 irq generators
    assert {g["group"] for g in plan["generators"]} == {18, 24}
    assert plan["generators"][0]["count"] == 10
    for g in plan["generators"]:
        kabi.gen_start_body(**g)
    assert plan["live"][0]["name"] == "cn_proc" and plan["live"][0]["driver"][1].endswith("storm.py")
    checker = plan["consumers"][0]
    assert checker["argv"][-2:] == ["--groups", "18,24,1"] and checker["listen"] is True
    assert plan["consumers"][1]["instances"] == 3
    assert result.data["runner"]["plan"] == plan


def test_bad_emulator_settings_fail_only_that_scenario():
    pm = manager()
    bad = ScenarioInfo("bad", emulators=("audit",), consumers=("checker",), params={"audit": {"rate": "x"}})
    good = ScenarioInfo("good", emulators=("audit",), consumers=("checker",))
    results = [run_scenario(pm, FakeGuest(), s) for s in (bad, good)]
    assert not results[0].passed
    assert results[0].error.startswith("plugin 'runner' failed in hook lab_phase_run: ConfigError: "
                                       "[plugins.emulators.emulators.audit] rate: expected integer")
    assert results[1].passed


def test_runplan_failure_is_the_scenario_error():
    result = run_scenario(manager(), FakeGuest(status=1), ScenarioInfo("s", emulators=("audit",)))
    assert not result.passed
    assert result.error == ("plugin 'runner' failed in hook lab_phase_run: LabError: "
                            "runplan.py exited with status 1: boom")
    assert "runner: no load report" in result.problems


def test_raising_plugin_fails_its_scenario_and_stop_still_runs():
    calls = []

    class Broken:
        @hookimpl
        def lab_scenario_start(self, scenario):
            if scenario.name == "a":
                raise RuntimeError("cannot start")

        @hookimpl
        def lab_scenario_stop(self, scenario, error):
            calls.append((scenario.name, type(error).__name__ if error else None))

    pm = manager("no:runner")
    pm.add_plugin(Broken(), "broken", "test", "here")
    a = run_scenario(pm, FakeGuest(), ScenarioInfo("a"))
    b = run_scenario(pm, FakeGuest(), ScenarioInfo("b"))
    assert a.error == "plugin 'broken' failed in hook lab_scenario_start: RuntimeError: cannot start"
    assert not a.passed and b.passed
    assert calls == [("a", "HookCallError"), ("b", None)]
    assert pm.hook.lab_report_status(result=a) == "FAIL"


def test_fault_wrapper_puts_guest_faults_in_the_plan_and_runs_qmp_faults_on_the_host():
    pm = manager()
    guest = FakeGuest()
    scenario = ScenarioInfo("f", emulators=("irq",), consumers=("checker",),
                            faults=("cpu-offline", "module-reload", "pause"),
                            params={"pause": {"delay_s": 0.0, "seconds": 0.0}})
    result = run_scenario(pm, guest, scenario)
    assert result.passed, result
    faults = plan_of(guest)["faults"]
    assert [f["name"] for f in faults] == ["cpu-offline", "module-reload"]
    assert faults[1]["hold_s"] == 1.0 and faults[1]["restore"] == [["insmod", "/run/cnlab/cnlab.ko"]]
    assert guest.qmp_calls == ["stop", "cont"]
    assert [e["action"] for e in result.data["faults"]["host_faults"]] == ["qmp stop", "qmp cont"]


def test_link_flap_on_a_guest_without_the_lab_link_fails_the_scenario():
    result = run_scenario(manager(), FakeGuest(), ScenarioInfo("l", emulators=("irq",), faults=("link-flap",),
                                                               params={"link-flap": {"delay_s": 0, "down_s": 0}}))
    assert not result.passed
    assert any("link down failed: the guest is not on the lab's tap network" in p for p in result.problems), result


def test_link_flap_takes_the_tap_down_then_up():
    faults = sys.modules["cnlab_plugins.faults"]
    states = []
    guest = SimpleNamespace(link=SimpleNamespace(set_tap_up=states.append))
    flap = manager().registries.faults.build("link-flap", {"delay_s": 0, "down_s": 0})
    log = []
    faults._host_fault(guest, flap, log)
    assert states == [False, True]
    assert [(e["action"], e["ok"]) for e in log] == [("link down", True), ("link up", True)]


def test_netem_goes_into_the_guest_plan_on_the_guests_side_of_the_link():
    guest = FakeGuest()
    run_scenario(manager(), guest, ScenarioInfo("n", emulators=("irq",), faults=("link-netem",)))
    (netem,) = plan_of(guest)["faults"]
    assert netem["inject"] == [["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "100ms",
                                "loss", "5.0%"]]
    assert netem["restore"] == [["tc", "qdisc", "del", "dev", "eth0", "root"]]


REPORT = {
    "errors": [], "cbus": {"balanced": True}, "live": [], "faults": [],
    "consumers": [{"name": "checker", "received": 10, "reordered": 0,
                   "accounting": {"exact": True, "lost": 5, "socket_drops": 4, "pre_socket": 0, "cbus_nlerr": 0,
                                  "reconciled": False}},
                  {"name": "slow", "missing": True, "status": -9, "stderr": ""},
                  {"name": "late", "received": 0, "reordered": 2, "accounting": {"exact": False}}],
}


def test_runner_checks_reconciliation_order_and_missing_reports():
    runner = sys.modules["cnlab_plugins.runner"]
    problems = runner.check_report(ScenarioInfo("s", emulators=("audit",)), REPORT)
    assert problems == [
        "consumer checker: lost 5 != socket drops 4 + send failures 0 + CBUS send errors 0",
        "consumer slow: no report (status -9): ",
        "consumer late: received nothing",
        "consumer late: 2 messages out of order or duplicated",
    ]
    killed = runner.check_report(ScenarioInfo("s", emulators=("audit",), faults=("consumer-kill",)), REPORT)
    assert "consumer slow: no report (status -9): " not in killed


def test_runner_rejects_objects_it_cannot_drive():
    runner = sys.modules["cnlab_plugins.runner"]
    pm = manager()
    from lab.plugin import ConsumerSpec, EmulatorSpec

    pm.registries.emulators.for_plugin("t").add_emulator(EmulatorSpec("odd", "x", 0x30, 1, 30, lambda s: object()))
    pm.registries.consumers.for_plugin("t").add_consumer(ConsumerSpec("oneshot", "x", lambda s: GuestProgram(
        "oneshot", "prog.py", {"seconds": 1}, protocol="oneshot")))
    stash = Stash()
    stash[REGISTRIES] = pm.registries
    stash[FAULT_PLAN] = []
    with pytest.raises(PluginError, match="the runner drives GeneratorProfile and LiveSource objects, not object"):
        runner.build_plan(ScenarioInfo("s", emulators=("odd",)), stash)
    plan = runner.build_plan(ScenarioInfo("s", emulators=("audit",), consumers=("oneshot",)), stash)
    assert plan["consumers"][0]["argv"][-2:] == ["--seconds", "1"]  # no --groups for one-shot programs


def test_generator_profile_validation():
    with pytest.raises(PluginError, match="hard-IRQ generators need the cbus path"):
        GeneratorProfile("x", 0x30, 1, 30, ({"count": 1, "context": "hardirq", "path": "direct"},))
    with pytest.raises(PluginError, match="sizes must satisfy"):
        GeneratorProfile("x", 0x30, 1, 30, ({"count": 1, "size_min": 16},))
    with pytest.raises(PluginError, match="needs a count or a duration"):
        GeneratorProfile("x", 0x30, 1, 30, ({"rate": 5},))
    with pytest.raises(PluginError, match="unknown GEN_START fields"):
        GeneratorProfile("x", 0x30, 1, 30, ({"count": 1, "colour": 5},))
    assert CommandFault("q", (("qmp", "stop"),)).host_side
    assert not CommandFault("g", (("true",),)).host_side


def test_emulator_settings_scale():
    pm = manager(tables={"emulators": {"scale": 0.1}})
    assert pm.registries.emulators.build("irq").generators[0]["count"] == 200
    with pytest.raises(ConfigError):
        manager(tables={"emulators": {"scale": "big"}})


# -- guest-side programs, run on the host ------------------------------------------------


def _datagram(gen_id: int, cpu: int, seq: int, ts: int = 1) -> bytes:
    event = kabi.EVENT.pack(gen_id=gen_id, cpu=cpu, seq=seq, ts_ns=ts, len=32, flags=0)
    return kabi.frame_nl(kabi.frame_cn(0x12, 1, event, seq=seq & 0xFFFFFFFF))


def test_consumer_checker_counts_gaps_and_reorders():
    consume = load_guest_module("consume")
    checker = consume.Checker(resync=False)
    for seq in (0, 1, 4, 3, 5):
        buf = _datagram(0, 1, seq)
        consume.handle(buf, len(buf), checker, 10)
    report = checker.report()
    assert report["received"] == 5 and report["gaps"] == 2 and report["reordered"] == 1
    assert report["streams"]["0/1"]["next"] == 6
    resync = consume.Checker(resync=True)
    for seq in (100, 101, 103):
        buf = _datagram(2, 0, seq)
        consume.handle(buf, len(buf), resync, 10)
    assert resync.report()["gaps"] == 1 and resync.report()["streams"]["2/0"]["baseline"] == 100


def test_consumer_checker_reads_cn_proc_per_cpu_counters():
    consume = load_guest_module("consume")
    checker = consume.Checker(resync=False)
    for seq in (7000, 7001, 7003):
        body = consume.PROC_EVENT.pack(1, 1, 5) + bytes(24)
        buf = kabi.frame_nl(kabi.frame_cn(1, 1, body, seq=seq))
        consume.handle(buf, len(buf), checker, 10)
    assert checker.report()["streams"]["proc/1"] == {"received": 3, "gaps": 1, "reordered": 0, "baseline": 7000,
                                                     "next": 7004}


def test_runplan_reconcile():
    runplan = load_guest_module("runplan")
    gens = {0: {"state": 2, "cpus": {0: {"generated": 10, "ok": 8, "err_nolistener": 1, "err_nomem": 1,
                                         "err_full": 0, "err_other": 0}}}}
    report = {"groups": [18], "socket_drops": 1, "streams": {"0/0": {"gaps": 1, "next": 9}}}
    acc = runplan.reconcile(report, gens, 0, {0: [18]})
    assert acc == {"exact": True, "lost": 2, "socket_drops": 1, "pre_socket": 1, "cbus_nlerr": 0,
                   "reconciled": True, "since_join": False}
    assert runplan.reconcile(report, {0: None}, 0, {0: [18]})["exact"] is False
    assert runplan.reconcile(dict(report, churns=2), gens, 0, {0: [18]})["exact"] is False
    other_group = runplan.reconcile(dict(report, groups=[20], streams={}), gens, 0, {0: [18]})
    assert other_group["lost"] == 0


def test_runplan_reconciles_a_restarted_consumer_from_when_it_joined():
    runplan = load_guest_module("runplan")
    gens = {0: {"state": 2, "cpus": {0: {"generated": 100, "ok": 60, "err_nolistener": 40, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0},
                                     1: {"generated": 5, "ok": 0, "err_nolistener": 5, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0}}}}
    # Joined at seq 40 of CPU 0 (the 40 before went to nobody); one ENOBUFS drop since; CPU 1 ended before.
    restarted = {"groups": [18], "socket_drops": 1, "resync": True, "streams": {"0/0": {"gaps": 1, "next": 100}}}
    acc = runplan.reconcile(restarted, gens, 0, {0: [18]})
    assert (acc["exact"], acc["lost"], acc["reconciled"], acc["since_join"]) == (True, 1, True, True)
    gens[0]["cpus"][0]["err_nomem"] = 3
    assert runplan.reconcile(restarted, gens, 0, {0: [18]})["exact"] is False


def test_consumer_pyroute2_parser_matches_kabi_parser():
    pytest.importorskip("pyroute2")
    consume = load_guest_module("consume")
    parse = consume.pyroute2_parser()
    via_pyroute2, via_kabi = consume.Checker(False), consume.Checker(False)
    proc = kabi.frame_nl(kabi.frame_cn(1, 1, consume.PROC_EVENT.pack(2, 0, 9) + bytes(24), seq=500))
    for data in [_datagram(1, 0, 0) + _datagram(1, 0, 2), _datagram(1, 1, 0), proc]:
        parse(bytearray(data), len(data), via_pyroute2, 10)
        consume.handle(bytearray(data), len(data), via_kabi, 10)
    assert via_pyroute2.report() == via_kabi.report()
    assert via_kabi.report()["gaps"] == 1 and via_kabi.report()["received"] == 4
