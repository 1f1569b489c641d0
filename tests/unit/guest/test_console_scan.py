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


def _kcsan_report(title: str, first: str, second: str, at: float = 40.0) -> str:
    """A KCSAN report in the layout of kernel/kcsan/report.c (6.1)."""
    rule = "=" * 66
    body = [rule, f"BUG: KCSAN: data-race in {title}", "",
            "write to 0xffff888004a1c2c8 of 8 bytes by interrupt on cpu 1:", f" {first}",
            " __do_softirq+0x120/0x3a2", "",
            "read to 0xffff888004a1c2c8 of 8 bytes by task 203 on cpu 0:", f" {second}",
            " process_one_work+0x3c1/0x6d0", "", "value changed: 0x0000000000000003 -> 0x0000000000000004", "",
            "Reported by Kernel Concurrency Sanitizer on:",
            "CPU: 0 PID: 203 Comm: kworker/0:2 Not tainted 6.1.0-cnlab-kcsan #1", rule]
    return "".join(f"[{at:12.6f}] {line}\n" for line in body)


FOREIGN_RACE = _kcsan_report("run_timer_softirq / __mod_timer", "run_timer_softirq+0x2b/0x70",
                             "__mod_timer+0x1a4/0x5f0")
LAB_RACE = _kcsan_report("cbus_insert_group [cnlab] / cnlab_stats [cnlab]", "cbus_insert_group+0x8e/0x2f0 [cnlab]",
                         "cnlab_stats+0x61/0x1d0 [cnlab]", at=41.0)
#: One access in the lab module, the other in the kernel: the title names the lab frame second.
MIXED_RACE = _kcsan_report("__wake_up_common / cbus_kick [cnlab]", "__wake_up_common+0x4c/0x160",
                           "cbus_kick+0x33/0x90 [cnlab]", at=42.0)


def test_only_the_data_races_of_a_lab_module_are_reports():
    from lab.guest.console_scan import without_foreign_races

    console = "[    1.0] cnlab: loaded\n" + FOREIGN_RACE + LAB_RACE + MIXED_RACE + "[   50.0] after\n"
    kept = without_foreign_races(console)
    assert "run_timer_softirq" not in kept and "__mod_timer" not in kept
    assert kept.startswith("[    1.0] cnlab: loaded\n") and kept.endswith("[   50.0] after\n")
    reports = scan_console(console)
    assert [(r.kind, r.title) for r in reports] == [
        ("kcsan", "BUG: KCSAN: data-race in cbus_insert_group [cnlab] / cnlab_stats [cnlab]"),
        ("kcsan", "BUG: KCSAN: data-race in __wake_up_common / cbus_kick [cnlab]")]
    assert reports[0].frames[:2] == ["cbus_insert_group", "__do_softirq"]
    assert "value changed" in reports[0].excerpt and "cbus_kick" not in reports[0].excerpt  # ends at its rule
    # an extra module of the lab counts when named; another kernel module never does
    extra = FOREIGN_RACE.replace("__mod_timer+0x1a4/0x5f0", "netem_enqueue+0x1a4/0x5f0 [sch_netem]")
    assert scan_console(extra) == []
    assert [r.kind for r in scan_console(extra, modules=("cnlab", "sch_netem"))] == ["kcsan"]


def test_a_race_in_the_code_of_a_module_unloaded_since_is_the_labs():
    unloaded = FOREIGN_RACE.replace("__mod_timer+0x1a4/0x5f0", "0xffffffffc0a1b2c3")
    assert [r.kind for r in scan_console(unloaded)] == ["kcsan"]


def test_a_console_without_kcsan_reports_is_left_as_it_is():
    from lab.guest.console_scan import without_foreign_races

    text = (HERE / "real_warn_then_sysrq_panic.log").read_text()
    assert without_foreign_races(text) is text


def test_a_real_data_race_in_the_module_from_the_kcsan_flavour():
    # recorded from a kcsan guest: every CPU's producers counting their inserts in CPU 0's entry (the seeded bug of
    # tests/integration/kmod/test_kcsan_kernel.py), under the stats_live check
    text = (HERE / "real_kcsan_module_race.log").read_text()
    (report,) = scan_console(text)
    assert report.kind == "kcsan"
    assert report.title == "BUG: KCSAN: data-race in cbus_insert_group [cnlab] / cbus_insert_group [cnlab]"
    assert report.frames[:4] == ["cbus_insert_group", "gen_emit", "gen_kthread_fn", "kthread"]
    assert "value changed: 0x000000000000515d -> 0x000000000000515f" in report.excerpt
    assert "hrtimer: interrupt took" not in report.excerpt  # the report ends at its closing rule
    # the same report from a module the lab did not load is the kernel's business
    assert scan_console(text.replace("[cnlab]", "[other]")) == []


def test_a_data_race_deep_in_a_long_report_is_still_the_labs():
    deep = "".join(f"[   40.000000]  irq_frame_{n}+0x1/0x2\n" for n in range(58))
    long_race = FOREIGN_RACE.replace("[   40.000000]  __do_softirq+0x120/0x3a2\n", deep).replace(
        "__mod_timer+0x1a4/0x5f0", "cbus_drain+0x1a4/0x5f0 [cnlab]")
    assert len(long_race.splitlines()) > 70
    (report,) = scan_console(long_race)
    assert report.kind == "kcsan" and "cbus_drain" in report.frames


def test_a_problem_printed_inside_a_foreign_race_is_kept():
    lines = FOREIGN_RACE.splitlines(keepends=True)
    lines.insert(5, "[   40.100000] Kernel panic - not syncing: Fatal exception in interrupt\n")
    assert [r.kind for r in scan_console("".join(lines))] == ["panic"]


def test_a_slab_report_after_a_warning_is_a_report_of_its_own():
    rule = "=" * 77
    text = ("[    5.0] WARNING: CPU: 0 PID: 1 at kmod/cbus.c:300 cbus_drain+0x1/0x2 [cnlab]\n"
            "[    5.0] Call Trace:\n[    5.0]  cbus_drain+0x1/0x2 [cnlab]\n[    5.0] ---[ end trace 0 ]---\n"
            f"[    5.1] {rule}\n[    5.1] BUG kmalloc-64 (Tainted: G        W  OE): Object already free\n"
            "[    5.1] " + "-" * 77 + "\n[    5.1]  kfree+0x1/0x2\n")
    assert [r.kind for r in scan_console(text)] == ["warning", "slab_corruption"]
