"""Guest boot logic against a fake QEMU (readiness, failures, deadlines)."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

import lab.guest.machine as guest_mod
from lab.errors import BootError, BootTimeout, GuestError
from lab.guest.accel import Accel
from lab.guest.calibration import READINGS
from lab.guest.machine import Guest, GuestSpec, GuestState
from lab.image.build import GuestImage
from lab.image.kernel import KernelSpec
from lab.image.keys import ensure_keys

FAKE = Path(__file__).with_name("fake_qemu.py")


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setattr(guest_mod.SSHSession, "connect", lambda self, deadline=None: None)
    base = tmp_path / "base.cpio"
    base.write_bytes(b"")
    kernel = KernelSpec(image=tmp_path / "vmlinuz", release="test", modules_dir=None, kbuild_dir=None)
    image = GuestImage(kernel=kernel, rootfs=tmp_path / "root.ext4", modules_disk=None, initramfs=base,
                       keys=ensure_keys(tmp_path / "keys"), manifest_path=tmp_path / "m.json")
    return GuestSpec(image=image, accel=Accel("kvm", "test"), qemu_binary=str(FAKE), name="fake")


def _boot(spec, mode, monkeypatch, seconds=None):
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    if seconds is not None:
        monkeypatch.setattr(guest_mod, "BOOT_SECONDS", seconds)
    guest = Guest(spec)
    guest.start()
    return guest


def test_ready_after_qmp_greeting_cont_and_nonce(spec, monkeypatch):
    guest = _boot(spec, "ok", monkeypatch)
    try:
        assert guest.state is GuestState.READY
        assert guest.ready_info == {"cpus": 2, "modules": "none", "lpj": 0}
        assert guest.ssh_port and 20000 <= guest.ssh_port < 60000
        assert guest.timing.qmp <= guest.timing.ready
    finally:
        guest.stop()
    assert guest.state is GuestState.STOPPED and not guest.alive()
    assert not guest.workdir.exists()


def test_measured_lpjs_are_recorded_and_their_median_given_to_later_guests(spec, monkeypatch, tmp_path):
    calibration = tmp_path / "calibration" / "lpj.json"
    spec = dataclasses.replace(spec, calibration=calibration)
    for _ in range(READINGS):
        guest = _boot(spec, "lpj", monkeypatch)
        guest.stop()
        assert guest.ready_info["lpj"] == 10384536
    assert json.loads(calibration.read_text()) == {"readings": [10384536] * READINGS}
    later = Guest(spec)
    assert later.cmdline().endswith(" lpj=10384536")
    calibration.write_text("{damaged")
    assert "lpj=" not in Guest(spec).cmdline()  # a damaged file: the kernel calibrates as usual


def test_a_guest_given_lpj_records_nothing(spec, monkeypatch, tmp_path):
    calibration = tmp_path / "calibration" / "lpj.json"
    calibration.parent.mkdir()
    calibration.write_text(json.dumps({"readings": [10376720] * READINGS}))
    recorded = []
    monkeypatch.setattr(guest_mod, "record_lpj", lambda path, lpj: recorded.append(lpj))
    guest = _boot(dataclasses.replace(spec, calibration=calibration), "lpj", monkeypatch)
    guest.stop()
    assert " lpj=10376720" in guest.cmdline() and recorded == []


def test_port_collision_is_retried(spec, monkeypatch):
    guest = _boot(spec, "collide", monkeypatch)
    guest.stop()
    assert guest.state is GuestState.STOPPED


def test_qemu_dying_before_ready_is_a_boot_error_with_its_message(spec, monkeypatch):
    with pytest.raises(BootError, match="QEMU exited with status 1.*Could not open"):
        _boot(spec, "die", monkeypatch)


def test_no_readiness_times_out_and_kills_qemu(spec, monkeypatch):
    guest = Guest(spec)
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    monkeypatch.setattr(guest_mod, "BOOT_SECONDS", 2.0)
    with pytest.raises(BootTimeout, match="no readiness line"):
        guest.start()
    assert guest.state is GuestState.BROKEN and not guest.alive()
    with pytest.raises(BootTimeout):  # the failure latches
        guest.run(["true"])


def test_a_readiness_line_from_another_boot_is_ignored(spec, monkeypatch):
    with pytest.raises(BootTimeout):
        _boot(spec, "wrong-nonce", monkeypatch, seconds=2.0)


def test_the_taint_mask_is_asked_of_the_init_and_each_answer_matched_to_its_question(spec, monkeypatch):
    guest = _boot(spec, "ok", monkeypatch)
    try:
        assert [guest.tainted(), guest.tainted()] == [12289, 12290]  # never the stale answer sent before each
    finally:
        guest.stop()


@pytest.mark.parametrize("mode, error", [("taint-err", r"could not read /proc/sys/kernel/tainted \(errno 13\)"),
                                         ("taint-silent", r"no answer about its kernel's taint within 0 s"),
                                         ("taint-die", r"guest fake is gone \(QEMU exited\)")])
def test_a_taint_question_without_a_good_answer_is_a_guest_error(spec, monkeypatch, mode, error):
    monkeypatch.setattr(guest_mod, "PORT_ANSWER_SECONDS", 0.3)
    guest = _boot(spec, mode, monkeypatch)
    try:
        with pytest.raises(GuestError, match=error):
            guest.tainted()
    finally:
        guest.stop()


def test_run_before_start_names_the_state(spec):
    guest = Guest(spec)
    with pytest.raises(GuestError, match=r"run\(\) needs state ready.*is new"):
        guest.run(["true"])
    guest.stop()


def test_fake_is_executable():
    assert os.access(FAKE, os.X_OK) and sys.executable
