"""One scenario through the one execution path, on a fake guest that answers like the guest agent (no QEMU)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import hookimpl
from lab.command import CommandResult
from lab.config import LabConfig
from lab.engine.execute import execute_scenario, fault_records
from lab.engine.hooks import guest_setup_args, install_guest_files, install_lab_files
from lab.engine.scenario import scenario_from_dict
from lab.errors import GuestError
from lab.plugin import GuestFile, Verdict, get_plugin_manager

ROOT = Path(__file__).resolve().parents[3]
ENV = {"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}


def agent_report(**changes) -> dict:
    report = {"errors": [], "load_s": 2.0, "bind_s": 0.5, "drain": {"ok": True, "waited_s": 0.01},
              "generators": {"0": {"state": 2, "cpus": {"0": {"generated": 100}}}}, "cbus": {"balanced": True},
              "live": [], "faults": [], "faults_never_fired": [], "restarted": [], "unloads": 0,
              "consumers": [{"name": "checker", "received": 100, "reordered": 0, "gaps": 0, "socket_drops": 0,
                             "enobufs": 0, "latency_us": {"p50": 1.0, "p99": 2.0, "samples": 100},
                             "series": [[0.0, 100, 0]],
                             "accounting": {"exact": True, "lost": 0, "socket_drops": 0, "pre_socket": 0,
                                            "cbus_nlerr": 0, "reconciled": True}}]}
    return report | changes


class FakeGuest:
    """Answers the commands the engine sends; the agent gets a canned report and may ask for host faults."""

    def __init__(self, tmp_path: Path, report: dict | None = None, status: int = 0, stderr: bytes = b"",
                 alive: bool = True) -> None:
        self.spec = SimpleNamespace(accel=SimpleNamespace(timeout_scale=3, slowdown=10, name="tcg"), name="fake",
                                    modules=())
        self.log_dir = tmp_path
        self.console_log = tmp_path / "console.log"
        self.console_log.write_text("boot\n")
        self.link = None
        self.files: dict[str, bytes] = {}
        self.commands: list[list[str]] = []
        self.plans: list[dict] = []
        self.qmp_calls: list[str] = []
        self.trace_commands: list[str] = []
        self.report, self.status, self.stderr, self._alive = report or agent_report(), status, stderr, alive

    def alive(self) -> bool:
        return self._alive

    def tainted(self) -> int:
        return 12288

    def qmp(self, command, **arguments):
        self.qmp_calls.append(command)
        if command == "query-status":
            return {"status": "paused" if self.qmp_calls.count("stop") > self.qmp_calls.count("cont") else "running"}
        return {}

    def run(self, argv, timeout=None, check=False, stdin=None, sink=None):
        self.commands.append(list(argv))
        if argv[0] == "tar":
            with tarfile.open(fileobj=io.BytesIO(stdin)) as tar:
                for member in (m for m in tar.getmembers() if m.isfile()):
                    self.files["/" + member.name] = tar.extractfile(member).read()
            return CommandResult(list(argv), 0, b"", b"")
        if len(argv) > 3 and argv[2].endswith("/flightrec.py"):
            return self.flightrec(argv)
        if argv[:2] == ["sh", "-c"] and argv[3:4] == ["flightrec-stop"]:
            self.trace_commands.append(f"stop {argv[4]} {argv[5]}")
            return CommandResult(list(argv), 0, b"", b"")
        if argv[-1].endswith("agent.py"):
            plan = json.loads(stdin)
            self.plans.append(plan)
            if sink is not None:
                sink("stderr", b"CNLAB-AGENT load 1\n" + self.stderr)
            report = {"setup": self.steps(plan["setup"]), "teardown": self.steps(plan["teardown"])} | self.report
            return CommandResult(list(argv), self.status, json.dumps(report).encode(), self.stderr)
        return CommandResult(list(argv), 0, b"", b"")


    @staticmethod
    def steps(steps: list[dict]) -> list[dict]:
        """The agent's outcome of plugins' steps: each one worked (a read gives what was last written there)."""
        written, done = {}, []
        for step in steps:
            action = step["action"]
            out = {"owner": step["owner"], "optional": step["optional"], "action": action, "ok": True}
            if action[0] == "write":
                written[action[1]] = str(action[2])
            elif action[0] == "read":  # an unwritten trace clock reads as the kernel's default
                default = "[local] global counter uptime perf mono" if action[1].endswith("/trace_clock") else ""
                out["value"] = written.get(action[1], default)
            done.append(out)
        return done

    def flightrec(self, argv):
        """The flight recorder's guest program: a one-event trace when saved."""
        self.trace_commands.append(argv[3])
        if argv[3] == "save":
            text = FLIGHTREC_TRACE.encode()
            return CommandResult(list(argv), 0, text, json.dumps({"bytes": len(text), "kept": len(text)}).encode())
        return CommandResult(list(argv), 0, b"", b"")


#: What the fake guest's flight recorder saves.
FLIGHTREC_TRACE = ("# tracer: nop\n#\n# entries-in-buffer/entries-written: 2/2   #P:2\n#\n"
                   "  cnlab_g0/0-105     [001] d..1.    27.7561: cnlab_insert: cpu=1 depth=1 bytes=60\n"
                   "   python3-109     [000] .....    27.8000: tracing_mark_write: cnlab-flightrec: stop\n")


def manager(*plugins):
    pm = get_plugin_manager(LabConfig(env=ENV))
    for n, plugin in enumerate(plugins):
        pm.add_plugin(plugin, f"test{n}", "test", "here")
    return pm


def read(pm, data: dict):
    return scenario_from_dict({"name": "s", "emulators": [{"name": "generator"}]} | data, "s.toml", pm.registries)


def test_a_scenario_runs_the_agent_with_its_plan_and_passes(tmp_path):
    pm = manager()
    guest = FakeGuest(tmp_path)
    result = execute_scenario(pm, guest, read(pm, {}), "/run/cnlab/py")
    assert result.passed, result.problems
    (plan,) = guest.plans
    assert plan["bind_timeout_s"] == 60 and plan["timeout_scale"] == 3  # 20 s x TCG's timeout scale
    assert plan["generators"][0]["duration_ns"] == 3_000_000_000 and plan["consumers"][0]["groups"] == [2]
    assert "/run/cnlab/plugins/consume.py" in guest.files and "/run/cnlab/plugins/kabi.py" in guest.files
    assert result.metrics["received"] == 100 and result.series == {"checker": [[0.0, 100, 0]]}
    assert {v.plugin for v in result.verdicts} == {"checks"} and result.data["agent"]["load_s"] == 2.0


def test_hooks_run_in_order_with_their_settings_and_checks_become_verdicts(tmp_path):
    calls = []

    class Tracer:
        @hookimpl
        def lab_guest_ready(self, scenario, settings):
            calls.append(("ready", dict(settings)))

        @hookimpl
        def lab_scenario_start(self, stash):
            calls.append("start")

        @hookimpl(wrapper=True)
        def lab_phase_run(self, phase):
            calls.append(f"phase {phase.name}")
            return (yield)

        @hookimpl
        def lab_scenario_stop(self, error):
            calls.append(("stop", error))

        @hookimpl
        def lab_result_collect(self):
            return {"mine": 1}

        @hookimpl
        def lab_result_check(self, data, settings):
            calls.append("check")
            return [Verdict("mine", data["test0"]["mine"] == 1, "saw my data"), "and one problem"]

    pm = manager(Tracer())
    result = execute_scenario(pm, FakeGuest(tmp_path), read(pm, {}), "/lib")
    assert calls == [("ready", {}), "start", "phase setup", "phase load", "phase drain", "phase verify",
                     ("stop", None), "check"]
    mine = [v for v in result.verdicts if v.plugin == "test0"]
    assert mine == [Verdict("mine", True, "saw my data", "test0"), Verdict("test0", False, "and one problem",
                                                                           "test0")]
    assert result.status == "failed" and result.data["test0"] == {"mine": 1}


def test_a_raising_plugin_fails_its_scenario_and_stop_still_runs(tmp_path):
    stops = []

    class Broken:
        @hookimpl
        def lab_scenario_start(self, scenario):
            raise RuntimeError("cannot start")

        @hookimpl
        def lab_scenario_stop(self, error):
            stops.append(type(error).__name__)

    pm = manager(Broken())
    result = execute_scenario(pm, FakeGuest(tmp_path), read(pm, {}), "/lib")
    assert stops == ["HookCallError"] and result.status == "failed"
    assert Verdict("hooks", False, "plugin 'test0' failed in hook lab_scenario_start: RuntimeError: cannot start") \
        in result.verdicts
    assert pm.hook.lab_report_status(result=result) == "FAIL"


def test_an_agent_that_fails_raises_for_a_retry_on_a_fresh_guest(tmp_path):
    pm = manager()
    with pytest.raises(GuestError, match="the guest agent exited with status 1: .*Traceback: boom"):
        execute_scenario(pm, FakeGuest(tmp_path, status=1, stderr=b"Traceback: boom\n"), read(pm, {}), "/lib")


def test_host_side_faults_are_carried_out_on_the_host_and_merged_into_the_record(tmp_path):
    pm = manager()
    request = {"label": "pause", "n": 1, "due": 0.5, "t": 0.51, "inject": [["qmp", "stop"]],
               "evidence": [["expect-qmp", "paused"]], "restore": [["qmp", "cont"]], "duration": 0.01}
    agent_faults = [{"label": "pause", "name": "pause", "side": "host", "trigger": "at 0.5 s", "due": 0.5,
                     "start": 0.51, "end": 0.51, "restored": None, "ok": True, "actions": [], "requested": True}]
    guest = FakeGuest(tmp_path, report=agent_report(faults=agent_faults),
                      stderr=b"CNLAB-HOST-FAULT " + json.dumps(request).encode() + b"\n")
    result = execute_scenario(pm, guest, read(pm, {"faults": [{"name": "pause", "at": 0.5}]}), "/lib")
    assert guest.qmp_calls == ["stop", "query-status", "cont"]
    (fault,) = result.faults
    assert [a["action"] for a in fault["actions"]] == ["qmp stop", "expect-qmp paused", "qmp cont"] and fault["ok"]
    assert fault["actions"][1]["seen"] == "QEMU status paused"
    assert fault["restored"] is not None and "delay_ms" in fault
    assert next(v for v in result.verdicts if v.name == "faults").ok


def test_fault_records_delay_and_a_host_request_that_never_arrived():
    agent = {"faults": [{"label": "a", "side": "guest", "due": 1.0, "start": 1.012},
                        {"label": "b", "side": "guest", "due": 0.0, "start": -0.4, "before_load": True},
                        {"label": "c", "side": "host", "due": 2.0, "start": 2.0}]}
    a, b, c = fault_records(agent, [])
    assert a["delay_ms"] == 12.0 and "delay_ms" not in b
    assert c["ok"] is False and c["detail"] == "the host never received the request"


def test_a_host_fault_after_a_pause_is_not_late_by_the_time_the_guest_clock_stood_still():
    pause = [{"action": "qmp stop", "ok": True}, {"action": "qmp cont", "ok": True, "restore": True}]
    agent = {"faults": [{"label": "p", "side": "host", "due": 1.5, "start": 1.5},
                        {"label": "p", "side": "host", "due": 3.0, "start": 3.0},
                        {"label": "g", "side": "guest", "due": 3.5, "start": 3.501}]}
    host = [{"label": "p", "n": 1, "received": 1.501, "start": 1.502, "end": 1.504, "restored": 1.557,
             "ok": True, "actions": pause},
            {"label": "p", "n": 2, "received": 3.057, "start": 3.058, "end": 3.06, "restored": 3.113,
             "ok": True, "actions": pause}]
    first, second, guest_side = fault_records(agent, host)
    assert first["delay_ms"] == 2.0 and "guest_clock_lag_ms" not in first
    # the guest's clock lost the first pause (1.502 .. 1.557 by the host's): 3.058 - 0.055 - 3.0
    assert second["guest_clock_lag_ms"] == 55.0 and second["delay_ms"] == 3.0
    assert guest_side["delay_ms"] == 1.0  # both ends on the guest's clock: nothing to take off


def test_install_guest_files_and_a_destination_named_twice(tmp_path):
    class Clash:
        @hookimpl
        def lab_guest_files_add(self):
            return [GuestFile(tmp_path / "other.py", "/run/cnlab/plugins/kabi.py")]

    guest = FakeGuest(tmp_path)
    files = install_guest_files(manager(), guest)
    assert {Path(f.dest).name for f in files} >= {"kabi.py", "consume.py", "storm.py"}
    assert guest.files["/run/cnlab/plugins/consume.py"] == (ROOT / "plugins/cnlab_plugins/guestside/consume.py"
                                                            ).read_bytes()
    with pytest.raises(Exception, match="two plugins install /run/cnlab/plugins/kabi.py"):
        install_guest_files(manager(Clash()), FakeGuest(tmp_path))


def test_the_lab_programs_and_the_plugins_files_go_in_with_one_command(tmp_path):
    guest = FakeGuest(tmp_path)
    assert install_lab_files(manager(), guest) == "/run/cnlab/py"
    assert [c[0] for c in guest.commands] == ["tar"]
    assert guest.files["/run/cnlab/py/agent.py"] == (ROOT / "lab/guestside/agent.py").read_bytes()
    assert guest.files["/run/cnlab/plugins/consume.py"] == (ROOT / "plugins/cnlab_plugins/guestside/consume.py"
                                                            ).read_bytes()


def test_a_guest_whose_spec_carries_the_files_gets_no_copy(tmp_path):
    from lab.engine.run import scenario_guest_spec
    from lab.guest.files import guest_program_files
    from lab.guest.machine import GuestSpec

    pm = manager()
    programs, links = guest_program_files()
    lab = SimpleNamespace(guest_spec=lambda shape, name, cmdline: GuestSpec(
        image=None, accel=None, shape=shape, name=name, cmdline=cmdline, files=tuple(programs), links=tuple(links)))
    spec = scenario_guest_spec(lab, pm, SimpleNamespace(cpus=2, memory=1024, cmdline=(), faults=()), "w1g1")
    assert any(dest == "/run/cnlab/plugins/consume.py" for _, dest, _ in spec.files)
    guest = FakeGuest(tmp_path)
    guest.spec = spec
    assert install_lab_files(pm, guest) == "/run/cnlab/py" and guest.commands == []


def test_guest_setup_args_collects_cmdline_and_qemu_args():
    class P:
        @hookimpl
        def lab_kernel_cmdline_add(self):
            return ["slub_debug=FZPU"]

        @hookimpl
        def lab_qemu_args_add(self):
            return ["-device", "virtio-rng-pci"]

    cmdline, qemu = guest_setup_args(manager(P()), None)
    # the built-in flight recorder has the init make its trace instance, after ours
    assert cmdline == ("slub_debug=FZPU", "cnlab.trace_instance=cnlab")
    # the built-in vmcore plugin adds its pvpanic device and monitor (lab.guest.panic) after ours
    assert qemu[:2] == ("-device", "virtio-rng-pci") and "pvpanic-pci" in qemu


#: A module whose init WARNed while the guest booted, before any scenario ran.
BOOT_WARN = ("[    3.330785] cnlab: loading out-of-tree module taints kernel.\n"
             "[    3.456208] ------------[ cut here ]------------\n"
             "[    3.456937] WARNING: CPU: 0 PID: 100 at kmod/gen.c:864 cnlab_gen_init+0xb1/0x180 [cnlab]\n"
             "[    3.457413] Modules linked in: cnlab(OE)\n"
             "[    3.466304]  cnlab_init+0x17f/0x220 [cnlab]\n"
             "[    3.467413] ---[ end trace 0000000000000000 ]---\n"
             "CNLAB-READY nonce=02df8f491884060a cpus=2 modules=/run/cnlab/cnlab.ko:0\n")


@pytest.mark.parametrize("from_boot", [False, True])
def test_a_new_guests_first_scenario_is_judged_from_its_boot(tmp_path, from_boot):
    guest = FakeGuest(tmp_path)
    guest.console_log.write_text(BOOT_WARN)
    guest.spec.image = SimpleNamespace(kernel=SimpleNamespace(release="6.1.0-none"))  # nothing to symbolize with
    pm = manager()
    result = execute_scenario(pm, guest, read(pm, {}), "/lib", from_boot=from_boot)
    problems = next(v for v in result.verdicts if v.name == "kernel_problems")
    taint = next(v for v in result.verdicts if v.name == "taint")
    assert taint.ok  # the module's own O and E bits, set at its load, are allowed either way
    assert problems.ok is not from_boot, problems.detail
    assert [r["kind"] for r in result.kernel_reports] == (["warning"] if from_boot else [])
    assert result.taint["before"] == (0 if from_boot else guest.tainted())
