"""The console scanner on recorded guest consoles.

``real_warn_then_sysrq_panic.log`` was recorded from a real cnlab guest (the
module's WARN knob, then ``echo c > /proc/sysrq-trigger``).
``lockups_interleaved.log`` is assembled from the kernel's report formats
(soft lockup, hung task, RCU stall, list corruption, refcount) with other
output interleaved, for the kinds a healthy test guest cannot be made to
produce on demand.
"""

from pathlib import Path

from lab.guest.console_scan import scan_console

HERE = Path(__file__).with_name("consoles")


def _kinds(name):
    return [(r.kind, r) for r in scan_console((HERE / name).read_text())]


def test_real_warning_and_panic_are_found_with_frames():
    found = _kinds("real_warn_then_sysrq_panic.log")
    kinds = [k for k, _ in found]
    assert kinds == ["warning", "panic"]
    warning = found[0][1]
    assert warning.frames[:3] == ["cnlab_do_fault", "cnlab_ctl_callback", "cn_rx_skb"]
    assert "cut here" in warning.excerpt.splitlines()[0]
    assert warning.excerpt.rstrip().endswith("---[ end trace 0000000000000000 ]---")
    assert "sysrq_handle_crash" in found[1][1].frames


def test_fingerprint_is_stable_across_timestamps_and_differs_by_site():
    text = (HERE / "real_warn_then_sysrq_panic.log").read_text()
    shifted = text.replace("[    6.4", "[   99.4")
    assert [r.fingerprint for r in scan_console(text)] == [r.fingerprint for r in scan_console(shifted)]
    first, second = scan_console(text)
    assert first.fingerprint != second.fingerprint


def test_every_lockup_and_corruption_kind_is_recognised():
    kinds = [k for k, _ in _kinds("lockups_interleaved.log")]
    assert kinds == ["softlockup", "hung_task", "rcu_stall", "list_corruption", "refcount"]


def test_interleaved_output_stays_inside_the_report():
    softlockup = dict(_kinds("lockups_interleaved.log"))["softlockup"]
    assert "CNLAB-AGENT tick 12" in softlockup.excerpt
    assert softlockup.frames[:2] == ["cbus_drain", "cbus_work_fn"]


def test_a_clean_console_has_no_reports():
    clean = "[    1.0] cnlab: loading out-of-tree module taints kernel.\nCNLAB-READY nonce=1 cpus=2 modules=none\n"
    assert scan_console(clean) == []


#: Report headers of the debug kernel flavour's detectors, as 6.1 prints them (with their timestamps).
DEBUG_HEADERS = {
    "kasan": "[   12.345678] BUG: KASAN: slab-use-after-free in cbus_drain+0x1a2/0x3c0 [cnlab]",
    "atomic_sleep": "[    9.1] BUG: sleeping function called from invalid context at include/linux/sched/mm.h:274",
    "debugobjects": "[    5.0] ODEBUG: free active (active state 0) object type: timer_list hint: gen_timer_fn",
}
LOCKDEP_HEADERS = (
    "WARNING: possible circular locking dependency detected",
    "WARNING: possible recursive locking detected",
    "WARNING: inconsistent lock state",
    "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected",
    "WARNING: SOFTIRQ-safe -> SOFTIRQ-unsafe lock order detected",
    "WARNING: possible irq lock inversion dependency detected",
    "WARNING: bad unlock balance detected!",
    "WARNING: cbus/0/12 still has locks held!",
    "WARNING: suspicious RCU usage",
    "WARNING: bad contention detected!",
    "INFO: trying to register non-static key.",
)


def test_a_real_sleep_in_atomic_context_from_the_debug_flavour():
    # recorded from tests/integration/kmod/test_debug_kernel.py: a pool miss allocating with GFP_KERNEL, IRQs off
    reports = scan_console((HERE / "real_debug_atomic_sleep.log").read_text())
    assert reports[0].kind == "atomic_sleep"
    assert reports[0].frames[:6] == ["dump_stack_lvl", "__might_resched.cold", "__kmem_cache_alloc_node", "__kmalloc",
                                     "cbus_insert_group", "gen_emit"]
    assert "in_atomic(): 1, irqs_disabled(): 1" in reports[0].excerpt


def test_the_debug_flavours_reports_have_kinds_of_their_own():
    for kind, header in DEBUG_HEADERS.items():
        (report,) = scan_console(header + "\nCall Trace:\n <TASK>\n cbus_drain+0x1a2/0x3c0 [cnlab]\n")
        assert report.kind == kind, header
        assert report.frames == ["cbus_drain"]
    for header in LOCKDEP_HEADERS:
        rule = "=" * 54
        (report,) = scan_console(f"[    7.0] {rule}\n[    7.0] {header}\n")
        assert report.kind == "lockdep", header


def test_ordinary_lines_that_mention_the_same_words_are_not_reports():
    quiet = ("[    0.0] KernelAddressSanitizer initialized (generic)\n"
             "[    0.1] kmemleak: Kernel memory leak detector initialized (mem pool available: 15814)\n"
             "[    0.2] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar\n"
             "[    0.4] cnlab: loaded, CBUS queue limit 4096\n")
    assert scan_console(quiet) == []
