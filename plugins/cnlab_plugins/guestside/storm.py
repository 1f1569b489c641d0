#!/usr/bin/env python3
"""Process storm for the cn_proc live source: workers fork (and exec) children for N seconds.

Prints one JSON line: how many children were forked (``forks``), how many of them ran ``/bin/true``
(``execs``: exec'd and exited 0) and the storm's own PID.  With ``CNLAB_OUT`` set (the agent sets it), it
also writes its own record of every process it made, ``$CNLAB_OUT/storm-PID.json``: ``workers`` and
``children`` (PIDs, as ``fork()`` returned them) and ``execs``, for consumers that reconcile what a
connector client printed against the storm (the ``forkstat`` plugin).
"""

import argparse
import json
import os
import sys
import time


def worker(seconds: float, do_exec: bool) -> dict:
    """Fork children until ``seconds`` have passed: their PIDs and how many ran /bin/true."""
    end = time.monotonic() + seconds
    children = []
    execs = 0
    while time.monotonic() < end:
        pid = os.fork()
        if pid == 0:
            if do_exec:
                try:
                    os.execv("/bin/true", ["true"])
                finally:
                    os._exit(127)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        children.append(pid)
        if do_exec and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            execs += 1
    return {"children": children, "execs": execs}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--exec", dest="do_exec", action="store_true", default=True)
    ap.add_argument("--no-exec", dest="do_exec", action="store_false")
    args = ap.parse_args()
    pipes = {}
    for _ in range(args.workers):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            with os.fdopen(wfd, "w") as out:
                out.write(json.dumps(worker(args.seconds, args.do_exec)))
            os._exit(0)
        os.close(wfd)
        pipes[pid] = rfd
    children, execs = [], 0
    for pid, rfd in pipes.items():
        with os.fdopen(rfd) as fh:  # read to the end before reaping: a big record fills the pipe
            text = fh.read()
        os.waitpid(pid, 0)
        if text:
            done = json.loads(text)
            children += done["children"]
            execs += done["execs"]
    record = {"pid": os.getpid(), "workers": sorted(pipes), "children": children, "execs": execs,
              "exec": args.do_exec, "seconds": args.seconds}
    out_dir = os.environ.get("CNLAB_OUT")
    if out_dir:
        path = os.path.join(out_dir, f"storm-{os.getpid()}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(record, fh)
        os.rename(path + ".tmp", path)
    print(json.dumps({"forks": len(children), "execs": execs, "workers": args.workers, "seconds": args.seconds,
                      "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
