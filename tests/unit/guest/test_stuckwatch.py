"""StuckWatch: a stuck kernel's console report trips the event a guest command stops on."""

from __future__ import annotations

import threading

import pytest

from lab.guest.stuckwatch import StuckWatch

SOFT_LOCKUP = "[   76.909046] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [swapper/0:0]\n"
WARNING = "[   12.000000] WARNING: CPU: 1 PID: 110 at kmod/ctl.c:266 cnlab_do_fault+0x17c/0x1c0 [cnlab]\n"
PANIC = "[   30.100000] Kernel panic - not syncing: Fatal exception in interrupt\n"


class Console:
    """A guest whose console grows as the test writes to it."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.text += text

    def console_text(self) -> str:
        with self.lock:
            return self.text


def test_a_soft_lockup_trips_the_watch_and_is_kept():
    guest = Console("[    0.000000] Linux version 6.1\n")
    with StuckWatch(guest, interval=0.05) as stuck:
        assert not stuck.tripped.wait(0.2)
        guest.write(SOFT_LOCKUP)
        assert stuck.tripped.wait(5)
    assert stuck.report.kind == "softlockup" and "CPU#0 stuck" in stuck.report.title


def test_a_warning_does_not_trip_it_and_a_panic_does():
    guest = Console()
    with StuckWatch(guest, interval=0.05) as stuck:
        guest.write(WARNING)
        assert not stuck.tripped.wait(0.3)
        guest.write(PANIC)
        assert stuck.tripped.wait(5)
    assert stuck.report.kind == "panic"


def test_what_the_console_held_before_the_watch_does_not_count():
    guest = Console(SOFT_LOCKUP + PANIC)
    stuck = StuckWatch(guest, interval=0.05)
    assert stuck.check() is None and not stuck.tripped.is_set()
    guest.write(SOFT_LOCKUP)
    assert stuck.check().kind == "softlockup" and stuck.tripped.is_set()


@pytest.mark.parametrize("line, kind", [
    ("[   81.613931] general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] "
     "PREEMPT SMP KASAN NOPTI\n", "gpf"),
    ("[   20.100000] kernel BUG at kmod/cbus.c:300!\n", "bug"),
    ("[   20.100000] BUG: unable to handle page fault for address: ffffc90000a3b000\n", "bug"),
])
def test_a_task_that_died_in_the_kernel_trips_it(line, kind):
    guest = Console()
    stuck = StuckWatch(guest, interval=0.05)
    guest.write(line)
    assert stuck.check().kind == kind and stuck.tripped.is_set()


def test_a_data_race_report_does_not_trip_it():
    guest = Console()
    with StuckWatch(guest, interval=0.05) as stuck:
        guest.write("[   41.000000] BUG: KCSAN: data-race in cbus_insert_group [cnlab] / cnlab_stats [cnlab]\n")
        assert not stuck.tripped.wait(0.3)
