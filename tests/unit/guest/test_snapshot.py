"""Saved guest states (lab.guest.snapshot): keys, checks, the store, and save/restore against a fake QEMU."""

import dataclasses
import io
import json
import logging
import os
import struct
import tarfile
import time
from pathlib import Path

import pytest

import lab.guest.machine as guest_mod
import lab.guest.snapshot as snap_mod
from lab.command import CommandResult
from lab.guest.accel import Accel
from lab.guest.machine import Guest, GuestSpec
from lab.guest.qemu_argv import GuestShape
from lab.guest.snapshot import (
    SnapshotStore,
    check_restored,
    module_build_id,
    resume_line,
    snapshot_for,
    snapshot_inputs,
)
from lab.host.cache import content_key
from lab.image.build import GuestImage
from lab.image.kernel import KernelSpec
from lab.image.keys import ensure_keys

FAKE = Path(__file__).with_name("fake_qemu.py")


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setattr(guest_mod.SSHSession, "connect", lambda self, deadline=None: None)
    monkeypatch.setattr(guest_mod.SSHSession, "run",
                        lambda self, argv, timeout=None, **kw: CommandResult(list(argv), 0))
    base = tmp_path / "base.cpio"
    base.write_bytes(b"")
    kernel = KernelSpec(image=tmp_path / "vmlinuz", release="test", modules_dir=None, kbuild_dir=None)
    kernel.image.write_bytes(b"kernel")
    image = GuestImage(kernel=kernel, rootfs=tmp_path / "root.ext4", modules_disk=None, initramfs=base,
                       keys=ensure_keys(tmp_path / "keys"), manifest_path=tmp_path / "m.json")
    return GuestSpec(image=image, accel=Accel("kvm", "test"), qemu_binary=str(FAKE), name="fake",
                     snapshots=tmp_path / "cache" / "snapshots")


def _start(spec, monkeypatch, mode="ok"):
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    guest = Guest(spec)
    guest.start()
    guest.stop()
    return guest


def _key(spec):
    return content_key(snapshot_inputs(spec))


# ------------------------------------------------------------------ pure parts
def test_the_key_covers_the_shape_and_command_line_but_not_tcg_threading(spec):
    key = _key(spec)
    assert _key(dataclasses.replace(spec, shape=GuestShape(cpus=4))) != key
    assert _key(dataclasses.replace(spec, cmdline=("slub_debug=FZPU",))) != key
    assert _key(dataclasses.replace(spec, accel=Accel("kvm", "other reason"))) == key
    assert _key(dataclasses.replace(spec, accel=Accel("tcg", "t", threads="single"))) == \
        _key(dataclasses.replace(spec, accel=Accel("tcg", "t", threads="multi")))


def test_host_side_qemu_options_are_not_in_the_key_and_devices_are(spec, tmp_path):
    def panic_extra(path):
        return ("-device", "pvpanic-pci", "-action", "panic=pause", "-chardev", f"socket,id=panicmon,path={path}",
                "-mon", "chardev=panicmon,mode=control")

    one = dataclasses.replace(spec, qemu_extra=panic_extra(tmp_path / "a.sock"))
    other = dataclasses.replace(spec, qemu_extra=panic_extra(tmp_path / "b.sock"))
    assert _key(one) == _key(other) != _key(spec)  # the pvpanic device is part of the machine
    assert snap_mod.machine_args(one.qemu_extra) == ["-device", "pvpanic-pci"]


def test_the_key_changes_with_the_module_file(spec, tmp_path):
    module = tmp_path / "cnlab.ko"
    module.write_bytes(b"one build")
    key = _key(dataclasses.replace(spec, modules=(module,)))
    module.write_bytes(b"another build")
    assert _key(dataclasses.replace(spec, modules=(module,))) != key


def test_the_key_covers_the_files_content_mode_and_links_not_their_timestamps(spec, tmp_path):
    program = tmp_path / "agent.py"
    program.write_text("print('one')\n")
    files = ((program, "/run/cnlab/py/agent.py", 0o644),)
    with_files = dataclasses.replace(spec, files=files)
    key = _key(with_files)
    assert key != _key(spec) and "files" not in snapshot_inputs(spec)  # file-less specs keep their old keys
    os.utime(program, (1, 1))
    assert _key(with_files) == key
    assert _key(dataclasses.replace(spec, files=((program, "/run/cnlab/py/agent.py", 0o755),))) != key
    assert _key(dataclasses.replace(with_files, links=(("/usr/local/bin/agent", "/run/cnlab/py/agent.py"),))) != key
    program.write_text("print('two')\n")
    assert _key(with_files) != key


def test_a_cold_guest_gets_its_files_in_one_copy_and_a_restored_one_from_its_state(spec, tmp_path, monkeypatch):
    program = tmp_path / "agent.py"
    program.write_text("print('hello')\n")
    copies = []  # the members of each tar a guest was sent

    def run(self, argv, timeout=None, stdin=None, **kw):
        if argv[0] == "tar":
            copies.append(sorted(tarfile.open(fileobj=io.BytesIO(stdin)).getnames()))
        return CommandResult(list(argv), 0)

    monkeypatch.setattr(guest_mod.SSHSession, "run", run)
    spec = dataclasses.replace(spec, files=((program, "/run/cnlab/py/agent.py", 0o644),),
                               links=(("/usr/local/bin/agent", "/run/cnlab/py/agent.py"),))
    cold = _start(dataclasses.replace(spec, snapshots=None), monkeypatch)
    assert cold.timing.mode == "cold" and "files" in cold.timing.marks
    assert len(copies) == 1 and {"run/cnlab/py/agent.py", "usr/local/bin/agent"} <= set(copies[0])
    copies.clear()
    first = _start(spec, monkeypatch)
    # the guest whose state is saved gets the files (its root disk is read-only: no links); the restored, the links
    assert first.timing.mode == "restore" and len(copies) == 2
    assert "run/cnlab/py/agent.py" in copies[0] and "usr/local/bin/agent" not in copies[0]
    assert copies[1] == ["usr/local/bin/agent"]
    linkless = dataclasses.replace(spec, links=())
    _start(linkless, monkeypatch)  # another key: saved anew
    copies.clear()
    second = _start(linkless, monkeypatch)  # restored with its files and no links: nothing to send
    assert second.timing.mode == "restore" and copies == [] and "files" not in second.timing.marks


def test_module_build_id_is_read_from_its_note(tmp_path):
    module = tmp_path / "m.ko"
    build_id = bytes(range(20))
    module.write_bytes(b"\x7fELF junk" + struct.pack("<III", 4, 20, 3) + b"GNU\0" + build_id + b"more")
    assert module_build_id(module) == build_id.hex()
    module.write_bytes(b"no note here")
    assert module_build_id(module) == "none"


def test_resume_line_carries_nonce_clock_and_seed():
    line = resume_line("abc", now_ns=1_700_000_000_123_456_789, seed=bytes(range(32))).decode()
    assert line == f"CNLAB-RESUME nonce=abc rt=1700000000.123456789 seed={bytes(range(32)).hex()}\n"
    assert resume_line("x").decode().split()[3] != resume_line("x").decode().split()[3]  # fresh seed each time


def _report(**changes):
    restored = {"restored": "1", "clock": "0", "reseed": "0", "sshd": "0", "rw": "0", "rt": f"{time.time():.9f}",
                "build-id": "cnlab:abc"}
    restored.update(changes)
    return {"cpus": 2, "modules": "/run/cnlab/cnlab.ko:0", "lpj": 0, "restored": restored}


def test_a_good_resume_report_passes():
    assert check_restored(_report(), 2, {"cnlab": "abc"}) == []


@pytest.mark.parametrize(("report", "cpus", "versions", "problem"), [
    ({"cpus": 2, "modules": "none", "lpj": 0}, 2, {}, "no resume report"),
    (_report(), 4, {}, "2 CPUs online, not 4"),
    (_report(reseed="22"), 2, {}, "reseeding the CRNG failed (errno 22)"),
    (_report(clock="1"), 2, {}, "setting the clock failed"),
    (_report(sshd="125"), 2, {}, "letting the held sshd go on failed (errno 125)"),
    (_report(rw="30"), 2, {}, "remounting the root disk read-write failed (errno 30)"),
    (_report(rt="1.0"), 2, {}, "wall clock"),
    (_report(rt="garbage"), 2, {}, "no wall clock"),
    (_report(**{"build-id": "cnlab:old"}), 2, {"cnlab": "abc"}, "module cnlab has build ID old, not abc"),
    (_report(**{"build-id": "none"}), 2, {"cnlab": "abc"}, "module cnlab has build ID none"),
])
def test_a_bad_resume_report_names_the_problem(report, cpus, versions, problem):
    problems = check_restored(report, cpus, versions)
    assert any(problem in p for p in problems), problems


# ------------------------------------------------------------ save and restore
def test_the_first_guest_saves_the_state_and_both_guests_restore_it(spec, monkeypatch):
    first = _start(spec, monkeypatch)
    assert first.timing.mode == "restore" and first.restore_failure is None
    folder = spec.snapshots / _key(spec)
    meta = json.loads((folder / "meta.json").read_text())
    assert (folder / "ram").stat().st_size == 1024 << 20 and meta["sizes"]["ram"] == 1024 << 20
    assert "cnlab.snapshot" in meta["cmdline"] and "cnlab.root=/dev/vda" in meta["cmdline"]
    assert first.ready_info["restored"]["reseed"] == "0"
    # the restored guest was started on the saved RAM, copy-on-write, waiting for its state
    argv = " ".join(first.argv_used)
    assert f"mem-path={folder / 'ram'},share=off" in argv and "-incoming defer" in argv
    assert "virtio-blk-pci,drive=root" in argv and "nvme" not in argv
    second = _start(spec, monkeypatch)
    assert second.timing.mode == "restore" and second._nonce != first._nonce
    assert second.ssh_port != first.ssh_port or second.ssh_port is not None


def test_a_restored_guest_that_fails_its_checks_boots_cold_and_its_state_is_discarded(spec, monkeypatch, caplog):
    _start(spec, monkeypatch)  # saves a state
    with caplog.at_level(logging.WARNING):
        guest = _start(spec, monkeypatch, "restore-bad")
    assert guest.timing.mode == "cold after a failed restore"
    assert "reseeding the CRNG failed (errno 22)" in guest.restore_failure
    assert "boots cold" in caplog.text and "reseeding" in caplog.text
    assert not (spec.snapshots / _key(spec)).exists()
    assert SnapshotStore(spec.snapshots).failures(_key(spec))["count"] == 1
    assert "nvme" in " ".join(guest.argv_used)  # the cold boot is an ordinary one


def test_a_restored_guest_is_connected_to_while_it_finishes_its_resume(spec, monkeypatch, tmp_path):
    _start(spec, monkeypatch)  # saves a state
    flag = tmp_path / "ssh-started"
    monkeypatch.setenv("FAKE_QEMU_SSH_FLAG", str(flag))
    monkeypatch.setenv("FAKE_QEMU_MODE", "restore-after-ssh")  # the resume report waits for the SSH connect
    guest = Guest(spec)
    seen = []

    def connect(self, deadline=None):
        seen.append(guest.ready_info)
        flag.touch()

    monkeypatch.setattr(guest_mod.SSHSession, "connect", connect)
    guest.start()
    guest.stop()
    assert guest.timing.mode == "restore" and seen == [{}]  # no ready line yet when SSH started


def test_a_guest_whose_sshd_cannot_be_held_is_not_saved_and_boots_cold(spec, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        guest = _start(spec, monkeypatch, "hold-fail")
    assert guest.timing.mode == "cold"
    assert "could not hold sshd for the save (errno 3)" in caplog.text
    assert not (spec.snapshots / _key(spec) / "meta.json").exists()


EARLY_KASAN = ("[    0.004006] BUG: KASAN: wild-memory-access in do_raw_spin_lock+0x11f/0x270\n"
               "[    0.005848] Call Trace:\n")
MODULE_LOADS = "[   17.147999] cnlab: loading out-of-tree module taints kernel.\n"
MODULE_WARNS = "[   17.200000] WARNING: CPU: 1 PID: 80 at cbus.c:300 cbus_insert_group+0x1/0x2 [cnlab]\n"


def test_a_boot_whose_kernel_reported_a_problem_is_not_saved_and_the_guest_boots_cold(spec, monkeypatch, caplog):
    monkeypatch.setattr(Guest, "console_text", lambda self: EARLY_KASAN)
    with caplog.at_level(logging.WARNING):
        guest = _start(spec, monkeypatch)
    assert guest.timing.mode == "cold"
    assert "the kernel reported a problem while booting, before the modules loaded: BUG: " in caplog.text
    assert not (spec.snapshots / _key(spec) / "meta.json").exists()
    assert SnapshotStore(spec.snapshots).failures(_key(spec))["count"] == 1


def test_only_the_problems_before_the_modules_load_are_the_kernels_own(spec, tmp_path):
    class Booted:
        def __init__(self, text):
            self.text = text

        def console_text(self):
            return self.text

    module = tmp_path / "cnlab.ko"
    with_module = dataclasses.replace(spec, modules=(module,))
    both = Booted(EARLY_KASAN + MODULE_LOADS + MODULE_WARNS)
    assert snap_mod.kernel_problems_of_the_boot(both, with_module) == [
        "BUG: [    0.004006] BUG: KASAN: wild-memory-access in do_raw_spin_lock+0x11f/0x270",
        "call trace: [    0.005848] Call Trace:"]
    # the module's own warning is kept in the saved state, for the restored guests' checks to see
    assert snap_mod.kernel_problems_of_the_boot(Booted(MODULE_LOADS + MODULE_WARNS), with_module) == []
    # a module that never loaded cannot place its load: nothing is the kernel's alone
    assert snap_mod.kernel_problems_of_the_boot(Booted(EARLY_KASAN), with_module) == []
    # no modules: every problem of the boot is the kernel's
    assert len(snap_mod.kernel_problems_of_the_boot(Booted(EARLY_KASAN), spec)) == 2


@pytest.mark.parametrize(("mode", "reason"), [("restore-die", "load of migration failed"),
                                              ("restore-fail", "loading the saved state failed")])
def test_a_state_qemu_cannot_load_falls_back_to_a_cold_boot(spec, monkeypatch, mode, reason):
    _start(spec, monkeypatch)
    guest = _start(spec, monkeypatch, mode)
    assert guest.timing.mode == "cold after a failed restore" and reason in guest.restore_failure


def test_two_failures_in_a_row_turn_restores_off_for_that_spec_until_the_record_is_deleted(spec, monkeypatch,
                                                                                            caplog):
    _start(spec, monkeypatch)  # saves
    for _ in range(2):
        _start(spec, monkeypatch, "restore-bad")  # (the second one saves again first)
    saves = []
    monkeypatch.setattr(SnapshotStore, "save", lambda *a: saves.append(a))
    with caplog.at_level(logging.WARNING):
        guest = _start(spec, monkeypatch)
    assert guest.timing.mode == "cold" and saves == []
    assert "failed 2 times" in caplog.text and ".failed" in caplog.text
    (spec.snapshots / f"{_key(spec)}.failed").unlink()
    monkeypatch.undo()
    monkeypatch.setattr(guest_mod.SSHSession, "connect", lambda self, deadline=None: None)
    monkeypatch.setattr(guest_mod.SSHSession, "run", lambda self, argv, timeout=None, **kw: CommandResult(argv, 0))
    assert _start(spec, monkeypatch).timing.mode == "restore"


def test_a_working_restore_forgets_earlier_failures(spec, monkeypatch):
    _start(spec, monkeypatch)
    _start(spec, monkeypatch, "restore-bad")
    assert SnapshotStore(spec.snapshots).failures(_key(spec))["count"] == 1
    assert _start(spec, monkeypatch).timing.mode == "restore"  # saves again, restores
    assert SnapshotStore(spec.snapshots).failures(_key(spec))["count"] == 0
    _start(spec, monkeypatch, "restore-bad")
    assert _start(spec, monkeypatch).timing.mode == "restore"  # one failure since the last good restore: not off


def test_old_failures_are_forgotten(spec):
    store = SnapshotStore(spec.snapshots)
    store.record_failure("k", "one")
    store.record_failure("k", "two")
    assert store.failures("k")["count"] == 2
    record = json.loads((spec.snapshots / "k.failed").read_text())
    record["last"] -= snap_mod.FAILURE_MEMORY_S + 1
    (spec.snapshots / "k.failed").write_text(json.dumps(record))
    assert store.failures("k")["count"] == 0


def test_a_failed_save_is_a_cold_boot_with_a_warning(spec, monkeypatch, caplog):
    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(snap_mod, "_save", broken)
    with caplog.at_level(logging.WARNING):
        guest = _start(spec, monkeypatch)
    assert guest.timing.mode == "cold" and "saving a guest state failed (disk full)" in caplog.text
    assert SnapshotStore(spec.snapshots).failures(_key(spec))["reasons"] == ["saving: disk full"]
    assert not [p for p in spec.snapshots.iterdir() if p.is_dir()]  # no half-saved state left


def test_a_state_whose_files_do_not_match_its_meta_is_discarded_and_saved_again(spec, monkeypatch):
    _start(spec, monkeypatch)
    state = spec.snapshots / _key(spec) / "state"
    state.write_bytes(b"truncated?")
    assert SnapshotStore(spec.snapshots).get(_key(spec)) is None
    assert not (spec.snapshots / _key(spec)).exists()
    assert _start(spec, monkeypatch).timing.mode == "restore"
    assert (spec.snapshots / _key(spec)).is_dir()


def test_a_guest_on_the_labs_own_link_boots_cold(spec):
    assert snapshot_for(dataclasses.replace(spec, network="tap")) is None
    assert snapshot_for(dataclasses.replace(spec, snapshots=None)) is None


def test_pruning_keeps_the_recently_used_and_the_newest_states(spec, monkeypatch):
    store = SnapshotStore(spec.snapshots)
    old = time.time() - snap_mod.KEEP_RECENT_S - 100
    for i in range(snap_mod.KEEP + 3):
        folder = spec.snapshots / f"k{i:02d}"
        folder.mkdir(parents=True)
        (folder / "used").touch()
        os.utime(folder / "used", (old + i, old + i))
    recent = spec.snapshots / "recent"
    recent.mkdir()
    (recent / "used").touch()
    scratch = spec.snapshots / ".k99.abandoned"
    scratch.mkdir()
    os.utime(scratch, (old, old))
    deleted = store.prune(keep="k00")
    assert sorted(deleted) == [f"k{i:02d}" for i in range(1, 5)]
    left = sorted(p.name for p in spec.snapshots.iterdir())
    assert left == ["k00"] + [f"k{i:02d}" for i in range(5, snap_mod.KEEP + 3)] + ["recent"]


def test_pruning_skips_a_state_in_use(spec):
    store = SnapshotStore(spec.snapshots)
    old = time.time() - snap_mod.KEEP_RECENT_S - 100
    for i in range(snap_mod.KEEP + 1):
        (spec.snapshots / f"k{i}").mkdir(parents=True)
        os.utime(spec.snapshots / f"k{i}", (old + i, old + i))
    with store.lock("k0", shared=True):
        assert "k0" not in store.prune(keep="other")
    assert (spec.snapshots / "k0").exists()
