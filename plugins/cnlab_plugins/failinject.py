"""Kernel fault injection aimed at the lab module: ``failslab``, ``fail_page_alloc`` and ``fail_function``
(debug kernel flavour).

Each needs the debug flavour (``cnlab --kernel-flavour debug``: ``CONFIG_FAILSLAB``,
``CONFIG_FAIL_PAGE_ALLOC``, ``CONFIG_FAIL_FUNCTION``, ``CONFIG_FAULT_INJECTION_DEBUG_FS``); on Debian's cloud
kernel their ``/sys/kernel/debug`` files do not exist
and the first write fails the injection, naming the file.

================= ======== ===========================================================================
fault             target   what it does
================= ======== ===========================================================================
failslab          module   slab allocations of the CBUS drain threads (``cbus/N``) fail with
                           ``probability`` percent, at most ``times`` times (task filter, sleeping
                           allocations included): their sends fail and CBUS must count each message
                           as a netlink error (``drop_nlerr``)
fail-page-alloc   module   page allocations of at least ``2^min_order`` pages by the CBUS drain threads
                           fail (same filter and counters as failslab): a send whose buffer is too big
                           for a slab (a message of about 8 KB or more) fails, and CBUS must count it
                           as a netlink error
fail-function     module   a function of the module marked ``ALLOW_ERROR_INJECTION`` returns an error
                           instead of running (``probability`` percent, at most ``times`` times): its
                           callers must cope (``cbus_insert_group``: the generators count a refusal)
================= ======== ===========================================================================

Evidence (polled after the injection): the attribute's ``times`` counter has gone down, i.e. the kernel
failed at least one call for real.  A fault that never fired fails its scenario.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.plugin import FaultRegistry, FaultSpec
from lab.plugin.objects import Fault, expect_output, run, write_file

DEBUGFS = "/sys/kernel/debug"
FAILSLAB = f"{DEBUGFS}/failslab"
FAIL_FUNCTION = f"{DEBUGFS}/fail_function"
FAIL_PAGE_ALLOC = f"{DEBUGFS}/fail_page_alloc"
#: Functions of kmod/ marked ALLOW_ERROR_INJECTION (the kernel refuses any other name).
INJECTABLE = ("cbus_insert_group",)
#: The CBUS drain threads' names (smpboot "cbus/%u").
DRAIN_THREADS = r"cbus/\d+"
#: Sets /proc/PID/make-it-fail of every thread whose name matches argv[1] to argv[2]; fails if there is none.
#: Python, not a shell loop over pgrep: that took 13.9 s on the debug kernel under TCG.
_MAKE_IT_FAIL = ("import os, re, sys\n"
                 "def name(pid):\n"
                 "    try:\n"
                 "        return open(f'/proc/{pid}/comm').read().strip()\n"
                 "    except OSError:  # gone meanwhile\n"
                 "        return ''\n"
                 "pids = [p for p in os.listdir('/proc') if p.isdigit() and re.fullmatch(sys.argv[1], name(p))]\n"
                 "for p in pids:\n"
                 "    open(f'/proc/{p}/make-it-fail', 'w').write(sys.argv[2])\n"
                 "sys.exit(0 if pids else 'no thread named ' + sys.argv[1])\n")


def _make_it_fail(value: int) -> Any:
    return run("python3", "-S", "-c", _MAKE_IT_FAIL, DRAIN_THREADS, str(value))


def _fired(attr_dir: str, times: int) -> Any:
    """Evidence: the attribute's ``times`` counter is below what the injection set (it counts down per failure)."""
    return expect_output("fired", "sh", "-c", f'test "$(cat {attr_dir}/times)" -lt {times} && echo fired')


def _attr(attr_dir: str, s: Mapping[str, Any]) -> tuple:
    """The attribute's settings, ``probability`` last: until it is written the attribute fails nothing."""
    return (write_file(f"{attr_dir}/verbose", "0"), write_file(f"{attr_dir}/interval", "1"),
            write_file(f"{attr_dir}/times", str(s["times"])),
            write_file(f"{attr_dir}/probability", str(s["probability"])))


def _drain_threads_fail(attr_dir: str, s: Mapping[str, Any], what: str, extra: tuple = ()) -> Fault:
    """An attribute with the task filter, aimed at the CBUS drain threads (``failslab``, ``fail_page_alloc``)."""
    # The task filter and the threads' flags first: with probability set and no filter, every task would fail.
    inject = (write_file(f"{attr_dir}/probability", "0"), write_file(f"{attr_dir}/task-filter", "Y"),
              write_file(f"{attr_dir}/ignore-gfp-wait", "N"), *extra,
              _make_it_fail(1), *_attr(attr_dir, s))
    restore = (write_file(f"{attr_dir}/probability", "0"),
               _make_it_fail(0),
               write_file(f"{attr_dir}/ignore-gfp-wait", "Y"), write_file(f"{attr_dir}/task-filter", "N"))
    return Fault(inject, restore, f"{what} {s['probability']}% on the drain threads, up to {s['times']}",
                 evidence=(_fired(attr_dir, s["times"]),))


def _failslab(s: Mapping[str, Any]) -> Fault:
    return _drain_threads_fail(FAILSLAB, s, "failslab")


def _fail_page_alloc(s: Mapping[str, Any]) -> Fault:
    # highmem and order below min-order are never failed (x86-64 has no highmem: only the order matters)
    return _drain_threads_fail(FAIL_PAGE_ALLOC, s, f"fail_page_alloc (order >= {s['min_order']})",
                               (write_file(f"{FAIL_PAGE_ALLOC}/min-order", str(s["min_order"])),))


def _fail_function(s: Mapping[str, Any]) -> Fault:
    name = s["function"]
    # The attributes are shared by every injected function: off while the function is registered.
    inject = (write_file(f"{FAIL_FUNCTION}/probability", "0"), write_file(f"{FAIL_FUNCTION}/inject", name),
              *_attr(FAIL_FUNCTION, s))
    restore = (write_file(f"{FAIL_FUNCTION}/probability", "0"), write_file(f"{FAIL_FUNCTION}/inject", f"!{name}"))
    return Fault(inject, restore, f"{name} fails {s['probability']}%, up to {s['times']}",
                 evidence=(expect_output(name, "cat", f"{FAIL_FUNCTION}/inject"), _fired(FAIL_FUNCTION, s["times"])))


def _common() -> tuple[Setting, ...]:
    return (Setting("probability", int, 100, "percent of the calls that fail", min=1, max=100),
            Setting("times", int, 1000, "at most this many failures", min=1, max=1 << 30))


@hookimpl
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    """failslab, fail-page-alloc and fail-function (see the module docstring); each needs the debug kernel
    flavour."""
    registry.add_fault(FaultSpec(
        "failslab", "slab allocations of the CBUS drain threads fail (debug kernel flavour)", "module", _failslab,
        settings=_common(), duration=1.0))
    registry.add_fault(FaultSpec(
        "fail-page-alloc", "page allocations of the CBUS drain threads fail (debug kernel flavour)", "module",
        _fail_page_alloc,
        settings=(Setting("min_order", int, 1, "only allocations of at least 2^min_order pages fail (1: the "
                                               "sends of messages over about 8 KB, not the slab refills)",
                          min=0, max=10), *_common()), duration=1.0))
    registry.add_fault(FaultSpec(
        "fail-function", "a module function marked ALLOW_ERROR_INJECTION returns an error (debug kernel flavour)",
        "module", _fail_function,
        settings=(Setting("function", str, INJECTABLE[0], "the function that fails", choices=INJECTABLE),
                  *_common()), duration=1.0))
