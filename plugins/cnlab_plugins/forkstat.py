"""Opt-in plugin: the real ``forkstat`` (a third-party cn_proc client) reconciled against a process storm.

Load it with ``cnlab -p cnlab_plugins.forkstat`` (or ``[lab] plugins = ["cnlab_plugins.forkstat"]``).
It is not a built-in: its package would change every lab's root disk.

* ``lab_guest_packages_add``: the guest root disk gets Debian's ``forkstat`` package (a root disk variant
  of its own, cached by its package list);
* consumer ``forkstat`` (checker protocol, ``guestside/forkstat_watch.py``): runs ``forkstat -l -e
  fork,exec,exit`` on the guest kernel's real proc connector through the load, drains it with a
  sentinel process, and reports how many fork, exec and exit events it printed for the processes the
  ``cn_proc`` storm says it made (``storm.py``'s own record, PID by PID);
* fault ``forkstat-stall`` (guest): SIGSTOP the running forkstat, SIGCONT after ``duration``: with a small
  receive buffer (the ``rcvbuf-squeeze`` fault) the kernel drops cn_proc messages for it meanwhile, which
  exercises the one tolerance of the verdict on a real socket;
* verdict ``forkstat`` (``lab_result_check``): per storm, forkstat's counts against the storm's own.

The tolerance: forkstat may lose events only when its socket overflows (the kernel counts each message
it could not queue in the socket's ``Drops``; forkstat's ``recv`` fails with ENOBUFS and it prints
``nobufs``).  So the verdict holds when no event is printed twice or for a PID reused, forkstat was
drained, and the events missing are at most the kernel's drops for its socket (none missing with no
drops), with forkstat having reported ENOBUFS whenever there were drops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lab import hookimpl
from lab.plugin import GUEST_PLUGIN_DIR, ConsumerRegistry, ConsumerSpec, FaultRegistry, FaultSpec, GuestFile, Verdict
from lab.plugin.objects import Fault, GuestProgram, expect_output, run

from .guestside import HERE

#: The Debian package the consumer runs.
PACKAGE = "forkstat"
PROGRAM = "forkstat_watch.py"
KINDS = ("fork", "exec", "exit")


@hookimpl
def lab_guest_packages_add(config) -> list[str]:
    """``forkstat`` in the guest root disk."""
    return [PACKAGE]


@hookimpl
def lab_guest_files_add(config) -> list[GuestFile]:
    """``forkstat_watch.py`` into the plugins' guest folder."""
    return [GuestFile(HERE / PROGRAM, f"{GUEST_PLUGIN_DIR}/{PROGRAM}", 0o755)]


@hookimpl
def lab_consumers_register(registry: ConsumerRegistry) -> None:
    """forkstat: Debian's forkstat on the real cn_proc (checker protocol)."""
    def factory(params: Mapping[str, Any]) -> GuestProgram:
        return GuestProgram("forkstat", PROGRAM, {})

    registry.add_consumer(ConsumerSpec(
        "forkstat", "Debian's forkstat on the real proc connector; its fork/exec/exit lines reconciled against "
                    "the cn_proc storm's own record", factory))


@hookimpl
def lab_faults_register(registry: FaultRegistry) -> None:
    """forkstat-stall: forkstat stopped (SIGSTOP) for ``duration``, then continued."""
    def factory(params: Mapping[str, Any]) -> Fault:
        return Fault(inject=(run("pkill", "-STOP", "-x", PACKAGE),), restore=(run("pkill", "-CONT", "-x", PACKAGE),),
                     summary="forkstat stopped", evidence=(expect_output("T", "ps", "-C", PACKAGE, "-o", "stat="),))

    registry.add_fault(FaultSpec(
        "forkstat-stall", "stop the running forkstat (SIGSTOP) for duration, then continue it: its socket fills",
        "guest", factory))


def reconcile(label: str, report: Mapping[str, Any]) -> Verdict:
    """The ``forkstat`` verdict of one forkstat consumer's report (see the module docstring)."""
    if report.get("missing"):
        return Verdict("forkstat", False, f"{label}: no report (exit status {report.get('status')}): "
                                          f"{(report.get('stderr') or '').strip()[-200:]}")
    fs = report.get("forkstat") or {}
    storms: Sequence[Mapping[str, Any]] = report.get("storms") or ()
    drops, nobufs = fs.get("socket_drops", -1), fs.get("nobufs", 0)
    problems = []
    if not storms:
        problems.append("no storm record to reconcile against (the scenario needs the cn_proc emulator)")
    if not fs.get("drained"):
        problems.append(f"forkstat never printed the exit of the sentinel process ({fs.get('sentinels')} tried; "
                        f"exit status {fs.get('status')}): it was not drained")
    if drops < 0:
        problems.append("forkstat's socket was not found in /proc/net/netlink")
    if drops > 0 and nobufs == 0:
        problems.append(f"the kernel dropped {drops} message(s) for forkstat but it never reported ENOBUFS")
    parts, missing = [], 0
    for storm in storms:
        expected, seen = storm["expected"], storm["seen"]
        short = {k: expected[k] - seen[k] for k in KINDS}
        if any(v < 0 for v in short.values()):
            problems.append(f"storm {storm['pid']}: forkstat printed more than the storm made: {seen} > {expected}")
        if storm["extra"]:
            problems.append(f"storm {storm['pid']}: {storm['extra']} event(s) printed twice for one process")
        missing += sum(max(0, v) for v in short.values())
        parts.append(f"storm {storm['pid']} ({storm['workers']} workers, {storm['children']} children): forkstat "
                     + ", ".join(f"{seen[k]}/{expected[k]} {k}s" for k in KINDS))
    if missing > max(drops, 0):
        problems.append(f"{missing} event(s) missing but the kernel dropped only {max(drops, 0)} for forkstat "
                        "(silent loss)")
    detail = (f"{label}: " + "; ".join(parts) + f"; missing {missing}, socket drops {drops}, ENOBUFS reports "
              f"{nobufs}, {fs.get('lines', 0)} event lines")
    return Verdict("forkstat", not problems, detail + ("; " + "; ".join(problems) if problems else ""))


@hookimpl
def lab_result_check(scenario, data) -> list[Verdict]:
    """One ``forkstat`` verdict per forkstat consumer of the scenario."""
    reports = {c.get("name"): c for c in (data.get("agent") or {}).get("consumers", ())}
    return [reconcile(use.label, reports.get(use.label, {"missing": True, "status": None}))
            for use in scenario.consumers if use.name == "forkstat"]
