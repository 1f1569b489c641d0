"""The plugin manager: loading order, blocking, errors, entry points, directories."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lab.plugin
from lab import hookimpl, hookspecs
from lab.cli import main as cli
from lab.cli.plugins import format_plugins
from lab.config import LabConfig, Setting
from lab.errors import ConfigError, PluginError
from lab.plugin import (
    BUILTIN_PLUGINS,
    ESSENTIAL_PLUGINS,
    EmulatorSpec,
    HookCallError,
    call_hook,
    get_plugin_manager,
    parse_plugin_args,
)
from lab.plugin.objects import GeneratorProfile

ROOT = Path(__file__).resolve().parents[3]
BUILTIN_NAMES = [m.rpartition(".")[2] for m in ESSENTIAL_PLUGINS + BUILTIN_PLUGINS]
NO_AUTOLOAD = {"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}


def cfg(*plugin_args: str, dirs=(), env=None, tables=None) -> LabConfig:
    env = dict(NO_AUTOLOAD) if env is None else env
    return LabConfig(plugin_args=tuple(plugin_args), plugins_dirs=tuple(dirs), env=env, plugin_tables=tables or {})


def write_plugin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def make_dist(site: Path, dist: str, module: str, ep_name: str, body: str) -> None:
    """A minimal installed distribution with a ``cnlab`` entry point, found through sys.path."""
    write_plugin(site, module, body)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cnlab]\n{ep_name} = {module}\n")


# -- loading order and sources ------------------------------------------------


def test_builtins_load_first_in_declared_order():
    pm = get_plugin_manager(cfg())
    assert list(pm.infos) == BUILTIN_NAMES
    assert pm.infos["core"].essential and pm.infos["core"].source == "built-in"
    assert all(pm.infos[n].source == "built-in" for n in BUILTIN_NAMES)


def test_order_builtins_entry_points_directory_then_p(tmp_path, monkeypatch):
    make_dist(tmp_path / "site", "cnlab-epdemo", "epdemo_mod", "epdemo", """
        from lab import hookimpl
        @hookimpl
        def lab_report_status(result):
            return None
    """)
    write_plugin(tmp_path / "site", "pmod", "from lab import hookimpl\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    write_plugin(tmp_path / "dir", "dirplug", "X = 1\n")
    pm = get_plugin_manager(cfg("pmod", dirs=[tmp_path / "dir"], env={}))
    names = list(pm.infos)
    assert names[:len(BUILTIN_NAMES)] == BUILTIN_NAMES
    assert names[len(BUILTIN_NAMES):] == ["epdemo", "dirplug", "pmod"]
    assert pm.infos["epdemo"].source == "entry point"
    assert pm.infos["epdemo"].origin == "cnlab-epdemo 1.0"
    assert pm.infos["dirplug"].source == "directory"
    assert pm.infos["pmod"].source == "-p"
    assert pm.hooks_of("epdemo") == ["lab_report_status"]


def test_autoload_disabled_skips_entry_points_but_p_loads_one(tmp_path, monkeypatch):
    make_dist(tmp_path, "cnlab-two", "two_mod", "two", "X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "two" not in get_plugin_manager(cfg()).infos
    pm = get_plugin_manager(cfg("two"))
    assert pm.infos["two"].source == "entry point"


def test_directory_plugins_load_by_path_under_stable_names(tmp_path):
    write_plugin(tmp_path, "b_second", "from lab import hookimpl\n")
    write_plugin(tmp_path, "a_first", "from lab import hookimpl\n")
    write_plugin(tmp_path, "_private", "raise RuntimeError('never imported')\n")
    pm = get_plugin_manager(cfg(dirs=[tmp_path]))
    assert list(pm.infos)[-2:] == ["a_first", "b_second"]
    assert pm.get_plugin("a_first").__name__ == "cnlab_dirplugin_a_first"
    assert pm.infos["a_first"].origin == str(tmp_path / "a_first.py")


def test_directory_name_clash_with_builtin_is_an_error(tmp_path):
    write_plugin(tmp_path, "faults", "X = 1\n")
    with pytest.raises(PluginError, match="'faults' is already taken"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_directory_plugin_import_error_names_file(tmp_path):
    path = write_plugin(tmp_path, "broken", "import no_such_module_xyz\n")
    with pytest.raises(PluginError, match=f"plugin 'broken' \\({path}\\) failed to import: ModuleNotFoundError"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_missing_plugins_dir(tmp_path):
    with pytest.raises(PluginError, match="not a directory"):
        get_plugin_manager(cfg(dirs=[tmp_path / "nope"]))


def test_entry_point_that_fails_to_load_names_the_distribution(tmp_path, monkeypatch):
    make_dist(tmp_path, "cnlab-bad", "bad_mod", "bad", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'bad' \(entry point bad_mod of cnlab-bad 1.0\).*boom"):
        get_plugin_manager(cfg(env={}))


# -- blocking ------------------------------------------------------------------


def test_p_no_blocks_a_builtin():
    pm = get_plugin_manager(cfg("no:faults"))
    assert not pm.has_plugin("faults") and pm.is_blocked("faults")
    assert pm.infos["faults"].blocked
    assert "cpu-offline" not in pm.registries.faults
    assert "link-flap" in pm.registries.faults


def test_block_by_module_name():
    pm = get_plugin_manager(cfg("no:cnlab_plugins.emulators"))
    assert not pm.has_plugin("emulators")
    assert pm.registries.emulators.names() == ["cn_proc"]


def test_env_disable_plugins_blocks_and_tolerates_unknown_names():
    pm = get_plugin_manager(cfg(env={**NO_AUTOLOAD, "LAB_DISABLE_PLUGINS": "consumers, not_installed"}))
    assert not pm.has_plugin("consumers")
    assert len(pm.registries.consumers) == 0


def test_blocked_entry_point_and_directory_plugins_are_never_imported(tmp_path, monkeypatch):
    make_dist(tmp_path / "site", "cnlab-x", "x_mod", "xep", "raise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    write_plugin(tmp_path / "dir", "xdir", "raise RuntimeError('imported')\n")
    pm = get_plugin_manager(cfg("no:xep", "no:xdir", dirs=[tmp_path / "dir"], env={}))
    assert pm.infos["xep"].blocked and pm.infos["xdir"].blocked


def test_essential_plugin_cannot_be_blocked():
    with pytest.raises(PluginError, match="'core' is essential"):
        get_plugin_manager(cfg("no:core"))
    with pytest.raises(PluginError, match="'core' is essential"):
        get_plugin_manager(cfg(env={**NO_AUTOLOAD, "LAB_DISABLE_PLUGINS": "core"}))


def test_last_p_argument_wins():
    assert parse_plugin_args(["no:a", "a", "b", "no:b"]) == ({"a": False, "b": True}, ["a"])
    pm = get_plugin_manager(cfg("no:faults", "faults"))
    assert pm.has_plugin("faults")


def test_blocking_an_unknown_name_is_an_error():
    with pytest.raises(PluginError, match="-p no:nosuch: no plugin named 'nosuch'"):
        get_plugin_manager(cfg("no:nosuch"))


# -- unknown names, bad hooks --------------------------------------------------


def test_unknown_plugin_name():
    with pytest.raises(PluginError, match="no plugin, module or entry point named 'nosuch_plugin'") as info:
        get_plugin_manager(cfg("nosuch_plugin"))
    assert info.value.exit_status == 2


def test_cli_unknown_plugin_is_one_line_exit_2(capsys):
    assert cli.main(["-p", "nosuch_plugin", "plugins"]) == 2
    err = capsys.readouterr().err
    assert err == "cnlab: error: no plugin, module or entry point named 'nosuch_plugin'\n"


def test_misspelt_hook_names_plugin_and_hook(tmp_path):
    write_plugin(tmp_path, "typo", """
        from lab import hookimpl
        @hookimpl
        def lab_emulator_register(registry):
            pass
    """)
    with pytest.raises(PluginError, match="plugin 'typo': unknown hook lab_emulator_register "
                                          r"\(did you mean lab_emulators_register\?\)"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_optional_hook_is_not_reported(tmp_path):
    write_plugin(tmp_path, "opt", """
        from lab import hookimpl
        @hookimpl(optionalhook=True)
        def lab_future_hook():
            pass
    """)
    assert get_plugin_manager(cfg(dirs=[tmp_path])).has_plugin("opt")


def test_unmarked_hook_function_is_reported(tmp_path):
    write_plugin(tmp_path, "unmarked", "def lab_report_status(result):\n    return 'X'\n")
    with pytest.raises(PluginError, match="plugin 'unmarked': function lab_report_status is not marked"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_impl_with_unknown_argument_names_plugin(tmp_path):
    write_plugin(tmp_path, "badargs", """
        from lab import hookimpl
        @hookimpl
        def lab_report_status(result, colour):
            return None
    """)
    with pytest.raises(PluginError, match="plugin 'badargs'.*colour"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


# -- a plugin raising inside a hook ------------------------------------------


class Raiser:
    @hookimpl
    def lab_result_check(self, scenario, data):
        return helper_that_fails()


def helper_that_fails():
    raise ValueError("accounting does not add up")


class Fine:
    @hookimpl
    def lab_result_check(self, scenario, data):
        return ["fine"]


def test_raising_hook_names_plugin_and_hook():
    pm = get_plugin_manager(cfg())
    pm.add_plugin(Fine(), "fine", "test", "here")
    pm.add_plugin(Raiser(), "raiser", "test", "here")
    pm.add_plugin(Fine(), "fine2", "test", "here")
    with pytest.raises(HookCallError) as info:
        pm.call_each("lab_result_check", scenario=lab.plugin.Scenario("s", "s.toml"), data={"kernel": {}})
    err = info.value
    assert (err.plugin, err.hook) == ("raiser", "lab_result_check")
    assert str(err) == "plugin 'raiser' failed in hook lab_result_check: ValueError: accounting does not add up"
    assert isinstance(err, PluginError) and isinstance(err.__cause__, ValueError)


def test_raising_inside_a_wrapper_names_the_wrapper_or_the_inner_plugin():
    class Wrapper:
        def __init__(self, fail: bool) -> None:
            self.fail = fail

        @hookimpl(wrapper=True)
        def lab_phase_run(self, scenario, phase, guest, stash):
            if self.fail:
                raise RuntimeError("inject failed")
            return (yield)

    class Inner:
        @hookimpl
        def lab_phase_run(self, phase):
            raise OSError("phase work failed")

    pm = get_plugin_manager(cfg("no:faults"))
    pm.add_plugin(Wrapper(False), "passthrough", "test", "here")
    pm.add_plugin(Inner(), "inner", "test", "here")
    phase = lab.plugin.PhaseInfo("setup", 0)  # not the load: the core plugin's agent run stays out of it
    with pytest.raises(HookCallError, match="plugin 'inner' failed in hook lab_phase_run: OSError"):
        call_hook(pm, "lab_phase_run", scenario=None, phase=phase, guest=None, stash=None)
    pm.add_plugin(Wrapper(True), "injector", "test", "here")
    with pytest.raises(HookCallError, match="plugin 'injector' failed in hook lab_phase_run: RuntimeError"):
        call_hook(pm, "lab_phase_run", scenario=None, phase=phase, guest=None, stash=None)


def test_raising_registration_hook_names_plugin(tmp_path):
    write_plugin(tmp_path, "regfail", """
        from lab import hookimpl
        @hookimpl
        def lab_faults_register(registry):
            raise KeyError("oops")
    """)
    with pytest.raises(HookCallError, match="plugin 'regfail' failed in hook lab_faults_register: KeyError"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_registry_clash_names_both_plugins(tmp_path):
    write_plugin(tmp_path, "clash", """
        from lab import hookimpl
        from lab.plugin import EmulatorSpec
        @hookimpl
        def lab_emulators_register(registry):
            registry.add_emulator(EmulatorSpec("audit", "again", 0x40, 1, 30, dict))
    """)
    with pytest.raises(PluginError, match="emulator 'audit' added by plugin 'clash' is already registered by "
                                          "plugin 'emulators'"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_emulator_group_and_id_clash_and_odd_idx():
    pm = get_plugin_manager(cfg())
    reg = pm.registries.emulators.for_plugin("t")
    with pytest.raises(PluginError, match="uses group 18 of emulator 'proc-events'"):
        reg.add_emulator(EmulatorSpec("x", "x", 0x40, 1, 18, dict))
    with pytest.raises(PluginError, match="uses connector id 0x12:0x1"):
        reg.add_emulator(EmulatorSpec("y", "y", 0x12, 1, 30, dict))
    with pytest.raises(PluginError, match="idx 0x41 is odd"):
        EmulatorSpec("z", "z", 0x41, 1, 30, dict)


# -- settings --------------------------------------------------------------------


def test_plugin_settings_validated_with_defaults():
    pm = get_plugin_manager(cfg(tables={"emulators": {"scale": 0.25}}))
    assert pm.settings["emulators"]["scale"] == 0.25
    assert pm.settings["consumers"]["rcvbuf"] == 8 << 20
    params = pm.registries.emulators.validate("proc-events", {}, place=str)
    profile = pm.registries.emulators.build("proc-events", params)
    assert profile.generators[0]["count"] == 500


@pytest.mark.parametrize("table, message", [
    ({"emulators": {"scael": 1.0}}, r"\[plugins.emulators\] scael: unknown key for plugin 'emulators' "
                                    r"\(did you mean 'scale'\?\)"),
    ({"emulators": {"scale": "fast"}}, r"\[plugins.emulators\] scale: expected a number in 0.001..100, got string "
                                       r"'fast'"),
    ({"consumers": {"rcvbuf": True}}, r"\[plugins.consumers\] rcvbuf: expected an integer in 0..1073741824, got "
                                      r"boolean True"),
    ({"faults": {"anything": 1}}, r"\[plugins.faults\] anything: unknown key .*it takes no settings"),
    ({"ghost": {"x": 1}}, r"\[plugins.ghost\]: no plugin named 'ghost' is loaded"),
])
def test_bad_settings_name_plugin_and_key(table, message):
    with pytest.raises(ConfigError, match=message):
        get_plugin_manager(cfg(tables=table))


def test_table_of_blocked_plugin_is_ignored():
    pm = get_plugin_manager(cfg("no:emulators", tables={"emulators": {"bogus": 1}}))
    assert not pm.has_plugin("emulators")


def test_settings_declare_must_return_settings(tmp_path):
    write_plugin(tmp_path, "decl", """
        from lab import hookimpl
        @hookimpl
        def lab_settings_declare():
            return [("speed", int)]
    """)
    with pytest.raises(PluginError, match="plugin 'decl': lab_settings_declare returned"):
        get_plugin_manager(cfg(dirs=[tmp_path]))


def test_spec_settings_are_validated_against_their_declarations():
    pm = get_plugin_manager(cfg())
    audit = pm.registries.emulators
    with pytest.raises(ConfigError, match=r"s.toml: emulators\[0\].rate: expected an integer in 1..10000000, got "
                                          r"number 1.5"):
        audit.validate("audit", {"rate": 1.5}, place=lambda key: f"s.toml: emulators[0].{key}")
    params = audit.validate("audit", {"rate": 5}, place=str)
    assert audit.build("audit", params).generators[0]["rate"] == 5


# -- built-ins ---------------------------------------------------------------------


def _build(pm, kind, name, **table):
    registry = pm.registries.by_kind(kind)
    return registry.build(name, registry.validate(name, table, place=str))


def test_builtin_emulators_have_distinct_even_ids_and_groups():
    pm = get_plugin_manager(cfg())
    emus = list(pm.registries.emulators)
    assert {e.name for e in emus} >= {"generator", "proc-events", "uevent", "audit", "irq", "cn_proc"}
    assert len({e.group for e in emus}) == len(emus)
    for e in emus:
        if not e.real:
            assert e.idx % 2 == 0 and e.group % 2 == 0 and e.idx != 0x10
    for e in emus:
        obj = _build(pm, "emulator", e.name)
        if isinstance(obj, GeneratorProfile):
            assert (obj.idx in (e.idx, 0)) and obj.group == e.group
            for c in obj.generators:
                lab.kabi.gen_start_body(**dict(c, gen_id=0, idx=e.idx, val=1, group=e.group))  # every field packs


def test_irq_emulator_runs_in_interrupt_context_through_cbus():
    profile = _build(get_plugin_manager(cfg()), "emulator", "irq")
    assert {g["context"] for g in profile.generators} == {"hardirq", "timer"}
    assert {g["path"] for g in profile.generators} == {"cbus"}


def test_builtin_consumers_and_faults_build():
    pm = get_plugin_manager(cfg())
    for spec in pm.registries.consumers:
        program = _build(pm, "consumer", spec.name)
        if spec.name == "checker-native":  # the C checker, run directly from where the init put it
            assert program.argv("/g")[0] == "/run/cnlab/bin/cnlab-consume"
        else:
            assert program.argv("/g")[1] == "/g/consume.py"
    assert _build(pm, "consumer", "multi").instances == 3
    assert "--rcvbuf" in _build(pm, "consumer", "tiny-rcvbuf").argv("/g")
    for spec in pm.registries.faults:
        assert _build(pm, "fault", spec.name).inject
    assert _build(pm, "fault", "pause").side == "host"
    assert _build(pm, "fault", "link-flap").side == "guest" and _build(pm, "fault", "link-netem").side == "guest"
    assert {e.name for e in pm.registries.events} == {"received", "queue_depth", "drop", "gap", "enobufs"}


def test_guest_files_of_builtins_exist():
    pm = get_plugin_manager(cfg())
    files = [f for group in call_hook(pm, "lab_guest_files_add", config=pm.config) for f in group]
    assert {Path(f.dest).name for f in files} >= {"kabi.py", "consume.py", "storm.py"}
    for f in files:
        assert f.source.is_file(), f.source


# -- tracing, listing, lazy import, exports -------------------------------------------


def test_trace_plugins_writes_hook_calls():
    stream = io.StringIO()
    pm = get_plugin_manager(cfg(env={**NO_AUTOLOAD, "LAB_TRACE_PLUGINS": "1"}), trace_stream=stream)
    call_hook(pm, "lab_report_status", result=lab.plugin.ScenarioResult("s"))
    text = stream.getvalue()
    assert "lab_emulators_register" in text and "lab_report_status" in text and "finish" in text


def test_list_plugins_output(capsys, tmp_path):
    write_plugin(tmp_path, "mine", """
        from lab import hookimpl
        @hookimpl
        def lab_report_status(result):
            return None
    """)
    assert cli.main(["--plugins-dir", str(tmp_path), "-p", "no:faults", "plugins"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()[1:]
    rows = {line.split()[0]: line for line in table}
    assert "built-in (essential)" in rows["core"]
    assert rows["emulators"].split()[1] == "emulator"
    assert "blocked" in rows["faults"]
    assert "directory" in rows["mine"] and rows["mine"].endswith("lab_report_status")
    assert "proc-events" in out and "emulators.scale = 1.0" in out


def test_format_plugins_lists_every_plugin():
    pm = get_plugin_manager(cfg())
    text = format_plugins(pm)
    for name in BUILTIN_NAMES:
        assert f"\n{name} " in text


def test_lab_import_is_stdlib_only_and_hookimpl_is_lazy():
    code = ("import sys, lab; assert 'pluggy' not in sys.modules, 'pluggy imported by lab'; "
            "from lab import hookimpl; assert 'pluggy' in sys.modules; "
            "assert hookimpl is sys.modules['lab.hookspecs'].hookimpl; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_unknown_lab_attribute():
    with pytest.raises(AttributeError):
        lab.no_such_thing  # noqa: B018


def test_hookspecs_all_matches_public_names():
    specs = {n for n in vars(hookspecs) if n.startswith("lab_")}
    assert set(hookspecs.__all__) == specs | {"PROJECT_NAME", "hookspec", "hookimpl"}
    assert len(hookspecs.__all__) == len(set(hookspecs.__all__))


def test_plugin_package_all_matches_public_names():
    public = {n for n, v in vars(lab.plugin).items() if not n.startswith("_") and not isinstance(v, type(sys))}
    assert set(lab.plugin.__all__) == public
    assert len(lab.plugin.__all__) == len(public)


def test_settings_declaration_must_be_valid():
    with pytest.raises(ConfigError, match="expected an integer"):
        Setting("n", int, "three", "bad default")
    with pytest.raises(TypeError, match="unsupported type"):
        Setting("n", dict, {}, "no dicts")
