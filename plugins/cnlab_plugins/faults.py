"""Built-in faults acting on the guest, the module, the consumers and QEMU.

Each factory returns a :class:`~lab.plugin.objects.Fault`: actions that inject
it and actions that undo it.  The scenario says when it fires (``at``,
``every``, ``on`` an event) and how long it holds (``duration``); the guest
agent fires it (``pause`` is carried out by the orchestrator over QMP).

================= ======== ===========================================================================
fault             target   what it does
================= ======== ===========================================================================
cpu-offline       guest    takes ``cpu`` offline; back online after ``duration`` (default 0.5 s)
pause             qemu     stops the whole guest (QMP ``stop``), ``cont`` after ``duration`` (default 1 s)
drain-stall       module   the CBUS drain threads stall for ``ms`` (module knob STALL_MS)
alloc-fail        module   every ``nth`` CBUS allocation fails until undone (knob ALLOC_NTH)
queue-limit       module   per-CPU CBUS queue limit ``limit`` until undone (knob QLIMIT, then the default)
warn              module   the module WARNs once on purpose (the console scanner must see it)
crash             guest    the guest kernel panics (sysrq c): the scenario ends as a crash
module-reload     module   unload the lab's modules under load (extra modules first, then cnlab), load them
                           again after ``duration`` (default 1 s; guest program ``labmods.py``)
consumer-kill     consumer SIGKILL to every consumer (each is restarted once)
rcvbuf-squeeze    guest    ``net.core.rmem_default/max`` to ``bytes`` (use ``at = 0``: before consumers bind)
memory-pressure   guest    a program allocates and touches ``mb`` MB for ``seconds``
================= ======== ===========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl, kabi
from lab.config import Setting
from lab.plugin import FaultRegistry, FaultSpec
from lab.plugin.objects import (
    Fault,
    cpu_online,
    expect_absent,
    expect_consumers_gone,
    expect_file,
    expect_knob,
    expect_qmp_status,
    expect_spawned_running,
    module_knob,
    qmp,
    run,
    signal_consumers,
    spawn,
    write_file,
)

#: The guest program that unloads and reloads cnlab and the extra modules in order (lab/guestside/labmods.py,
#: in lab.guest.files.GUEST_LIB).
LABMODS = "/run/cnlab/py/labmods.py"
RMEM_DEFAULT = 212992
SYSCTL = "/proc/sys/net/core"


def _cpu_offline(s: Mapping[str, Any]) -> Fault:
    return Fault((cpu_online(s["cpu"], False),), (cpu_online(s["cpu"], True),), f"cpu{s['cpu']} offline",
                 evidence=(expect_file(f"/sys/devices/system/cpu/cpu{s['cpu']}/online", "0"),))


def _squeeze(s: Mapping[str, Any]) -> Fault:
    size = str(s["bytes"])
    return Fault((write_file(f"{SYSCTL}/rmem_max", size), write_file(f"{SYSCTL}/rmem_default", size)),
                 (write_file(f"{SYSCTL}/rmem_max", str(RMEM_DEFAULT)),
                  write_file(f"{SYSCTL}/rmem_default", str(RMEM_DEFAULT))), f"rmem_default/max {size}",
                 evidence=(expect_file(f"{SYSCTL}/rmem_default", size), expect_file(f"{SYSCTL}/rmem_max", size)))


def _memory(s: Mapping[str, Any]) -> Fault:
    hog = (f"import time; b = bytearray({s['mb']} << 20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; "
           f"time.sleep({s['seconds']})")
    return Fault((spawn("python3", "-c", hog),), (), f"{s['mb']} MB held for {s['seconds']} s",
                 evidence=(expect_spawned_running(),))


@hookimpl
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    """The built-in faults (see the module docstring)."""
    add = registry.add_fault
    add(FaultSpec("cpu-offline", "take a CPU offline, online again after duration", "guest", _cpu_offline,
                  settings=(Setting("cpu", int, 1, "CPU number (not 0)", min=1, max=kabi.CNLAB_MAX_CPUS - 1),),
                  duration=0.5))
    add(FaultSpec("pause", "pause the whole guest through QMP, resume after duration", "qemu",
                  lambda s: Fault((qmp("stop"),), (qmp("cont"),), "guest paused",
                                  evidence=(expect_qmp_status("paused"),)), duration=1.0))
    add(FaultSpec("drain-stall", "the CBUS drain threads stall for ms (module knob)", "module",
                  lambda s: Fault((module_knob("stall_ms", s["ms"]),), (), f"drain stalled {s['ms']} ms",
                                  evidence=(expect_knob("stall_ms", s["ms"]),)),
                  settings=(Setting("ms", int, 300, "stall length in ms", min=1, max=kabi.CNLAB_STALL_MAX_MS),)))
    add(FaultSpec("alloc-fail", "every Nth CBUS allocation fails until undone (module knob)", "module",
                  lambda s: Fault((module_knob("alloc_nth", s["nth"]),), (module_knob("alloc_nth", 0),),
                                  f"every {s['nth']}th allocation fails",
                                  evidence=(expect_knob("alloc_nth", s["nth"]),)),
                  settings=(Setting("nth", int, 7, "fail every Nth allocation", min=1, max=1 << 30),)))
    add(FaultSpec("queue-limit", "a small per-CPU CBUS queue limit until undone (module knob)", "module",
                  lambda s: Fault((module_knob("queue_limit", s["limit"]),), (module_knob("queue_limit", None),),
                                  f"queue limit {s['limit']}", evidence=(expect_knob("queue_limit", s["limit"]),)),
                  settings=(Setting("limit", int, 16, "queue limit in messages", min=1,
                                    max=kabi.CNLAB_QLIMIT_MAX),)))
    add(FaultSpec("warn", "the module WARNs once on purpose (the console scanner must catch it)", "module",
                  lambda s: Fault((write_file("/sys/module/cnlab/parameters/debug_warn", "1"),
                                   module_knob("warn", kabi.CNLAB_WARN_MAGIC)), (), "WARN requested")))
    add(FaultSpec("module-panic", "the module panics the kernel on purpose (a vmcore is written; the scenario "
                                  "ends as a crash)", "module",
                  lambda s: Fault((write_file("/sys/module/cnlab/parameters/debug_panic", "1"),
                                   module_knob("panic", kabi.CNLAB_PANIC_MAGIC)), (), "panic requested")))
    add(FaultSpec("crash", "the guest kernel panics (sysrq c); the scenario ends as a crash", "guest",
                  lambda s: Fault((write_file("/proc/sys/kernel/sysrq", "1"), write_file("/proc/sysrq-trigger", "c")),
                                  (), "sysrq crash")))
    add(FaultSpec("module-reload", "unload the lab module (and the extra modules) under load, load them again "
                  "after duration", "module",
                  lambda s: Fault((run("python3", "-S", LABMODS, "unload"),), (run("python3", "-S", LABMODS, "load"),),
                                  "module unloaded",
                                  evidence=(expect_absent("/sys/module/cnlab"),)),
                  duration=1.0))
    add(FaultSpec("consumer-kill", "SIGKILL every consumer (each is restarted once)", "consumer",
                  lambda s: Fault((signal_consumers("KILL"),), (), "consumers killed",
                                  evidence=(expect_consumers_gone(),))))
    add(FaultSpec("rcvbuf-squeeze", "shrink the default and largest receive buffer (at = 0: before consumers bind)",
                  "guest", _squeeze, settings=(Setting("bytes", int, 8192, "rmem_default and rmem_max", min=1024,
                                                       max=1 << 30),)))
    add(FaultSpec("memory-pressure", "allocate and touch guest memory during the load", "guest", _memory,
                  settings=(Setting("mb", int, 256, "megabytes to hold", min=1, max=16384),
                            Setting("seconds", float, 2.0, "how long to hold them", min=0.0, max=600.0))))
