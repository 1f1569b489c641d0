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
