#!/usr/bin/env python3
"""The real ``forkstat`` (Debian's package) as a checker-protocol consumer of the guest's cn_proc.

Runs ``forkstat -l -e fork,exec,exit`` with its output in ``OUT.forkstat`` and says it is ready
(``OUT.ready``) once forkstat has printed its heading: forkstat prints it after it bound its
connector socket and sent ``PROC_CN_MCAST_LISTEN``.  On SIGTERM (after the load, the storm gone) it
makes one process of its own (the *sentinel*: fork, exit at once) and waits until forkstat printed
that process's exit: cn_proc's messages reach forkstat's one socket in order, so every earlier event
has been printed by then, or dropped (and counted by the kernel).  Then it reads the socket's
``Drops`` in ``/proc/net/netlink``, stops forkstat (SIGINT) and writes its report: how many fork,
exec and exit events forkstat printed for the processes each storm says it made
(``$CNLAB_OUT/storm-PID.json``, from ``storm.py``), next to the storm's own counts.

The plugin (``cnlab_plugins.forkstat``) compares them on the host.  Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

#: A forkstat event line: time, event, PID, the rest (``parent``/``child``/``thread``, exit code...).
_LINE = re.compile(r"^(\d\d:\d\d:\d\d|--:--:--) (\w+)\s+(\S+)\s*(.*)$")
HEADING = "Time     Event"
NETLINK_CONNECTOR = 11
READY_TIMEOUT_S = 60.0
SENTINEL_TIMEOUT_S = 60.0
SENTINEL_RETRY_S = 2.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02


def parse(text: str) -> dict:
    """forkstat's output as counts: ``events`` per PID (``fork`` for a child line, ``exec``, ``exit``),
    ``nobufs`` (its ``recv ----- nobufs`` lines: recv failed with ENOBUFS), ``lines`` (event lines) and
    ``headings``."""
    events: dict[int, dict[str, int]] = {}
    nobufs = lines = headings = 0
    for line in text.splitlines():
        if line.startswith(HEADING):
            headings += 1
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        _, event, pid, rest = match.groups()
        if event == "recv":
            nobufs += "nobufs" in rest
            continue
        if not pid.isdigit():
            continue
        lines += 1
        if event == "fork":
            if not rest.startswith("child"):
                continue  # the parent line of the pair: its PID is read from /proc, 0 once the child is gone
        elif event not in ("exec", "exit"):
            continue
        kinds = events.setdefault(int(pid), {})
        kinds[event] = kinds.get(event, 0) + 1
    return {"events": events, "nobufs": nobufs, "lines": lines, "headings": headings}


def storm_counts(storm: dict, events: dict[int, dict[str, int]]) -> dict:
    """One storm's own counts beside what forkstat printed for its processes (workers and children).

    ``expected``: a fork and an exit per process, an exec per child that ran /bin/true; ``seen``: forkstat's
    events of those PIDs (at most one of each kind per PID counts); ``extra``: events beyond one per PID and kind
    (a PID reused, or an event printed twice)."""
    procs = list(storm["workers"]) + list(storm["children"])
    expected = {"fork": len(procs), "exec": storm["execs"], "exit": len(procs)}
    seen = {"fork": 0, "exec": 0, "exit": 0}
    extra = 0
    for pid in procs:
        for kind, n in events.get(pid, {}).items():
            if kind in seen:
                seen[kind] += min(n, 1)
                extra += max(0, n - 1)
    return {"pid": storm["pid"], "workers": len(storm["workers"]), "children": len(storm["children"]),
            "expected": expected, "seen": seen, "extra": extra}


def socket_row(pid: int) -> dict | None:
    """forkstat's connector socket in /proc/net/netlink (it binds with its PID as port id): Rmem and Drops."""
    with open("/proc/net/netlink") as fh:
        for line in fh.readlines()[1:]:
            cols = line.split()
            if len(cols) >= 9 and cols[1] == str(NETLINK_CONNECTOR) and cols[2] == str(pid):
                return {"rmem": int(cols[4]), "drops": int(cols[8])}
    return None


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _wait(predicate, timeout: float, proc: subprocess.Popen) -> bool:
    """Poll ``predicate`` until it holds, forkstat exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(POLL_S)
    return False


def _sentinel() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


class Tail:
    """The lines a growing file gained since the last look (a partial last line waits for its end)."""

    def __init__(self, path: str) -> None:
        self.path, self.offset, self.partial = path, 0, ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, errors="replace") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return []
        *complete, self.partial = (self.partial + chunk).split("\n")
        return complete


def _exit_printed(tail: Tail, pids: list[int]):
    """A predicate: forkstat printed the exit of one of ``pids`` (read on from where ``tail`` is)."""
    def printed() -> bool:
        for line in tail.lines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == "exit" and fields[2].isdigit() and int(fields[2]) in pids:
                return True
        return False
    return printed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="fork,exec,exit", help="forkstat -e")
    ap.add_argument("--groups", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--listen-proc", action="store_true", help="accepted: forkstat sends PROC_CN_MCAST_LISTEN")
    ap.add_argument("--resync", action="store_true", help="accepted: a restarted forkstat starts afresh")
    args = ap.parse_args()
    binary = shutil.which("forkstat")
    if binary is None:
        print("forkstat is not installed in the guest: load the plugin cnlab_plugins.forkstat (it adds the "
              "package) or add forkstat to [lab] packages", file=sys.stderr)
        return 3
    started = time.time()
    output, errors = args.out + ".forkstat", args.out + ".forkstat.stderr"
    argv = [binary, "-l", "-e", args.events]
    with open(output, "w") as out, open(errors, "w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    # SIGTERM (the end of the load) is taken with sigtimedwait; blocked only now, so forkstat does not inherit it
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    if not _wait(lambda: HEADING in _read(output), READY_TIMEOUT_S, proc):
        print(f"forkstat did not start listening within {READY_TIMEOUT_S:g} s (exit status {proc.poll()}): "
              f"{_read(errors).strip()[-300:]}", file=sys.stderr)
        proc.kill()
        return 4
    with open(args.out + ".ready", "w"):
        pass
    while proc.poll() is None and signal.sigtimedwait([signal.SIGTERM], 0.5) is None:
        pass
    sentinels, seen, tail = [], False, Tail(output)
    tail.offset = os.path.getsize(output)  # only lines printed from now on: an old exit of a reused PID does not count
    deadline = time.monotonic() + SENTINEL_TIMEOUT_S
    while not seen and proc.poll() is None and time.monotonic() < deadline:
        sentinels.append(_sentinel())  # a new one now and then: one dropped on a full socket never shows
        seen = _wait(_exit_printed(tail, sentinels), min(SENTINEL_RETRY_S, deadline - time.monotonic()), proc)
    row = socket_row(proc.pid) if proc.poll() is None else None
    status = proc.poll()
    if status is None:
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
    parsed = parse(_read(output))
    storms = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(args.out)), "storm-*.json"))):
        if os.stat(path).st_mtime >= started:
            with open(path) as fh:
                storms.append(storm_counts(json.load(fh), parsed["events"]))
    report = {
        "schema": 1,
        "name": args.name,
        "groups": [int(g) for g in args.groups.split(",") if g],
        "received": parsed["lines"],
        "socket_drops": row["drops"] if row else -1,
        "enobufs": parsed["nobufs"],
        "forkstat": {"argv": argv, "status": status, "pid": proc.pid, "lines": parsed["lines"],
                     "headings": parsed["headings"], "nobufs": parsed["nobufs"],
                     "socket_drops": row["drops"] if row else -1, "rmem_at_stop": row["rmem"] if row else -1,
                     "sentinels": len(sentinels), "drained": seen,
                     "stderr": _read(errors).strip()[-300:]},
        "storms": storms,
    }
    with open(args.out + ".tmp", "w") as fh:
        json.dump(report, fh)
    os.rename(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
