#!/usr/bin/env python3
"""beat-counter: count heartbeats for --seconds, print one JSON line (the oneshot protocol)."""

import argparse
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kabi  # noqa: E402  (beside every plugin's guest programs)

ap = argparse.ArgumentParser()
ap.add_argument("--group", type=int, required=True)
ap.add_argument("--seconds", type=float, required=True)
args = ap.parse_args()
sock = kabi.open_socket([args.group])
per_cpu = {}


def count(event, now):  # event: (gen_id, cpu, seq, ts_ns, len, flags)
    per_cpu[event[1]] = per_cpu.get(event[1], 0) + 1


buf = bytearray(1 << 16)
end = time.monotonic() + args.seconds
while (left := end - time.monotonic()) > 0:
    if select.select([sock], [], [], left)[0]:
        kabi.walk_datagram(buf, sock.recv_into(buf), 0, count)
print(json.dumps({"beats": sum(per_cpu.values()), "per_cpu": per_cpu}))
