"""Built-in fault injectors acting on the guest, the module, consumers and QEMU.

Each is a :class:`~lab.plugin.objects.CommandFault`: guest commands to
inject ``delay_s`` into the load (0: before the consumers start) and to
restore when the load is over, except ``pause``, which acts on the host
through QMP.  The wrapper ``lab_phase_run`` below applies the scenario's
faults around the ``load`` phase: guest-side ones go into the load plan
(``FAULT_PLAN``), host-side ones run on a host thread while the load runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.config import Setting
from lab.errors import LabError
from lab.kabi import CNLAB_FAULT_ALLOC_NTH, CNLAB_FAULT_QLIMIT, CNLAB_FAULT_STALL_MS
from lab.plugin import FAULT_PLAN, GUEST_PLUGIN_DIR, REGISTRIES, FaultRegistry, FaultSpec, StashKey
from lab.plugin.objects import CommandFault

MODULE_PATH = "/run/cnlab/cnlab.ko"
PY = "python3"


def _knob(op: int, value: int) -> tuple[str, ...]:
    code = (f"import sys; sys.path.insert(0, {GUEST_PLUGIN_DIR!r}); import kabi; "
            f"r = kabi.CtlClient().fault({op}, {value}); sys.exit(0 if r.ok else 1)")
    return (PY, "-c", code)


def _delay(s: Mapping[str, Any]) -> float:
    return float(s.get("delay_s", 0.5))


DELAY = Setting("delay_s", float, 0.5, "seconds into the phase before injecting")


@hookimpl
def lab_faults_register(registry: FaultRegistry, settings: Mapping[str, Any]) -> None:
    def cpu_offline(s):
        cpu = f"/sys/devices/system/cpu/cpu{s['cpu']}/online"
        return CommandFault("cpu-offline", (("sh", "-c", f"echo 0 > {cpu}"),), (("sh", "-c", f"echo 1 > {cpu}"),),
                            delay_s=_delay(s))

    registry.add_fault(FaultSpec("cpu-offline", "take a CPU offline during load, online again after", "guest",
                                 cpu_offline, settings=(Setting("cpu", int, 1, "CPU number (not 0)"), DELAY)))

    def reload(s):
        return CommandFault("module-reload", (("rmmod", "cnlab"),), (("insmod", MODULE_PATH),), delay_s=_delay(s),
                            hold_s=s["hold_s"])

    registry.add_fault(FaultSpec("module-reload", "unload the lab module under load, load it again after hold_s",
                                 "module", reload,
                                 settings=(DELAY, Setting("hold_s", float, 1.0, "seconds unloaded"))))

    def kill_consumer(s):
        return CommandFault("consumer-kill", (("pkill", "-KILL", "-f", f"{GUEST_PLUGIN_DIR}/consume.py"),),
                            delay_s=_delay(s))

    registry.add_fault(FaultSpec("consumer-kill", "SIGKILL the consumers mid-load (the runner restarts them)",
                                 "consumer", kill_consumer, settings=(DELAY,)))

    def squeeze(s):
        return CommandFault("rcvbuf-squeeze", (("sysctl", "-w", f"net.core.rmem_max={s['bytes']}"),
                                               ("sysctl", "-w", f"net.core.rmem_default={s['bytes']}")),
                            (("sysctl", "-w", "net.core.rmem_max=212992"),
                             ("sysctl", "-w", "net.core.rmem_default=212992")))

    registry.add_fault(FaultSpec("rcvbuf-squeeze", "shrink the default receive buffer before consumers start",
                                 "guest", squeeze, settings=(Setting("bytes", int, 8192, "rmem_default/max"),)))

    def alloc_fail(s):
        return CommandFault("alloc-fail", (_knob(CNLAB_FAULT_ALLOC_NTH, s["nth"]),),
                            (_knob(CNLAB_FAULT_ALLOC_NTH, 0),), delay_s=_delay(s))

    registry.add_fault(FaultSpec("alloc-fail", "every Nth CBUS allocation fails (module knob)", "module",
                                 alloc_fail, settings=(Setting("nth", int, 7, "fail every Nth allocation"), DELAY)))

    def stall(s):
        return CommandFault("drain-stall", (_knob(CNLAB_FAULT_STALL_MS, s["ms"]),), (_knob(CNLAB_FAULT_STALL_MS, 0),),
                            delay_s=_delay(s))

    registry.add_fault(FaultSpec("drain-stall", "CBUS drain workers stall (module knob)", "module", stall,
                                 settings=(Setting("ms", int, 300, "stall length in ms"), DELAY)))

    def qlimit(s):
        return CommandFault("queue-limit", (_knob(CNLAB_FAULT_QLIMIT, s["limit"]),),
                            (_knob(CNLAB_FAULT_QLIMIT, s["restore"]),))

    registry.add_fault(FaultSpec("queue-limit", "tiny per-CPU CBUS queue limit (module knob)", "module", qlimit,
                                 settings=(Setting("limit", int, 16, "queue limit"),
                                           Setting("restore", int, 4096, "limit to restore"))))

    def memory(s):
        code = (f"import time; b = bytearray({s['mb']} << 20); [b.__setitem__(i, 1) for i in range(0, len(b), 4096)]; "
                f"time.sleep({s['seconds']})")
        return CommandFault("memory-pressure", (("sh", "-c", f"{PY} -c '{code}' >/dev/null 2>&1 &"),),
                            delay_s=_delay(s))

    registry.add_fault(FaultSpec("memory-pressure", "allocate and touch guest memory during load", "guest", memory,
                                 settings=(Setting("mb", int, 256, "megabytes to hold"),
                                           Setting("seconds", float, 2.0, "how long to hold them"), DELAY)))

    def pause(s):
        return CommandFault("pause", (("qmp", "stop"),), (("qmp", "cont"),), delay_s=_delay(s), hold_s=s["seconds"])

    registry.add_fault(FaultSpec("pause", "pause the whole guest through QMP, resume after seconds", "qemu", pause,
                                 settings=(Setting("seconds", float, 1.0, "pause length"), DELAY)))


HOST_FAULT_LOG = StashKey[list]()


def _host_action(guest, argv: tuple[str, ...]) -> None:
    """One host-side step: ``("qmp", command)`` or ``("link", "up"|"down")`` on the guest's tap."""
    if argv[0] == "qmp":
        guest.qmp(argv[1])
    elif guest.link is None:
        raise LabError("the guest is not on the lab's tap network")
    else:
        guest.link.set_tap_up(argv[1] == "up")


def _host_fault(guest, fault: CommandFault, log: list) -> None:
    started = time.monotonic()
    time.sleep(fault.delay_s)  # the schedule itself: inject delay_s into the phase
    for what, argvs in (("inject", fault.inject), ("restore", fault.restore)):
        for argv in argvs:
            entry = {"what": f"{what} {fault.name}", "action": " ".join(argv),
                     "t": round(time.monotonic() - started, 3)}
            try:
                _host_action(guest, argv)
                log.append(entry | {"ok": True})
            except LabError as exc:
                log.append(entry | {"ok": False, "error": str(exc)})
        if what == "inject":
            time.sleep(fault.hold_s)  # the schedule: how long the fault holds


@hookimpl(wrapper=True)
def lab_phase_run(scenario, phase, guest, stash):
    if phase.name != "load" or not scenario.faults:
        return (yield)
    registries = stash[REGISTRIES]
    threads = []
    log = stash.setdefault(HOST_FAULT_LOG, [])
    for name in scenario.faults:
        fault = registries.faults.build(name, scenario.params.get(name))
        if not isinstance(fault, CommandFault) or fault.phase != phase.name:
            continue
        if fault.host_side:
            t = threading.Thread(target=_host_fault, args=(guest, fault, log), daemon=True)
            threads.append(t)
        else:
            stash[FAULT_PLAN].append(fault.to_json())
    for t in threads:
        t.start()
    try:
        return (yield)
    finally:
        for t in threads:
            t.join()


@hookimpl
def lab_result_collect(stash):
    log = stash.get(HOST_FAULT_LOG, None)
    return {"host_faults": log} if log else None


@hookimpl
def lab_result_check(data):
    log = (data.get("faults") or {}).get("host_faults", [])
    return [f"{e['what']}: {e['action']} failed: {e.get('error')}" for e in log if not e["ok"]]
