"""Every hook is documented in docs/plugins.md, has a ``test_hook_<name>`` test, and behaves as its spec says."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from lab import hookimpl, hookspecs
from lab.config import LabConfig, Setting
from lab.errors import ConfigError
from lab.guest.qemu_argv import GuestShape
from lab.plugin import (
    PER_PLUGIN_HOOKS,
    ConsumerSpec,
    EmulatorSpec,
    EventSpec,
    FaultSpec,
    GuestFile,
    HookCallError,
    PhaseInfo,
    Scenario,
    ScenarioResult,
    Stash,
    StashKey,
    Verdict,
    call_hook,
    get_plugin_manager,
)
from lab.plugin.model import SETTINGS
from lab.plugin.objects import AgentCounter, FileCounter

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "plugins.md"
HOOKS = sorted(n for n in hookspecs.__all__ if n.startswith("lab_"))
CONFIG = LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})
SCENARIO = Scenario("demo", "demo.toml")


def signature(name: str) -> str:
    spec = getattr(hookspecs, name)
    return f"{name}({', '.join(inspect.signature(spec).parameters)})"


@pytest.mark.parametrize("name", HOOKS)
def test_plugin_hook_is_documented(name):
    text = DOCS.read_text()
    assert re.search(rf"^### `{re.escape(signature(name))}`$", text, re.M), \
        f"docs/plugins.md has no '### `{signature(name)}`' section"


@pytest.mark.parametrize("name", HOOKS)
def test_plugin_hook_entry_says_whether_it_is_called_per_plugin(name):
    text = DOCS.read_text()
    entry = text.split(f"### `{signature(name)}`\n", 1)[1].lstrip().split("\n### ", 1)[0]
    assert entry.startswith("Per plugin") == (name in PER_PLUGIN_HOOKS), f"docs/plugins.md: {name}: {entry[:60]!r}"


@pytest.mark.parametrize("name", HOOKS)
def test_plugin_hook_has_a_test(name):
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert re.search(rf"^def test_hook_{name}\(", tests, re.M), f"no test_hook_{name} test"


@pytest.mark.parametrize("name", HOOKS)
def test_plugin_hook_spec_is_documented_in_code(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    params = inspect.signature(getattr(hookspecs, name)).parameters
    for param in params:
        assert f":param {param}:" in doc, f"{name}: no ':param {param}:'"
    assert ":return:" in doc and "versionadded" in doc


def test_every_hook_name_follows_the_convention():
    for name in HOOKS:
        assert re.fullmatch(r"lab_[a-z]+(_[a-z]+)*_[a-z]+", name), name
    assert set(PER_PLUGIN_HOOKS) <= set(HOOKS)


def pm_with(*plugins, tables=None, setup=True):
    # the essential core plugin runs the guest agent in phase "load": only phases other than load run it here
    config = LabConfig(env=CONFIG.env, plugin_tables=tables or {})
    pm = get_plugin_manager(config, setup=False)
    for i, plugin in enumerate(plugins):
        pm.add_plugin(plugin, getattr(plugin, "name", f"t{i}"), "test", "test_hooks")
    if setup:
        pm.setup_plugins()
    return pm


# -- configure -----------------------------------------------------------------------


def test_hook_lab_settings_declare():
    class P:
        name = "speedy"

        @hookimpl
        def lab_settings_declare(self):
            return [Setting("speed", int, 3, "how fast")]

    pm = pm_with(P(), tables={"speedy": {"speed": 9}})
    assert pm.declared["speedy"][0].key == "speed"
    assert pm.settings["speedy"]["speed"] == 9
    with pytest.raises(ConfigError, match=r"\[plugins.speedy\] speed: expected an integer, got string '9'"):
        pm_with(P(), tables={"speedy": {"speed": "9"}})


def test_hook_lab_plugin_configure():
    seen = {}

    class P:
        name = "conf"

        @hookimpl
        def lab_settings_declare(self):
            return [Setting("level", str, "low", "level")]

        @hookimpl
        def lab_plugin_configure(self, config, settings):
            seen[self.name] = (config, dict(settings))

    class Q(P):
        name = "other"

    pm = pm_with(P(), Q(), tables={"conf": {"level": "high"}})
    assert seen["conf"] == (pm.config, {"level": "high"})
    assert seen["other"][1] == {"level": "low"}  # each plugin gets its own table


def test_hook_lab_plugin_unconfigure():
    calls = []

    class P:
        @hookimpl
        def lab_plugin_unconfigure(self, config):
            calls.append(config)

    pm = pm_with(P())
    pm.unconfigure()
    assert calls == [pm.config]


# -- register --------------------------------------------------------------------------


def test_hook_lab_emulators_register():
    class P:
        name = "emu"

        @hookimpl
        def lab_emulators_register(self, registry, settings):
            registry.add_emulator(EmulatorSpec("toy", "a toy", 0x30, 1, 30, lambda s: ("built", dict(s)),
                                               settings=(Setting("n", int, 1, "n", min=1),)))

    pm = pm_with(P())
    spec = pm.registries.emulators.get("toy")
    assert spec.plugin == "emu"
    params = pm.registries.emulators.validate("toy", {"n": 2}, str)
    assert pm.registries.emulators.build("toy", params) == ("built", {"n": 2})
    with pytest.raises(ConfigError, match="n: expected an integer in >= 1, got 0"):
        pm.registries.emulators.validate("toy", {"n": 0}, str)
    assert pm.kind_of("emu") == "emulator"


def test_hook_lab_consumers_register():
    class P:
        name = "cons"

        @hookimpl
        def lab_consumers_register(self, registry):
            registry.add_consumer(ConsumerSpec("toy-consumer", "reads", lambda s: "consumer"))

    pm = pm_with(P())
    assert pm.registries.consumers.get("toy-consumer").plugin == "cons"
    assert pm.registries.consumers.build("toy-consumer", {}) == "consumer"
    assert pm.kind_of("cons") == "consumer"


def test_hook_lab_faults_register():
    class P:
        name = "flt"

        @hookimpl
        def lab_faults_register(self, registry, settings):
            registry.add_fault(FaultSpec("toy-fault", "breaks", "guest", lambda s: "fault"))

    pm = pm_with(P())
    assert pm.registries.faults.get("toy-fault").plugin == "flt"
    assert pm.kind_of("flt") == "fault"
    with pytest.raises(HookCallError, match="plugin 'flt2' failed in hook lab_faults_register"):
        class P2(P):
            name = "flt2"
        pm_with(P(), P2())


def test_hook_lab_events_register():
    class P:
        name = "ev"

        @hookimpl
        def lab_events_register(self, registry, settings):
            registry.add_event(EventSpec("softirqs", "softirqs since the load began",
                                         FileCounter("/proc/stat", r"softirq (\d+)")))

    pm = pm_with(P())
    assert pm.registries.events.get("softirqs").plugin == "ev"
    assert pm.registries.events.get("softirqs").probe.to_json() == {"kind": "file", "path": "/proc/stat",
                                                                    "pattern": r"softirq (\d+)", "relative": True}
    assert pm.registries.events.get("received").probe == AgentCounter("received")  # the essential core plugin's
    assert pm.kind_of("ev") == "event"
    with pytest.raises(HookCallError, match="event 'gap' added by plugin 'ev2' is already registered by plugin "
                                            "'core'"):
        class P2:
            name = "ev2"

            @hookimpl
            def lab_events_register(self, registry):
                registry.add_event(EventSpec("gap", "a second gap", AgentCounter("gap")))
        pm_with(P2())


# -- guest set-up --------------------------------------------------------------------


def test_hook_lab_qemu_args_add():
    class A:
        @hookimpl
        def lab_qemu_args_add(self, shape):
            return ["-device", f"virtio-rng-pci,id=rng{shape.cpus}"]

    class B:
        @hookimpl
        def lab_qemu_args_add(self, config, shape):
            return None

    pm = pm_with(A(), B())
    results = call_hook(pm, "lab_qemu_args_add", config=pm.config, shape=GuestShape(cpus=4))
    args = [a for r in results if r for a in r]
    assert args[:2] == ["-device", "virtio-rng-pci,id=rng4"]
    assert "pvpanic-pci" in args[2:]  # the built-in vmcore plugin's device, after the test's plugins
    from lab.engine.hooks import guest_setup_args

    cmdline, qemu = guest_setup_args(pm, GuestShape(cpus=2))
    assert cmdline == ("cnlab.trace_instance=cnlab",)  # the built-in flight recorder's
    assert qemu[:2] == ("-device", "virtio-rng-pci,id=rng2")


def test_hook_lab_kernel_cmdline_add():
    class A:
        @hookimpl
        def lab_kernel_cmdline_add(self, config, shape):
            return ["slub_debug=FZPU"]

    class B:
        @hookimpl(tryfirst=True)
        def lab_kernel_cmdline_add(self):
            return ["panic_on_oops=1"]

    pm = pm_with(A(), B())
    results = call_hook(pm, "lab_kernel_cmdline_add", config=pm.config, shape=GuestShape())
    assert results == [["panic_on_oops=1"], ["slub_debug=FZPU"], ["cnlab.trace_instance=cnlab"]]


def test_hook_lab_guest_files_add(tmp_path):
    src = tmp_path / "tool.py"
    src.write_text("print(1)\n")

    class A:
        @hookimpl
        def lab_guest_files_add(self, config):
            return [GuestFile(src, "/run/cnlab/plugins/tool.py", 0o755)]

    pm = pm_with(A())
    files = [f for r in call_hook(pm, "lab_guest_files_add", config=pm.config) for f in r]
    assert GuestFile(src, "/run/cnlab/plugins/tool.py", 0o755) in files
    assert any(f.dest == "/run/cnlab/plugins/kabi.py" for f in files)  # the essential core plugin's contribution
    with pytest.raises(ValueError, match="absolute"):
        GuestFile(src, "relative/path")


def test_hook_lab_guest_ready():
    ran = []

    class A:
        name = "ready"

        @hookimpl
        def lab_settings_declare(self):
            return [Setting("sysctl", str, "net.core.rmem_max=8388608", "what to set")]

        @hookimpl
        def lab_guest_ready(self, guest, scenario, settings):
            ran.append((guest, scenario.name, settings["sysctl"]))

    pm = pm_with(A())
    pm.call_each("lab_guest_ready", guest="G", scenario=SCENARIO)
    assert ran == [("G", "demo", "net.core.rmem_max=8388608")]


# -- scenario --------------------------------------------------------------------------

STARTED = StashKey[list]()


class Recorder:
    name = "recorder"

    @hookimpl
    def lab_settings_declare(self):
        return [Setting("tag", str, "rec", "a tag")]

    @hookimpl
    def lab_scenario_start(self, scenario, guest, stash, settings):
        stash[STARTED] = [f"start:{settings['tag']}"]

    @hookimpl
    def lab_phase_run(self, phase, stash):
        stash[STARTED].append(phase.name)

    @hookimpl
    def lab_scenario_stop(self, stash, error, settings):
        stash[STARTED].append(f"stop:{type(error).__name__ if error else None}:{settings['tag']}")


def phase_run(pm, scenario, phase, stash):
    """``lab_phase_run`` without the core plugin, whose ``load`` runs the guest agent (here: no guest)."""
    caller = pm.subset_hook_caller("lab_phase_run", remove_plugins=[pm.get_plugin("core")])
    return caller(scenario=scenario, phase=phase, guest=None, stash=stash)


def test_hook_lab_scenario_start():
    pm = pm_with(Recorder(), tables={"recorder": {"tag": "mine"}})
    stash = Stash()
    pm.call_each("lab_scenario_start", scenario=SCENARIO, guest=None, stash=stash)
    assert stash[STARTED] == ["start:mine"] and STARTED in stash


def test_hook_lab_phase_run():
    order = []

    class Beside:
        name = "beside"

        @hookimpl(wrapper=True)
        def lab_phase_run(self, scenario, phase, guest, stash):
            if phase.name != "load":
                return (yield)
            order.append("monitor on")
            try:
                return (yield)
            finally:
                order.append("monitor off")

    class Work:
        @hookimpl
        def lab_phase_run(self, phase, stash):
            order.append(f"work:{phase.name}:{sorted(stash[SETTINGS])[0]}")

    pm = pm_with(Beside(), Work())
    stash = Stash()
    stash[SETTINGS] = pm.settings
    for i, name in enumerate(SCENARIO.phases):
        phase_run(pm, SCENARIO, PhaseInfo(name, i), stash)
    assert order == ["work:setup:beside", "monitor on", "work:load:beside", "monitor off", "work:drain:beside",
                     "work:verify:beside"]
    # the essential core plugin implements it (it runs the guest agent in "load") and ignores other phases
    assert "lab_phase_run" in pm.hooks_of("core")
    assert pm_with().hook.lab_phase_run(scenario=SCENARIO, phase=PhaseInfo("verify", 3), guest=None,
                                        stash=Stash()) == []


def test_hook_lab_scenario_stop():
    pm = pm_with(Recorder())
    stash = Stash()
    pm.call_each("lab_scenario_start", scenario=SCENARIO, guest=None, stash=stash)
    phase_run(pm, SCENARIO, PhaseInfo("load", 1), stash)
    pm.call_each("lab_scenario_stop", scenario=SCENARIO, guest=None, stash=stash, error=TimeoutError())
    assert stash[STARTED] == ["start:rec", "load", "stop:TimeoutError:rec"]


# -- results and reporting ------------------------------------------------------------------


def test_hook_lab_result_collect():
    class A:
        name = "collector"

        @hookimpl
        def lab_result_collect(self, scenario, settings):
            return {"received": 10, "scenario": scenario.name, "settings": dict(settings)}

    pm = pm_with(A())
    collected = pm.call_each("lab_result_collect", scenario=SCENARIO, guest=None, stash=Stash())
    assert collected["collector"] == [{"received": 10, "scenario": "demo", "settings": {}}]


def test_hook_lab_result_check(tmp_path):
    class A:
        name = "judge"

        @hookimpl
        def lab_result_check(self, scenario, data):
            agent = data["agent"]
            gaps = sum(c["gaps"] for c in agent["consumers"])
            return [Verdict("no-gaps", gaps == 0, f"{gaps} gaps"), "a string is a failed check"]

    from lab.engine.execute import execute_scenario
    from lab.engine.scenario import scenario_from_dict

    from ..engine.test_execute import FakeGuest, agent_report

    pm = pm_with(A())
    scenario = scenario_from_dict({"emulators": [{"name": "generator"}]}, "s.toml", pm.registries)
    record = execute_scenario(pm, FakeGuest(tmp_path, agent_report()), scenario, "/run/cnlab/py")
    mine = [v for v in record.verdicts if v.plugin == "judge"]
    assert mine == [Verdict("no-gaps", True, "0 gaps", "judge"), Verdict("judge", False, "a string is a failed check",
                                                                         "judge")]
    assert record.status == "failed" and record.problems == ("judge: a string is a failed check",)


def test_hook_lab_result_judged(tmp_path):
    seen = []

    class Keeper:
        name = "keeper"

        @hookimpl
        def lab_result_collect(self):
            return {"collected": 1}

        @hookimpl
        def lab_result_judged(self, scenario, guest, stash, data, passed, settings):
            seen.append((passed, sorted(data)))
            return None if passed else {"kept": guest.run(["echo", "evidence"]).argv[-1]}

        @hookimpl
        def lab_result_check(self, scenario):
            return ["rigged"] if scenario.name == "fails" else []

    from lab.engine.execute import execute_scenario
    from lab.engine.scenario import scenario_from_dict

    from ..engine.test_execute import FakeGuest

    pm = pm_with(Keeper())
    records = {name: execute_scenario(pm, FakeGuest(tmp_path), scenario_from_dict(
        {"name": name, "emulators": [{"name": "generator"}]}, "s.toml", pm.registries), "/run/cnlab/py")
        for name in ("fails", "holds")}
    assert [passed for passed, _ in seen] == [False, True] and "agent" in seen[0][1] and "keeper" in seen[0][1]
    # merged into the plugin's own entry, after the checks: a pass keeps only what was collected
    assert records["fails"].data["keeper"] == {"collected": 1, "kept": "evidence"}
    assert records["holds"].data["keeper"] == {"collected": 1} and records["holds"].passed

    class Raises:
        name = "raises"

        @hookimpl
        def lab_result_judged(self):
            raise OSError("guest gone")

    record = execute_scenario(pm_with(Raises()), FakeGuest(tmp_path), scenario_from_dict(
        {"emulators": [{"name": "generator"}]}, "s.toml", pm.registries), "/run/cnlab/py")
    assert [(v.name, v.plugin) for v in record.verdicts if not v.ok] == [("hooks", "raises")]


def test_hook_lab_report_status():
    class Xfail:
        @hookimpl
        def lab_report_status(self, result):
            return "XFAIL" if result.scenario.startswith("known-") and not result.passed else None

    pm = pm_with(Xfail())
    status = pm.hook.lab_report_status
    assert status(result=ScenarioResult("demo")) == "PASS"  # the essential core plugin answers last
    assert status(result=ScenarioResult("demo", status="failed")) == "FAIL"
    assert status(result=ScenarioResult("demo", status="error")) == "ERROR"
    assert status(result=ScenarioResult("known-bug", status="failed")) == "XFAIL"  # the first answer wins


def test_hook_lab_report_write(tmp_path):
    class Writer:
        name = "writer"

        @hookimpl
        def lab_report_write(self, results, directory, settings):
            path = directory / "summary.txt"
            path.write_text("".join(f"{r.scenario} {r.status}\n" for r in results))
            return [path]

    pm = pm_with(Writer())
    written = pm.call_each("lab_report_write", results=[ScenarioResult("demo")], directory=tmp_path)
    assert written["writer"] == [[tmp_path / "summary.txt"]]
    assert (tmp_path / "summary.txt").read_text() == "demo passed\n"


def test_the_run_hands_its_final_records_to_lab_report_write(tmp_path):
    from lab.engine.run import _plugin_reports

    class Writer:
        @hookimpl
        def lab_report_write(self, results, directory):
            path = directory / "mine.txt"
            path.write_text("".join(f"{r.scenario} {r.passed} {r.problems}\n" for r in results))
            return [path]

    records = [ScenarioResult("p", status="failed", verdicts=(Verdict("loss", False, "lost 3"),)),
               ScenarioResult("plain")]
    events = []
    written = _plugin_reports(pm_with(Writer()), records, tmp_path, events.append)
    assert written == [str(tmp_path / "mine.txt")] and events == []
    assert (tmp_path / "mine.txt").read_text() == "p False ('loss: lost 3',)\nplain True ()\n"


def test_a_failing_lab_report_write_is_a_note_not_a_crash(tmp_path):
    from lab.engine.run import _plugin_reports

    class Broken:
        name = "broken"

        @hookimpl
        def lab_report_write(self, results, directory):
            raise OSError("disk full")

    events = []
    assert _plugin_reports(pm_with(Broken()), [ScenarioResult("p")], tmp_path, events.append) == []
    assert [e.detail for e in events] == ["cnlab run: plugin 'broken' failed in hook lab_report_write: OSError: "
                                          "disk full"]
