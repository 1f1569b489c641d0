"""Guests restored from a saved state (lab.guest.snapshot), on real QEMU.

Each test that damages or replaces a saved state gives its guests a command
line of their own (``cnlab.case=…``), so it has a state of its own and cannot
disturb tests that run beside it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import pytest

from lab.engine.agent_run import FORK_CLIENT
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape
from lab.guest.snapshot import SnapshotStore, module_build_id, snapshot_inputs
from lab.host.cache import content_key

pytestmark = pytest.mark.lab


def _key(spec) -> str:
    return content_key(snapshot_inputs(spec))


def test_two_restored_guests_are_each_their_own(cnlab_guest_factory):
    guests = [cnlab_guest_factory(cpus=2, name=f"twin{i}") for i in range(2)]
    assert [g.timing.mode for g in guests] == ["restore", "restore"]
    script = ("import os, random, time; print(os.urandom(16).hex(), random.getrandbits(64), f'{time.time():.3f}', "
              "open('/run/cnlab/nonce').read().strip(), "
              "open('/sys/module/cnlab/notes/.note.gnu.build-id', 'rb').read()[-20:].hex())")
    answers = []
    for guest in guests:
        host_before = time.time()
        fields = guest.run(["python3", "-c", script], check=True).text.split()
        host_after = time.time()
        answers.append(fields)
        assert host_before - 2 <= float(fields[2]) <= host_after + 2, "the restored guest's wall clock is off"
        assert fields[3] == guest._nonce, "the guest does not know its own nonce"
        assert fields[4] == module_build_id(guest.spec.modules[0]) != "none"
        assert guest.ready_info["restored"]["reseed"] == "0"
        assert guest.ready_info["restored"]["sshd"] == "0"  # held in the saved state, let go after the reseed
    assert answers[0][0] != answers[1][0], "two restored guests drew the same random bytes"
    assert answers[0][1] != answers[1][1], "two restored guests' Python seeded its random module alike"
    assert guests[0].ssh_port != guests[1].ssh_port
    # each has its own writable copy of the root disk
    guests[0].run(["sh", "-c", "echo one > /root/marker"], check=True)
    assert not guests[1].run(["test", "-e", "/root/marker"]).ok
    # the console log starts with the saved guest's boot and says where the restore began
    console = guests[0].console_text()
    assert "CNLAB-READY" in console.split("restored from saved state")[0]
    assert f"CNLAB-READY nonce={guests[0]._nonce}" in console


def test_a_restore_is_faster_than_a_cold_boot(cnlab_lab):
    """Not a speed goal (that is `cnlab bench boot`): the restore path must actually skip the boot."""
    spec = cnlab_lab.guest_spec(GuestShape(cpus=1), name="quick", with_module=False)
    with Guest(spec) as warm:  # saves the state if need be
        pass
    with Guest(spec) as restored:
        assert restored.timing.mode == "restore"
    with Guest(dataclasses.replace(spec, snapshots=None)) as cold:
        assert cold.timing.mode == "cold"
    assert restored.timing.marks["state_loaded"] < cold.timing.ready
    assert warm.timing.mode == "restore"


def test_a_module_change_saves_a_new_state(cnlab_lab, tmp_path):
    spec = cnlab_lab.guest_spec(GuestShape(cpus=1), name="modchange", cmdline=("cnlab.case=modchange",))
    with Guest(spec) as first:
        assert first.timing.mode == "restore"
    changed = tmp_path / "cnlab.ko"
    shutil.copyfile(spec.modules[0], changed)
    with open(changed, "ab") as module:
        module.write(b"\0" * 64)  # another file: another key (the loader ignores bytes past the sections)
    spec2 = dataclasses.replace(spec, modules=(changed,))
    assert _key(spec2) != _key(spec)
    with Guest(spec2) as second:
        assert second.timing.mode == "restore"
        assert (spec.snapshots / _key(spec2) / "meta.json").is_file()
        assert second.run(["grep", "-w", "^cnlab", "/proc/modules"]).ok


def test_a_damaged_state_boots_cold_with_a_warning_and_is_saved_again(cnlab_lab, caplog):
    spec = cnlab_lab.guest_spec(GuestShape(cpus=1), name="damaged", with_module=False,
                                cmdline=("cnlab.case=damaged",))
    # the key is the same in every run on this cache: start without an earlier run's failures
    (spec.snapshots / f"{_key(spec)}.failed").unlink(missing_ok=True)
    with Guest(spec) as first:
        assert first.timing.mode == "restore"
    state = spec.snapshots / _key(spec) / "state"
    data = bytearray(state.read_bytes())
    data[len(data) // 3:len(data) // 3 + 4096] = b"\xa5" * 4096  # same size: only QEMU's load can tell
    state.write_bytes(bytes(data))
    with caplog.at_level("WARNING"), Guest(spec) as guest:
        assert guest.timing.mode == "cold after a failed restore"
        assert guest.run(["true"]).ok
    assert "boots cold" in caplog.text
    assert not (spec.snapshots / _key(spec)).exists(), "the damaged state is still there"
    assert SnapshotStore(spec.snapshots).failures(_key(spec))["count"] >= 1
    with Guest(spec) as again:
        assert again.timing.mode == "restore"


def test_a_restored_guest_with_another_module_version_is_not_used(cnlab_lab):
    spec = cnlab_lab.guest_spec(GuestShape(cpus=1), name="version", cmdline=("cnlab.case=version",))
    with Guest(spec):
        pass
    meta_file = spec.snapshots / _key(spec) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["build_ids"] = {"cnlab": "00" * 20}
    meta_file.write_text(json.dumps(meta))
    with Guest(spec) as guest:
        assert guest.timing.mode == "cold after a failed restore"
        assert "module cnlab has build ID" in guest.restore_failure
        assert guest.run(["grep", "-w", "^cnlab", "/proc/modules"]).ok


def test_a_restored_guest_forks_guest_programs_from_its_fork_server_and_a_cold_one_starts_python(
        cnlab_guest_factory, cnlab_lab):
    probe = "import os, sys; print('agent' in sys.modules, os.getsid(0) == os.getpid(), sys.argv[1:])"
    write_probe = ["sh", "-c", 'printf "%s" "$0" > /tmp/probe.py', probe]
    restored = cnlab_guest_factory(name="forked")
    assert restored.timing.mode == "restore"
    restored.run(write_probe, check=True)
    # a fork of the server: the agent's modules are already imported, in a session of its own
    forked = restored.run([FORK_CLIENT, "/tmp/probe.py", "x y"], check=True).text
    assert forked.split() == ["True", "True", "['x", "y']"]
    spec = dataclasses.replace(cnlab_lab.guest_spec(GuestShape(cpus=2), name="cold"), snapshots=None)
    with Guest(spec) as cold:
        assert cold.timing.mode == "cold"
        cold.run(write_probe, check=True)
        preloaded, _session, args = cold.run([FORK_CLIENT, "/tmp/probe.py"], check=True).text.split()
        assert (preloaded, args) == ("False", "[]")  # a Python of its own (its session is SSH's)
