#!/usr/bin/env python3
"""Connector consumer for the built-in consumer plugins (runs in the guest).

Joins groups, receives until SIGTERM, then drains what is queued and writes
one JSON report (schema 1 of docs/guest-contract.md): per stream
(``gen_id/cpu`` for lab-module events, ``proc/cpu`` for cn_proc) the messages
received, the next expected sequence number, gaps (sequence jumps),
reorders/duplicates; ENOBUFS errors; the socket's drops from
/proc/net/netlink; latency from the kernel timestamp, of every message and
of the first message that reached an idle reader (nothing was queued in its
socket: what the kernel path adds without the reader's backlog); a time
series in 250 ms bins (messages, gaps, the largest latency).  While it runs
it keeps ``OUT.live`` (received, gaps, enobufs) up to date every 50 ms for
event-triggered faults.
``images/init/cnlab-consume.c`` is the same program in C (``checker-native``);
tests/unit/plugins/test_native_consumer.py holds the two to the same report.

Variants: ``--delay-us`` (slow), ``--rcvbuf`` (tiny buffer),
``--churn-ms`` (leave and rejoin the groups; sequence tracking restarts at
each rejoin, so messages sent while away are not counted as gaps),
``--resync`` (a restarted consumer: start each stream at the first message
seen), ``--listen-proc`` (send PROC_CN_MCAST_LISTEN so cn_proc talks),
``--pyroute2`` (pyroute2's ``ConnectorSocket`` and a ``Marshal`` subclass
keyed on ``cn_msg.idx`` decode every datagram instead of ``kabi`` structs;
CBUS bundles still go through ``kabi``).
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
import kabi  # noqa: E402  (shipped next to this file by the core plugin)

CN_IDX_PROC = 1
PROC_IDX = frozenset({CN_IDX_PROC})  # connector idx values that are not cnlab generators
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
PROC_EVENT_EXIT = 0x80000000
EXIT_PID = struct.Struct("=I")  # event_data.exit.process_pid, right after the header
#: The most a stopping consumer waits for its cn_proc sentinels' exit events.
SENTINEL_WAIT_S = 2.0
MAX_SAMPLES = 200_000
READ_BATCH = 64  # datagrams read per wake-up before the loop looks at the clock again
BIN_NS = 250_000_000
LIVE_EVERY_S = 0.05
REPORT_SCHEMA = 1


class Checker:
    def __init__(self, resync, start_ns=None):
        self.resync = resync
        self.expected = {}
        self.streams = {}
        self.latencies = []
        self.idle_latencies = []
        self.woke = False  # the datagram being parsed reached a reader with nothing queued
        self.reset_marks = 0
        self.start_ns = time.monotonic_ns() if start_ns is None else start_ns
        self.bins = {}
        self.received = 0
        self.gaps = 0
        self.sentinels = set()  # pids of cn_proc sentinels whose exit event has not been read yet

    def forget(self):
        """After a rejoin: every stream restarts at its next message."""
        self.expected.clear()
        self.reset_marks += 1

    def event(self, ev, now, modulus=1 << 64):
        """One message: ``ev`` starts (stream, cpu, seq, ts_ns), like a cnlab event tuple;
        cn_proc's stream is "proc" and its sequence wraps at 2**32."""
        key = (ev[0], ev[1])
        seq, ts = ev[2], ev[3]
        s = self.streams.setdefault(key, {"received": 0, "gaps": 0, "reordered": 0})
        s["received"] += 1
        exp = self.expected.get(key)
        if exp is None:
            # module streams start at 0; cn_proc counters, restarted and rejoined consumers start where they join
            exp = seq if (self.resync or key[0] == "proc" or self.reset_marks) else 0
            s.setdefault("baseline", exp)
        diff = (seq - exp) % modulus
        cell = self.bins.setdefault((now - self.start_ns) // BIN_NS, [0, 0, None])
        cell[0] += 1
        self.received += 1
        if diff < modulus // 2:
            s["gaps"] += diff
            self.gaps += diff
            cell[1] += diff
            self.expected[key] = (seq + 1) % modulus
        else:
            s["reordered"] += 1
        if ts:
            if cell[2] is None or now - ts > cell[2]:
                cell[2] = now - ts  # the bin's largest latency, of every message (not only the kept samples)
            if len(self.latencies) < MAX_SAMPLES:
                self.latencies.append(now - ts)
            if self.woke:
                self.woke = False  # only the first: the rest of its datagram queued behind it
                if len(self.idle_latencies) < MAX_SAMPLES:
                    self.idle_latencies.append(now - ts)

    def proc_exit(self, pid):
        """cn_proc reported that ``pid`` exited."""
        self.sentinels.discard(pid)

    def datagram(self, parse, buf, n, now, woke):
        """Account one datagram (``parse`` walks it); ``woke``: it reached a reader whose socket was empty."""
        self.woke = woke
        parse(buf, n, self, now)
        self.woke = False

    def report(self):
        lat = sorted(self.latencies)
        idle = sorted(self.idle_latencies)

        def pct(p, lat=lat):
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] / 1000, 1) if lat else None

        return {
            "received": sum(s["received"] for s in self.streams.values()),
            "gaps": sum(s["gaps"] for s in self.streams.values()),
            "reordered": sum(s["reordered"] for s in self.streams.values()),
            "streams": {f"{k[0]}/{k[1]}": dict(s, next=self.expected.get(k)) for k, s in sorted(
                self.streams.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))},
            "latency_us": {"p50": pct(0.5), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0),
                           "samples": len(lat)},
            "idle_latency_us": {"p50": pct(0.5, idle), "p99": pct(0.99, idle), "max": pct(1.0, idle),
                                "samples": len(idle)},
            "series": [[round(slot * BIN_NS / 1e9, 2), c[0], c[1], None if c[2] is None else round(c[2] / 1000, 1)]
                       for slot, c in sorted(self.bins.items())],
        }


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def socket_drops(portid):
    with open("/proc/net/netlink") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) >= 9 and cols[1] == str(kabi.NETLINK_CONNECTOR) and cols[2] == str(portid):
                return int(cols[8])
    return -1


def proc_listen(sock, op):
    body = struct.pack("=I", op)
    sock.send(kabi.frame_nl(kabi.frame_cn(CN_IDX_PROC, 1, body)))


def handle(buf, n, checker, now):
    def proc_event(off, idx, _val, seq, length):
        if idx == CN_IDX_PROC and length >= PROC_EVENT.size:
            what, cpu, ts = PROC_EVENT.unpack_from(buf, off)
            checker.event(("proc", cpu, seq, ts), now, 1 << 32)
            if what == PROC_EVENT_EXIT and length >= PROC_EVENT.size + EXIT_PID.size:
                checker.proc_exit(EXIT_PID.unpack_from(buf, off + PROC_EVENT.size)[0])

    kabi.walk_datagram(buf, n, now, checker.event, proc_event, foreign=PROC_IDX)


def pyroute2_parser():
    """A function parsing one datagram with pyroute2's Marshal (connector.md section 11)."""
    from pyroute2.netlink.connector import cn_msg
    from pyroute2.netlink.nlsocket import Marshal

    class LabEvent(cn_msg):
        fields = cn_msg.fields + (("gen_id", "I"), ("cpu", "I"), ("lab_seq", "Q"), ("ts_ns", "Q"),
                                  ("ev_len", "I"), ("ev_flags", "I"))

    class ProcEventHead(cn_msg):
        fields = cn_msg.fields + (("what", "I"), ("cpu", "I"), ("timestamp_ns", "Q"), ("process_pid", "I"))

    class LabMarshal(Marshal):
        # the netlink type is always NLMSG_DONE: key on cn_msg.idx (offset 16); every idx but cn_proc's is ours
        key_format, key_offset = "I", 16
        msg_map = {CN_IDX_PROC: ProcEventHead}
        default_message_class = LabEvent

        def is_enough(self, msg):
            return False

    marshal = LabMarshal()

    def parse(buf, n, checker, now):
        data = bytes(buf[:n])
        msgs = list(marshal.parse(data))
        if any(m["idx"] != CN_IDX_PROC and m["flags"] & kabi.CNLAB_CN_F_BUNDLE for m in msgs):
            handle(data, n, checker, now)  # CBUS bundles: the inner cn_msgs are not netlink messages
            return
        for msg in msgs:
            if msg["idx"] == CN_IDX_PROC:
                checker.event(("proc", msg["cpu"], msg["seq"], msg["timestamp_ns"]), now, 1 << 32)
                if msg["what"] == PROC_EVENT_EXIT:
                    checker.proc_exit(msg["process_pid"])
            elif msg["len"] >= 32:
                checker.event((msg["gen_id"], msg["cpu"], msg["lab_seq"], msg["ts_ns"]), now)

    return parse


def open_pyroute2_socket(groups, rcvbuf):
    from pyroute2.netlink.connector import ConnectorSocket

    owner = ConnectorSocket()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, kabi.NETLINK_CONNECTOR, fileno=os.dup(owner.fileno()))
    if rcvbuf:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    owner.bind(groups=0)
    for g in groups:
        sock.setsockopt(kabi.SOL_NETLINK, kabi.NETLINK_ADD_MEMBERSHIP, g)
    return owner, sock


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="consumer")
    ap.add_argument("--groups", default="")
    ap.add_argument("--rcvbuf", type=int, default=0)
    ap.add_argument("--delay-us", type=int, default=0)
    ap.add_argument("--churn-ms", type=int, default=0)
    ap.add_argument("--resync", action="store_true")
    ap.add_argument("--listen-proc", action="store_true")
    ap.add_argument("--out", default="")
    ap.add_argument("--pyroute2", action="store_true")
    args = ap.parse_args()
    groups = [int(g) for g in args.groups.split(",") if g]
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    parse = handle
    owner = None
    if args.pyroute2:
        owner, sock = open_pyroute2_socket(groups, args.rcvbuf)
        parse = pyroute2_parser()
    else:
        sock = kabi.open_socket(groups, args.rcvbuf)
    portid = sock.getsockname()[0]
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if args.listen_proc:
        proc_listen(sock, PROC_CN_MCAST_LISTEN)
    checker = Checker(args.resync)
    enobufs = 0
    churns = 0
    buf = bytearray(1 << 17)
    live_at = [0.0]

    def publish_live(force=False):
        now = time.monotonic()
        if args.out and (force or now - live_at[0] >= LIVE_EVERY_S):
            live_at[0] = now
            write_atomically(args.out + ".live", json.dumps({"received": checker.received, "gaps": checker.gaps,
                                                             "enobufs": enobufs}))

    if args.out:
        publish_live(force=True)
        with open(args.out + ".ready", "w") as f:
            f.write(str(portid))
    next_churn = time.monotonic() + args.churn_ms / 1000 if args.churn_ms else None

    idle = [True]  # the last read found the socket empty

    def read_available(limit=None):
        """Read without blocking until the socket is empty or ``limit`` datagrams; returns how many."""
        nonlocal enobufs
        count = 0
        while limit is None or count < limit:
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                idle[0] = True
                return count
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    enobufs += 1
                    continue
                raise
            checker.datagram(parse, buf, n, time.monotonic_ns(), idle[0])
            idle[0] = False
            count += 1
        return count

    while not stop:
        if next_churn is not None and time.monotonic() >= next_churn:
            for g in groups:
                sock.setsockopt(kabi.SOL_NETLINK, kabi.NETLINK_DROP_MEMBERSHIP, g)
            read_available()
            checker.forget()
            time.sleep(args.churn_ms / 2000)
            for g in groups:
                sock.setsockopt(kabi.SOL_NETLINK, kabi.NETLINK_ADD_MEMBERSHIP, g)
            churns += 1
            next_churn = time.monotonic() + args.churn_ms / 1000
        publish_live()
        try:
            ready = select.select([sock], [], [], 0.05)[0]
        except InterruptedError:
            continue
        if not ready:
            continue
        if args.delay_us:  # slow: one datagram, then the pause
            if read_available(1):
                time.sleep(args.delay_us / 1e6)
        else:
            read_available(READ_BATCH)
    read_available()
    if args.listen_proc:
        # cn_proc sentinel: tail loss on a CPU shows only as a gap before a later event on that CPU, so make
        # one exit event on every online CPU now that the socket is empty, and read until every one arrived
        for cpu in sorted(os.sched_getaffinity(0)):
            pid = os.fork()
            if pid == 0:
                try:
                    os.sched_setaffinity(0, {cpu})
                finally:
                    os._exit(0)
            checker.sentinels.add(pid)
            os.waitpid(pid, 0)
        give_up = time.monotonic() + SENTINEL_WAIT_S
        while checker.sentinels and time.monotonic() < give_up:
            if select.select([sock], [], [], 0.05)[0]:
                read_available()
    publish_live(force=True)
    report = {"schema": REPORT_SCHEMA, "name": args.name, "portid": portid, "groups": groups, "rcvbuf": rcvbuf,
              "enobufs": enobufs,
              "socket_drops": socket_drops(portid), "churns": churns, "resync": args.resync,
              "parser": "pyroute2" if args.pyroute2 else "kabi"}
    report.update(checker.report())
    if args.listen_proc:
        try:
            proc_listen(sock, PROC_CN_MCAST_IGNORE)
        except OSError:
            pass
    text = json.dumps(report)
    if args.out:
        write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
