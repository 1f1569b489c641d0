"""lab/config.py: the TOML lab config and plugin settings validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from lab.config import Setting, config_from_args, load_config, validate_settings
from lab.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cnlab.toml"
    path.write_text(text)
    return path


def test_load_full_config(tmp_path):
    path = write(tmp_path, """
        [lab]
        plugins = ["my_plugin", "no:faults"]
        plugins_dirs = ["extra"]

        [plugins.emulators]
        scale = 0.5
    """.replace("\n        ", "\n"))
    config = load_config(path, plugin_args=["no:cn_proc"], plugins_dirs=[Path("/x")], env={"LAB_TRACE_PLUGINS": "1",
                                                                                          "HOME": "/root"})
    assert config.plugin_args == ("my_plugin", "no:faults", "no:cn_proc")
    assert config.plugins_dirs == (tmp_path / "extra", Path("/x"))
    assert config.plugin_table("emulators")["scale"] == 0.5
    assert dict(config.plugin_table("nothing")) == {}
    assert dict(config.env) == {"LAB_TRACE_PLUGINS": "1"}
    with pytest.raises(TypeError):
        config.plugin_table("emulators")["scale"] = 1  # read-only
    with pytest.raises(AttributeError):
        config.path = None  # frozen


def test_no_file_is_an_empty_config():
    config = load_config(None, env={})
    assert config.path is None and config.plugin_args == () and config.plugins_dirs == ()
    assert config.plugin_tables == {}


@pytest.mark.parametrize("text, message", [
    ("[lab\n", "not valid TOML"),
    ("[scenario]\nx = 1\n", "unknown top-level table 'scenario'"),
    ("[lab]\nplugin = []\n", r"\[lab\] plugin: unknown key"),
    ("[lab]\nplugins = 'x'\n", r"\[lab\] plugins: expected an array of strings"),
    ("plugins = 3\n", r"\[plugins\] must only hold tables"),
    ("[lab]\nkernel_flavour = 'dbg'\n", r"\[lab\] kernel_flavour: 'dbg' is not one of cloud, debug"),
])
def test_bad_config_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_unreadable_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the lab config"):
        load_config(tmp_path / "missing.toml", env={})


def test_config_from_args_uses_cnlab_toml_in_cwd(tmp_path, monkeypatch):
    write(tmp_path, "[lab]\nplugins = ['a']\n")
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(config=None, plugin_args=["b"], plugins_dir=[Path("d")])
    config = config_from_args(args, env={})
    assert config.path == Path("cnlab.toml")
    assert config.plugin_args == ("a", "b")
    assert config.plugins_dirs == (Path("d"),)


def test_config_from_args_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_from_args(argparse.Namespace(config=None, plugin_args=[], plugins_dir=[]), env={})
    assert config.path is None


DECL = (
    Setting("rate", int, 10, "messages/s", min=0, max=1000),
    Setting("scale", float, 1.0, "multiplier", min=0.5),
    Setting("verbose", bool, False, "talk"),
    Setting("mode", str, "fast", "how", choices=("fast", "slow")),
    Setting("groups", list, [2, 4], "groups", item_type=int, min=1, max=32),
    Setting("pair", list, [1, 2], "two numbers", item_type=int, length=2),
)


def test_validate_fills_defaults_and_converts():
    values = validate_settings("p", DECL, {"scale": 2, "groups": [6]})
    assert dict(values) == {"rate": 10, "scale": 2.0, "verbose": False, "mode": "fast", "groups": (6,),
                            "pair": (1, 2)}
    assert isinstance(values["scale"], float)
    assert validate_settings("p", DECL, {})["groups"] == (2, 4)


@pytest.mark.parametrize("table, message", [
    ({"rat": 1}, r"\[plugins.p\] rat: unknown key for plugin 'p' \(did you mean 'rate'\?\)"),
    ({"zzz": 1}, r"\[plugins.p\] zzz: unknown key for plugin 'p' \(known keys: groups, mode, pair, rate, scale, "
             r"verbose\)"),
    ({"rate": "10"}, r"\[plugins.p\] rate: expected an integer in 0..1000, got string '10'"),
    ({"rate": 1.5}, r"\[plugins.p\] rate: expected an integer in 0..1000, got number 1.5"),
    ({"rate": True}, r"\[plugins.p\] rate: expected an integer in 0..1000, got boolean True"),
    ({"rate": -1}, r"\[plugins.p\] rate: expected an integer in 0..1000, got -1"),
    ({"rate": 1001}, r"\[plugins.p\] rate: expected an integer in 0..1000, got 1001"),
    ({"verbose": 1}, r"\[plugins.p\] verbose: expected true or false, got integer 1"),
    ({"scale": False}, r"\[plugins.p\] scale: expected a number in >= 0.5, got boolean False"),
    ({"scale": 0.1}, r"\[plugins.p\] scale: expected a number in >= 0.5, got 0.1"),
    ({"mode": "medium"}, r"\[plugins.p\] mode: expected a string, one of 'fast', 'slow', got 'medium'"),
    ({"groups": [2, "x"]}, r"\[plugins.p\] groups: expected an array of integers in 1..32, got element 'x'"),
    ({"groups": [2, 33]}, r"\[plugins.p\] groups: expected an array of integers in 1..32, got element 33"),
    ({"pair": [1]}, r"\[plugins.p\] pair: expected an array of 2 integers, got 1 element\(s\) \[1\]"),
])
def test_validate_errors_name_plugin_and_key(table, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_settings("p", DECL, table)
    assert info.value.exit_status == 2


def test_setting_declarations_are_checked():
    with pytest.raises(ConfigError):
        Setting("x", int, None, "no default")
    with pytest.raises(ValueError, match="bare TOML key"):
        Setting("a b", int, 1, "space")
    with pytest.raises(ConfigError, match="declares a setting twice"):
        validate_settings("p", (Setting("a", int, 1, ""), Setting("a", int, 2, "")), {})
    assert Setting("g", list, [], "", item_type=str).type_name == "array of string"
    with pytest.raises(ConfigError, match="setting 'n' default: expected an integer in 1..5, got 9"):
        Setting("n", int, 9, "", min=1, max=5)
    with pytest.raises(ValueError, match="min 5 is above max 1"):
        Setting("n", int, 3, "", min=5, max=1)
    assert Setting("n", int, 3, "", min=1, max=5).range_text == "1..5"
    assert Setting("f", float, 3.0, "", min=0.5).range_text == ">= 0.5"


def test_kernel_flavour_comes_from_the_config_and_defaults_to_cloud(tmp_path):
    assert load_config(write(tmp_path, "[lab]\nkernel_flavour = 'debug'\n"), env={}).kernel_flavour == "debug"
    assert load_config(None, env={}).kernel_flavour == "cloud"
