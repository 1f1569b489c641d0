"""Unload the module while control requests are preempted on their way into it (runs in a guest as root, next
to ``kabi.py``; the check ``unload_preempted`` of cnlab_checks.py).

A request enters the module's callback from the connector's ``cn_call_callback()``, which finds the callback
under a spinlock and calls it after ``spin_unlock_bh()``; the module's SRCU read section starts only inside the
callback.  A task preempted in between (or after the section ends, on its way out) holds no lock the unload
waits for: only an RCU Tasks grace period (``synchronize_rcu_tasks()`` in ``cnlab_ctl_exit()``) keeps its
module text until it has left.  Under the kernel's usual voluntary preemption a task is almost never preempted
there, so an unload without that grace period passes every other check.

Here the kernel is switched to full preemption for the length of the run (``/sys/kernel/debug/sched/preempt``,
``CONFIG_PREEMPT_DYNAMIC``): a task can then be preempted anywhere outside a non-preemptible section, and
``spin_unlock_bh()`` is itself a preemption point, taken whenever a tick came while the lookup held the lock.
Three sender processes per CPU send ECHO requests at nice 19 without waiting for the replies, beside a
busy-looping process per CPU at nice 0: a sender preempted on its way in waits hundreds of milliseconds for the
CPU again.  Meanwhile the module is unloaded (by this process at real-time priority, so the unload is not
itself the one waiting), left out for :data:`OUT_SECONDS` (longer than such a wait: a sender resuming into a
module loaded again at the same address would find code there) and loaded again, ``cycles`` times.  A sender
that resumes in freed module text takes a page fault: the kernel's oops report, its taint, and the sender
killed by it are what fail the check.  Evidence that it ran as meant: the mode was "full", every sender was
preempted (its ``nonvoluntary_ctxt_switches`` went up) and had requests answered.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import time

import kabi

PREEMPT = "/sys/kernel/debug/sched/preempt"
SENDERS_PER_CPU = 3
SENDER_NICE = 19
#: How long the module stays unloaded in each cycle, and the range of how long it stays loaded.
OUT_SECONDS = 0.4
IN_SECONDS = (0.3, 0.8)
#: The longest a sender runs, whatever happens to the check (its loop is bounded in time).
SENDER_MAX_SECONDS = 600.0


def preempt_mode(path: str = PREEMPT) -> str:
    """The current dynamic preemption mode: the bracketed word of ``none voluntary (full)``."""
    with open(path) as fh:
        words = fh.read().split()
    return next((w.strip("()") for w in words if w.startswith("(")), "")


def set_preempt_mode(mode: str, path: str = PREEMPT) -> None:
    with open(path, "w") as fh:
        fh.write(mode)


def involuntary_switches(status: str = "/proc/self/status") -> int:
    with open(status) as fh:
        for line in fh:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def hog(stop_fd: int, out_fd: int) -> None:
    """A child's loop: the CPU kept busy in user space until the parent closes ``stop_fd``'s other end (or
    :data:`SENDER_MAX_SECONDS`)."""
    os.write(out_fd, b"r")
    deadline = time.monotonic() + SENDER_MAX_SECONDS
    spins = 0
    while time.monotonic() < deadline and not select.select([stop_fd], [], [], 0)[0]:
        for _ in range(20000):
            spins += 1
    os.write(out_fd, json.dumps({"hog": True}).encode())


def sender(stop_fd: int, out_fd: int) -> None:
    """A child's loop at nice :data:`SENDER_NICE`: ECHO requests sent without waiting, replies read when they
    are there, until the parent closes ``stop_fd``'s other end (or :data:`SENDER_MAX_SECONDS`); its counts on
    ``out_fd``."""
    os.nice(SENDER_NICE)
    sock = kabi.open_socket()
    datagram = kabi.encode_echo(user_ns=1, data=b"preempted")
    counts = {"sent": 0, "refused": 0, "replies": 0, "switches_before": involuntary_switches()}
    os.write(out_fd, b"r")
    deadline = time.monotonic() + SENDER_MAX_SECONDS
    while time.monotonic() < deadline:
        for _ in range(64):
            try:
                sock.send(datagram, socket.MSG_DONTWAIT)
                counts["sent"] += 1
            except OSError:
                counts["refused"] += 1
        while True:
            try:
                counts["replies"] += len(kabi.parse_datagram(sock.recv(1 << 16, socket.MSG_DONTWAIT)))
            except OSError:
                break
        if select.select([stop_fd], [], [], 0)[0]:
            break
    counts["switches"] = involuntary_switches() - counts.pop("switches_before")
    os.write(out_fd, json.dumps(counts).encode())


def start_children(loops: list) -> tuple[list[tuple[int, int]], int]:
    """A process running each of ``loops`` (:func:`sender`, :func:`hog`), each started; their (pid, result fd)
    and the fd whose closing stops them.  If one does not start, those started are stopped and reaped."""
    stop_r, stop_w = os.pipe()
    children = []
    try:
        for loop in loops:
            out_r, out_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(stop_w)
                os.close(out_r)
                try:
                    loop(stop_r, out_w)
                finally:
                    os._exit(0)
            os.close(out_w)
            children.append((pid, out_r))
            if os.read(out_r, 1) != b"r":
                raise RuntimeError("a child of unload_preempted did not start")
    except BaseException:
        collect(children, stop_w)
        raise
    finally:
        os.close(stop_r)
    return children, stop_w


def realtime(on: bool) -> None:
    """This process at real-time priority 1 (``SCHED_FIFO``), or back to the normal policy."""
    if on:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    else:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def collect(senders: list[tuple[int, int]], stop_w: int) -> list[dict]:
    """Stop the senders and reap them: each one's counts, or how it died."""
    os.close(stop_w)
    out = []
    for pid, fd in senders:
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
        os.close(fd)
        _, status = os.waitpid(pid, 0)
        rec = json.loads(data) if data else {}
        if os.WIFSIGNALED(status):
            rec["killed_by"] = os.WTERMSIG(status)
        out.append(rec)
    return out


def run(c, load, unload, module_path: str, cpus: int, cycles: int = 30, seed: int = 7) -> dict:
    """The check: ``cycles`` unloads under preempted senders; a result (``ok`` and figures)."""
    if not os.path.exists(PREEMPT):
        return {"ok": True, "skipped": "no dynamic preemption (CONFIG_PREEMPT_DYNAMIC, debugfs)"}
    before = preempt_mode()
    set_preempt_mode("full")
    rng = random.Random(seed)
    failures, unload_s = [], []
    t0 = time.monotonic()
    try:
        mode = preempt_mode()
        children, stop_w = start_children([sender] * (SENDERS_PER_CPU * cpus) + [hog] * cpus)
        try:
            realtime(True)
            for i in range(cycles):
                time.sleep(rng.uniform(*IN_SECONDS))
                t_unload = time.monotonic()
                err = unload("cnlab")
                unload_s.append(time.monotonic() - t_unload)
                if err:
                    failures.append(["rmmod", i, err])
                    break
                time.sleep(OUT_SECONDS)
                err = load(module_path)
                if err:
                    failures.append(["insmod", i, err])
                    break
        finally:
            realtime(False)
            results = collect(children, stop_w)
    finally:
        set_preempt_mode(before)
    echo_after = c.echo(b"after").ok
    killed = [r["killed_by"] for r in results if "killed_by" in r]
    results = [r for r in results if not r.get("hog")]
    unpreempted = sum(1 for r in results if not r.get("switches"))
    ok = (mode == "full" and not failures and not killed and not unpreempted and echo_after
          and all(r.get("replies") for r in results))
    return {"ok": ok, "cycles": cycles, "seconds": round(time.monotonic() - t0, 1), "mode": mode,
            "mode_before": before, "failures": failures, "senders": len(results), "killed": killed,
            "unpreempted": unpreempted, "sent": sum(r.get("sent", 0) for r in results),
            "replies": sum(r.get("replies", 0) for r in results),
            "involuntary_switches": sum(r.get("switches", 0) for r in results), "echo_after": echo_after,
            "unload_ms_median": round(sorted(unload_s)[len(unload_s) // 2] * 1000, 1) if unload_s else None}
