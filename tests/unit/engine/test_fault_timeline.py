"""The host-side fault timeline: schedule, hold and undo, failures recorded."""

import threading

from lab.engine.host_faults import FaultTimeline
from lab.engine.scenario import FaultSpec


class FakeGuest:
    def __init__(self, fail_pause=False):
        self.calls = []
        self.fail_pause = fail_pause
        self.done = threading.Event()

    def pause(self):
        self.calls.append("pause")
        if self.fail_pause:
            raise RuntimeError("QMP gone")

    def resume(self):
        self.calls.append("resume")
        self.done.set()


def test_every_expands_within_the_duration():
    timeline = FaultTimeline(FakeGuest(), "/lib", (FaultSpec("pause", every=1.0, duration=0.1),
                                                   FaultSpec("pause", at=0.5, duration=0.1)), duration=3.0)
    assert [t for t, _ in timeline._schedule()] == [0.5, 1.0, 2.0]


def test_pause_is_held_then_undone_and_recorded():
    guest = FakeGuest()
    timeline = FaultTimeline(guest, "/lib", (FaultSpec("pause", at=0.0, duration=0.05),), duration=1.0)
    timeline.start()
    assert guest.done.wait(5)
    applied = timeline.stop()
    assert guest.calls == ["pause", "resume"]
    assert applied[0].ok and applied[0].until >= applied[0].at + 0.04


def test_a_fault_that_cannot_be_applied_is_recorded_not_raised():
    guest = FakeGuest(fail_pause=True)
    timeline = FaultTimeline(guest, "/lib", (FaultSpec("pause", at=0.0),), duration=1.0)
    timeline.start()
    timeline._thread.join(5)
    record = timeline.stop()[0]
    assert not record.ok and "QMP gone" in record.detail


def test_stop_cancels_faults_not_yet_due():
    guest = FakeGuest()
    timeline = FaultTimeline(guest, "/lib", (FaultSpec("pause", at=30.0),), duration=60.0)
    timeline.start()
    assert timeline.stop() == [] and guest.calls == []
