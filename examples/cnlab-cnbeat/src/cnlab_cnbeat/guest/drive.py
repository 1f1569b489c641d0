#!/usr/bin/env python3
"""cnbeat's live-source driver (docs/guest-contract.md, section 6).

    python3 /run/cnlab/plugins/cnbeat_drive.py --rate 200 --seconds 4

Starts cnbeat's timers (writes ``rate`` to ``/sys/module/cnbeat/parameters/rate``), lets them run for
``--seconds``, stops them (rate 0; a module that a reload fault has unloaded just then is waited for, at
most :data:`RELOAD_WAIT_S`), and prints one JSON line: what each cnbeat instance (one per load: the
module-reload fault makes a new one) says CBUS accepted and refused::

    {"rate": 200, "instances": {"5f3a0c1e": {"inserted": 801, "failed": 0, "final": true}, ...}}

An unloaded instance's counts come from its last kernel log line (``cnbeat: instance ID final:
inserted N failed M``), read from ``/dev/kmsg`` from the driver's start; the loaded one's from its
read-only parameters once its timers are stopped.  The module's counts, not a consumer's.
"""

import argparse
import json
import os
import re
import sys
import time

PARAMS = "/sys/module/cnbeat/parameters"
#: How long the end waits for a module that a reload fault has unloaded to be loaded again.
RELOAD_WAIT_S = 30.0
FINAL = re.compile(r"cnbeat: instance ([0-9a-f]{8}) final: inserted (\d+) failed (\d+)")


def read_param(name):
    with open(f"{PARAMS}/{name}") as f:
        return f.read().strip()


def write_param(name, value):
    with open(f"{PARAMS}/{name}", "w") as f:
        f.write(str(value))


def kernel_log(fd):
    """Every line /dev/kmsg has from the driver's start (the fd was moved to the end then)."""
    lines = []
    while True:
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            return lines
        except BrokenPipeError:  # overwritten records: go on with the next one
            continue
        if not record:
            return lines
        lines.append(record.decode(errors="replace").split(";", 1)[-1].strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, required=True, help="events per second per online CPU")
    ap.add_argument("--seconds", type=float, required=True, help="how long cnbeat's timers run")
    args = ap.parse_args()
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    if not os.path.isdir(PARAMS):
        print("cnbeat is not loaded (no /sys/module/cnbeat): run with the plugin's module", file=sys.stderr)
        return 1
    write_param("rate", args.rate)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
    # A module-reload fault still under way (unloaded, not yet loaded again) would leave the next instance
    # running with the saved rate and nobody to stop it or read its counts: wait for it to come back.
    back_by = time.monotonic() + RELOAD_WAIT_S
    while not os.path.isdir(PARAMS) and time.monotonic() < back_by:
        time.sleep(0.05)
    instances = {}
    if os.path.isdir(PARAMS):  # loaded now (a module that stays unloaded has only final counts)
        write_param("rate", 0)  # the timers are stopped when the write returns: the counts are final
        instances[f"{int(read_param('instance')):08x}"] = {"inserted": int(read_param("inserted")),
                                                           "failed": int(read_param("failed")), "final": False}
    for line in kernel_log(kmsg):
        m = FINAL.search(line)
        if m:
            instances[m[1]] = {"inserted": int(m[2]), "failed": int(m[3]), "final": True}
    print(json.dumps({"rate": args.rate, "instances": instances}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
