"""The debug kernel flavour (issue 12 part 4): its detectors are on, the module runs clean on it, and bugs the
cloud kernel cannot show are caught there.

These tests need the debug kernel (``cnlab --kernel-flavour debug image build``: tens of minutes cold on two
cores).  They run when it is in the cache, or when ``CNLAB_KERNEL_FLAVOUR=debug`` asks for it to be built;
otherwise they skip, saying how to build it.  CI never builds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from lab.guest.files import install_guest_programs
from lab.guest.kcheck import KernelWatch
from lab.guest.labsetup import Lab
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape
from lab.image.debug_kernel import debug_kernel_cached
from lab.image.kernel import debian_cloud_kernel

from .test_seeded_bugs import _mutant, _run_checks, _run_scenario

pytestmark = [pytest.mark.lab, pytest.mark.debugkernel, pytest.mark.xdist_group("debugkernel")]

SHAPE = GuestShape(cpus=2, memory_mb=1024)


@pytest.fixture(scope="module")
def debug_lab(cnlab_lab) -> Lab:
    """A lab like the session's on the debug flavour (skips when it is not built and not asked for)."""
    wanted = os.environ.get("CNLAB_KERNEL_FLAVOUR") == "debug"
    if not wanted and not debug_kernel_cached(cnlab_lab.cache, debian_cloud_kernel(cnlab_lab.cache)):
        pytest.skip("no debug kernel in the cache: build it with 'cnlab --kernel-flavour debug image build' "
                    "(tens of minutes), or set CNLAB_KERNEL_FLAVOUR=debug")
    return Lab(dataclasses.replace(cnlab_lab.options, kernel_flavour="debug"))


def test_the_debug_kernel_boots_with_its_detectors_on_and_the_module_runs_clean(debug_lab):
    with Guest(debug_lab.guest_spec(SHAPE, name="debug")) as guest:
        lib = install_guest_programs(guest)
        watch = KernelWatch(guest)
        assert guest.run(["uname", "-r"], check=True).text.strip().endswith("-cnlab-debug")
        probe = guest.run(["sh", "-c", "ls -d /sys/kernel/debug/kmemleak /sys/kernel/debug/fail_function "
                                       "/sys/kernel/debug/failslab /proc/lockdep; dmesg | grep -c "
                                       "'KernelAddressSanitizer initialized'"], check=False).text
        for path in ("kmemleak", "fail_function", "failslab", "/proc/lockdep"):
            assert path in probe, probe
        assert probe.strip().splitlines()[-1] == "1", probe
        checks = guest.run(["python3", f"{lib}/cnlab_checks.py", "--no-klog", "echo", "balance", "invariant",
                            "perm", "alloc_sweep", "insert_refusals", "bench_nomem"], timeout=1200, check=False)
        assert checks.exit_status == 0, checks.text[-3000:]
        sweep = json.loads(next(line for line in checks.text.splitlines() if '"alloc_sweep"' in line))
        # evidence that the sweep's faults fired: every request type had allocations failed and answered -ENOMEM
        assert all(sweep["injected"].values()) and all(sweep["enomem"].values()), sweep
        bench = json.loads(next(line for line in checks.text.splitlines() if '"bench_nomem"' in line))
        assert bench["rounds"][-1] == "enomem", bench  # the BENCH worker's buffer was failed, and it said so
        watch.assert_clean()  # console (KASAN, lockdep, ODEBUG, ...), taint, and a kmemleak scan


#: cbus.c: a pool miss allocates with GFP_KERNEL while interrupts are off (may sleep in atomic context). The
#: cloud kernel has free memory and no DEBUG_ATOMIC_SLEEP: nothing shows.
ATOMIC_ALLOC_MAY_SLEEP = ("cbus.c", "GFP_ATOMIC | __GFP_NOWARN);", "GFP_KERNEL | __GFP_NOWARN);")
#: cbus.c: an event that did not come from the pool (a pool miss, a big message) is not freed once sent.
EVENT_NOT_FREED = ("cbus.c", "\tif (!(ev->flags & CBUS_EV_SLOT)) {\n\t\tkfree(ev);\n\t\treturn;",
                   "\tif (!(ev->flags & CBUS_EV_SLOT)) {\n\t\treturn;")
#: cbus.c: cbus_insert_group() without local_irq_save(): the per-CPU queue is touched with IRQs on (a surviving
#: mutant; lockdep_assert_irqs_disabled() in cbus_slot_get() sees it on a lockdep kernel).
INSERT_WITH_IRQS_ON = ("cbus.c", "\tlocal_irq_save(irqflags);\n\tcc = this_cpu_ptr(cbus_pcpu);",
                       "\tirqflags = arch_local_save_flags();\n\tcc = this_cpu_ptr(cbus_pcpu);")

#: More messages than one CPU's 1024 pool slots while the drain stalls: the pool runs dry, inserts allocate.
#: 7 s of load: kmemleak reports only objects older than 5 s, and the pool runs dry between 0.6 and 1.5 s.
POOL_DRY = {"name": "debug-pool-dry", "duration": 7.0, "guest": {"cpus": 2},
            "emulators": [{"name": "generator", "path": "cbus", "context": "kthread", "rate": 3000,
                           "payload": [32, 64], "cpus": [0]}],
            "faults": [{"name": "drain-stall", "at": 0.3, "ms": 1200}],
            "invariants": {"max_loss": 100000}}


def _run(lab: Lab, tmp_path, spec: dict):
    return _run_scenario(lab, tmp_path, spec, "<debug-kernel seeded>")


def test_the_unmutated_module_under_a_dry_pool_leaves_no_report(debug_lab, tmp_path):
    record = _run(debug_lab, tmp_path, POOL_DRY)
    assert record.status == "passed", [v for v in record.verdicts if not v.ok]
    assert record.kernel_reports == ()


def test_sleeping_in_atomic_context_and_a_leaked_buffer_are_caught(debug_lab, tmp_path):
    lab = _mutant(debug_lab, tmp_path, ATOMIC_ALLOC_MAY_SLEEP, EVENT_NOT_FREED)
    record = _run(lab, tmp_path, POOL_DRY)
    kinds = {r["kind"]: r for r in record.kernel_reports}
    assert record.status == "failed"
    assert "atomic_sleep" in kinds, [r["title"] for r in record.kernel_reports]
    assert "cbus_insert_group" in kinds["atomic_sleep"]["frames"], kinds["atomic_sleep"]["excerpt"]
    assert "kmemleak" in kinds, [r["title"] for r in record.kernel_reports]
    assert "cbus_insert_group" in kinds["kmemleak"]["frames"], kinds["kmemleak"]["excerpt"]


def test_an_insert_with_interrupts_on_is_caught_by_the_lockdep_assertion(debug_lab, tmp_path):
    lab = _mutant(debug_lab, tmp_path, INSERT_WITH_IRQS_ON)
    record = _run(lab, tmp_path, POOL_DRY)
    warnings = [r for r in record.kernel_reports if r["kind"] == "warning"]
    assert record.status == "failed"
    # cbus_slot_get() is inlined: the warning names its line in cbus.c and the function it was inlined in
    assert warnings and re.search(r"cbus\.c:\d+ cbus_", warnings[0]["title"]), record.kernel_reports


def _load(fault: dict, duration: float = 3.0, rate: int = 1000) -> dict:
    return {"name": f"debug-{fault['name']}", "duration": duration, "guest": {"cpus": 2},
            "emulators": [{"name": "generator", "path": "cbus", "context": "kthread", "rate": rate}],
            "faults": [fault], "invariants": {"max_loss": 100000}}


def test_failslab_on_the_drain_threads_fires_and_each_failed_send_is_accounted(debug_lab, tmp_path):
    # A light, long load: a program started by the injection (the threads' flags) took 8 to 17.5 s to run on this
    # kernel under TCG, and loads of 3 and 8 s had ended before the attribute was set
    record = _run(debug_lab, tmp_path, _load({"name": "failslab", "at": 1.0, "duration": 16.0, "probability": 20,
                                              "times": 300}, duration=20.0, rate=200))
    (fault,) = record.faults
    # its evidence: the kernel failed allocations for real ("times" went down); on failure, the actions that failed
    assert fault["ok"], [a for a in fault["actions"] if not a["ok"]] or fault
    assert record.data["agent"]["cbus"]["drop_nlerr"] > 0, record.data["agent"]["cbus"]
    assert record.status == "passed", [v for v in record.verdicts if not v.ok]


def test_fail_page_alloc_fails_the_big_sends_of_the_drain_threads_and_each_is_accounted(debug_lab, tmp_path):
    # 8 KB payloads: each send's buffer is past the largest kmalloc slab, so it comes from the page allocator
    spec = _load({"name": "fail-page-alloc", "at": 1.0, "duration": 16.0, "probability": 20, "times": 300},
                 duration=20.0, rate=200)
    spec["emulators"][0]["payload"] = [8192, 8192]
    record = _run(debug_lab, tmp_path, spec)
    (fault,) = record.faults
    # its evidence: the kernel failed page allocations for real ("times" went down); on failure, the actions that failed
    assert fault["ok"], [a for a in fault["actions"] if not a["ok"]] or fault
    assert record.data["agent"]["cbus"]["drop_nlerr"] > 0, record.data["agent"]["cbus"]
    assert record.status == "passed", [v for v in record.verdicts if not v.ok]


def test_fail_function_makes_inserts_refuse_and_the_generators_count_each_refusal(debug_lab, tmp_path):
    record = _run(debug_lab, tmp_path, _load({"name": "fail-function", "function": "cbus_insert_group", "at": 1.0,
                                              "duration": 0.5, "probability": 10, "times": 200}))
    (fault,) = record.faults
    assert fault["ok"], fault
    refused = sum(c["err_other"] for g in record.data["agent"]["generators"].values() for c in g["cpus"].values())
    assert 0 < refused <= 200, record.data["agent"]["generators"]
    assert record.status == "passed", [v for v in record.verdicts if not v.ok]


#: ctl.c: ECHO answers nothing when its reply cannot be allocated (-ENOMEM made 0: a mutant no other check kills).
ECHO_SILENT_ON_ENOMEM = ("ctl.c", "\tbody = cnlab_reply_alloc(rq->len, &cn);\n\tif (!body)\n\t\treturn -ENOMEM;",
                         "\tbody = cnlab_reply_alloc(rq->len, &cn);\n\tif (!body)\n\t\treturn 0;")


def test_the_allocation_sweep_catches_a_request_that_answers_nothing_when_its_reply_cannot_be_allocated(
        debug_lab, tmp_path):
    res, console, error = _run_checks(_mutant(debug_lab, tmp_path, ECHO_SILENT_ON_ENOMEM), ["alloc_sweep"])
    assert not error and not console, (error, console)
    (sweep,) = res["alloc_sweep"]
    assert not sweep["ok"], sweep
    assert {p["request"] for p in sweep["problems"]} == {"ECHO"}, sweep["problems"]
    assert all(p["problem"] == "no reply, and 0 counted lost" and p["injected"] for p in sweep["problems"])
    # the other requests were swept whole and answered -ENOMEM: only ECHO's answer is missing
    assert all(n for name, n in sweep["enomem"].items() if name != "ECHO"), sweep


#: gen.c: an insert CBUS refuses for a reason other than a full queue or memory is not counted (err_other).
REFUSAL_NOT_COUNTED = ("gen.c", "\t\telse\n\t\t\tgc->err_other++;\n\t} else {", "\t\telse\n\t\t\t{}\n\t} else {")


def test_insert_refusals_catches_a_refusal_the_generator_does_not_count(debug_lab, tmp_path):
    res, console, error = _run_checks(_mutant(debug_lab, tmp_path, REFUSAL_NOT_COUNTED), ["insert_refusals"])
    assert not error and not console, (error, console)
    (refusals,) = res["insert_refusals"]
    # the injection fired 100 times (its evidence), CBUS saw the other 900, and the generator lost the 100
    assert not refusals["ok"] and refusals["injected"] == 100 and refusals["cbus_inserted"] == 900, refusals
    assert refusals["generator"]["err_other"] == 0 and refusals["generator"]["ok"] == 900, refusals


#: bench.c: a BENCH whose message buffer cannot be allocated reports success with nothing measured (-ENOMEM
#: made 0, the surviving mutant bench.c:154:return).
BENCH_SILENT_ON_ENOMEM = ("bench.c", "\tif (!msg)\n\t\treturn -ENOMEM;\n\tmsg->id.idx = c->idx;",
                          "\tif (!msg)\n\t\treturn 0;\n\tmsg->id.idx = c->idx;")


def test_bench_nomem_catches_a_bench_that_reports_success_when_its_buffer_cannot_be_allocated(debug_lab, tmp_path):
    res, console, error = _run_checks(_mutant(debug_lab, tmp_path, BENCH_SILENT_ON_ENOMEM), ["bench_nomem"])
    assert not error and not console, (error, console)
    (bench,) = res["bench_nomem"]
    # the failure was injected (failslab's times went to 0) and the run answered OK with no call measured
    assert not bench["ok"] and bench["rounds"][-1] == "answered OK (body 0) with 0 calls measured", bench


#: bench.c: a failed direct send other than -ESRCH is no longer counted (the surviving mutant bench.c:75:counter).
DIRECT_ERR_NOT_COUNTED = ("bench.c", "\telse\n\t\tr->direct_err++;\n", "\telse\n\t\t;\n")


def test_bench_direct_err_counts_failed_direct_sends_and_catches_one_left_uncounted(debug_lab, tmp_path):
    res, console, error = _run_checks(debug_lab, ["bench_direct_err"])
    assert not error and not console, (error, console)
    (good,) = res["bench_direct_err"]
    # evidence: failslab failed 8 of the run's atomic allocations, each one a direct send counted in direct_err
    assert good["ok"] and good["rounds"][-1]["injected"] == 8 and good["rounds"][-1]["direct_err"] == 8, good
    res, console, error = _run_checks(_mutant(debug_lab, tmp_path, DIRECT_ERR_NOT_COUNTED), ["bench_direct_err"])
    (bad,) = res["bench_direct_err"]
    last = bad["rounds"][-1]
    assert not bad["ok"] and last["injected"] > 0 and last["direct_err"] == 0, bad
    assert last["direct_ok"] < last["direct_calls"], bad  # the failed sends are in no counter
