"""labmods.py (the module-reload fault's guest program): order, saved parameters, skipping, failures."""

from __future__ import annotations

import json

import pytest

from .guest_modules import load_guest_module

labmods = load_guest_module("labmods")

CMDLINE = ("console=ttyS0 cnlab.nonce=ab cnlab.load=/run/cnlab/cnlab.ko,/run/cnlab/cn-beat.ko,/run/cnlab/top.ko "
           "quiet")
PATHS = ["/run/cnlab/cnlab.ko", "/run/cnlab/cn-beat.ko", "/run/cnlab/top.ko"]


def test_the_load_list_and_module_names_come_from_the_kernel_command_line():
    assert labmods.load_list(CMDLINE) == PATHS
    assert labmods.load_list("console=ttyS0") == []
    assert [labmods.module_name(p) for p in PATHS] == ["cnlab", "cn_beat", "top"]


@pytest.fixture
def sysfs(tmp_path, monkeypatch):
    """A fake /sys/module with the three modules; the syscalls act on it and are recorded."""
    root = tmp_path / "sys"
    params = {"cnlab": {"debug_warn": ("N", 0o644)},
              "cn_beat": {"rate": ("200", 0o644), "inserted": ("17", 0o444), "warn": ("", 0o200),
                          "name": ("two words", 0o600)},
              "top": {}}
    for name, entries in params.items():
        folder = root / name / "parameters"
        folder.mkdir(parents=True)
        for param, (value, mode) in entries.items():
            (folder / param).write_text(value + "\n")
            (folder / param).chmod(mode)
    calls = []

    def delete(name):
        calls.append(("rmmod", name))
        if name == "stuck":
            return "Resource temporarily unavailable"
        (root / name).rename(tmp_path / f"gone-{name}")
        return ""

    def finit(path, params):
        calls.append(("insmod", path, params))
        name = labmods.module_name(path)
        (tmp_path / f"gone-{name}").rename(root / name)
        return ""

    monkeypatch.setattr(labmods, "delete_module", delete)
    monkeypatch.setattr(labmods, "finit_module", finit)
    return root, calls


def test_unload_goes_in_reverse_order_and_load_in_order_with_the_extra_modules_writable_parameters(sysfs, tmp_path):
    root, calls = sysfs
    saved = tmp_path / "saved.json"
    assert labmods.unload(PATHS, str(root), str(saved)) == ""
    assert calls == [("rmmod", "top"), ("rmmod", "cn_beat"), ("rmmod", "cnlab")]
    # read-only (inserted) and write-only (warn) parameters are not restored; cnlab's are never saved
    assert json.loads(saved.read_text()) == {"top": "", "cn_beat": 'name="two words" rate=200'}
    calls.clear()
    assert labmods.load(PATHS, str(root), str(saved)) == ""
    assert calls == [("insmod", PATHS[0], ""), ("insmod", PATHS[1], 'name="two words" rate=200'),
                     ("insmod", PATHS[2], "")]


def test_modules_already_gone_or_already_loaded_are_skipped_and_a_failure_is_named(sysfs, tmp_path):
    root, calls = sysfs
    saved = str(tmp_path / "saved.json")
    (root / "top").rename(tmp_path / "gone-top")
    assert labmods.unload(PATHS, str(root), saved) == "" and ("rmmod", "top") not in calls
    calls.clear()
    (tmp_path / "gone-cnlab").rename(root / "cnlab")  # loaded again by someone else
    assert labmods.load(PATHS, str(root), saved) == ""
    assert [c[1] for c in calls] == [PATHS[1], PATHS[2]]
    (root / "stuck").mkdir()
    assert labmods.unload(["/run/cnlab/cnlab.ko", "/run/cnlab/stuck.ko"], str(root), saved) == \
        "rmmod stuck: Resource temporarily unavailable"


def test_main_needs_a_command_and_a_load_list(monkeypatch, tmp_path, capsys):
    assert labmods.main([]) == 2 and labmods.main(["reload"]) == 2
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0\n")
    monkeypatch.setattr(labmods, "CMDLINE", str(cmdline))
    assert labmods.main(["unload"]) == 1
    assert "no cnlab.load= on the kernel command line" in capsys.readouterr().err
