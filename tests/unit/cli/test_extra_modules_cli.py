"""Extra modules from the command line and from plugins: folders gathered once, built before any boot, a build
error is one line with exit status 2, warnings shown, the guest gets cnlab.ko first and the rest in load order."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lab import hookimpl
from lab.cli import main as cli
from lab.config import LabConfig
from lab.engine.hooks import kernel_module_dirs
from lab.errors import ModuleSourceError, PluginError
from lab.guest.labsetup import Lab, LabOptions
from lab.image.extmod import ExtraModule
from lab.plugin.manager import get_plugin_manager


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "Kbuild").write_text(f"obj-m := {name}.o\n")
    return folder


def pm_with(*plugins):
    pm = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    for plugin in plugins:
        pm.register(plugin)
    return pm


def test_hook_lab_kernel_modules_add(tmp_path, monkeypatch):
    one, two = _folder(tmp_path, "one"), _folder(tmp_path, "two")
    monkeypatch.chdir(tmp_path)

    class A:
        @hookimpl
        def lab_kernel_modules_add(self, config):
            return [one, "two"]  # relative: to the current directory

    class B:
        @hookimpl
        def lab_kernel_modules_add(self, config):
            return [str(one)]

    class Silent:
        @hookimpl
        def lab_kernel_modules_add(self):
            return None

    assert set(kernel_module_dirs(pm_with(A(), B(), Silent()))) == {one.resolve(), two.resolve()}
    assert kernel_module_dirs(pm_with(Silent())) == ()

    class Bare:
        @hookimpl
        def lab_kernel_modules_add(self, config):
            return str(one)

    class Junk:
        @hookimpl
        def lab_kernel_modules_add(self, config):
            return [42]

    with pytest.raises(PluginError, match="return a list of folders"):
        kernel_module_dirs(pm_with(Bare()))
    with pytest.raises(PluginError, match="returned 42, not a folder path"):
        kernel_module_dirs(pm_with(Junk()))


@pytest.mark.parametrize(("argv", "expected"), [
    (["exec", "--module", "/nonexistent", "--", "true"], "--module /nonexistent: not a directory"),
    (["shell", "--module", "."], "--module .: no Kbuild or Makefile"),
    (["run", "--module", "/nonexistent"], "--module /nonexistent: not a directory"),
])
def test_a_bad_module_folder_is_one_line_and_exit_2(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnlab: error: ") and expected in err and len(err.strip().splitlines()) == 1


class FakeLab:
    """Records what the command line asked of the lab; its extra modules fail or warn as told."""

    def __init__(self, options, outcome):
        self.options = options
        self.outcome = outcome
        self.booted = False

    @property
    def extra_modules(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def guest_spec(self, *args, **kwargs):
        self.booted = True
        raise AssertionError("a guest spec was asked for")


def _patch_lab(monkeypatch, outcome, seen):
    def make(options=None):
        lab = FakeLab(options, outcome)
        seen.append(lab)
        return lab

    monkeypatch.setattr("lab.guest.labsetup.Lab", make)


def test_exec_builds_the_modules_of_module_and_of_plugins_before_any_boot_and_a_build_error_exits_2(
        tmp_path, monkeypatch, capsys):
    mine, theirs = _folder(tmp_path, "mine"), _folder(tmp_path, "theirs")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "declares.py").write_text(
        "from lab import hookimpl\n\n\n@hookimpl\ndef lab_kernel_modules_add(config):\n"
        f"    return [{str(theirs)!r}, {str(mine)!r}]\n")
    seen = []
    error = ModuleSourceError(f"module {mine}: build failed: {mine}/m.c:3:1: error: expected ';' (full output in x)")
    _patch_lab(monkeypatch, error, seen)
    status = cli.main(["--plugins-dir", str(tmp_path / "plugins"), "exec", "--module", str(mine), "--", "true"])
    err = capsys.readouterr().err
    assert status == 2 and err == f"cnlab: error: {error}\n"
    (lab,) = seen
    assert lab.options.extra_modules == (mine.resolve(), theirs.resolve()) and not lab.booted


def test_warnings_are_shown_and_no_module_builds_nothing(tmp_path, monkeypatch, caplog):
    mine = _folder(tmp_path, "mine")
    seen = []
    module = ExtraModule("mine", tmp_path / "mine.ko", mine, ("cnlab",),
                         (f"{mine}/m.c:3:5: warning: unused variable 'x'",), "h")
    _patch_lab(monkeypatch, (module,), seen)
    with caplog.at_level(logging.INFO, logger="lab"), pytest.raises(AssertionError, match="guest spec"):
        cli.main(["exec", "--module", str(mine), "--", "true"])
    assert f"module mine: {mine}/m.c:3:5: warning: unused variable 'x'" in caplog.text
    assert "extra modules, in load order after cnlab: mine" in caplog.text
    seen.clear()
    with pytest.raises(AssertionError, match="guest spec"):
        cli.main(["exec", "--no-module", "--module", str(mine), "--", "true"])
    assert seen[0].options.extra_modules == ()


def test_the_guest_gets_cnlab_first_then_the_extra_modules_in_load_order(tmp_path, monkeypatch):
    lab = Lab(LabOptions(cache=tmp_path, extra_modules=(tmp_path,)))

    class Module:
        def module(self, name):
            return tmp_path / f"{name}.ko"

    class Image:
        kernel = type("K", (), {"release": "6.1"})()

    class Accel:
        name = "kvm"

        def for_guests(self, *args):
            return self

    lab._module, lab._image, lab._accel = Module(), Image(), Accel()
    lab._extra = (ExtraModule("base", tmp_path / "base.ko", tmp_path, ("cnlab",), (), "h"),
                  ExtraModule("top", tmp_path / "top.ko", tmp_path, ("cnlab", "base"), (), "h"))
    assert [p.name for p in lab.guest_spec().modules] == ["cnlab.ko", "base.ko", "top.ko"]
    assert lab.guest_spec(with_module=False).modules == ()


def test_pytest_scenario_items_get_the_plugins_modules_too(tmp_path):
    from lab.pytest_plugin import _with_plugin_modules

    folder = _folder(tmp_path, "declared")

    class Declares:
        @hookimpl
        def lab_kernel_modules_add(self, config):
            return [folder]

    options = LabOptions(accel="tcg")
    assert _with_plugin_modules(options, pm_with(Declares())).extra_modules == (folder.resolve(),)
    assert _with_plugin_modules(options, pm_with()) is options


def test_run_builds_the_modules_after_reading_the_scenarios_and_before_any_guest(tmp_path, monkeypatch, capsys):
    mine = _folder(tmp_path, "mine")
    seen = []
    _patch_lab(monkeypatch, ModuleSourceError(f"module {mine}: build failed: {mine}/m.c:1:1: error: x"), seen)
    monkeypatch.setattr("lab.engine.run.run_scenarios", lambda *a, **k: pytest.fail("a run started"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--module", str(mine), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"cnlab: error: module {mine}: build failed: ")
    assert seen[0].options.extra_modules == (mine.resolve(),) and not (tmp_path / "out").exists()
    assert cli.main(["run", "--hosts", "root@h1", "--module", str(mine)]) == 2
    assert "--hosts does not go with --module" in capsys.readouterr().err
