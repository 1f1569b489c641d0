#!/usr/bin/env python3
"""beat-watch: a ``checker``-protocol consumer (docs/guest-contract.md, contract version 1).

What the guest agent gives it (argv)::

    python3 /run/cnlab/plugins/example_watch.py [its own options] --groups 26 \\
        --name beat-watch --out /run/cnlab/plugins/out/<scenario>/beat-watch.json [--listen-proc] [--resync]

What it does:

1. joins every group of ``--groups`` and creates ``OUT.ready`` once its socket is bound (the agent starts the
   load only when every consumer is ready);
2. counts each heartbeat per (generator, CPU) stream: received, sequence gaps, reorders, and the longest
   silence between two beats of a stream; keeps ``OUT.live`` (``received``, ``gaps``, ``enobufs``) up to date,
   so faults can fire ``on = "received"``;
3. on SIGTERM reads what is still queued, and writes its report (schema 1) to ``OUT``, atomically.

The report carries the keys the agent reconciles (``streams``, ``groups``, ``socket_drops``), so the engine's
``accounting`` verdict is exact for it, plus its own figure ``max_interval_ms``.

Standard library and ``kabi`` (which the core plugin puts beside every plugin's guest programs).
"""

import argparse
import errno
import json
import os
import select
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kabi  # noqa: E402

SCHEMA = 1
LIVE_EVERY_S = 0.05


class Watch:
    """Per-stream counts of the heartbeats seen; the report's body."""

    def __init__(self, resync=False):
        self.resync = resync
        self.streams = {}
        self.received = self.gaps = self.reordered = 0

    def event(self, ev, now):
        """One cnlab event ``(gen_id, cpu, seq, ts_ns, len, flags)`` received at ``now`` (monotonic ns)."""
        gen_id, cpu, seq = ev[0], ev[1], ev[2]
        s = self.streams.get((gen_id, cpu))
        if s is None:
            # module streams start at sequence 0; a restarted consumer starts where it joins
            s = self.streams[(gen_id, cpu)] = {"received": 0, "gaps": 0, "reordered": 0,
                                               "next": seq if self.resync else 0, "last": None, "max_ns": 0}
        s["received"] += 1
        self.received += 1
        if seq >= s["next"]:
            s["gaps"] += seq - s["next"]
            self.gaps += seq - s["next"]
            s["next"] = seq + 1
        else:
            s["reordered"] += 1
            self.reordered += 1
        if s["last"] is not None:
            s["max_ns"] = max(s["max_ns"], now - s["last"])
        s["last"] = now

    def report(self):
        streams = {f"{g}/{c}": {"received": s["received"], "gaps": s["gaps"], "reordered": s["reordered"],
                                "next": s["next"], "max_interval_ms": round(s["max_ns"] / 1e6, 1)}
                   for (g, c), s in sorted(self.streams.items())}
        return {"received": self.received, "gaps": self.gaps, "reordered": self.reordered, "streams": streams,
                "max_interval_ms": max((s["max_interval_ms"] for s in streams.values()), default=0.0)}


def socket_drops(portid):
    """The socket's drop counter in /proc/net/netlink (-1 if the socket is not listed)."""
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
    ap.add_argument("--groups", required=True, help="comma-separated connector groups")
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rcvbuf", type=int, default=1 << 20)
    ap.add_argument("--listen-proc", action="store_true", help="(cn_proc in the scenario; not needed here)")
    ap.add_argument("--resync", action="store_true", help="restarted after a SIGKILL: streams start where it joins")
    args = ap.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    sock = kabi.open_socket(groups, args.rcvbuf)
    portid = sock.getsockname()[0]
    watch = Watch(args.resync)
    enobufs = 0
    live_at = 0.0

    def publish_live():
        write_atomically(args.out + ".live", json.dumps({"received": watch.received, "gaps": watch.gaps,
                                                         "enobufs": enobufs}))

    publish_live()
    with open(args.out + ".ready", "w") as f:
        f.write(str(portid))
    buf = bytearray(1 << 16)

    def receive(flags=0):
        nonlocal enobufs
        try:
            n = sock.recv_into(buf, 0, flags)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                enobufs += 1  # the kernel dropped messages for this socket; the data after it still comes
                return True
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return False
            raise
        kabi.walk_datagram(buf, n, time.monotonic_ns(), watch.event)
        return True

    while not stop:
        if time.monotonic() - live_at >= LIVE_EVERY_S:
            live_at = time.monotonic()
            publish_live()
        try:
            ready = select.select([sock], [], [], LIVE_EVERY_S)[0]
        except InterruptedError:
            continue
        if ready:
            receive()
    while receive(socket.MSG_DONTWAIT):  # SIGTERM: what is queued still counts
        pass
    publish_live()
    report = {"schema": SCHEMA, "name": args.name, "groups": groups, "enobufs": enobufs,
              "socket_drops": socket_drops(portid), "resync": args.resync}
    report.update(watch.report())
    write_atomically(args.out, json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
