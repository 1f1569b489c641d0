"""unload_preempted.py's reading of the kernel's preemption mode and of a sender's switches, and its reaping of
senders (the guest run, and the module without its RCU Tasks grace period, are in tests/integration/kmod)."""

from __future__ import annotations

import json
import os
import signal

from .guest_modules import load_guest_module

up = load_guest_module("unload_preempted")


def test_the_mode_is_the_bracketed_word(tmp_path):
    path = tmp_path / "preempt"
    path.write_text("none voluntary (full)\n")
    assert up.preempt_mode(str(path)) == "full"
    path.write_text("none (voluntary) full\n")
    assert up.preempt_mode(str(path)) == "voluntary"


def test_involuntary_switches_are_read_from_the_status_file(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython3\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t345\n")
    assert up.involuntary_switches(str(status)) == 345
    assert up.involuntary_switches("/proc/self/status") >= 0


def _child(behaviour: str) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if behaviour == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        os.write(w, json.dumps({"sent": 5, "replies": 4, "switches": 2}).encode())
        os._exit(0)
    os.close(w)
    return pid, r


def test_a_sender_killed_by_the_kernel_is_reported_with_its_signal():
    _, stop_w = os.pipe()
    results = up.collect([_child("ok"), _child("killed")], stop_w)
    assert results[0] == {"sent": 5, "replies": 4, "switches": 2}
    assert results[1] == {"killed_by": signal.SIGKILL}


def test_a_kernel_without_dynamic_preemption_skips_saying_why(monkeypatch, tmp_path):
    monkeypatch.setattr(up, "PREEMPT", str(tmp_path / "preempt"))
    out = up.run(None, None, None, "/nonexistent.ko", cpus=2)
    assert out == {"ok": True, "skipped": "no dynamic preemption (CONFIG_PREEMPT_DYNAMIC, debugfs)"}
