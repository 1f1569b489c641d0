"""Bring-your-own kernel and module rebuilds, on real guests and real builds."""

from __future__ import annotations

import shutil
import time

import pytest

from lab.guest.labsetup import Lab, LabOptions
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape
from lab.image.module import build_module, kmod_dir

pytestmark = pytest.mark.lab


def test_bring_your_own_kernel_boots_and_builds_the_module(cnlab_lab):
    debian = cnlab_lab.kernel
    options = LabOptions(cache=cnlab_lab.cache, kernel=debian.image, kbuild=debian.kbuild_dir,
                         kernel_modules=debian.modules_dir)
    own = Lab(options)
    assert own.kernel.source == "custom" and own.kernel.release == debian.release
    with Guest(own.guest_spec(GuestShape(cpus=1), name="byok")) as guest:
        assert guest.run(["uname", "-r"], check=True).text.strip() == debian.release
        assert guest.run(["grep", "-w", "^cnlab", "/proc/modules"]).ok


def test_a_kmod_change_rebuilds_only_the_module_in_seconds(cnlab_lab, tmp_path):
    source = tmp_path / "kmod"
    shutil.copytree(kmod_dir(), source, ignore=shutil.ignore_patterns("*.o", "*.ko", ".*.cmd", "*.mod*"))
    main_c = source / "main.c"
    main_c.write_text(main_c.read_text() + f"\n/* touched {time.time_ns()} */\n")
    image_before = cnlab_lab.image.rootfs.stat().st_mtime_ns
    started = time.monotonic()
    build = build_module(cnlab_lab.kernel, cnlab_lab.cache, source=source)
    elapsed = time.monotonic() - started
    assert build.source_hash != cnlab_lab.module.source_hash
    assert build.module("cnlab").exists() and elapsed < 60
    assert cnlab_lab.image.rootfs.stat().st_mtime_ns == image_before
    again = time.monotonic()
    assert build_module(cnlab_lab.kernel, cnlab_lab.cache, source=source).source_hash == build.source_hash
    assert time.monotonic() - again < 1.0  # cached: no rebuild
