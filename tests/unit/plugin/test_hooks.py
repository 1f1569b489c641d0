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
    FaultSpec,
    GuestFile,
    HookCallError,
    PhaseInfo,
    ScenarioInfo,
    ScenarioResult,
    Stash,
    StashKey,
    call_hook,
    get_plugin_manager,
)

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "plugins.md"
HOOKS = sorted(n for n in hookspecs.__all__ if n.startswith("lab_"))
CONFIG = LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})
SCENARIO = ScenarioInfo("demo", emulators=("proc-events",), consumers=("checker",))


def signature(name: str) -> str:
    spec = getattr(hookspecs, name)
    return f"{name}({', '.join(inspect.signature(spec).parameters)})"


@pytest.mark.parametrize("name", HOOKS)
def test_plugin_hook_is_documented(name):
    text = DOCS.read_text()
    assert re.search(rf"^### `{re.escape(signature(name))}`$", text, re.M), \
        f"docs/plugins.md has no '### `{signature(name)}`' section"


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
    # the built-in load runner and fault wrappers act on every scenario: leave them out of single-hook tests
    config = LabConfig(env=CONFIG.env, plugin_tables=tables or {}, plugin_args=("no:runner", "no:faults"))
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
    with pytest.raises(ConfigError, match=r"\[plugins.speedy\] speed: expected integer"):
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
                                               settings=(Setting("n", int, 1, "n"),)))

    pm = pm_with(P())
    spec = pm.registries.emulators.get("toy")
    assert spec.plugin == "emu"
    assert pm.registries.emulators.build("toy", {"n": 2}) == ("built", {"n": 2})
    assert pm.kind_of("emu") == "emulator"


def test_hook_lab_consumers_register():
    class P:
        name = "cons"

        @hookimpl
        def lab_consumers_register(self, registry):
            registry.add_consumer(ConsumerSpec("toy-consumer", "reads", lambda s: "consumer"))

    pm = pm_with(P())
    assert pm.registries.consumers.get("toy-consumer").plugin == "cons"
    assert pm.registries.consumers.build("toy-consumer") == "consumer"


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
    assert [a for r in results for a in r] == ["-device", "virtio-rng-pci,id=rng4"]


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
    assert results == [["panic_on_oops=1"], ["slub_debug=FZPU"]]


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
    assert any(f.dest.endswith("/kabi.py") for f in files)  # the essential core plugin's contribution
    with pytest.raises(ValueError, match="absolute"):
        GuestFile(src, "relative/path")


def test_hook_lab_guest_ready():
    ran = []

    class A:
        @hookimpl
        def lab_guest_ready(self, guest, scenario):
            ran.append((guest, scenario.name))

    pm = pm_with(A())
    call_hook(pm, "lab_guest_ready", guest="G", scenario=SCENARIO)
    assert ran == [("G", "demo")]


# -- scenario --------------------------------------------------------------------------

STARTED = StashKey[list]()


class Recorder:
    name = "recorder"

    @hookimpl
    def lab_scenario_start(self, scenario, guest, stash):
        stash[STARTED] = ["start"]

    @hookimpl
    def lab_phase_run(self, phase, stash):
        stash[STARTED].append(phase.name)

    @hookimpl
    def lab_scenario_stop(self, stash, error):
        stash[STARTED].append(f"stop:{type(error).__name__ if error else None}")


def test_hook_lab_scenario_start():
    pm = pm_with(Recorder())
    stash = Stash()
    call_hook(pm, "lab_scenario_start", scenario=SCENARIO, guest=None, stash=stash)
    assert stash[STARTED] == ["start"] and STARTED in stash


def test_hook_lab_phase_run():
    order = []

    class Fault:
        name = "fault"

        @hookimpl(wrapper=True)
        def lab_phase_run(self, scenario, phase, guest, stash):
            if phase.name != "load":
                return (yield)
            order.append("inject")
            try:
                return (yield)
            finally:
                order.append("restore")

    class Work:
        @hookimpl
        def lab_phase_run(self, phase):
            order.append(f"work:{phase.name}")

    pm = pm_with(Fault(), Work())
    for i, name in enumerate(SCENARIO.phases):
        call_hook(pm, "lab_phase_run", scenario=SCENARIO, phase=PhaseInfo(name, i), guest=None, stash=Stash())
    assert order == ["work:setup", "inject", "work:load", "restore", "work:drain", "work:verify"]


def test_hook_lab_scenario_stop():
    pm = pm_with(Recorder())
    stash = Stash()
    call_hook(pm, "lab_scenario_start", scenario=SCENARIO, guest=None, stash=stash)
    call_hook(pm, "lab_phase_run", scenario=SCENARIO, phase=PhaseInfo("load", 1), guest=None, stash=stash)
    call_hook(pm, "lab_scenario_stop", scenario=SCENARIO, guest=None, stash=stash, error=TimeoutError())
    assert stash[STARTED] == ["start", "load", "stop:TimeoutError"]


# -- results and reporting ------------------------------------------------------------------


def test_hook_lab_result_collect():
    class A:
        @hookimpl
        def lab_result_collect(self, scenario):
            return {"received": 10, "scenario": scenario.name}

    pm = pm_with(A())
    assert call_hook(pm, "lab_result_collect", scenario=SCENARIO, guest=None, stash=Stash()) == \
        [{"received": 10, "scenario": "demo"}]


def test_hook_lab_result_check():
    class A:
        @hookimpl
        def lab_result_check(self, data):
            return [] if data["gaps"] == data["drops"] else [f"gaps {data['gaps']} != drops {data['drops']}"]

    pm = pm_with(A())
    assert call_hook(pm, "lab_result_check", scenario=SCENARIO, data={"gaps": 3, "drops": 3}) == [[]]
    assert call_hook(pm, "lab_result_check", scenario=SCENARIO, data={"gaps": 3, "drops": 1}) == \
        [["gaps 3 != drops 1"]]


def test_hook_lab_report_status():
    class Xfail:
        @hookimpl
        def lab_report_status(self, result):
            return "XFAIL" if result.scenario.name.startswith("known-") else None

    pm = pm_with(Xfail())
    status = pm.hook.lab_report_status
    assert status(result=ScenarioResult(SCENARIO, True)) == "PASS"  # essential core answers last
    assert status(result=ScenarioResult(SCENARIO, False)) == "FAIL"
    assert status(result=ScenarioResult(ScenarioInfo("known-bug"), False)) == "XFAIL"  # first result wins


def test_hook_lab_report_write(tmp_path):
    class Writer:
        @hookimpl
        def lab_report_write(self, results, directory):
            path = directory / "summary.txt"
            path.write_text("".join(f"{r.scenario.name} {r.passed}\n" for r in results))
            return [path]

    pm = pm_with(Writer())
    written = call_hook(pm, "lab_report_write", results=[ScenarioResult(SCENARIO, True)], directory=tmp_path)
    assert written == [[tmp_path / "summary.txt"]]
    assert (tmp_path / "summary.txt").read_text() == "demo True\n"


def test_the_engine_hands_finished_plugin_scenarios_to_lab_report_write(tmp_path):
    from io import StringIO

    from lab.engine.run import _plugin_reports
    from lab.engine.scenario import scenario_from_dict

    class Writer:
        @hookimpl
        def lab_report_write(self, results, directory):
            path = directory / "mine.txt"
            path.write_text("".join(f"{r.scenario.name} {r.passed} {r.problems}\n" for r in results))
            return [path]

    scenarios = [scenario_from_dict({"name": "p", "duration": 1.0,
                                     "plugins": {"emulators": ["irq"], "consumers": ["checker"]}}, "<p>"),
                 scenario_from_dict({"name": "plain", "duration": 1.0, "emulators": [{"name": "e"}]}, "<plain>")]
    records = [{"scenario": "p", "status": "failed", "metrics": {"plugins": {"runner": {}}},
                "invariants": [{"name": "loss", "ok": False, "detail": "lost 3"}]},
               {"scenario": "plain", "status": "passed", "invariants": []}]
    written = _plugin_reports(pm_with(Writer()), scenarios, records, tmp_path, StringIO())
    assert written == [str(tmp_path / "mine.txt")]
    assert (tmp_path / "mine.txt").read_text() == "p False ('lost 3',)\n"
