"""Faults in the guest agent (``lab/guestside/agent_faults.py``), run on the host with fake actions and probes.

Times here are short and the assertions are about order and counts, never about how late a firing was:
the delay is measured by ``cnlab bench faults`` on a real guest.
"""

from __future__ import annotations

import json
import signal
import time
from types import SimpleNamespace

import pytest

from .guest_modules import load_guest_module

faults_mod = load_guest_module("agent_faults")


class FakeActions:
    """Records every action with the time it ran (seconds since the test began)."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[tuple[float, list]] = []
        self.fail = fail
        self.finished = False
        self.t0 = time.monotonic()

    def run(self, action):
        self.calls.append((time.monotonic() - self.t0, list(action)))
        ok = action[0] != self.fail
        return {"action": " ".join(map(str, action)), "ok": ok, **({} if ok else {"error": "refused"})}

    def finish(self):
        self.finished = True


def fault(label, trigger, inject=(("write", "/x", "1"),), restore=(("write", "/x", "0"),), duration=0.0,
          side="guest"):
    text = next(f"{k} {v}" if k != "on" else str(v) for k, v in trigger.items() if k != "threshold")
    full = {"at": None, "every": None, "on": None, "threshold": 1, "text": text} | trigger
    return {"label": label, "name": label, "side": side, "inject": [list(a) for a in inject],
            "restore": [list(a) for a in restore], "trigger": full, "duration": duration, "summary": ""}


def run_load(scheduler, seconds):
    scheduler.fire_before_load()
    scheduler.start_load(time.monotonic())
    time.sleep(seconds)
    return scheduler.finish()


def test_at_and_every_fire_on_time_and_restore_after_their_duration():
    actions = FakeActions()
    faults = [fault("once", {"at": 0.05}, duration=0.05), fault("tick", {"every": 0.1}, restore=())]
    records, never = run_load(faults_mod.FaultScheduler(faults, actions, {}, duration=0.35), 0.6)
    assert never == []
    once = [r for r in records if r["label"] == "once"]
    ticks = [r for r in records if r["label"] == "tick"]
    assert len(once) == 1 and [r["due"] for r in ticks] == [0.1, 0.2, 0.3]  # every stops at the duration
    assert once[0]["start"] >= 0.05 and once[0]["restored"] >= once[0]["start"] + 0.049
    values = [c[1][2] for c in actions.calls if c[1][1] == "/x"]
    assert values.count("1") == 4 and values.count("0") == 1 and values[0] == "1"
    assert all(r["ok"] and r["end"] >= r["start"] for r in records)
    assert actions.finished


def test_at_zero_fires_before_the_load_and_is_undone_when_it_ends():
    actions = FakeActions()
    scheduler = faults_mod.FaultScheduler([fault("early", {"at": 0.0})], actions, {}, duration=1.0)
    scheduler.fire_before_load()
    assert [c[1] for c in actions.calls] == [["write", "/x", "1"]]  # before start_load: before the consumers
    time.sleep(0.02)
    scheduler.start_load(time.monotonic())
    records, _ = scheduler.finish()
    (record,) = records
    assert record["before_load"] and record["start"] < 0 and record["restored"] is not None
    assert [c[1][2] for c in actions.calls] == ["1", "0"]


def test_on_event_fires_once_when_the_count_reaches_the_threshold():
    actions = FakeActions()
    count = {"n": 0}

    def probe():
        count["n"] += 10
        return count["n"]

    faults = [fault("deep", {"on": "queue_depth", "threshold": 50}, duration=0.02)]
    records, never = run_load(faults_mod.FaultScheduler(faults, actions, {"queue_depth": probe}, 5.0), 0.4)
    (record,) = records
    assert never == [] and record["seen"]["count"] >= 50 and record["due"] <= record["start"]
    assert record["restored"] is not None and record["restored"] >= record["start"]


def test_an_event_that_never_happens_is_reported_with_a_failing_probe():
    def broken():
        raise OSError("no such file")

    faults = [fault("a", {"on": "gap"}), fault("b", {"on": "mine"})]
    records, never = run_load(faults_mod.FaultScheduler(faults, FakeActions(), {"gap": lambda: 0, "mine": broken},
                                                        5.0), 0.1)
    assert records == []
    assert never[0] == "fault a (gap): the event never happened"
    assert never[1].startswith("fault b (mine): the event never happened (probe failed: OSError: no such file")


def test_a_failed_action_fails_the_firing_and_stops_its_inject_list():
    actions = FakeActions(fail="knob")
    f = fault("k", {"at": 0.01}, inject=(("knob", "stall_ms", 5), ("write", "/y", "1")), restore=())
    (record,), _ = run_load(faults_mod.FaultScheduler([f], actions, {}, 1.0), 0.1)
    assert not record["ok"] and record["actions"] == [{"action": "knob stall_ms 5", "ok": False, "error": "refused"}]
    assert [c[1][0] for c in actions.calls] == ["knob"]


def test_finish_undoes_what_is_still_injected_newest_first():
    actions = FakeActions()
    faults = [fault("a", {"at": 0.01}, restore=(("write", "/a", "0"),)),
              fault("b", {"at": 0.02}, restore=(("write", "/b", "0"),))]
    run_load(faults_mod.FaultScheduler(faults, actions, {}, 1.0), 0.1)
    assert [c[1][1] for c in actions.calls][-2:] == ["/b", "/a"]


def test_host_side_faults_are_requested_on_stderr_not_carried_out(capsys):
    actions = FakeActions()
    f = fault("pause", {"at": 0.01}, inject=(("qmp", "stop"),), restore=(("qmp", "cont"),), duration=0.5,
              side="host")
    (record,), _ = run_load(faults_mod.FaultScheduler([f], actions, {}, 1.0), 0.1)
    assert actions.calls == [] and record["requested"]
    line = capsys.readouterr().err.strip()
    assert line.startswith("CNLAB-HOST-FAULT ")
    request = json.loads(line.split(" ", 1)[1])
    assert request["inject"] == [["qmp", "stop"]] and request["restore"] == [["qmp", "cont"]]
    assert request["duration"] == 0.5 and request["n"] == 1


def test_actions_write_exec_spawn_signal_and_knobs(tmp_path, monkeypatch):
    replies = []
    client = SimpleNamespace(fault=lambda op, value: replies.append((op, value)) or SimpleNamespace(
        ok=value != 99, error_name="EINVAL"))
    signals = []
    monkeypatch.setattr(faults_mod, "knob_default", lambda name: 4096)
    actions = faults_mod.Actions(client, signals.append, str(tmp_path))
    target = tmp_path / "knob"
    assert actions.run(["write", str(target), "7"])["ok"] and target.read_text() == "7"
    assert actions.run(["exec", "true"])["ok"]
    failed = actions.run(["exec", "sh", "-c", "echo nope >&2; exit 3"])
    assert not failed["ok"] and "exited 3: nope" in failed["error"]
    assert actions.run(["knob", "queue_limit", None])["ok"] and replies[-1] == (3, 4096)  # None: the default
    refused = actions.run(["knob", "stall_ms", 99])
    assert not refused["ok"] and "EINVAL" in refused["error"]
    assert actions.run(["signal", "consumers", "KILL"])["ok"] and signals == [signal.SIGKILL]
    assert actions.run(["spawn", "sleep", "30"])["ok"] and actions.spawned[0].poll() is None
    assert not actions.run(["write", str(tmp_path / "no" / "such"), "1"])["ok"]
    actions.finish()
    assert actions.spawned == []


@pytest.mark.parametrize("action", [["cpu", 1, False], ["bogus"]])
def test_actions_report_what_they_cannot_do(tmp_path, monkeypatch, action):
    monkeypatch.setattr(faults_mod, "cpu_path", lambda cpu: str(tmp_path / "absent" / f"cpu{cpu}"))
    out = faults_mod.Actions(None, lambda s: None, str(tmp_path)).run(action)
    assert not out["ok"] and out["error"]


def test_evidence_is_polled_until_it_holds_and_a_fault_without_effect_fails(tmp_path):
    state = tmp_path / "state"
    state.write_text("0")
    actions = faults_mod.Actions(None, lambda s: [], str(tmp_path))
    took = fault("takes", {"at": 0.01}, inject=(("spawn", "sh", "-c", f"sleep 0.2; echo 1 > {state}; sleep 5"),),
                 restore=())
    took["evidence"] = [["expect", "file", str(state), "1"], ["expect", "spawned-running"]]
    nothing = fault("nothing", {"at": 0.01}, inject=(("write", str(tmp_path / "other"), "1"),), restore=())
    nothing["evidence"] = [["expect", "file", str(state), "2"], ["expect", "absent", str(tmp_path / "other")]]
    scheduler = faults_mod.FaultScheduler([took, nothing], actions, {}, 1.0, evidence_s=1.0)
    records, _ = run_load(scheduler, 1.3)
    by = {r["label"]: r for r in records}
    evidence = [a for a in by["takes"]["actions"] if a.get("evidence")]
    assert by["takes"]["ok"] and [a["ok"] for a in evidence] == [True, True], by["takes"]
    assert 0.15 <= by["takes"]["evidence_s"] < 1.0  # polled until the program had written its state
    failed = [a for a in by["nothing"]["actions"] if a.get("evidence")]
    assert not by["nothing"]["ok"] and [a["ok"] for a in failed] == [False, False]
    assert failed[0]["error"] == f"fired without effect: {state} reads '1'"
    assert failed[1]["error"] == f"fired without effect: {tmp_path / 'other'} exists"
    assert by["nothing"]["evidence_s"] >= 0.9  # it waited the whole time for the effect


def test_consumers_gone_and_knob_evidence(tmp_path):
    import subprocess

    child = subprocess.Popen(["sleep", "30"])
    actions = faults_mod.Actions(SimpleNamespace(stats=lambda: SimpleNamespace(body={"queue_limit": 64})),
                                 lambda signum: [child.pid] if not child.send_signal(signum) else [],
                                 str(tmp_path))
    assert actions.check(["expect", "consumers-gone"]) == (False, "0 consumer process(es) gone")  # none signalled
    actions.run(["signal", "consumers", "KILL"])
    child.wait()
    assert actions.check(["expect", "consumers-gone"]) == (True, "1 consumer process(es) gone")
    assert actions.check(["expect", "knob", "queue_limit", 64]) == (True, "module reports queue_limit 64")
    assert actions.check(["expect", "knob", "queue_limit", 16])[0] is False
    assert actions.check(["expect", "output", "hello", "echo", "hello world"])[0] is True
