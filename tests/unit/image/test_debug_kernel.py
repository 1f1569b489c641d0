"""The debug kernel flavour's configuration steps and cache key (no kernel is built here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.image import debug_kernel
from lab.image.debug_kernel import apply_fragment, debug_inputs, parse_config, unmet_options
from lab.image.kernel import KernelSpec

BASE = """\
CONFIG_LOCALVERSION=""
CONFIG_KASAN=n
# CONFIG_PROVE_LOCKING is not set
CONFIG_SYSTEM_TRUSTED_KEYS="debian/certs/debian-uefi-certs.pem"
CONFIG_DEBUG_INFO_DWARF5=y
"""
FRAGMENT = """\
# a comment
CONFIG_LOCALVERSION="-cnlab-debug"
CONFIG_PROVE_LOCKING=y
CONFIG_SYSTEM_TRUSTED_KEYS=""
# CONFIG_DEBUG_INFO_DWARF5 is not set
"""


def test_fragment_replaces_the_base_options_and_keeps_the_rest():
    merged = apply_fragment(BASE, FRAGMENT)
    options = parse_config(merged)
    assert options["CONFIG_LOCALVERSION"] == '"-cnlab-debug"'
    assert options["CONFIG_PROVE_LOCKING"] == "y"
    assert options["CONFIG_SYSTEM_TRUSTED_KEYS"] == '""'
    assert options["CONFIG_DEBUG_INFO_DWARF5"] == "n"
    assert options["CONFIG_KASAN"] == "n"  # not in the fragment: untouched
    # each option once: kconfig would warn about overrides otherwise
    assert merged.count("CONFIG_PROVE_LOCKING") == 1 and merged.count("CONFIG_DEBUG_INFO_DWARF5") == 1


def test_options_kconfig_refused_are_named():
    after_olddefconfig = 'CONFIG_LOCALVERSION="-cnlab-debug"\nCONFIG_SYSTEM_TRUSTED_KEYS=""\n'
    unmet = unmet_options(after_olddefconfig, FRAGMENT)
    assert unmet == ["CONFIG_PROVE_LOCKING=y (got n)"]
    assert unmet_options(apply_fragment(BASE, FRAGMENT), FRAGMENT) == []


def test_the_committed_fragment_asks_for_every_debug_facility_of_the_issue():
    wanted = parse_config((debug_kernel.recipe_dir() / "debug.config").read_text())
    for option in ("PROVE_LOCKING", "DEBUG_ATOMIC_SLEEP", "KASAN", "DEBUG_KMEMLEAK", "DEBUG_OBJECTS", "FAILSLAB",
                   "FAIL_PAGE_ALLOC", "FAIL_FUNCTION", "FAULT_INJECTION_DEBUG_FS"):
        assert wanted[f"CONFIG_{option}"] == "y", option
    # the lab scans after each scenario: no background scan in the middle of a measurement
    assert wanted["CONFIG_DEBUG_KMEMLEAK_AUTO_SCAN"] == "n"


@pytest.fixture
def cloud_kernel(tmp_path) -> KernelSpec:
    unpacked = tmp_path / "linux-image-6.1.0-57-cloud-amd64_6.1.192-3"
    modules = unpacked / "lib/modules/6.1.0-57-cloud-amd64"
    modules.mkdir(parents=True)
    (unpacked / "boot").mkdir()
    (unpacked / "boot/config-6.1.0-57-cloud-amd64").write_text(BASE)
    return KernelSpec(image=unpacked / "boot/vmlinuz-6.1.0-57-cloud-amd64", release="6.1.0-57-cloud-amd64",
                      modules_dir=modules, kbuild_dir=None)


def test_key_changes_with_every_input(cloud_kernel, monkeypatch, tmp_path):
    from lab.host.cache import content_key

    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "debug.config").write_text(FRAGMENT)
    (recipe / "modules.lsmod").write_text("Module Size Used by\n# comment\nvirtio_net 0 0\nsch_netem 1 2\n")
    monkeypatch.setattr(debug_kernel, "recipe_dir", lambda: recipe)
    monkeypatch.setattr(debug_kernel, "_source_version", lambda: "6.1.192-3")
    monkeypatch.setattr(debug_kernel, "_compiler", lambda: "gcc (Debian 12.2.0-14) 12.2.0")
    first = debug_inputs(cloud_kernel)
    assert first["modules"] == ["virtio_net", "sch_netem"]
    assert first["source"] == {"package": "linux-source-6.1", "version": "6.1.192-3"}
    keys = {content_key(first)}

    def changed(what):
        what()
        key = content_key(debug_inputs(cloud_kernel))
        assert key not in keys
        keys.add(key)

    changed(lambda: (recipe / "debug.config").write_text(FRAGMENT + "CONFIG_KCOV=y\n"))
    changed(lambda: (recipe / "modules.lsmod").write_text("Module Size Used by\nvirtio_net 0 0\n"))
    changed(lambda: (cloud_kernel.modules_dir.parents[2] / "boot/config-6.1.0-57-cloud-amd64").write_text(BASE + "X\n"))
    changed(lambda: monkeypatch.setattr(debug_kernel, "_source_version", lambda: "6.1.193-1"))
    changed(lambda: monkeypatch.setattr(debug_kernel, "_compiler", lambda: "gcc (Debian 13.1.0-1) 13.1.0"))
    changed(lambda: monkeypatch.setattr(debug_kernel, "RECIPE", debug_kernel.RECIPE + 1))


def test_a_base_kernel_without_its_configuration_is_a_build_error(cloud_kernel):
    (cloud_kernel.modules_dir.parents[2] / "boot/config-6.1.0-57-cloud-amd64").unlink()
    with pytest.raises(debug_kernel.BuildError, match="no kernel configuration beside"):
        debug_inputs(cloud_kernel)


def test_build_tree_names_its_source_tree_relatively(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    (build / "Makefile").write_text("include /scratch/.abc/src/Makefile\n")
    (build / "source").symlink_to("/scratch/.abc/src")
    debug_kernel._relocatable(build)
    assert "/scratch" not in (build / "Makefile").read_text()
    assert "../src/Makefile" in (build / "Makefile").read_text()
    assert Path(str((build / "source").readlink())) == Path("../src")


def test_the_kcsan_fragment_asks_for_the_data_race_detector_without_kasan():
    wanted = parse_config(debug_kernel.fragment_of("kcsan").read_text())
    assert wanted["CONFIG_KCSAN"] == "y"
    assert "CONFIG_KASAN" not in wanted  # Kconfig: KCSAN depends on !KASAN; the cloud base has no KASAN
    assert wanted["CONFIG_LOCALVERSION"] == '"-cnlab-kcsan"'
    for option in ("FAILSLAB", "FAIL_PAGE_ALLOC", "FAIL_FUNCTION", "FAULT_INJECTION_DEBUG_FS"):
        assert wanted[f"CONFIG_{option}"] == "y", option


def test_each_flavour_has_a_key_of_its_own_and_an_unknown_one_is_named(cloud_kernel, monkeypatch):
    from lab.host.cache import content_key

    monkeypatch.setattr(debug_kernel, "_source_version", lambda: "6.1.192-3")
    monkeypatch.setattr(debug_kernel, "_compiler", lambda: "gcc (Debian 12.2.0-14) 12.2.0")
    keys = {flavour: content_key(debug_inputs(cloud_kernel, flavour)) for flavour in debug_kernel.FLAVOUR_FRAGMENTS}
    assert len(set(keys.values())) == len(keys) == 2
    with pytest.raises(debug_kernel.BuildError, match="no kernel flavour 'tsan': built flavours are debug, kcsan"):
        debug_inputs(cloud_kernel, "tsan")
