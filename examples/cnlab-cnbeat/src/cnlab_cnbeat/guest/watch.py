#!/usr/bin/env python3
"""cnbeat-watch: a ``checker``-protocol consumer of cnbeat's events (docs/guest-contract.md, section 3).

    python3 /run/cnlab/plugins/cnbeat_watch.py --rcvbuf N --groups 28 --name L --out OUT [--listen-proc] [--resync]

Joins the groups, creates ``OUT.ready``, and counts cnbeat's events (connector ``0x1c:1``:
``instance u32, cpu u32, seq u64, ts_ns u64``) per cnbeat instance: received, duplicates, the highest
event number; keeps ``OUT.live`` (``received``, ``gaps``, ``enobufs``).  On SIGTERM it reads what is
still queued and writes its report (schema 1), atomically: the keys the agent reconciles (``groups``,
``socket_drops``; ``streams`` is empty: cnbeat is not one of the lab module's generators) and
``instances``, which the plugin's ``cnbeat`` verdict compares with what each instance says it inserted.
"""

import argparse
import errno
import json
import os
import select
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kabi  # noqa: E402

SCHEMA = 1
CNBEAT_ID = (0x1C, 0x1)
EVENT = struct.Struct("=IIQQ")
LIVE_EVERY_S = 0.05


class Counts:
    """Per cnbeat instance: events received, duplicates and the highest event number."""

    def __init__(self):
        self.instances = {}
        self.received = self.foreign = 0

    def event(self, instance, seq):
        s = self.instances.setdefault(f"{instance:08x}", {"received": 0, "duplicates": 0, "max_seq": -1,
                                                          "seen": set()})
        self.received += 1
        if seq in s["seen"]:
            s["duplicates"] += 1
            return
        s["seen"].add(seq)
        s["received"] += 1
        s["max_seq"] = max(s["max_seq"], seq)

    def report(self):
        return {k: {"received": v["received"], "duplicates": v["duplicates"], "max_seq": v["max_seq"]}
                for k, v in sorted(self.instances.items())}


def socket_drops(portid):
    with open("/proc/net/netlink") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) >= 9 and cols[1] == str(kabi.NETLINK_CONNECTOR) and cols[2] == str(portid):
                return int(cols[8])
    return -1


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rcvbuf", type=int, default=1 << 21)
    ap.add_argument("--listen-proc", action="store_true", help="(cn_proc in the scenario; not needed here)")
    ap.add_argument("--resync", action="store_true", help="(restarted after a SIGKILL; counts are per instance)")
    args = ap.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    sock = kabi.open_socket(groups, args.rcvbuf)
    portid = sock.getsockname()[0]
    counts = Counts()
    enobufs = 0
    buf = bytearray(1 << 16)

    def other(off, idx, val, _seq, length):
        if (idx, val) == CNBEAT_ID and length >= EVENT.size:
            instance, _cpu, seq, _ts = EVENT.unpack_from(buf, off)
            counts.event(instance, seq)
        else:
            counts.foreign += 1

    def ignore(_ev, _now):
        counts.foreign += 1

    def publish_live():
        write_atomically(args.out + ".live", json.dumps({"received": counts.received, "gaps": 0, "enobufs": enobufs}))

    def receive(flags=0):
        nonlocal enobufs
        try:
            n = sock.recv_into(buf, 0, flags)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                enobufs += 1
                return True
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return False
            raise
        kabi.walk_datagram(buf, n, 0, ignore, other, ids=frozenset())
        return True

    publish_live()
    with open(args.out + ".ready", "w") as f:
        f.write(str(portid))
    live_at = 0.0
    while not stop:
        if time.monotonic() - live_at >= LIVE_EVERY_S:
            live_at = time.monotonic()
            publish_live()
        try:
            if select.select([sock], [], [], LIVE_EVERY_S)[0]:
                receive()
        except InterruptedError:
            continue
    while receive(socket.MSG_DONTWAIT):
        pass
    publish_live()
    write_atomically(args.out, json.dumps({
        "schema": SCHEMA, "name": args.name, "groups": groups, "enobufs": enobufs,
        "socket_drops": socket_drops(portid), "resync": args.resync, "received": counts.received,
        "foreign": counts.foreign, "streams": {}, "instances": counts.report()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
