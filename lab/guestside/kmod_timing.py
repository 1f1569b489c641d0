#!/usr/bin/env python3
"""cnlab.ko benchmark, guest side (root, module loaded, ``kabi.py`` alongside).

    python3 kmod_timing.py [--iterations N] [--rate-count N] [--lat-rate R] [--lat-count N]
                          [--lat-rounds N] [--lat-warmup N] [--lat-wait poll|block]
                          [--lat-reader-cpu same|other]

Prints one JSON object:

* ``insert``: the in-kernel BENCH request: ns per ``cbus_insert`` against ns
  per direct ``cn_netlink_send`` to a group with one listener (this process
  reads it), tight loops of ``chunk`` calls with preemption off: medians over
  ``--chunks`` one-chunk requests (and means); the BENCH empties the queue
  before each chunk, so each chunk pays one kick (a worker wake-up);
  ``insert_long_run`` is one request of ``--iterations`` calls (mean and best
  chunk), ``insert_big_chunk`` the medians with bigger chunks;
* ``rate``: end to end, one kthread generator on CPU 0 as fast as possible,
  one reader on the last CPU; for direct, CBUS and CBUS bundles: generated,
  received, lost, and delivered msgs/s (received / (last receive - start));
* ``latency``: enqueue (the message's ``ts_ns``) to userspace (after
  ``recv``) at a moderate rate (default 2,000 msgs/s from one kthread, one
  message per wake-up), for direct and CBUS in alternating rounds after a
  discarded warm-up round per path (``--lat-warmup``):
  p50/p90/p99/p99.9 over the measured samples and each round's p99. The reader
  blocks in ``recv`` on the generator's CPU by default (``--lat-wait poll``
  busy-polls, ``--lat-reader-cpu other`` reads on the last CPU).

The reader is a tight ``recv_into`` loop on a preallocated buffer with
precompiled structs, pinned to one CPU (for the rates one the generator does
not use), with a receive buffer large enough that it never overflows in
these runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import threading
import time

import kabi

GEN_IDX = 0x20
GEN_VAL = 0x2
GROUP = 4
GEN_ID = 12
RCVBUF = 512 << 20


def pct(vals: list[int], p: float) -> float | None:
    if not vals:
        return None
    return vals[min(len(vals) - 1, int(len(vals) * p / 100))]


class Reader(threading.Thread):
    """Counts generated messages (and bundles' inner ones), per-CPU order, latency."""

    def __init__(self, cpu: int, keep_lat: bool = False, poll: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = kabi.open_socket([GROUP], RCVBUF)
        self.poll = poll
        if poll:
            self.sock.setblocking(False)
        else:
            self.sock.settimeout(0.2)
        self.cpu = cpu
        self.keep_lat = keep_lat
        self.received = 0
        self.datagrams = 0
        self.lost = 0
        self.reordered = 0
        self.enobufs = 0
        self.first_ns = 0
        self.last_ns = 0
        self.lat: list[int] = []
        self.expected: dict[int, int] = {}
        self.halt = False

    def run(self) -> None:
        try:
            os.sched_setaffinity(0, {self.cpu})
        except OSError:
            pass
        buf = bytearray(1 << 16)
        recv_into = self.sock.recv_into
        cn_unpack = kabi.CN_MSG_S.unpack_from
        ev_unpack = kabi.EVENT_S.unpack_from
        mono = time.monotonic_ns
        bundle_flag = kabi.CNLAB_CN_F_BUNDLE
        expected = self.expected
        lat = self.lat
        keep = self.keep_lat
        received = datagrams = lost = reordered = 0
        first = last = 0
        while not self.halt:
            try:
                n = recv_into(buf)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError as e:
                if e.errno == 105:  # ENOBUFS
                    self.enobufs += 1
                    continue
                raise
            now = mono()
            if not first:
                first = now
            last = now
            datagrams += 1
            # one connector message per datagram (cn_netlink_send)
            _idx, _val, _seq, _ack, ln, flags = cn_unpack(buf, 16)
            if flags & bundle_flag:
                p = 36
                end = min(36 + ln, n)
                while p + 52 <= end:
                    iln = cn_unpack(buf, p)[4]
                    _g, cpu, seq, ts, _l, _f = ev_unpack(buf, p + 20)
                    exp = expected.get(cpu, 0)
                    if seq != exp:
                        if seq > exp:
                            lost += seq - exp
                        else:
                            reordered += 1
                    expected[cpu] = seq + 1 if seq + 1 > exp else exp
                    if keep:
                        lat.append(now - ts)
                    received += 1
                    p += 20 + iln
            else:
                _g, cpu, seq, ts, _l, _f = ev_unpack(buf, 36)
                exp = expected.get(cpu, 0)
                if seq != exp:
                    if seq > exp:
                        lost += seq - exp
                    else:
                        reordered += 1
                expected[cpu] = seq + 1 if seq + 1 > exp else exp
                if keep:
                    lat.append(now - ts)
                received += 1
        self.received, self.datagrams, self.lost, self.reordered = received, datagrams, lost, reordered
        self.first_ns, self.last_ns = first, last

    def finish(self) -> None:
        self.halt = True
        self.join(5)
        self.sock.close()


def wait_done(c: kabi.CtlClient, gen_id: int, timeout: float) -> kabi.Reply:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = c.gen_stats(gen_id)
        if r.ok and r.body["state"] in (kabi.CNLAB_GEN_DONE, kabi.CNLAB_GEN_STOPPED):
            return r
        time.sleep(0.05)
    c.gen_stop(gen_id)
    return c.gen_stats(gen_id)


def wait_drained(c: kabi.CtlClient, timeout: float = 30.0) -> kabi.Reply:
    end = time.monotonic() + timeout
    while True:
        r = c.stats()
        if r.body["total"]["queued"] == 0 or time.monotonic() > end:
            return r
        time.sleep(0.02)


def socket_rmem(sock: socket.socket) -> int:
    """Bytes queued on a netlink socket (Rmem in /proc/net/netlink), -1 if not found."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/netlink") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 10 and parts[-1] == inode:
                return int(parts[4])
    return -1


def wait_read(reader: Reader, timeout: float) -> None:
    """Until the reader has emptied its socket (Rmem 0 on three polls in a row)."""
    end = time.monotonic() + timeout
    zero = 0
    while time.monotonic() < end and zero < 3:
        zero = zero + 1 if socket_rmem(reader.sock) == 0 else 0
        time.sleep(0.05)


def bench_insert(c: kabi.CtlClient, reader_cpu: int, iterations: int, chunk: int) -> dict:
    reader = Reader(reader_cpu)
    reader.start()
    r = c.bench(timeout=600, idx=GEN_IDX, val=GEN_VAL, group=GROUP, payload=32, iterations=iterations,
                chunk=chunk, pause_us=2000, cpu=0)
    time.sleep(0.3)
    reader.finish()
    if not r.ok:
        return {"error": r.error_name}
    b = r.body
    cbus = b["cbus_ns"] / max(1, b["cbus_calls"])
    direct = b["direct_ns"] / max(1, b["direct_calls"])
    return {
        "iterations": iterations, "chunk": chunk, "payload": 32, "cpu": b["cpu"],
        "cbus_insert_ns": round(cbus, 1), "direct_send_ns": round(direct, 1),
        "cbus_best_chunk_ns": b["cbus_ns_min_chunk"] / 1000, "direct_best_chunk_ns": b["direct_ns_min_chunk"] / 1000,
        "ratio": round(direct / cbus, 2) if cbus else None,
        "ratio_best_chunk": round(b["direct_ns_min_chunk"] / b["cbus_ns_min_chunk"], 2)
        if b["cbus_ns_min_chunk"] else None,
        "cbus_ok": b["cbus_ok"], "direct_ok": b["direct_ok"], "direct_esrch": b["direct_esrch"],
        "direct_err": b["direct_err"], "reader_received": reader.received,
    }


def bench_chunks(c: kabi.CtlClient, reader_cpu: int, chunk: int, count: int) -> dict:
    """``count`` BENCH requests of one chunk each: the per-chunk ns/call distributions.

    The median is robust against the chunks a busy host preempts (a TCG vCPU
    thread descheduled in the middle of a chunk inflates both paths' means).
    """
    reader = Reader(reader_cpu)
    reader.start()
    cbus, direct = [], []
    first = {"cbus": [], "direct": []}  # ns of each chunk's first call (CBUS: the kick)
    rest = {"cbus": [], "direct": []}  # ns per call of the chunk's other calls
    errors = 0
    for _ in range(count):
        r = c.bench(timeout=60, idx=GEN_IDX, val=GEN_VAL, group=GROUP, payload=32, iterations=chunk,
                    chunk=chunk, pause_us=1000, cpu=0)
        if not r.ok or r.body["status"] != 0 or r.body["direct_ok"] != chunk or r.body["cbus_ok"] != chunk:
            errors += 1
            continue
        cbus.append(r.body["cbus_ns"] / chunk)
        direct.append(r.body["direct_ns"] / chunk)
        for path in ("cbus", "direct"):
            first[path].append(r.body[f"{path}_first_ns"])
            if chunk > 1:
                rest[path].append((r.body[f"{path}_ns"] - r.body[f"{path}_first_ns"]) / (chunk - 1))
    time.sleep(0.3)
    reader.finish()
    if not cbus:
        return {"error": "no successful BENCH chunk", "errors": errors}
    cbus.sort()
    direct.sort()
    med_c, med_d = statistics.median(cbus), statistics.median(direct)
    return {
        "chunk": chunk, "chunks": len(cbus), "errors": errors, "payload": 32,
        "cbus_insert_ns": round(med_c, 1), "direct_send_ns": round(med_d, 1),
        "ratio": round(med_d / med_c, 2),
        "cbus_mean_ns": round(statistics.fmean(cbus), 1), "direct_mean_ns": round(statistics.fmean(direct), 1),
        "ratio_mean": round(statistics.fmean(direct) / statistics.fmean(cbus), 2),
        "cbus_p10_p90_ns": [round(pct(cbus, 10), 1), round(pct(cbus, 90), 1)],
        "direct_p10_p90_ns": [round(pct(direct, 10), 1), round(pct(direct, 90), 1)],
        "reader_received": reader.received,
        "first_call_ns": {path: round(statistics.median(v), 1) for path, v in first.items()},
        "further_calls_ns": {path: round(statistics.median(v), 1) for path, v in rest.items() if v},
        "ratio_further_calls": round(statistics.median(rest["direct"]) / statistics.median(rest["cbus"]), 2)
        if rest["cbus"] else None,
    }


def gen_cfg(path: str, flags: int, count: int, rate: int) -> dict:
    return dict(gen_id=GEN_ID, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=count, cpu_mask=1, rate=rate,
                size_min=32, size_max=32, context="kthread", path=path, flags=flags, burst=256)


def run_stream(c: kabi.CtlClient, reader_cpu: int, path: str, flags: int, count: int, rate: int,
               keep_lat: bool, poll: bool = False) -> tuple[Reader, dict, kabi.Reply]:
    reader = Reader(reader_cpu, keep_lat=keep_lat, poll=poll)
    reader.start()
    time.sleep(0.1)
    s0 = c.stats().body["total"]
    t0 = time.monotonic_ns()
    if rate:
        # Stay off the GIL while the generator runs: a control request and
        # its parsing here would hold the reader thread back (its messages'
        # latency would include this thread's work).  So the GEN_START reply,
        # which arrives as the first messages do, is read only afterwards.
        seq = c.next_seq()
        c.send_raw(kabi.encode_gen_start(seq=seq, **gen_cfg(path, flags, count, rate)))
        time.sleep(count / rate)
        r = c.recv_reply(seq, timeout=10)
    else:
        r = c.gen_start(**gen_cfg(path, flags, count, rate))
    if r is None or not r.ok:
        reader.finish()
        raise RuntimeError(f"GEN_START {path}: {r.error_name if r else 'no reply'}")
    g = wait_done(c, GEN_ID, timeout=120 + (count / rate if rate else 0))
    s1 = wait_drained(c).body["total"]
    wait_read(reader, 60)
    time.sleep(0.2)
    reader.finish()
    gen = {k: sum(cs[k] for cs in g.body["cpus"]) for k in ("generated", "ok", "err_nolistener", "err_overrun",
                                                             "err_nomem", "err_full", "err_other")}
    span = (reader.last_ns - t0) / 1e9 if reader.last_ns else 0.0
    gen_span = (g.body["end_ns"] - g.body["start_ns"]) / 1e9 if g.body["end_ns"] else 0.0
    out = {
        "generated": gen["generated"], "accepted": gen["ok"], "received": reader.received,
        "datagrams": reader.datagrams, "lost": reader.lost, "reordered": reader.reordered,
        "enobufs": reader.enobufs, "seconds": round(span, 3), "gen_seconds": round(gen_span, 3),
        "msgs_per_s": round(reader.received / span) if span else 0,
        "gen_msgs_per_s": round(gen["generated"] / gen_span) if gen_span else 0,
        "cbus_sent": s1["sent"] - s0["sent"], "cbus_dropped": sum(s1[k] - s0[k] for k in (
            "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr")),
    }
    return reader, out, g


def clocksource() -> str:
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return "?"


def latency(c: kabi.CtlClient, reader_cpu: int, rate: int, count: int, rounds: int, wait: str,
            warmup: int = 1) -> dict:
    """Enqueue-to-userspace latency of both paths, in alternating rounds.

    Direct and CBUS runs alternate (direct, cbus, direct, ...), ``count /
    rounds`` messages each, so a burst of host load hits both paths alike;
    the percentiles are over all samples of a path, and ``round_p99_us``
    lists each round's own p99 (the spread).  First ``warmup`` rounds of
    each path are run and discarded (``warmup_p99_us``): under TCG a path's
    first round pays for translating its code.
    """
    rounds = max(1, rounds)
    per = max(1, count // rounds)
    out: dict = {"rate": rate, "count": per * rounds, "rounds": rounds, "warmup_rounds": warmup, "reader": wait,
                 "reader_cpu": reader_cpu, "generator_cpu": 0, "clocksource": clocksource()}
    samples: dict[str, list[int]] = {"direct": [], "cbus": []}
    runs: dict[str, list[dict]] = {"direct": [], "cbus": []}
    warm: dict[str, list[float | None]] = {"direct": [], "cbus": []}
    for _ in range(warmup):
        for name in ("direct", "cbus"):
            reader, _res, _g = run_stream(c, reader_cpu, name, 0, per, rate, True, poll=wait == "poll")
            lat = sorted(reader.lat)
            warm[name].append(round(pct(lat, 99) / 1000, 1) if lat else None)
    for _ in range(rounds):
        for name in ("direct", "cbus"):
            reader, res, _g = run_stream(c, reader_cpu, name, 0, per, rate, True, poll=wait == "poll")
            lat = sorted(reader.lat)
            res["p99_us"] = round(pct(lat, 99) / 1000, 1) if lat else None
            samples[name].extend(lat)
            runs[name].append(res)
    for name in ("direct", "cbus"):
        lat = sorted(samples[name])
        rs = runs[name]
        res = {k: sum(r[k] for r in rs) for k in ("generated", "accepted", "received", "lost", "reordered",
                                                  "enobufs", "cbus_sent", "cbus_dropped")}
        res.update({f"p{p}_us": round(pct(lat, p) / 1000, 1) if lat else None for p in (50, 90, 99, 99.9)})
        res["max_us"] = round(lat[-1] / 1000, 1) if lat else None
        res["n"] = len(lat)
        res["round_p99_us"] = [r["p99_us"] for r in rs]
        res["warmup_p99_us"] = warm[name]
        out[name] = res
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--chunk", type=int, default=128, help="BENCH chunk (one kick per chunk: the headline)")
    ap.add_argument("--chunks", type=int, default=200, help="one-chunk BENCH requests for the medians")
    ap.add_argument("--also-chunk", type=int, default=1024, help="a second BENCH run with this chunk (0: none)")
    ap.add_argument("--rate-count", type=int, default=200000)
    ap.add_argument("--lat-rate", type=int, default=2000)
    ap.add_argument("--lat-count", type=int, default=10000)
    ap.add_argument("--lat-rounds", type=int, default=5,
                    help="latency: alternate direct and CBUS in this many rounds of lat-count/rounds messages each")
    ap.add_argument("--lat-warmup", type=int, default=1,
                    help="latency: discarded warm-up rounds per path before the measured ones")
    ap.add_argument("--lat-wait", choices=["poll", "block"], default="block",
                    help="latency reader: block in recv (default) or busy-poll (under TCG on a small host a "
                         "spinning vCPU takes a host core away from the producer's vCPU)")
    ap.add_argument("--lat-reader-cpu", choices=["same", "other"], default="same",
                    help="latency reader on the generator's CPU 0 (default: the wake-up needs no IPI to an idle "
                         "vCPU) or on the last CPU")
    ap.add_argument("--skip", action="append", default=[], choices=["insert", "rate", "latency"])
    args = ap.parse_args(argv)
    gc.disable()  # no collector pauses inside the measurements (short-lived process)
    ncpu = os.cpu_count() or 1
    reader_cpu = ncpu - 1
    out: dict = {"cpus": ncpu, "reader_cpu": reader_cpu, "generator_cpu": 0,
                 "kernel": os.uname().release}
    with kabi.CtlClient(timeout=10.0) as c:
        c.gen_stop(kabi.CNLAB_GEN_ALL)
        if "insert" not in args.skip:
            out["insert"] = bench_chunks(c, reader_cpu, args.chunk, args.chunks)
            out["insert_long_run"] = bench_insert(c, reader_cpu, args.iterations, args.chunk)
            if args.also_chunk:
                out["insert_big_chunk"] = bench_chunks(c, reader_cpu, args.also_chunk, max(10, args.chunks // 8))
        if "rate" not in args.skip:
            out["rate"] = {}
            for name, path, flags in (("direct", "direct", 0), ("cbus", "cbus", 0),
                                      ("cbus_bundle", "cbus", kabi.CNLAB_GEN_F_BUNDLE)):
                _r, res, _g = run_stream(c, reader_cpu, path, flags, args.rate_count, 0, False)
                out["rate"][name] = res
        if "latency" not in args.skip:
            lat_cpu = 0 if args.lat_reader_cpu == "same" else reader_cpu
            out["latency"] = latency(c, lat_cpu, args.lat_rate, args.lat_count, args.lat_rounds, args.lat_wait,
                                     args.lat_warmup)
        out["stats"] = {k: v for k, v in c.stats().body["total"].items() if k != "batch_hist"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main(sys.argv[1:]))
