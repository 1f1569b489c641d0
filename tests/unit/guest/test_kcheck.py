"""lab.guest.kcheck: console problem detection and taint arithmetic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lab.command import CommandResult
from lab.guest.kcheck import (
    ALLOWED_TAINT,
    KernelWatch,
    console_problems,
    taint_letters,
    unexpected_taint,
)

CLEAN_BOOT = """\
[    0.000000] Linux version 6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org)\r
[    0.512345] Spectre V2 : Mitigation: Retpolines\r
[    1.234567] cnlab: loading out-of-tree module taints kernel.\r
[    1.234600] cnlab: module verification failed: signature and/or required key missing - tainting kernel\r
[    1.240000] cnlab: loaded, control id 16:1\r
[    2.000000] DEBUG_LIST enabled; CONFIG_BUG=y; a WARNINGS_AS_ERRORS word\r
[    3.000000] cnlab: cbus final: inserted 10 sent 10 full 0 nomem 0 nolistener 0 nlerr 0 queued 0 rejected 0\r
"""


@pytest.mark.parametrize("line, kind", [
    ("[   12.3] WARNING: CPU: 1 PID: 77 at kmod/cbus.c:120 cbus_insert_group+0x1/0x2 [cnlab]", "WARNING"),
    ("[   12.3] BUG: unable to handle page fault for address: ffffffffc0400000", "BUG"),
    ("[   12.3] kernel BUG at mm/slub.c:379!", "BUG"),
    ("[   12.3] BUG kmalloc-64 (Tainted: G           OE     ): Redzone overwritten", "BUG"),
    ("[   12.3] Oops: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
    ("[   12.3] Call Trace:", "call trace"),
    ("[   12.3] refcount_t: underflow; use-after-free.", "refcount_t"),
    ("[   12.3] Waiting for cqueue to become free", "cqueue leak"),
    ("[   12.3] Kernel panic - not syncing: Fatal exception", "panic"),
    ("[   12.3] general protection fault, probably for non-canonical address", "gpf"),
    ("[   12.3] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!", "BUG"),
    ("[   12.3] INFO: task rmmod:301 blocked for more than 120 seconds.", "hung task"),
    ("[   12.3] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu stall"),
    ("[   12.3] list_add corruption. prev->next should be next", "list corruption"),
])
def test_problem_lines_are_found(line, kind):
    found = console_problems(CLEAN_BOOT + line + "\r\n")
    assert len(found) == 1
    assert found[0].startswith(kind + ":")
    assert line.strip() in found[0]


def test_clean_console_has_no_problems():
    assert console_problems(CLEAN_BOOT) == []
    assert console_problems("") == []


def test_each_line_is_reported_once():
    text = "WARNING: at foo\nCall Trace:\n BUG: x WARNING y\n"
    assert len(console_problems(text)) == 3


def test_taint_letters():
    assert taint_letters(0) == ""
    assert taint_letters(ALLOWED_TAINT) == "OE"
    assert taint_letters(1 << 9) == "W"
    assert taint_letters((1 << 7) | (1 << 9) | (1 << 12)) == "DWO"
    assert taint_letters(1 << 30) == "?30"


def test_out_of_tree_and_unsigned_are_allowed():
    assert unexpected_taint(0, ALLOWED_TAINT) == 0
    assert unexpected_taint(ALLOWED_TAINT, ALLOWED_TAINT) == 0


@pytest.mark.parametrize("bit", [0, 4, 7, 9, 14, 15])  # P, M, D, W, L, K
def test_other_new_taint_is_reported(bit):
    assert unexpected_taint(ALLOWED_TAINT, ALLOWED_TAINT | 1 << bit) == 1 << bit


def test_taint_present_before_is_not_new():
    warned = 1 << 9
    assert unexpected_taint(warned, warned | ALLOWED_TAINT) == 0


def test_negative_taint_rejected():
    with pytest.raises(ValueError):
        unexpected_taint(-1, 0)


class FakeGuest:
    def __init__(self, console: str, taints: list[int]) -> None:
        self.console = console
        self.taints = list(taints)
        self.leaks = ""  # the kmemleak file (debug flavour); empty: a kernel without kmemleak
        self.spec = SimpleNamespace(modules=())

    def console_text(self) -> str:
        return self.console

    def run(self, argv, timeout=None, check=False):
        if argv[:2] == ["sh", "-c"] and "kmemleak" in argv[2]:
            return CommandResult(argv, 0 if self.leaks else 3, self.leaks.encode())
        raise AssertionError(f"unexpected command {argv}")

    def tainted(self) -> int:
        return self.taints.pop(0)


def test_watch_only_looks_at_new_console_text():
    guest = FakeGuest("old WARNING: from an earlier test\n", [ALLOWED_TAINT, ALLOWED_TAINT])
    watch = KernelWatch(guest)
    guest.console += "[ 5.0] cnlab: loaded\n"
    report = watch.assert_clean()
    assert report.clean and report.describe() == "clean"


def test_watch_fails_on_a_leak_of_the_lab_module():
    from .test_kmemleak import RECORDS

    guest = FakeGuest("", [ALLOWED_TAINT, ALLOWED_TAINT])
    watch = KernelWatch(guest)
    guest.leaks = RECORDS
    with pytest.raises(AssertionError, match=r"kmemleak: unreferenced object 0xffff888004f1e000 \(size 1024\): "
                                             r"from kmalloc_trace <- cnlab_ctl_init"):
        watch.assert_clean()


def test_watch_fails_on_new_problem_and_taint():
    guest = FakeGuest("", [ALLOWED_TAINT, ALLOWED_TAINT | 1 << 9])
    watch = KernelWatch(guest)
    guest.console += "[ 5.0] WARNING: CPU: 0 PID: 1 at x\n"
    with pytest.raises(AssertionError) as err:
        watch.assert_clean()
    assert "new taint 0x200 (W)" in str(err.value)
    assert "WARNING: CPU: 0" in str(err.value)


def test_a_watch_from_boot_counts_what_the_boot_reported_tainted_and_leaked():
    from .test_kmemleak import RECORDS

    boot = ("[ 32.0] BUG: KASAN: global-out-of-bounds in cnlab_gen_init+0x54/0x60 [cnlab]\n"
            "[ 32.0] Write of size 4 at addr ffffffffc0a012c0 by task insmod/90\n")
    guest = FakeGuest(boot, [ALLOWED_TAINT | 1 << 5])  # B: bad page, as a KASAN report sets it
    guest.leaks = RECORDS
    watch = KernelWatch(guest, from_boot=True)
    guest.leaks = ""
    report = watch.report()
    assert not report.clean and report.new_taint == 1 << 5
    assert any("KASAN: global-out-of-bounds" in p for p in report.problems)
    assert any(p.startswith("kmemleak: unreferenced object") for p in report.problems)
    # the same guest watched from now on sees none of it
    guest.taints = [ALLOWED_TAINT | 1 << 5, ALLOWED_TAINT | 1 << 5]
    assert KernelWatch(guest).report().clean


def test_a_watch_fails_on_a_data_race_of_the_lab_module_and_not_on_the_kernels_own():
    from .test_console_scan import FOREIGN_RACE, LAB_RACE

    guest = FakeGuest("", [ALLOWED_TAINT] * 4)
    watch = KernelWatch(guest)
    guest.console += FOREIGN_RACE
    assert watch.assert_clean().clean  # KCSAN reports the whole kernel's races; those are not the module's
    guest.console += LAB_RACE
    with pytest.raises(AssertionError, match=r"kcsan: .* BUG: KCSAN: data-race in cbus_insert_group \[cnlab\]"):
        watch.assert_clean()


def test_a_data_race_before_the_module_loaded_is_the_kernels():
    from lab.guest.kcheck import problems_before_module_load

    from .test_console_scan import FOREIGN_RACE

    text = FOREIGN_RACE + "[   45.0] cnlab: loading out-of-tree module taints kernel.\n"
    assert problems_before_module_load(text, ["cnlab"]) == []
    assert problems_before_module_load("[ 1.0] WARNING: CPU: 0 PID: 1 at x\n" + text, ["cnlab"])
