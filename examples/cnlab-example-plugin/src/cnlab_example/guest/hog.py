#!/usr/bin/env python3
"""cpu-hog: the fault program of the example plugin, run by an ``exec`` action (docs/guest-contract.md).

The guest agent runs it to completion when the fault fires::

    python3 /run/cnlab/plugins/example_hog.py --ms 200 --marks /run/cnlab/example/marks.jsonl

It keeps every online CPU busy for ``--ms`` milliseconds (one forked worker pinned to each CPU), then
appends one JSON line to ``--marks``: the evidence that it ran and for how long, which the plugin's
``lab_result_collect`` reads back.  Exit status 0 means the injection worked; anything else fails the
firing, and the agent keeps the end of stderr in the fault's record.  Standard library only.
"""

import argparse
import json
import os
import sys
import time

POLICIES = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR",
            getattr(os, "SCHED_BATCH", 3): "SCHED_BATCH", getattr(os, "SCHED_IDLE", 5): "SCHED_IDLE"}


def spin(seconds):
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", type=int, required=True)
    ap.add_argument("--marks", required=True)
    args = ap.parse_args()
    if not 1 <= args.ms <= 10_000:
        print(f"cpu-hog: --ms {args.ms} is outside 1..10000", file=sys.stderr)
        return 2
    started = time.monotonic()
    cpus = sorted(os.sched_getaffinity(0))
    workers = []
    for cpu in cpus:
        pid = os.fork()
        if pid == 0:
            try:
                os.sched_setaffinity(0, {cpu})
                spin(args.ms / 1000)
            finally:
                os._exit(0)
        workers.append(pid)
    failed = [pid for pid in workers if os.waitpid(pid, 0)[1] != 0]
    busy_ms = round((time.monotonic() - started) * 1000, 1)
    if failed:
        print(f"cpu-hog: {len(failed)} of {len(workers)} workers failed", file=sys.stderr)
        return 1
    policy = os.sched_getscheduler(0)
    mark = {"ms": args.ms, "busy_ms": busy_ms, "cpus": cpus,
            "policy": POLICIES.get(policy, str(policy)), "pid": os.getpid()}
    os.makedirs(os.path.dirname(args.marks) or ".", exist_ok=True)
    with open(args.marks, "a") as f:
        f.write(json.dumps(mark) + "\n")
    print(json.dumps(mark))
    return 0


if __name__ == "__main__":
    sys.exit(main())
