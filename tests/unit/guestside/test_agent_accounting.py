"""Guest agent accounting (``lab/guestside/agent_accounting.py``), run on the host: loss reconciliation,
the kernel log mark, and counts recovered from the module's unload lines."""

from __future__ import annotations

import pytest

from lab import kabi

from .guest_modules import load_guest_module

#: What the module logs when it is unloaded under load (kmod/gen.c gen_log_final, kmod/cbus.c), as /dev/kmsg
#: records: generator 1 ran on CPUs 0 and 1 (direct path), generator 2 on CPU 1 only (CBUS), generator 3 never
#: generated; another module's line in between.
UNLOAD_KMSG = (
    "6,900,5000000,-;cnlab: gen 1 final: state running cpus 2\n"
    "6,901,5000001,-;cnlab: gen 1 cpu 0 final: generated 500 ok 490 nolistener 0 overrun 0 nomem 4 full 0 other 0\n"
    "6,902,5000002,-;cnlab: gen 1 cpu 1 final: generated 300 ok 300 nolistener 0 overrun 0 nomem 0 full 0 other 0\n"
    "4,903,5000003,-;e1000e: some other driver\n SUBSYSTEM=pci\n DEVICE=+pci:0000:00:02.0\n"
    "6,904,5000004,-;cnlab: gen 2 final: state done cpus 1\n"
    "6,905,5000005,-;cnlab: gen 2 cpu 1 final: generated 1000 ok 990 nolistener 0 overrun 0 nomem 0 full 10 other 0\n"
    "6,906,5000006,-;cnlab: gen 3 final: state done cpus 0\n"
    "6,907,5000007,-;cnlab: cbus final: inserted 1500 sent 1488 full 10 nomem 0 nolistener 0 overrun 0 nlerr 2 "
    "queued 0 rejected 0\n"
    "6,908,5000008,-;cnlab: unloaded\n"
)
CBUS_ZERO = dict.fromkeys(("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun",
                           "drop_nlerr", "queued", "rejected"), 0)



def test_reconcile():
    accounting = load_guest_module("agent_accounting")
    gens = {0: {"state": 2, "cpus": {0: {"generated": 10, "ok": 8, "err_nolistener": 1, "err_nomem": 1,
                                         "err_full": 0, "err_other": 0}}}}
    report = {"groups": [18], "socket_drops": 1, "streams": {"0/0": {"gaps": 1, "next": 9}}}
    acc = accounting.reconcile(report, gens, 0, {0: [18]})
    assert acc == {"exact": True, "lost": 2, "socket_drops": 1, "pre_socket": 1, "cbus_nlerr": 0,
                   "reconciled": True, "since_join": False}
    assert accounting.reconcile(report, {0: None}, 0, {0: [18]})["exact"] is False
    assert accounting.reconcile(dict(report, missing=True), gens, 0, {0: [18]})["exact"] is False
    other_group = accounting.reconcile(dict(report, groups=[20], streams={}), gens, 0, {0: [18]})
    assert other_group["lost"] == 0


def test_reconciles_a_restarted_consumer_from_when_it_joined():
    accounting = load_guest_module("agent_accounting")
    gens = {0: {"state": 2, "cpus": {0: {"generated": 100, "ok": 60, "err_nolistener": 40, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0},
                                     1: {"generated": 5, "ok": 0, "err_nolistener": 5, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0}}}}
    # Joined at seq 40 of CPU 0 (the 40 before went to nobody); one ENOBUFS drop since; CPU 1 ended before.
    restarted = {"groups": [18], "socket_drops": 1, "resync": True, "streams": {"0/0": {"gaps": 1, "next": 100}}}
    acc = accounting.reconcile(restarted, gens, 0, {0: [18]})
    assert (acc["exact"], acc["lost"], acc["reconciled"], acc["since_join"]) == (True, 1, True, True)
    gens[0]["cpus"][0]["err_nomem"] = 3
    assert accounting.reconcile(restarted, gens, 0, {0: [18]})["exact"] is False


def test_reconciles_a_churning_consumer_over_the_windows_it_listened():
    accounting = load_guest_module("agent_accounting")
    gens = {0: {"state": 2, "cpus": {0: {"generated": 50, "ok": 42, "err_nolistener": 8, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0},
                                     1: {"generated": 9, "ok": 9, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 0,
                                         "err_full": 0, "err_other": 0}}}}
    # Left twice; CPU 0 seen to its end since the last rejoin; CPU 1 seen only before it (not counted).
    churning = {"groups": [18], "socket_drops": 0, "churns": 2,
                "streams": {"0/0": {"gaps": 0, "next": 50}, "0/1": {"gaps": 0, "next": None}}}
    acc = accounting.reconcile(churning, gens, 0, {0: [18]})
    assert (acc["exact"], acc["lost"], acc["reconciled"], acc["since_join"]) == (True, 0, True, True)
    assert accounting.reconcile(dict(churning, streams={"0/0": {"gaps": 1, "next": 48}}), gens, 0,
                             {0: [18]})["reconciled"] is False  # 3 lost, nothing counted: silent loss
    # With socket drops, one just before leaving would show no gap: not exact, and said why.
    dropped = accounting.reconcile(dict(churning, socket_drops=3), gens, 0, {0: [18]})
    assert dropped["exact"] is False and "cannot be seen as gaps" in dropped["reason"]


def test_kernel_log_reads_only_what_came_after_the_mark(tmp_path):
    accounting = load_guest_module("agent_accounting")
    log = tmp_path / "kmsg"
    log.write_text("6,10,100,-;cnlab: gen 1 final: state done cpus 0\n"  # an earlier run's unload
                   "6,11,101,-;cnlab: cbus final: inserted 1 sent 1 full 0 nomem 0 nolistener 0 overrun 0 nlerr 0 "
                   "queued 0 rejected 0\n")
    klog = accounting.KernelLog(str(log))
    with open(log, "a") as f:
        f.write(UNLOAD_KMSG)
    lines = klog.read()
    klog.close()
    assert lines[0] == "cnlab: gen 1 final: state running cpus 2" and lines[-1] == "cnlab: unloaded"
    assert not any(line.startswith(" ") or "SUBSYSTEM" in line for line in lines)
    (unload,) = accounting.parse_unloads(lines)
    assert unload["gens"][1] == {"state": "running", "expected_cpus": 2, "cpus": {
        0: {"generated": 500, "ok": 490, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 4,
            "err_full": 0, "err_other": 0},
        1: {"generated": 300, "ok": 300, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 0,
            "err_full": 0, "err_other": 0}}}
    assert unload["gens"][3] == {"state": "done", "expected_cpus": 0, "cpus": {}}
    assert unload["cbus"] == {"inserted": 1500, "sent": 1488, "drop_full": 10, "drop_nomem": 0,
                              "drop_nolistener": 0, "drop_overrun": 0, "drop_nlerr": 2, "queued": 0, "rejected": 0}
    missing = accounting.KernelLog(str(tmp_path / "nope"))
    assert missing.read() == [] and "nope" in missing.error


def test_reconciles_exactly_with_counts_recovered_after_a_module_reload():
    accounting = load_guest_module("agent_accounting")
    lines = [r.partition(";")[2] for r in UNLOAD_KMSG.splitlines() if not r.startswith(" ")]
    gens = {1: None, 2: None, 3: None}  # what GEN_STATS says after the reload: idle, never started
    before = dict(CBUS_ZERO, inserted=700, sent=700)  # the module had run before this load
    after = dict(CBUS_ZERO, inserted=5, sent=5)  # and the reloaded one has sent a little since
    cbus, reason = accounting.recover(gens, accounting.parse_unloads(lines), before, after)
    assert reason is None
    assert gens[1] == {"state": kabi.CNLAB_GEN_STOPPED, "unloaded": "running", "cpus": {
        0: {"generated": 500, "ok": 490, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 4,
            "err_full": 0, "err_other": 0},
        1: {"generated": 300, "ok": 300, "err_nolistener": 0, "err_overrun": 0, "err_nomem": 0,
            "err_full": 0, "err_other": 0}}}
    assert gens[3]["cpus"] == {}
    assert cbus == {"inserted": 805, "sent": 793, "drop_full": 10, "drop_nomem": 0, "drop_nolistener": 0,
                    "drop_overrun": 0, "drop_nlerr": 2, "rejected": 0, "queued": 0, "balanced": True,
                    "unloads": 1}
    # The checker: gen 1 CPU 0 with 2 gaps and next 498 (2 lost at the tail), all of gen 1 CPU 1, gen 2 CPU 1
    # with 1 gap and next 980 (20 at the tail): lost 4 + 0 + 21 = 25 = 9 socket drops + 14 failed sends
    # (4 nomem of gen 1, 10 full of gen 2) + 2 CBUS send errors.
    report = {"groups": [18, 24], "socket_drops": 9,
              "streams": {"1/0": {"gaps": 2, "next": 498}, "1/1": {"gaps": 0, "next": 300},
                          "2/1": {"gaps": 1, "next": 980}}}
    acc = accounting.reconcile(report, gens, cbus["drop_nlerr"], {1: [18], 2: [24], 3: [24]})
    assert acc == {"exact": True, "lost": 25, "socket_drops": 9, "pre_socket": 14, "cbus_nlerr": 2,
                   "reconciled": True, "since_join": False}
    groups = {1: [18], 2: [24], 3: [24]}
    assert accounting.reconcile(dict(report, socket_drops=8), gens, 2, groups)["reconciled"] is False


@pytest.mark.parametrize("drop, why", [
    ("cnlab: gen 2 cpu 1 final", "generator 2: incomplete final counts in the kernel log (0 CPU lines of 1)"),
    ("cnlab: gen 1 final", "generator 1: incomplete final counts in the kernel log (2 CPU lines of None)"),
    ("cnlab: gen 2", "generator 2: no final counts in the kernel log"),
    ("cnlab: cbus final", "module unloaded but its 'cbus final' line is missing or malformed"),
])
def test_reload_without_its_log_lines_stays_partial_with_the_reason(drop, why):
    accounting = load_guest_module("agent_accounting")
    lines = [r.partition(";")[2] for r in UNLOAD_KMSG.splitlines() if not r.startswith(" ")]
    lines = [line for line in lines if not line.startswith(drop)]
    gens = {1: None, 2: None}
    cbus, reason = accounting.recover(gens, accounting.parse_unloads(lines), CBUS_ZERO, CBUS_ZERO)
    assert why in reason
    report = {"groups": [18], "socket_drops": 0, "streams": {}}
    acc = accounting.reconcile(report, gens, 0, {1: [18], 2: [18]}, reason)
    assert acc == {"exact": False, "reason": f"{reason}: partial accounting"}


def test_recovery_refuses_counts_of_two_unloads_and_unbalanced_finals():
    accounting = load_guest_module("agent_accounting")
    lines = [r.partition(";")[2] for r in UNLOAD_KMSG.splitlines() if not r.startswith(" ")]
    gens = {2: None}
    _, reason = accounting.recover(gens, accounting.parse_unloads(lines + lines), CBUS_ZERO, CBUS_ZERO)
    assert reason == "generator 2: final counts logged by 2 unloads" and gens[2] is None
    unbalanced = [line.replace("sent 1488", "sent 1400") for line in lines]
    cbus, reason = accounting.recover({}, accounting.parse_unloads(unbalanced), CBUS_ZERO, CBUS_ZERO)
    assert reason is None and cbus["balanced"] is False
