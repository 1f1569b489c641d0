"""The hook driver, the built-in runner and fault wrapper, and the guest-side accounting (no QEMU)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
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

    spec = SimpleNamespace(accel=SimpleNamespace(timeout_scale=3))  # as under TCG

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
        if argv[0] == "tar":  # lab.guestfiles.put_files: the files arrive as a tar stream
            with tarfile.open(fileobj=io.BytesIO(stdin)) as tar:
                for member in tar.getmembers():
                    self.files["/" + member.name] = (tar.extractfile(member).read(), member.mode)
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
    assert [argv for argv, _ in guest.commands] == [["tar", "-x", "-f", "-", "-C", "/", "--no-same-owner"]]
    content, mode = guest.files["/run/cnlab/plugins/consume.py"]
    assert mode == 0o755 and content == (GUESTSIDE / "consume.py").read_bytes()


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
    assert plan["bind_timeout_s"] == 60  # 20 s, times TCG's timeout scale
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
    assert runplan.reconcile(dict(report, missing=True), gens, 0, {0: [18]})["exact"] is False
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


def test_runplan_reconciles_a_churning_consumer_over_the_windows_it_listened():
    runplan = load_guest_module("runplan")
    gens = {0: {"state": 2, "cpus": {0: {"generated": 50, "ok": 42, "err_nolistener": 8, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0},
                                     1: {"generated": 9, "ok": 9, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0}}}}
    # Left twice; CPU 0 seen to its end since the last rejoin; CPU 1 seen only before it (not counted).
    churning = {"groups": [18], "socket_drops": 0, "churns": 2,
                "streams": {"0/0": {"gaps": 0, "next": 50}, "0/1": {"gaps": 0, "next": None}}}
    acc = runplan.reconcile(churning, gens, 0, {0: [18]})
    assert (acc["exact"], acc["lost"], acc["reconciled"], acc["since_join"]) == (True, 0, True, True)
    assert runplan.reconcile(dict(churning, streams={"0/0": {"gaps": 1, "next": 48}}), gens, 0,
                             {0: [18]})["reconciled"] is False  # 3 lost, nothing counted: silent loss
    # With socket drops, one just before leaving would show no gap: not exact, and said why.
    dropped = runplan.reconcile(dict(churning, socket_drops=3), gens, 0, {0: [18]})
    assert dropped["exact"] is False and "cannot be seen as gaps" in dropped["reason"]


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


#: What the module logs when it is unloaded under load (kmod/gen.c gen_log_final, kmod/cbus.c), as /dev/kmsg
#: records: generator 1 ran on CPUs 0 and 1 (direct path), generator 2 on CPU 1 only (CBUS), generator 3 never
#: generated; another module's line in between.
UNLOAD_KMSG = (
    "6,900,5000000,-;cnlab: gen 1 final: state running cpus 2\n"
    "6,901,5000001,-;cnlab: gen 1 cpu 0 final: generated 500 ok 490 nolistener 0 overrun 0 nomem 4 full 0 other 0\n"
    "6,902,5000002,-;cnlab: gen 1 cpu 1 final: generated 300 ok 300 nolistener 0 overrun 0 nomem 0 full 0 other 0\n"
    "4,903,5000003,-;e1000e: some other driver\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:02.0\n"
    "6,904,5000004,-;cnlab: gen 2 final: state done cpus 1\n"
    "6,905,5000005,-;cnlab: gen 2 cpu 1 final: generated 1000 ok 990 nolistener 0 overrun 0 nomem 0 full 10 other 0\n"
    "6,906,5000006,-;cnlab: gen 3 final: state done cpus 0\n"
    "6,907,5000007,-;cnlab: cbus final: inserted 1500 sent 1488 full 10 nomem 0 nolistener 0 overrun 0 nlerr 2 "
    "queued 0 rejected 0\n"
    "6,908,5000008,-;cnlab: unloaded\n"
)
CBUS_ZERO = dict.fromkeys(("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun",
                           "drop_nlerr", "queued", "rejected"), 0)


def test_runplan_kernel_log_reads_only_what_came_after_the_mark(tmp_path):
    runplan = load_guest_module("runplan")
    log = tmp_path / "kmsg"
    log.write_text("6,10,100,-;cnlab: gen 1 final: state done cpus 0\n"  # an earlier run's unload
                   "6,11,101,-;cnlab: cbus final: inserted 1 sent 1 full 0 nomem 0 nolistener 0 overrun 0 nlerr 0 "
                   "queued 0 rejected 0\n")
    klog = runplan.KernelLog(str(log))
    with open(log, "a") as f:
        f.write(UNLOAD_KMSG)
    lines = klog.read()
    klog.close()
    assert lines[0] == "cnlab: gen 1 final: state running cpus 2" and lines[-1] == "cnlab: unloaded"
    assert not any(line.startswith(" ") or "SUBSYSTEM" in line for line in lines)
    (unload,) = runplan.parse_unloads(lines)
    assert unload["gens"][1] == {"state": "running", "expected_cpus": 2, "cpus": {
        0: {"generated": 500, "ok": 490, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 4,
            "err_full": 0, "err_other": 0},
        1: {"generated": 300, "ok": 300, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 0,
            "err_full": 0, "err_other": 0}}}
    assert unload["gens"][3] == {"state": "done", "expected_cpus": 0, "cpus": {}}
    assert unload["cbus"] == {"inserted": 1500, "sent": 1488, "drop_full": 10, "drop_nomem": 0,
                              "drop_nolistener": 0, "drop_overrun": 0, "drop_nlerr": 2, "queued": 0, "rejected": 0}
    missing = runplan.KernelLog(str(tmp_path / "nope"))
    assert missing.read() == [] and "nope" in missing.error


def test_runplan_reconciles_exactly_with_counts_recovered_after_a_module_reload():
    runplan = load_guest_module("runplan")
    lines = [r.partition(";")[2] for r in UNLOAD_KMSG.splitlines() if not r.startswith(" ")]
    gens = {1: None, 2: None, 3: None}  # what GEN_STATS says after the reload: idle, never started
    before = dict(CBUS_ZERO, inserted=700, sent=700)  # the module had run before this load
    after = dict(CBUS_ZERO, inserted=5, sent=5)  # and the reloaded one has sent a little since
    cbus, reason = runplan.recover(gens, runplan.parse_unloads(lines), before, after)
    assert reason is None
    assert gens[1] == {"state": kabi.CNLAB_GEN_STOPPED, "unloaded": "running", "cpus": {
        0: {"generated": 500, "ok": 490, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 4,
            "err_full": 0, "err_other": 0},
        1: {"generated": 300, "ok": 300, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 0,
            "err_full": 0, "err_other": 0}}}
    assert gens[3]["cpus"] == {}
    assert cbus == {"inserted": 805, "sent": 793, "drop_full": 10, "drop_nomem": 0, "drop_nolistener": 0,
                    "drop_overrun": 0, "drop_nlerr": 2, "rejected": 0, "queued": 0, "balanced": True,
                    "unloads": 1}
    # The checker: gen 1 CPU 0 with 2 gaps and next 498 (2 lost at the tail), all of gen 1 CPU 1, gen 2 CPU 1
    # with 1 gap and next 980 (20 at the tail): lost 4 + 0 + 21 = 25 = 9 socket drops + 14 failed sends
    # (4 nomem of gen 1, 10 full of gen 2) + 2 CBUS send errors.
    report = {"groups": [18, 24], "socket_drops": 9,
              "streams": {"1/0": {"gaps": 2, "next": 498}, "1/1": {"gaps": 0, "next": 300},
                          "2/1": {"gaps": 1, "next": 980}}}
    acc = runplan.reconcile(report, gens, cbus["drop_nlerr"], {1: [18], 2: [24], 3: [24]})
    assert acc == {"exact": True, "lost": 25, "socket_drops": 9, "pre_socket": 14, "cbus_nlerr": 2,
                   "reconciled": True, "since_join": False}
    assert runplan.reconcile(dict(report, socket_drops=8), gens, 2, {1: [18], 2: [24], 3: [24]})["reconciled"] is False


@pytest.mark.parametrize("drop, why", [
    ("cnlab: gen 2 cpu 1 final", "generator 2: incomplete final counts in the kernel log (0 CPU lines of 1)"),
    ("cnlab: gen 1 final", "generator 1: incomplete final counts in the kernel log (2 CPU lines of None)"),
    ("cnlab: gen 2", "generator 2: no final counts in the kernel log"),
    ("cnlab: cbus final", "module unloaded but its 'cbus final' line is missing or malformed"),
])
def test_runplan_reload_without_its_log_lines_stays_partial_with_the_reason(drop, why):
    runplan = load_guest_module("runplan")
    lines = [r.partition(";")[2] for r in UNLOAD_KMSG.splitlines() if not r.startswith(" ")]
    lines = [line for line in lines if not line.startswith(drop)]
    gens = {1: None, 2: None}
    cbus, reason = runplan.recover(gens, runplan.parse_unloads(lines), CBUS_ZERO, CBUS_ZERO)
    assert why in reason
    report = {"groups": [18], "socket_drops": 0, "streams": {}}
    acc = runplan.reconcile(report, gens, 0, {1: [18], 2: [18]}, reason)
    assert acc == {"exact": False, "reason": f"{reason}: partial accounting"}


def test_runplan_recovery_refuses_counts_of_two_unloads_and_unbalanced_finals():
    runplan = load_guest_module("runplan")
    lines = [r.partition(";")[2] for r in UNLOAD_KMSG.splitlines() if not r.startswith(" ")]
    gens = {2: None}
    _, reason = runplan.recover(gens, runplan.parse_unloads(lines + lines), CBUS_ZERO, CBUS_ZERO)
    assert reason == "generator 2: final counts logged by 2 unloads" and gens[2] is None
    unbalanced = [line.replace("sent 1488", "sent 1400") for line in lines]
    cbus, reason = runplan.recover({}, runplan.parse_unloads(unbalanced), CBUS_ZERO, CBUS_ZERO)
    assert reason is None and cbus["balanced"] is False
