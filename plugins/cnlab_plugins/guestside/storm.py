#!/usr/bin/env python3
"""Process storm for the cn_proc live source: workers fork (and exec) children for N seconds.

Prints one JSON line: how many children were forked.
"""

import argparse
import json
import os
import sys
import time


def worker(seconds: float, do_exec: bool) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        pid = os.fork()
        if pid == 0:
            if do_exec:
                try:
                    os.execv("/bin/true", ["true"])
                finally:
                    os._exit(127)
            os._exit(0)
        os.waitpid(pid, 0)
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--exec", dest="do_exec", action="store_true", default=True)
    ap.add_argument("--no-exec", dest="do_exec", action="store_false")
    args = ap.parse_args()
    rfd, wfd = os.pipe()
    pids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            os.write(wfd, f"{worker(args.seconds, args.do_exec)}\n".encode())
            os._exit(0)
        pids.append(pid)
    os.close(wfd)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(rfd) as fh:
        forks = sum(int(line) for line in fh if line.strip())
    print(json.dumps({"forks": forks, "workers": args.workers, "seconds": args.seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
