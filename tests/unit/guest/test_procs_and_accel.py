"""No orphans (without QEMU) and the accelerator choice."""

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import lab.guest.accel as accel
from lab.errors import HostSetupError

PARENT = textwrap.dedent("""
    import sys
    from lab.host.procs import spawn_owned
    child = spawn_owned(["sleep", "600"])
    print(child.pid, flush=True)
    sys.stdin.read()
""")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_owned_child_dies_with_its_parent(how):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    pidfd = os.pidfd_open(child)
    try:
        os.kill(parent.pid, how)
        parent.wait()
        readable, _, _ = select.select([pidfd], [], [], 10)
        assert readable, "child outlived its parent"
    finally:
        os.close(pidfd)
        parent.stdin.close()
        parent.stdout.close()


def test_owned_child_outlives_the_short_lived_thread_that_asked_for_it():
    """PR_SET_PDEATHSIG follows the forking thread: a pool thread must not take its guests with it."""
    from lab.host.procs import spawn_owned, stop_process

    started = []
    asker = threading.Thread(target=lambda: started.append(spawn_owned(["sleep", "600"])))
    asker.start()
    asker.join()
    child = started[0]
    pidfd = os.pidfd_open(child.pid)
    try:
        readable, _, _ = select.select([pidfd], [], [], 1.0)
        assert not readable, "the child died with the thread that spawned it"
    finally:
        os.close(pidfd)
        stop_process(child)


def test_tcg_when_requested(tmp_path):
    choice = accel.choose_accel("tcg", tmp_path, tmp_path / "k", tmp_path / "i")
    assert choice.name == "tcg" and choice.qemu_args()[1].startswith("tcg,thread=multi")


@pytest.mark.parametrize("guests, vcpus, host, choice, expected", [
    (1, 2, 2, "auto", "multi"),  # one 2-vCPU guest on 2 cores: a thread per vCPU
    (1, 4, 2, "auto", "multi"),  # a guest alone may use every core, overcommitted or not
    (2, 2, 2, "auto", "single"),  # two 2-vCPU guests on 2 cores: one thread each
    (4, 2, 8, "auto", "multi"),
    (2, 2, 2, "multi", "multi"),  # an explicit choice wins
    (1, 1, 8, "single", "single"),
])
def test_tcg_threads_follow_the_guests_running_at_once(guests, vcpus, host, choice, expected):
    assert accel.tcg_threads_for(guests, vcpus, choice, host_cpus=host) == expected


def test_single_threaded_tcg_reaches_the_qemu_arguments_and_kvm_is_untouched(monkeypatch):
    monkeypatch.setattr(accel.os, "cpu_count", lambda: 2)
    tcg = accel.Accel("tcg", "test")
    crowded = tcg.for_guests(2, 2)
    assert crowded.qemu_args()[1] == "tcg,thread=single,tb-size=256"
    assert crowded.label == "tcg (single-threaded)" and tcg.for_guests(1, 4).label == "tcg"
    kvm = accel.Accel("kvm", "test")
    assert kvm.for_guests(16, 4) is kvm and kvm.label == "kvm"
    with pytest.raises(ValueError, match="unknown TCG threading 'many'"):
        tcg.for_guests(1, 2, "many")


def test_broken_kvm_falls_back_and_the_verdict_is_cached(tmp_path, monkeypatch):
    calls = []

    def fake_probe(kernel, initrd, binary="q"):
        calls.append(kernel)
        return False, "KVM guest hung (no power-off within 20 s)"

    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    monkeypatch.setattr(accel, "_kvm_usable_device", lambda: None)
    first = accel.choose_accel("auto", tmp_path, tmp_path / "k", tmp_path / "i")
    second = accel.choose_accel("auto", tmp_path, tmp_path / "k", tmp_path / "i")
    assert first.name == second.name == "tcg" and "hung" in first.reason
    assert len(calls) == 1
    assert json.loads((tmp_path / "accel.json").read_text())["kvm_works"] is False
    with pytest.raises(HostSetupError, match="KVM requested but unusable"):
        accel.choose_accel("kvm", tmp_path, tmp_path / "k", tmp_path / "i")


def test_working_kvm_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(accel, "probe_kvm", lambda *a, **k: (True, "KVM works"))
    monkeypatch.setattr(accel, "_kvm_usable_device", lambda: None)
    choice = accel.choose_accel("auto", tmp_path, tmp_path / "k", tmp_path / "i")
    assert choice.name == "kvm" and choice.timeout_scale == 1


def test_missing_dev_kvm_needs_no_probe(monkeypatch, tmp_path):
    monkeypatch.setattr(accel, "_kvm_usable_device", lambda: "no /dev/kvm")
    assert accel.probe_kvm(tmp_path / "k", tmp_path / "i") == (False, "no /dev/kvm")


def test_unknown_accelerator(tmp_path):
    with pytest.raises(ValueError):
        accel.choose_accel("xen", tmp_path, tmp_path / "k", tmp_path / "i")
