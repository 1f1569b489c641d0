"""The kcsan kernel flavour: KCSAN is on and watching, the module runs clean on it, and a data race seeded in the
module is reported as the lab's own (kind ``kcsan``), while the kernel's races stay out of the verdicts.

These tests need the kcsan kernel (``cnlab --kernel-flavour kcsan image build``: about 12 minutes cold on two
cores).  They run when it is in the cache, or when ``CNLAB_KERNEL_FLAVOUR=kcsan`` asks for it to be built;
otherwise they skip, saying how to build it.  CI never builds it.
"""

from __future__ import annotations

import dataclasses
import os

import pytest

from lab.guest.console_scan import scan_console
from lab.guest.files import install_guest_programs
from lab.guest.kcheck import KernelWatch
from lab.guest.labsetup import Lab
from lab.guest.machine import Guest
from lab.guest.qemu_argv import GuestShape
from lab.image.debug_kernel import debug_kernel_cached
from lab.image.kernel import debian_cloud_kernel

from .test_seeded_bugs import _mutant

pytestmark = [pytest.mark.lab, pytest.mark.debugkernel, pytest.mark.xdist_group("debugkernel")]

SHAPE = GuestShape(cpus=2, memory_mb=1024)
KCSAN = "/sys/kernel/debug/kcsan"


@pytest.fixture(scope="module")
def kcsan_lab(cnlab_lab) -> Lab:
    """A lab like the session's on the kcsan flavour (skips when it is not built and not asked for)."""
    wanted = os.environ.get("CNLAB_KERNEL_FLAVOUR") == "kcsan"
    if not wanted and not debug_kernel_cached(cnlab_lab.cache, debian_cloud_kernel(cnlab_lab.cache), "kcsan"):
        pytest.skip("no kcsan kernel in the cache: build it with 'cnlab --kernel-flavour kcsan image build' "
                    "(about 12 minutes), or set CNLAB_KERNEL_FLAVOUR=kcsan")
    return Lab(dataclasses.replace(cnlab_lab.options, kernel_flavour="kcsan"))


def _kcsan_counters(guest) -> dict[str, int]:
    text = guest.run(["cat", KCSAN], check=True).text
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): int(value) for key, value in pairs if value.strip().lstrip("-").isdigit()}


def _checks(guest, *names: str, timeout: float = 1200):
    lib = install_guest_programs(guest)
    return guest.run(["python3", f"{lib}/cnlab_checks.py", "--no-klog", *names], timeout=timeout, check=False)


def test_the_kcsan_kernel_watches_and_the_module_runs_clean_under_concurrent_load(kcsan_lab):
    with Guest(kcsan_lab.guest_spec(SHAPE, name="kcsan")) as guest:
        watch = KernelWatch(guest)
        assert guest.run(["uname", "-r"], check=True).text.strip().endswith("-cnlab-kcsan")
        before = _kcsan_counters(guest)
        assert before["enabled"] == 1, before
        checks = _checks(guest, "stats_live", "nested_irq", "hwm_reset", "balance", "invariant")
        assert checks.exit_status == 0, checks.text[-3000:]
        after = _kcsan_counters(guest)
        # evidence that KCSAN watched while the checks ran: it set watchpoints (tens of thousands here)
        assert after["setup_watchpoints"] - before["setup_watchpoints"] > 1000, (before, after)
        watch.assert_clean()  # no data race with an access in the module; the kernel's own are not counted


def test_producers_counting_into_another_cpus_entry_are_reported_as_a_data_race(kcsan_lab, tmp_path):
    from .test_seeded_bugs import INSERTS_COUNTED_ON_CPU0

    lab = _mutant(kcsan_lab, tmp_path, INSERTS_COUNTED_ON_CPU0)
    with Guest(lab.guest_spec(SHAPE, name="kcsan-seeded")) as guest:
        start = len(guest.console_text())
        _checks(guest, "stats_live")
        races = [r for r in scan_console(guest.console_text()[start:]) if r.kind == "kcsan"]
        counters = _kcsan_counters(guest)
    assert races, f"no data race reported; KCSAN counted {counters}"
    # both accesses are the increment in cbus_insert_group(), on two CPUs
    assert races[0].title == "BUG: KCSAN: data-race in cbus_insert_group [cnlab] / cbus_insert_group [cnlab]", races
    assert "value changed" in races[0].excerpt, races[0].excerpt
