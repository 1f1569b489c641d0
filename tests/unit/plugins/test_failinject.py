"""failslab, fail-page-alloc and fail-function: the order of their writes (no moment where every task fails),
the thread flags' program, and their evidence (no guest)."""

from __future__ import annotations

import subprocess
import sys

from cnlab_plugins import failinject
from cnlab_plugins.failinject import FAIL_FUNCTION, FAIL_PAGE_ALLOC, FAILSLAB


def _steps(actions) -> list[str]:
    return [" ".join(str(a) for a in (action.kind, *action.args))[:90] for action in actions]


def test_failslab_arms_the_task_filter_and_the_threads_before_any_probability():
    fault = failinject._failslab({"probability": 20, "times": 300})
    steps = _steps(fault.inject)
    assert steps[0] == f"write {FAILSLAB}/probability 0"
    assert steps[-1] == f"write {FAILSLAB}/probability 20"
    filt, flags = steps.index(f"write {FAILSLAB}/task-filter Y"), next(
        i for i, s in enumerate(steps) if s.startswith("exec python3 -S -c"))
    assert filt < flags < len(steps) - 1
    assert f"write {FAILSLAB}/times 300" in steps
    restore = _steps(fault.restore)
    assert restore[0] == f"write {FAILSLAB}/probability 0" and restore[-1] == f"write {FAILSLAB}/task-filter N"
    assert f"write {FAILSLAB}/ignore-gfp-wait Y" in restore
    assert "times" in " ".join(fault.evidence[0].args)


def test_fail_page_alloc_is_failslab_s_filter_on_the_page_allocator_with_its_minimum_order():
    fault = failinject._fail_page_alloc({"probability": 20, "times": 300, "min_order": 1})
    steps = _steps(fault.inject)
    assert steps[0] == f"write {FAIL_PAGE_ALLOC}/probability 0"
    assert steps[-1] == f"write {FAIL_PAGE_ALLOC}/probability 20"
    assert steps.index(f"write {FAIL_PAGE_ALLOC}/task-filter Y") < steps.index(f"write {FAIL_PAGE_ALLOC}/min-order 1")
    assert _steps(fault.restore)[-1] == f"write {FAIL_PAGE_ALLOC}/task-filter N"
    assert fault.summary == "fail_page_alloc (order >= 1) 20% on the drain threads, up to 300"
    assert f"{FAIL_PAGE_ALLOC}/times" in " ".join(fault.evidence[0].args)


def test_fail_function_registers_its_function_with_the_shared_attribute_off():
    fault = failinject._fail_function({"function": "cbus_insert_group", "probability": 10, "times": 200})
    steps = _steps(fault.inject)
    assert steps[:2] == [f"write {FAIL_FUNCTION}/probability 0", f"write {FAIL_FUNCTION}/inject cbus_insert_group"]
    assert steps[-1] == f"write {FAIL_FUNCTION}/probability 10"
    assert _steps(fault.restore) == [f"write {FAIL_FUNCTION}/probability 0",
                                     f"write {FAIL_FUNCTION}/inject !cbus_insert_group"]


def test_the_thread_flag_program_sets_matching_threads_and_fails_when_there_is_none(tmp_path):
    # Run against this host's /proc: its own threads are not what the regex names, so it must fail by name.
    result = subprocess.run([sys.executable, "-S", "-c", failinject._MAKE_IT_FAIL, r"no-such-thread/\d+", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == r"no thread named no-such-thread/\d+"
