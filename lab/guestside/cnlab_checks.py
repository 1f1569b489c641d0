#!/usr/bin/env python3
"""Guest-side checks of cnlab.ko (run as root in a guest with the module
loaded; ``kabi.py`` in the same folder, as install_guest_programs puts it).

    python3 cnlab_checks.py [--no-klog] [--unload-cycles N] TEST [TEST...]

Tests: echo deliver balance invariant perm fuzz faults hotplug initfail
unload ("all" runs them in that order). Each prints one JSON line
{"test": ..., "ok": bool, "seconds": ..., ...}; exit status 1 if any failed.
Unless --no-klog, the kernel log is checked for oops/BUG/WARNING at the end
(tests/integration/kmod/test_kmod.py checks the console and the taint itself).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import fault_knobs
import kabi

MODULE = os.environ.get("CNLAB_KO", "/run/cnlab/cnlab.ko")
GEN_IDX = 0x20
GEN_VAL = 0x1
GROUP = 2          # even: no unprivileged joins on 6.6+ either
RESULTS = []
LAT_RATE = int(os.environ.get("CNLAB_LAT_RATE", "2000"))
LAT_COUNT = int(os.environ.get("CNLAB_LAT_COUNT", "5000"))
HOTPLUG_RATE = int(os.environ.get("CNLAB_HOTPLUG_RATE", "500"))
#: The most a timer, softirq or hard-IRQ instance under CPU hotplug catches up in one firing. Left at the
#: default (1 MiB of messages: 4096 here), a timer instance behind after a CPU went down sent 4096 messages per
#: firing, a jiffy apart, from CPU 0's softirq: on a debug guest beside another one that held CPU 0 past the 60 s
#: RCU stall timeout (cbus.c:778:constant and ctl.c:171:return, which change neither path, "killed" so).
HOTPLUG_BURST = 32
#: The load under CPU hotplug (``hotplug``, ``offline_end``): a generator per (context, path, flags, burst).
HOTPLUG_LOAD = (("kthread", "cbus", 0, 0), ("timer", "cbus", 0, HOTPLUG_BURST), ("hardirq", "cbus", 0, HOTPLUG_BURST),
                ("softirq", "cbus", kabi.CNLAB_GEN_F_BUNDLE, HOTPLUG_BURST), ("kthread", "direct", 0, 0))


def report(test, ok, **kw):
    rec = {"test": test, "ok": bool(ok), **kw}
    RESULTS.append(rec)
    print(json.dumps(rec), flush=True)
    return ok


def ncpus():
    return os.cpu_count() or 1


def online_cpus():
    out = []
    for c in range(ncpus()):
        p = f"/sys/devices/system/cpu/cpu{c}/online"
        if c == 0 or not os.path.exists(p) or open(p).read().strip() == "1":
            out.append(c)
    return out


def mem_available(meminfo="/proc/meminfo"):
    """MemAvailable in bytes."""
    with open(meminfo) as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:")) * 1024


def slab_footprints(slabinfo="/proc/slabinfo"):
    """{slab cache: bytes one of its objects really takes}, debug metadata (red zones, owner tracking) included:
    a slab's pages over its objects."""
    page = os.sysconf("SC_PAGE_SIZE")
    out = {}
    with open(slabinfo) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[4].isdigit() and parts[5].isdigit():
                out[parts[0]] = int(parts[5]) * page // max(1, int(parts[4]))
    return out


#: struct cbus_event before its data: an llist node, group, flags and the cn_msg header.
CBUS_EVENT_HEADER = 8 + 4 + 4 + 20


def event_footprint(data_len, slabinfo="/proc/slabinfo"):
    """What one queued CBUS event of ``data_len`` bytes costs this guest: the kmalloc cache it lands in once the
    per-CPU pool is empty, plus a kmemleak object where kmemleak tracks every allocation (the debug flavour).
    Measured from the running kernel's own slab sizes, so a debug kernel reports its heavier objects."""
    need = CBUS_EVENT_HEADER + data_len
    caches = slab_footprints(slabinfo)
    sizes = [int(name[8:]) for name in caches
             if name.startswith("kmalloc-") and name[8:].isdigit() and int(name[8:]) >= need]
    own = caches[f"kmalloc-{min(sizes)}"] if sizes else 0
    return max(own, need) + caches.get("kmemleak_object", 0)


def queue_room(cpus, data_len, floor, ceiling=1 << 18, share=8, meminfo="/proc/meminfo",
               slabinfo="/proc/slabinfo"):
    """A per-CPU queue limit whose ``cpus`` full queues take at most 1/``share`` of the available memory,
    between ``floor`` and ``ceiling``. A debug-flavour guest beside another one once reached 703 MB of
    unreclaimable slab in ``hotplug`` at 2^18 per CPU, and 1.25 GB (out of memory) on a slower run."""
    room = mem_available(meminfo) // share // (max(1, cpus) * event_footprint(data_len, slabinfo))
    return max(floor, min(ceiling, room))


def reader_buffer(wanted=256 << 20, meminfo="/proc/meminfo"):
    """The receive buffer a reader asks for: ``wanted``, at most a sixteenth of the memory the guest has
    available. SO_RCVBUFFORCE grants twice what it is asked, and a reader that falls behind on a loaded guest
    fills it: 256 MiB asked is 512 MiB of skbs, which beside a check's raised queue limits is more than a 2 GiB
    debug-flavour guest has left once KASAN, lockdep and kmemleak have taken their part."""
    return min(wanted, mem_available(meminfo) // 16)


class Consumer(threading.Thread):
    """Reads a group, checks per-(gen, cpu) order, collects latencies."""

    def __init__(self, group=GROUP, rcvbuf=None, keep_lat=False, keep_seqs=False):
        super().__init__(daemon=True)
        self.keep_seqs = keep_seqs
        self.seqs = {}     # (gen, cpu) -> [(seq, ts_ns), ...] if keep_seqs
        self.sock = kabi.open_socket([group], reader_buffer() if rcvbuf is None else rcvbuf)
        self.expected = {}
        self.received = 0
        self.lost = 0
        self.reordered = 0
        self.enobufs = 0
        self.bad = 0
        self.bundles = 0
        self.datagrams = 0
        self.first_ns = 0
        self.last_ns = 0
        self.keep_lat = keep_lat
        self.lat = []
        self._halt = threading.Event()

    def run(self):
        buf = bytearray(1 << 17)
        ours = frozenset({(GEN_IDX, GEN_VAL)})
        while not self._halt.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                n = self.sock.recv_into(buf)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    continue
                raise
            now = time.monotonic_ns()
            if not self.first_ns:
                self.first_ns = now
            self.last_ns = now
            self.datagrams += 1
            self.bundles += kabi.walk_datagram(buf, n, now, self._event, ids=ours)

    def _event(self, ev, now):
        gen_id, cpu, seq, ts, _ln, _fl = ev
        key = (gen_id, cpu)
        exp = self.expected.get(key, 0)
        if seq == exp:
            pass
        elif seq > exp:
            self.lost += seq - exp
        else:
            self.reordered += 1
        self.expected[key] = max(exp, seq + 1)
        self.received += 1
        if self.keep_seqs:
            self.seqs.setdefault(key, []).append((seq, ts))
        if self.keep_lat:
            self.lat.append(now - ts)

    def stop(self):
        self._halt.set()
        self.join(2)
        self.sock.close()

    def wait_read(self, timeout=10.0):
        """Until the socket is empty (Rmem 0 in /proc/net/netlink) on three polls in a row."""
        inode = str(os.fstat(self.sock.fileno()).st_ino)
        end = time.monotonic() + timeout
        zero = 0
        while time.monotonic() < end and zero < 3:
            rmem = -1
            with open("/proc/net/netlink") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 10 and parts[-1] == inode:
                        rmem = int(parts[4])
            zero = zero + 1 if rmem == 0 else 0
            time.sleep(0.05)
        return zero >= 3

    def wait_for(self, total, timeout=60.0, cap=600.0):
        """Until ``total`` messages were read, or none arrived for ``timeout`` seconds (at most ``cap`` in all):
        a reader that is still making progress on a loaded host (TCG, CI) is given the time it needs."""
        start = last_move = time.monotonic()
        seen = self.received
        while self.received < total:
            now = time.monotonic()
            if self.received != seen:
                seen, last_move = self.received, now
            if now - last_move >= timeout or now - start >= cap:
                break
            time.sleep(0.01)
        return self.received >= total


def wait_gen_done(c, gen_id, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = c.gen_stats(gen_id)
        if r.ok and r.body["state"] in (kabi.CNLAB_GEN_DONE, kabi.CNLAB_GEN_STOPPED):
            return r
        time.sleep(0.02)
    return c.gen_stats(gen_id)


def wait_drained(c, timeout=10.0):
    """STATS once CBUS holds nothing, or once it has not come closer to that for ``timeout`` s (a drain that
    stopped), or after ten times ``timeout`` in all (producers that never stop).  A drain that keeps going is
    waited for: a loaded debug-flavour guest drained a 97,552-message hard-IRQ flood slower than 30 s allowed.
    Drained means the ledger agrees too (:func:`kabi.ledger_problems`); one that never does is returned
    after ``timeout``, for the check to name.  A check calls it before it opens its reader or socket: one
    opened earlier also gets what an earlier check left queued (found with ``bursts`` before ``nested_irq`` on a
    loaded host: 1,287 messages too many, 2,809 gaps)."""
    started = last_progress = time.monotonic()
    lowest = None
    while True:
        r = c.stats()
        queued = r.body["total"]["queued"]
        # the drain counts a message sent (which makes "queued" 0) just before it counts it dequeued: a
        # snapshot in between once showed a ledger one short (nested_irq, on a mutant that touched neither)
        if queued == 0 and not kabi.ledger_problems(r.body["total"]):
            return r
        now = time.monotonic()
        if lowest is None or queued < lowest:
            lowest, last_progress = queued, now
        if now - last_progress >= timeout or now - started >= 10 * timeout:
            return r
        time.sleep(0.01)


GEN_KEYS = ("generated", "ok", "err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other")


def gen_totals(rep):
    tot = dict.fromkeys(GEN_KEYS, 0)
    for cs in rep.body["cpus"]:
        for k in tot:
            tot[k] += cs[k]
    return tot


def gen_totals_all(reps):
    """gen_totals() summed over several generators' reports."""
    tot = dict.fromkeys(GEN_KEYS, 0)
    for rep in reps:
        for k, v in gen_totals(rep).items():
            tot[k] += v
    return tot


def tail_loss(cons, reps):
    """Messages generated after the last one ``cons`` saw, per (generator, CPU) stream: loss no gap shows."""
    return sum(cs["generated"] - cons.expected.get((rep.body["gen_id"], cs["cpu"]), 0)
               for rep in reps for cs in rep.body["cpus"])


def stats_delta(a, b):
    return {k: b[k] - a[k] for k in ("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener",
                                       "drop_overrun", "drop_nlerr", "queued", "nl_msgs", "bundles")}


def invariant_ok(rep):
    good = kabi.check_invariant(rep.body["total"])
    for cs in rep.body["cpus"]:
        good = good and kabi.check_invariant(cs)
    return good


# --------------------------------------------------------------------- tests

def t_echo(c):
    rtts = []
    for i in range(200):
        data = os.urandom(i % 100)
        t0 = time.monotonic_ns()
        r = c.echo(data)
        t1 = time.monotonic_ns()
        if not r.ok or r.body["data"] != data or not t0 <= r.body["rx_ns"] <= r.body["tx_ns"] <= t1:
            return report("echo", False, error=r.error_name or "mismatch")
        if r.ack != 1:  # request ack 0, reply ack + 1
            return report("echo", False, error="ack", ack=r.ack)
        rtts.append(t1 - t0)
    rtts.sort()
    return report("echo", True, n=len(rtts), rtt_us_p50=rtts[100] / 1000, rtt_us_p99=rtts[198] / 1000)


def run_gen(c, cons, gen_id, count, **cfg):
    base = dict(gen_id=gen_id, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=count,
                cpu_mask=(1 << ncpus()) - 1, rate=20000, size_min=32, size_max=32)
    base.update(cfg)
    r = c.gen_start(**base)
    if not r.ok:
        return None, r.error_name
    g = wait_gen_done(c, gen_id)
    return g, None


def t_deliver(c, count=2000):
    ok_all = True
    combos = [(ctx, path, flags) for ctx in ("kthread", "softirq", "timer", "hardirq")
              for path, flags in (("direct", 0), ("cbus", 0), ("cbus", kabi.CNLAB_GEN_F_BUNDLE))
              if not (ctx == "hardirq" and path == "direct")]
    for gid, (ctx, path, flags) in enumerate(combos):
        gid %= kabi.CNLAB_MAX_GENS
        # drained before the reader opens: what an earlier check left queued is not read as this generator's
        # (nested_irq's stalled phase, then deliver: 18 strays of generator 0, 2,193 "gaps")
        s0 = wait_drained(c).body["total"]
        cons = Consumer()
        cons.start()
        g, err = run_gen(c, cons, gid, count, context=ctx, path=path, flags=flags,
                         size_min=32, size_max=200)
        if g is None:
            cons.stop()
            ok_all = report("deliver", False, ctx=ctx, path=path, error=err) and ok_all
            continue
        s1 = wait_drained(c)
        tot = gen_totals(g)
        cons.wait_for(tot["generated"])
        cons.stop()
        d = stats_delta(s0, s1.body["total"])
        ncpu = bin(g.body["cfg"]["cpu_mask"]).count("1")
        good = (tot["generated"] == count * ncpu and tot["ok"] == tot["generated"]
                and cons.received == tot["generated"] and cons.lost == 0
                and cons.reordered == 0 and cons.enobufs == 0
                and all(cons.expected.get((gid, cpu), 0) == g.body["cpus"][cpu]["generated"]
                        for cpu in range(g.body["nr_cpus"]))
                and invariant_ok(s1))
        if path == "cbus":  # CBUS's count of netlink messages and bundles is what the reader got, one by one
            good = (good and d["inserted"] == tot["generated"] and d["sent"] == tot["generated"]
                    and d["nl_msgs"] == cons.datagrams and d["bundles"] == cons.bundles
                    and (cons.bundles > 0) == bool(flags))
        ok_all = report("deliver", good, ctx=ctx, path=path, bundle=bool(flags), cpus=ncpu,
                        generated=tot["generated"], received=cons.received, lost=cons.lost,
                        reordered=cons.reordered, enobufs=cons.enobufs, datagrams=cons.datagrams,
                        bundles=cons.bundles, cbus_delta=d if path == "cbus" else None) and ok_all
    return ok_all


BENCH_GROUP = 6
BENCH_VAL = 0x7


def t_bench(c, iterations=96, chunk=32):
    """The BENCH request times both paths and every timed call really sends.

    A listener on the bench's group must get each path's ``iterations``
    messages, seq 0..iterations-1 in order (CBUS first, then direct); the
    reply's counters and times must agree with that.
    """
    sock = kabi.open_socket([BENCH_GROUP], 16 << 20)
    seqs = []

    def other(_off, idx, val, seq, _length):
        if (idx, val) == (GEN_IDX, BENCH_VAL):
            seqs.append(seq)

    try:
        r = c.bench(timeout=60, idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32,
                    iterations=iterations, chunk=chunk, pause_us=100, cpu=0)
        buf = bytearray(1 << 16)
        end = time.monotonic() + 20
        while len(seqs) < 2 * iterations and time.monotonic() < end:
            if select.select([sock], [], [], 0.2)[0]:
                n = sock.recv_into(buf)
                kabi.walk_datagram(buf, n, 0, lambda _ev, _now: None, other, ids=frozenset())
    finally:
        sock.close()
    if not r.ok:
        return report("bench", False, error=r.error_name)
    b = r.body
    want = list(range(iterations))
    good = (b["status"] == 0 and b["cbus_calls"] == b["direct_calls"] == iterations
            and b["cbus_ok"] == b["direct_ok"] == iterations and b["direct_esrch"] == b["direct_err"] == 0
            and 0 < b["cbus_first_ns"] < b["cbus_ns"] and 0 < b["direct_first_ns"] < b["direct_ns"]
            and 0 < b["cbus_ns_min_chunk"] <= b["cbus_ns"] * 1000 // iterations
            and 0 < b["direct_ns_min_chunk"] <= b["direct_ns"] * 1000 // iterations
            and seqs == want + want)
    good = report("bench", good, received=len(seqs), in_order=seqs == want + want,
                  body={k: v for k, v in b.items() if k != "cfg"})
    return bench_one_chunk(c, chunk) and good


def bench_one_chunk(c, calls):
    """A BENCH of one chunk per path: its best chunk is its only chunk, so the reported per-call figure
    (ns per call x 1000) must be exactly the path's total ns x 1000 / calls (a wrong scale or rounding in the
    figure, such as ``ns * 999``, is caught here and nowhere else: a timing has no other clock to compare)."""
    sock = kabi.open_socket([BENCH_GROUP], 16 << 20)  # a listener, so direct sends succeed; never read
    try:
        r = c.bench(timeout=60, idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32,
                    iterations=calls, chunk=calls, pause_us=0, cpu=0)
        wait_drained(c)
    finally:
        sock.close()
    if not r.ok:
        return report("bench_one_chunk", False, error=r.error_name)
    b = r.body
    want = {path: b[f"{path}_ns"] * 1000 // calls for path in ("cbus", "direct")}
    got = {path: b[f"{path}_ns_min_chunk"] for path in ("cbus", "direct")}
    good = b["status"] == 0 and b["cbus_calls"] == b["direct_calls"] == calls and got == want
    return report("bench_one_chunk", good, per_call_x1000=got, total_ns_x1000_per_call=want)


def t_invariant(c):
    """With nothing running: the derived invariant holds, and CBUS's independent counters agree (the ledger
    and the drain's batch histogram) in total and on every CPU.  A paced trickle first (20 messages per CPU at
    100/s, nobody listening) makes batches of one message, so the histogram's first bucket is not left empty
    by earlier checks whose batches were all large."""
    _, err = run_gen(c, None, 11, 20, context="kthread", path="cbus", rate=100)
    wait_drained(c)
    kabi.wait_until(lambda: not kabi.counter_problems(c.stats().body), 2.0)  # a batch is counted after its messages
    r = c.stats()
    problems = kabi.counter_problems(r.body)
    return report("invariant", invariant_ok(r) and not problems and err is None, total=r.body["total"],
                  counter_problems=problems, trickle=err or "ok")


def t_reply_fail(c, requests=64):
    """A reply the requester cannot take is counted: ECHO requests from a socket with the smallest receive
    buffer the kernel allows, none read until all are sent. Each request's reply either arrives or is counted
    in STATS' ``ctl_reply_fail`` (the connector refuses it: the buffer is full), so received + counted ==
    sent, with some of each; every reply that arrives answers one of the requests, once."""
    before = c.stats().body["ctl_reply_fail"]
    sock = kabi.open_socket(rcvbuf=1)  # raised to SOCK_MIN_RCVBUF: a few replies fit
    seqs = set(range(5000, 5000 + requests))
    try:
        for seq in sorted(seqs):
            sock.send(kabi.encode_request(kabi.CNLAB_MSG_ECHO, kabi.ECHO.pack(user_ns=seq, data_len=0), seq=seq))
        answered, strays, overruns = [], 0, 0
        while select.select([sock], [], [], 0.5)[0]:
            try:
                buf = sock.recv(1 << 16)
            except OSError as e:  # ENOBUFS: the socket overran, said once
                overruns += e.errno == errno.ENOBUFS
                continue
            for m in kabi.parse_datagram(buf):
                if m.id == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL) and m.seq in seqs and kabi.decode_reply(m).ok:
                    answered.append(m.seq)
                else:
                    strays += 1
    finally:
        sock.close()
    counted = c.stats().body["ctl_reply_fail"] - before
    good = (len(answered) + counted == requests and len(set(answered)) == len(answered) and counted > 0
            and answered and not strays)
    return report("reply_fail", good, requests=requests, received=len(answered), counted=counted,
                  overruns=overruns, strays=strays)


def t_perm(c):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        res = {}
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with kabi.CtlClient(timeout=3.0) as u:
                res["echo"] = u.echo(b"x").status
                res["stats"] = u.stats().status
                res["stats_reset"] = u.stats(reset_hwm=True).status
                res["gen_start"] = u.gen_start(gen_id=15, idx=GEN_IDX, val=GEN_VAL, group=GROUP,
                                               count=10, cpu_mask=1, size_min=32,
                                               size_max=32).status
                res["gen_stop"] = u.gen_stop(kabi.CNLAB_GEN_ALL).status
                res["fault"] = u.fault(kabi.CNLAB_FAULT_QLIMIT, 1).status
                res["bench"] = u.bench(timeout=3, idx=GEN_IDX, val=GEN_VAL, group=GROUP,
                                       iterations=1, chunk=1, cpu=0).status
            try:
                s = kabi.open_socket([kabi.CNLAB_CTL_IDX])
                s.close()
                res["join16"] = 0
            except OSError as e:
                res["join16"] = -e.errno
        except Exception as e:  # noqa: BLE001
            res["exception"] = repr(e)
        os.write(wfd, json.dumps(res).encode())
        os._exit(0)
    os.close(wfd)
    data = b""
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    res = json.loads(data or b"{}")
    eperm = -errno.EPERM
    good = (res.get("echo") == 0 and res.get("stats") == 0 and res.get("gen_start") == eperm
            and res.get("gen_stop") == eperm and res.get("fault") == eperm
            and res.get("bench") == eperm and res.get("join16") == eperm and res.get("stats_reset") == eperm)
    st = c.gen_stats(15).body
    good = good and st["state"] == kabi.CNLAB_GEN_IDLE
    return report("perm", good, results=res)


def connector_accepts(dg):
    """Would the 6.1 connector core hand this datagram to our callback?"""
    if len(dg) < 16:
        return False
    nl_len = struct.unpack_from("=I", dg)[0]
    if nl_len < 16 or len(dg) < nl_len:
        return False
    if nl_len < 36:
        return False
    idx, val, _s, _a, ln, _f = kabi.CN_MSG_S.unpack_from(dg, 16)
    if 20 + ln > kabi.CONNECTOR_MAX_MSG_SIZE:
        return False
    if nl_len < 36 + ln:
        return False
    return (idx, val) == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL)


def fuzz_frames(rng, n):
    """Yield (datagram, expect_error_reply) pairs."""
    types = list(range(0, 12)) + [0x7FFF, 0xFFFF]
    good_bodies = {
        kabi.CNLAB_MSG_ECHO: kabi.ECHO.pack(data_len=0),
        kabi.CNLAB_MSG_GEN_START: kabi.GEN_START.pack(gen_id=14, idx=GEN_IDX, val=GEN_VAL,
                                                      group=GROUP, count=1, cpu_mask=1,
                                                      size_min=32, size_max=32),
        kabi.CNLAB_MSG_GEN_STOP: kabi.GEN_STOP.pack(gen_id=14),
        kabi.CNLAB_MSG_STATS: kabi.STATS_REQ.pack(),
        kabi.CNLAB_MSG_GEN_STATS: kabi.GEN_STATS_REQ.pack(gen_id=0),
        kabi.CNLAB_MSG_SET_FAULT: kabi.FAULT.pack(op=kabi.CNLAB_FAULT_QLIMIT, value=4096),
        kabi.CNLAB_MSG_BENCH: kabi.BENCH.pack(idx=GEN_IDX, val=GEN_VAL, group=GROUP,
                                              iterations=1, chunk=1),
    }
    for i in range(n):
        kind = i % 10
        seq = 0x40000000 + i
        if kind == 0:       # random bytes
            dg = os.urandom(rng.randint(0, 120))
            yield dg, None
        elif kind == 1:     # truncated cnlab header
            hdr = kabi.HDR.pack(version=1, type=rng.choice(types))[:rng.randint(0, 15)]
            yield kabi.frame_nl(kabi.frame_cn(kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL, hdr, seq=seq), seq=seq), True
        elif kind == 2:     # bad version / flags / status / reserved
            f = rng.choice(["version", "flags", "status", "reserved"])
            v = {"version": rng.choice([0, 2, 255]), "flags": rng.randint(1, 255),
                 "status": rng.choice([-1, 1, 1 << 30]), "reserved": rng.randint(1, 1 << 31)}[f]
            fields = dict(version=1, type=kabi.CNLAB_MSG_STATS, len=8)
            fields[f] = v
            body = kabi.HDR.pack(**fields) + kabi.STATS_REQ.pack()
            yield kabi.frame_nl(kabi.frame_cn(kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL, body, seq=seq), seq=seq), True
        elif kind == 3:     # hdr.len mismatch
            t = rng.choice(list(good_bodies))
            body = good_bodies[t]
            hl = len(body) + rng.choice([-1, 1, 100, -len(body) - 1 if body else 5, 1 << 31])
            yield kabi.encode_request(t, body, seq=seq, hdr_len=hl & 0xFFFFFFFF), True
        elif kind == 4:     # unknown types
            t = rng.choice([0, 9, 10, 100, 0x7FFF, 0xFFFF])
            yield kabi.encode_request(t, os.urandom(rng.randint(0, 40)), seq=seq), True
        elif kind == 5:     # body truncated / extended
            t = rng.choice(list(good_bodies))
            body = good_bodies[t]
            if rng.random() < 0.5:
                body = body[:rng.randint(0, max(0, len(body) - 1))]
            else:
                body = body + os.urandom(rng.randint(1, 16))
            if t == kabi.CNLAB_MSG_ECHO and len(body) > kabi.ECHO.size:
                body = body[:kabi.ECHO.size] + b""  # exact echo would be valid
                body = body[:-1]
            yield kabi.encode_request(t, body, seq=seq), True
        elif kind == 6:     # invalid gen_start fields (always one invalid)
            cfg = dict(gen_id=rng.randint(0, 20), idx=rng.randint(0, 50), val=rng.randint(0, 3),
                       group=rng.randint(0, 40), count=rng.choice([0, 1, 1 << 41, rng.randint(0, 1 << 64 - 1)]),
                       duration_ns=rng.choice([0, 1, 601 * 10**9, rng.randint(0, 1 << 64 - 1)]),
                       cpu_mask=rng.choice([0, 1, rng.randint(0, 1 << 64 - 1)]),
                       rate=rng.choice([0, 1, 10**7 + 1, rng.randint(0, 1 << 32 - 1)]),
                       size_min=rng.randint(0, 10000), size_max=rng.randint(0, 10000),
                       context=rng.randint(0, 6), path=rng.randint(0, 3),
                       flags=rng.randint(0, 3), burst=rng.randint(0, 5000))
            cfg["group"] = rng.choice([0, 33, 40, 1 << 31])        # guaranteed invalid
            yield kabi.encode_request(kabi.CNLAB_MSG_GEN_START, kabi.GEN_START.pack(**cfg), seq=seq), True
        elif kind == 7:     # invalid faults / bench / stop / stats
            t = rng.choice(["fault", "bench", "stop", "gstats", "stats", "echo"])
            if t == "fault":
                op = rng.choice([0, kabi.CNLAB_FAULT_MAX + 1, 100, kabi.CNLAB_FAULT_WARN, kabi.CNLAB_FAULT_PANIC,
                                 kabi.CNLAB_FAULT_STALL_MS, kabi.CNLAB_FAULT_QLIMIT])
                val = {kabi.CNLAB_FAULT_STALL_MS: rng.choice([60001, 1 << 40]),
                       kabi.CNLAB_FAULT_QLIMIT: rng.choice([0, (1 << 20) + 1])}.get(op, rng.randint(0, 1 << 40))
                if op in (kabi.CNLAB_FAULT_WARN, kabi.CNLAB_FAULT_PANIC):
                    val = 0     # wrong magic
                b = kabi.FAULT.pack(op=op, value=val)
                yield kabi.encode_request(kabi.CNLAB_MSG_SET_FAULT, b, seq=seq), True
            elif t == "bench":
                b = kabi.BENCH.pack(idx=GEN_IDX, val=GEN_VAL, group=rng.choice([0, 33]),
                                    iterations=rng.randint(0, 1 << 32 - 1), chunk=rng.randint(0, 1 << 32 - 1),
                                    cpu=rng.randint(0, 1000))
                yield kabi.encode_request(kabi.CNLAB_MSG_BENCH, b, seq=seq), True
            elif t == "stop":
                b = kabi.GEN_STOP.pack(gen_id=rng.choice([16, 1000, 0xFFFFFFFE]), reserved=0)
                yield kabi.encode_request(kabi.CNLAB_MSG_GEN_STOP, b, seq=seq), True
            elif t == "gstats":
                b = kabi.GEN_STATS_REQ.pack(gen_id=rng.choice([16, 0xFFFFFFFF]), reserved=rng.randint(0, 1))
                yield kabi.encode_request(kabi.CNLAB_MSG_GEN_STATS, b, seq=seq), True
            elif t == "stats":
                b = kabi.STATS_REQ.pack(flags=rng.randint(1, 1 << 31))
                yield kabi.encode_request(kabi.CNLAB_MSG_STATS, b, seq=seq), True
            else:
                dl = rng.choice([1025, 1 << 31])
                b = kabi.ECHO.pack(data_len=dl) + os.urandom(rng.randint(0, 64))
                yield kabi.encode_request(kabi.CNLAB_MSG_ECHO, b, seq=seq), True
        elif kind == 8:     # connector-level damage: nlmsg_len, cn.len
            body = kabi.HDR.pack(version=1, type=kabi.CNLAB_MSG_STATS, len=8) + kabi.STATS_REQ.pack()
            cl = rng.choice([0, len(body) + rng.randint(1, 100), 16365, 0xFFFF, len(body) - 1])
            cn = kabi.frame_cn(kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL, body, seq=seq, length=cl)
            nll = rng.choice([None, 0, 15, 16, 35, 36 + len(body) + 50, 1 << 20])
            dg = kabi.frame_nl(cn, seq=seq, nl_len=nll)
            yield dg, (True if connector_accepts(dg) else None)
        else:               # two nlmsgs in one send, or other ids, or random cnlab body
            if rng.random() < 0.5:
                a = kabi.encode_request(kabi.CNLAB_MSG_STATS, b"\1" * 3, seq=seq)
                b = kabi.encode_request(kabi.CNLAB_MSG_ECHO, kabi.ECHO.pack(), seq=seq + 1)
                pad = b"\0" * (kabi.nlmsg_align(len(a)) - len(a))
                yield a + pad + b, True
            else:
                body = kabi.HDR.pack(version=1, type=rng.randint(1, 8), len=0)
                idx = rng.choice([kabi.CNLAB_CTL_IDX + 2, 0x30, 0xFFFFFFFF])
                yield kabi.frame_nl(kabi.frame_cn(idx, 1, body, seq=seq), seq=seq), None


def t_fuzz(c, n=12000):
    rng = random.Random(1234)
    s0 = c.stats().body
    replied_ok = 0
    missing = 0
    wrong = 0
    sent = 0
    expected_replies = 0
    fz = kabi.CtlClient(timeout=2.0)
    for dg, expect in fuzz_frames(rng, n):
        try:
            fz.send_raw(dg)
        except OSError:
            continue
        sent += 1
        if expect is None:
            continue
        expected_replies += 1
        seq = kabi.CN_MSG_S.unpack_from(dg, 16)[2]
        r = fz.recv_reply(seq, 2.0)
        if r is None:
            missing += 1
        elif r.status >= 0:
            wrong += 1
        else:
            replied_ok += 1
    # drain stray replies (second messages etc.)
    while fz.recv_reply(None, 0.05) is not None:
        pass
    fz.close()
    e = c.echo(b"still alive")
    s1 = c.stats().body
    gen14 = c.gen_stats(14).body["state"]
    good = (missing == 0 and wrong == 0 and e.ok and gen14 == kabi.CNLAB_GEN_IDLE
            and s1["queue_limit"] == s0["queue_limit"] and s1["alloc_fail_nth"] == 0)
    return report("fuzz", good, sent=sent, expected_error_replies=expected_replies,
                  error_replies=replied_ok, missing=missing, non_error=wrong,
                  ctl_errors_delta=s1["ctl_errors"] - s0["ctl_errors"])


def t_faults(c):
    """SET_FAULT's effects, each counted exactly: ALLOC_NTH, STALL_MS with a small queue limit, no listener;
    and PANIC with its magic refused (-EOPNOTSUPP) by a module loaded without ``debug_panic``."""
    good = True
    # 1. every 10th allocation fails
    prev_limit = c.stats().body["queue_limit"]
    s0 = wait_drained(c).body["total"]
    cons = Consumer()
    cons.start()
    r = c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, 10)
    g, err = run_gen(c, cons, 13, 1000, context="kthread", path="cbus", cpu_mask=1, rate=0)
    c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, 0)
    s1 = wait_drained(c).body["total"]
    d = stats_delta(s0, s1)
    tot = gen_totals(g) if g else {}
    cons.wait_for(900)
    ok1 = (r.ok and g is not None and d["drop_nomem"] == 100 and tot["err_nomem"] == 100
           and d["sent"] == 900 and d["drop_full"] == 0 and d["drop_nolistener"] == d["drop_overrun"] == 0
           and d["drop_nlerr"] == 0 and cons.received == 900)
    # gaps seen by the consumer + messages missing after the last one seen
    tail = (g.body["cpus"][0]["generated"] - cons.expected.get((13, 0), 0)) if g else 0
    ok1 = ok1 and cons.lost + tail == 100 and cons.reordered == 0
    good = report("fault_alloc", ok1, delta=d, gen=tot, received=cons.received,
                  gaps=cons.lost, tail=tail) and good
    cons.stop()

    # 2. stall the workers with a small queue: exactly count - limit drop as full
    s0 = wait_drained(c).body["total"]
    cons = Consumer()
    cons.start()
    c.fault(kabi.CNLAB_FAULT_QLIMIT, 100)
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 1500)
    g, err = run_gen(c, cons, 13, 1000, context="kthread", path="cbus", cpu_mask=1, rate=0)
    mid = c.stats().body["total"]
    time.sleep(1.6)
    s1 = wait_drained(c).body["total"]
    c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
    d = stats_delta(s0, s1)
    tot = gen_totals(g) if g else {}
    cons.wait_for(100)
    ok2 = (g is not None and d["drop_full"] == 900 and tot["err_full"] == 900
           and d["sent"] == 100 and d["drop_nomem"] == 0 and cons.received == 100
           and mid["queued"] - s0["queued"] == 100)
    good = report("fault_stall", ok2, delta=d, gen=tot, received=cons.received,
                  queued_during_stall=mid["queued"]) and good
    cons.stop()

    # 3. no listener: counted as drop_nolistener
    s0 = wait_drained(c).body["total"]
    g, err = run_gen(c, None, 13, 500, context="timer", path="cbus", cpu_mask=1, rate=0)
    s1 = wait_drained(c).body["total"]
    d = stats_delta(s0, s1)
    ok3 = g is not None and d["drop_nolistener"] == 500 and d["sent"] == 0
    good = report("fault_nolistener", ok3, delta=d) and good

    # 4. PANIC with the magic, debug_panic off: refused (a module that panics anyway ends the guest: also caught)
    with open("/sys/module/cnlab/parameters/debug_panic") as f:
        debug_panic = f.read().strip()
    if debug_panic == "N":
        status = c.fault(kabi.CNLAB_FAULT_PANIC, kabi.CNLAB_PANIC_MAGIC).status
        good = report("fault_panic_refused", status == -errno.EOPNOTSUPP, status=status) and good
    return good


#: CPUs that failed to wake when brought online (EIO) and came up on a later try, as (cpu, tries).
WAKE_RETRIES = []


def cpu_set(cpu, on, tries=3):
    """Take ``cpu`` offline or bring it online. Bringing it online is tried up to ``tries`` times when the
    kernel's wake-up of the CPU fails (EIO: "do_boot_cpu failed to wakeup CPU#1", seen under TCG on a debug
    guest beside another one). EIO is the wake-up's own failure, not a callback's (those report their own
    error); the kernel then rolls back the states it had prepared, the module's too, so a retry also runs
    that path. Every retry is recorded in ``WAKE_RETRIES``."""
    for attempt in range(1, tries + 1):
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/online", "w") as f:
                f.write("1" if on else "0")
            if attempt > 1:
                WAKE_RETRIES.append((cpu, attempt))
            return
        except OSError as e:
            if not on or e.errno != errno.EIO or attempt == tries:
                raise


def t_hotplug(c, seconds=6.0, rate=HOTPLUG_RATE, min_cycles=0, max_seconds=150.0, rcvbuf=None):
    """CPUs 1.. go down and up in turn under five generators for at least ``seconds`` and ``min_cycles``
    offline/online cycles (the load lasts until both are met, at most ``max_seconds``; a CPU going down
    takes 0.3 s on a quiet 4-vCPU TCG guest and many seconds on a loaded host, so a cycle count, not a
    duration, says how much hotplug a run saw; ``seconds`` beyond ``max_seconds`` raise the cap). Every
    accepted message must arrive, in order, unless the reader's socket overran: each message an overrun cost
    must then be counted by CBUS (``drop_overrun``) or the direct generator (``err_overrun``) and be a gap
    or tail at the reader, and the socket must report drops. The queue limit is raised for the load, as far
    as the guest's memory allows (``queue_room``). ``rcvbuf`` sets the reader's buffer (default
    ``reader_buffer()``): a small one makes the overruns a lab test needs."""
    if ncpus() < 2:
        return report("hotplug", True, skipped="1 CPU")
    # Replies wait for CPU time under this load: a debug guest beside another one once took over 5 s to
    # answer the second GEN_START (a mutant whose instructions were all unchanged "failed" on it).
    quick_timeout, c.timeout = c.timeout, max(c.timeout, 60.0)
    try:
        return _hotplug(c, seconds, rate, min_cycles, max_seconds, rcvbuf)
    finally:
        c.timeout = quick_timeout


def _hotplug(c, seconds, rate, min_cycles, max_seconds, rcvbuf):
    cpus = list(range(1, ncpus()))
    retries_before = len(WAKE_RETRIES)
    s0 = wait_drained(c).body["total"]
    cons = Consumer(rcvbuf=rcvbuf)
    cons.start()
    # Generators catch up after a stall (bursts), and taking a CPU down under
    # TCG can stall a guest for seconds; timer, tasklet and hrtimer instances of
    # a dead CPU continue on CPU 0, which then carries most of the load. Give
    # the queues room; an overflow that still happens (a loaded CI host) is
    # allowed only if every message it cost is counted on both sides.
    prev_limit = c.stats().body["queue_limit"]
    limit = queue_room(ncpus(), 64, prev_limit)
    c.fault(kabi.CNLAB_FAULT_QLIMIT, limit)
    mask = (1 << ncpus()) - 1
    specs = HOTPLUG_LOAD
    max_seconds = max(seconds, max_seconds)
    dur = int(max_seconds * 1e9)  # stopped once the cycles are done
    for i, (ctx, path, fl, burst) in enumerate(specs):
        r = c.gen_start(gen_id=i, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0,
                        duration_ns=dur, cpu_mask=mask, rate=rate, size_min=32, size_max=64,
                        burst=burst, context=ctx, path=path, flags=fl)
        if not r.ok:
            cons.stop()
            c.gen_stop(kabi.CNLAB_GEN_ALL)
            c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
            return report("hotplug", False, error=r.error_name, ctx=ctx)
    cycles = 0
    start = time.monotonic()
    enough, cap = start + seconds - 0.5, start + max_seconds - 0.5
    while (time.monotonic() < enough or cycles < min_cycles) and time.monotonic() < cap:
        for cpu in cpus:
            cpu_set(cpu, False)
            time.sleep(0.05)
            cpu_set(cpu, True)
            time.sleep(0.05)
            cycles += 1
    loaded = time.monotonic() - start
    c.gen_stop(kabi.CNLAB_GEN_ALL)
    gens = [wait_gen_done(c, i, 30) for i in range(len(specs))]
    s1 = wait_drained(c)
    c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
    d = stats_delta(s0, s1.body["total"])
    gt = gen_totals_all(gens)
    generated, ok = gt["generated"], gt["ok"]
    overran = d["drop_overrun"]      # accepted by CBUS, then refused by the reader's full socket
    cons.wait_for(ok - overran)
    socket_drops = netlink_drops(cons.sock)
    cons.stop()
    tails = tail_loss(cons, gens)  # the overflow's tail
    refused = generated - ok
    overruns = overran + gt["err_overrun"]
    good = (all(g.body["state"] in (kabi.CNLAB_GEN_DONE, kabi.CNLAB_GEN_STOPPED) for g in gens)
            and cycles >= min_cycles and invariant_ok(s1) and d["queued"] == 0 and cons.reordered == 0
            and cons.received == ok - overran and online_cpus() == list(range(ncpus()))
            and gt["err_other"] == gt["err_nomem"] == gt["err_nolistener"] == 0
            and d["drop_nomem"] == d["drop_nolistener"] == d["drop_nlerr"] == 0
            and d["drop_full"] == gt["err_full"] and refused == gt["err_full"] + gt["err_overrun"]
            and cons.lost + tails == refused + overran
            and (socket_drops > 0) == (overruns > 0))
    return report("hotplug", good, cycles=cycles, min_cycles=min_cycles, loaded_seconds=round(loaded, 2),
                  generated=generated, accepted=ok, queue_limit=limit, overruns=overruns,
                  socket_drops=socket_drops,
                  received=cons.received, lost=cons.lost, tails=tails, refused=refused,
                  reordered=cons.reordered, gen=gt,
                  cbus_delta=d, online=online_cpus(), rate=rate,
                  hwm=[cs["hwm"] for cs in s1.body["cpus"]], wake_retries=WAKE_RETRIES[retries_before:],
                  gen_cpus=[[cs["generated"] for cs in g.body["cpus"]] for g in gens])


_libc = None
SYS_FINIT_MODULE = 313      # x86_64
SYS_DELETE_MODULE = 176
O_NONBLOCK = 0o4000


def _syscall(*args):
    """libc syscall(); returns "" or the error text (what rmmod/insmod do, minus a process spawn)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syscall(*args) == 0:
        return ""
    return os.strerror(ctypes.get_errno())


def module_load(path, params=""):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _syscall(SYS_FINIT_MODULE, fd, params.encode(), 0)
    finally:
        os.close(fd)


def module_unload(name):
    return _syscall(SYS_DELETE_MODULE, name.encode(), O_NONBLOCK)


def connector_sockets():
    """How many NETLINK_CONNECTOR sockets exist (the kernel's and every process's: /proc/net/netlink)."""
    with open("/proc/net/netlink") as f:
        return sum(1 for line in f if line.split()[1:2] == [str(kabi.NETLINK_CONNECTOR)])


def t_unload(c, cycles=100):
    """``cycles`` unloads and loads under control requests from two threads and a generator per cycle: every
    cycle unloads and loads, every unload's final line balances, and no cycle leaves a connector socket
    behind (the load's probe socket, for one: a leak would show as one more socket per cycle)."""
    sockets_before = connector_sockets()
    stop = threading.Event()
    stats = {"requests": 0, "replies": 0}

    def spam():
        while not stop.is_set():
            try:
                with kabi.CtlClient(timeout=0.2) as s:
                    while not stop.is_set():
                        s.send_raw(kabi.encode_echo(seq=s.next_seq()))
                        stats["requests"] += 1
                        if s.recv_reply(None, 0.2):
                            stats["replies"] += 1
                        s.send_raw(kabi.encode_stats(seq=s.next_seq()))
                        stats["requests"] += 1
                        if s.recv_reply(None, 0.2):
                            stats["replies"] += 1
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=spam, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    failures = []
    t0 = time.monotonic()
    for i in range(cycles):
        try:
            with kabi.CtlClient(timeout=10.0) as s:
                ctx = ("kthread", "timer", "hardirq", "softirq")[i % 4]
                r = s.gen_start(gen_id=i % 4, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0,
                                duration_ns=10**10, cpu_mask=(1 << ncpus()) - 1, rate=(i % 3) * 5000,
                                size_min=32, size_max=128, context=ctx, path="cbus")
                if not r.ok:
                    failures.append(("start", i, r.error_name))
        except (TimeoutError, OSError) as e:
            failures.append(("start", i, repr(e)))
        time.sleep(0.02)
        err = module_unload("cnlab")
        if err:
            failures.append(("rmmod", i, err))
            break
        err = module_load(MODULE)
        if err:
            failures.append(("insmod", i, err))
            break
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(3)
    kabi.wait_until(lambda: connector_sockets() <= sockets_before, 5.0)  # the threads' last sockets close
    sockets_after = connector_sockets()
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    finals = [line for line in log.splitlines() if "cbus final:" in line]
    bad_finals = []
    for line in finals[-cycles:]:
        words = line.split("cbus final:")[1].split()
        f = {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
        if (f["inserted"] != f["sent"] + f["full"] + f["nomem"] + f["nolistener"] + f["overrun"] + f["nlerr"]
                or f["queued"]):
            bad_finals.append(line)
    good = not failures and not bad_finals and len(finals) >= cycles and sockets_after <= sockets_before
    return report("unload", good, cycles=cycles, seconds=round(elapsed, 1), failures=failures[:5],
                  final_lines=len(finals), unbalanced=bad_finals[:3],
                  connector_sockets={"before": sockets_before, "after": sockets_after}, **stats)


def t_initfail(c):
    """Every init step made to fail unwinds completely (fail_init=N)."""
    res = {}
    subprocess.run(["rmmod", "cnlab"], capture_output=True)
    for step in range(1, 7):
        ins = subprocess.run(["insmod", MODULE, f"fail_init={step}"], capture_output=True, text=True)
        registered = "cnlab" in open("/proc/net/connector").read()
        loaded = os.path.exists("/sys/module/cnlab")
        dbg = os.path.exists("/sys/kernel/debug/cnlab")
        res[step] = {"failed": ins.returncode != 0, "registered": registered,
                     "loaded": loaded, "debugfs": dbg}
        if loaded:
            subprocess.run(["rmmod", "cnlab"], capture_output=True)
    ins = subprocess.run(["insmod", MODULE], capture_output=True, text=True)
    e = c.echo(b"back")
    good = all(v["failed"] and not v["registered"] and not v["loaded"] and not v["debugfs"]
               for v in res.values()) and ins.returncode == 0 and e.ok
    return report("initfail", good, steps=res)


def kernel_log_clean():
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    bad = [line for line in log.splitlines()
           if any(k in line for k in ("Oops", "BUG:", "WARNING:", "Call Trace", "refcount_t",
                                   "Waiting for cqueue", "general protection", "NOHZ tick-stop"))]
    return report("kernel_log", not bad, taint=read_taint(), bad=bad[:10])


def t_balance(c, count=3000):
    """Every CBUS outcome at once, then exact accounting.

    Generators of every context on every CPU (one bundled), a reader with a
    small receive buffer (so some broadcasts reach nobody: drop_nolistener),
    a phase with every 7th allocation failing (drop_nomem) and a phase with
    a stalled drain and a small queue (drop_full). Afterwards, per CPU and in
    total: inserted == sent + drops + queued with queued == 0; the CBUS
    deltas equal the generators' own counts; the reader received exactly
    ``sent`` messages, in order, its gaps plus tails equal to the drops.
    """
    mask = (1 << ncpus()) - 1
    prev_limit = c.stats().body["queue_limit"]
    s0 = wait_drained(c)
    cons = Consumer(rcvbuf=64 << 10)
    cons.start()
    specs = [("kthread", 0, 0), ("softirq", kabi.CNLAB_GEN_F_BUNDLE, 0), ("timer", 0, 20000),
             ("hardirq", 0, 20000)]
    gens = []
    phases = [("plain", None), ("nomem", (kabi.CNLAB_FAULT_ALLOC_NTH, 7)),
              ("full", (kabi.CNLAB_FAULT_STALL_MS, 400))]
    for p, (phase, fault) in enumerate(phases):
        if phase == "full":
            c.fault(kabi.CNLAB_FAULT_QLIMIT, 50)
        if fault:
            c.fault(*fault)
        for i, (ctx, fl, rate) in enumerate(specs):
            gid = 4 * p + i  # distinct ids per phase: sequences restart per generator
            r = c.gen_start(gen_id=gid, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=count // 3,
                            cpu_mask=mask, rate=rate, size_min=32, size_max=96, context=ctx,
                            path="cbus", flags=fl)
            if not r.ok:
                cons.stop()
                c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, 0)
                c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
                return report("balance", False, phase=phase, ctx=ctx, error=r.error_name)
        for i in range(len(specs)):
            gens.append(wait_gen_done(c, 4 * p + i))
        if phase == "nomem":
            c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, 0)
        wait_drained(c)
        if phase == "full":
            c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
    s1 = wait_drained(c)
    cons.wait_read(20)
    time.sleep(0.1)     # the reader thread has the last datagram in hand
    cons.stop()
    d = stats_delta(s0.body["total"], s1.body["total"])
    gt = gen_totals_all(gens)
    per_cpu = []
    for a, b in zip(s0.body["cpus"], s1.body["cpus"], strict=True):
        dc = stats_delta(a, b)
        per_cpu.append(dc["inserted"] == dc["sent"] + dc["drop_full"] + dc["drop_nomem"]
                       + dc["drop_nolistener"] + dc["drop_overrun"] + dc["drop_nlerr"] and dc["queued"] == 0)
    drops = d["drop_full"] + d["drop_nomem"] + d["drop_nolistener"] + d["drop_overrun"] + d["drop_nlerr"]
    tails = tail_loss(cons, gens)
    good = (all(g.body["state"] == kabi.CNLAB_GEN_DONE for g in gens)
            and invariant_ok(s1) and all(per_cpu) and d["queued"] == 0
            and d["inserted"] == gt["generated"]
            and d["drop_full"] == gt["err_full"] and d["drop_nomem"] == gt["err_nomem"]
            and gt["err_other"] == 0
            and gt["ok"] == d["sent"] + d["drop_nolistener"] + d["drop_overrun"] + d["drop_nlerr"]
            and d["inserted"] == d["sent"] + drops
            and cons.received == d["sent"] and cons.reordered == 0 and cons.lost + tails == drops
            and d["drop_full"] > 0 and d["drop_nomem"] > 0)
    return report("balance", good, cbus_delta=d, gen=gt, received=cons.received, gaps=cons.lost,
                  enobufs=cons.enobufs, per_cpu_balanced=per_cpu, tails=tails)


# ------------------------------------------------------- issue 17 and bursts

def reload_module(params=""):
    """Unload cnlab and load it again with ``params``; "" or the error text of the load."""
    err = module_unload("cnlab")
    if err and os.path.exists("/sys/module/cnlab"):
        return "rmmod: " + err
    return module_load(MODULE, params)


def stall_end(c):
    """End any stall, and wait until the queues are empty (a stall that ignores 0 runs out by itself)."""
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 0)
    return wait_drained(c, kabi.CNLAB_STALL_MAX_MS / 1000 + 5)


def t_stall_end(c):
    """SET_FAULT STALL_MS 0 ends a running stall: the stalled queue drains at once, not when the old stall ends."""
    s0 = wait_drained(c).body["total"]
    cons = Consumer()
    cons.start()
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 30000)
    g, err = run_gen(c, cons, 12, 200, context="kthread", path="cbus", cpu_mask=1, rate=0)
    held = kabi.wait_until(lambda: c.stats().body["total"]["queued"] - s0["queued"] >= 200, 5)
    t0 = time.monotonic()
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 0)
    drained = kabi.wait_until(lambda: c.stats().body["total"]["queued"] == 0, 10)
    seconds = time.monotonic() - t0
    cons.wait_for(200, 10)
    cons.stop()
    if not drained:
        stall_end(c)
    good = g is not None and bool(held) and bool(drained) and cons.received == 200 and cons.lost == 0
    return report("stall_end", good, error=err, held=bool(held), drained_after_s=round(seconds, 2),
                  received=cons.received)


def pool_misses(path="/sys/kernel/debug/cnlab/cbus"):
    """CBUS's pool misses over all CPUs (debugfs; the first line's ``pool_miss``), and ``pool_slots``."""
    with open(path) as fh:
        words = fh.readline().split()
    fields = dict(zip(words[::2], words[1::2], strict=False))
    return int(fields["pool_miss"]), int(fields["pool_slots"])


def t_pool_slots(c, extra=50):
    """Each CPU's pool holds ``pool_slots`` events, and a drained queue gives them all back: twice, with the
    drain stalled, ``pool_slots + extra`` small events are queued on CPU 0; each time exactly ``extra`` of them
    miss the pool (debugfs ``pool_miss``) and come from kmalloc."""
    misses, rounds = [], []
    for _ in range(2):
        before, slots = pool_misses()
        count = slots + extra
        limit = c.stats().body["queue_limit"]
        if limit < count:
            c.fault(kabi.CNLAB_FAULT_QLIMIT, count)
        try:
            c.fault(kabi.CNLAB_FAULT_STALL_MS, 30000)
            g, err = run_gen(c, None, 12, count, context="kthread", path="cbus", cpu_mask=1, rate=0,
                             size_min=32, size_max=32)
            held = kabi.wait_until(lambda n=count: c.stats().body["cpus"][0]["queued"] >= n, 10)
            misses.append(pool_misses()[0] - before)
            rounds.append({"queued": bool(held), "error": err, "ok": g is not None and gen_totals(g)["ok"]})
        finally:
            stall_end(c)
            if limit < count:
                c.fault(kabi.CNLAB_FAULT_QLIMIT, limit)
    good = misses == [extra, extra] and all(r["queued"] and r["ok"] == slots + extra for r in rounds)
    return report("pool_slots", good, pool_slots=slots, extra=extra, misses=misses, rounds=rounds)


BUNDLE_PACK_LEN = 108  # a bundled event then takes sizeof(cn_msg) + 108 = 128 bytes, 64 to the default 8,192


def bundle_sizes(sock, gen_id, want, seconds=10.0):
    """Read generator ``gen_id``'s ``want`` events from ``sock``: a dict of its events per bundle
    (``sizes``), its events sent alone (``unbundled``), events of other generators (``others``, in bundles or
    not), bundles whose inner messages do not all carry the bundle's id (``foreign_inner``) or whose header
    seq is not the first inner message's (``bad_header_seq``), and the generator's event seqs in the order
    they came (``seqs``)."""
    buf = bytearray(1 << 17)
    got = {"sizes": [], "unbundled": 0, "others": 0, "foreign_inner": 0, "bad_header_seq": 0, "seqs": []}

    def ours(msg):
        event = kabi.EVENT_S.unpack_from(msg.data) if len(msg.data) >= kabi.EVENT_S.size else None
        if event is None or event[0] != gen_id:
            got["others"] += 1
            return False
        got["seqs"].append(event[2])
        return True

    end = time.monotonic() + seconds
    while len(got["seqs"]) < want and time.monotonic() < end:
        if not select.select([sock], [], [], 0.5)[0]:
            continue
        n = sock.recv_into(buf)
        for m in kabi.parse_datagram(buf, n):
            if not m.flags & kabi.CNLAB_CN_F_BUNDLE:
                got["unbundled"] += ours(m)
                continue
            inner = kabi.parse_bundle(m.data)
            got["foreign_inner"] += any(i.id != m.id for i in inner)
            got["bad_header_seq"] += bool(inner) and m.seq != inner[0].seq
            mine = sum(ours(i) for i in inner)
            if mine:
                got["sizes"].append(mine)
    return got


def t_bundle_pack(c, count=300):
    """A queue drained in one batch is packed greedily: with the drain stalled, ``count`` bundled events of one
    id on one CPU go out as full bundles of bundle_bytes // (sizeof(cn_msg) + length) events each (the last
    one the rest), every inner message with the bundle's id and the bundle's seq its first message's, the
    events in their order 0..count-1."""
    gen_id = 13
    s0 = wait_drained(c).body["total"]
    with open("/sys/module/cnlab/parameters/bundle_bytes") as f:
        per_bundle = int(f.read()) // (kabi.CN_MSG.size + BUNDLE_PACK_LEN)
    expected = [per_bundle] * (count // per_bundle) + ([count % per_bundle] if count % per_bundle else [])
    sock = kabi.open_socket([GROUP], 16 << 20)
    try:
        # ended below once all are queued; under a minute, as the drain thread sleeps uninterruptibly (a
        # mutation guest reports a task blocked for 60 s)
        c.fault(kabi.CNLAB_FAULT_STALL_MS, 30000)
        g, err = run_gen(c, None, gen_id, count, context="kthread", path="cbus", cpu_mask=1, rate=0,
                         size_min=BUNDLE_PACK_LEN, size_max=BUNDLE_PACK_LEN, flags=kabi.CNLAB_GEN_F_BUNDLE)
        held = kabi.wait_until(lambda: c.stats().body["total"]["queued"] >= count, 5)
        c.fault(kabi.CNLAB_FAULT_STALL_MS, 0)
        s1 = wait_drained(c).body["total"]
        got = bundle_sizes(sock, gen_id, count)
    finally:
        sock.close()
        stall_end(c)
    drained = s1["queued"] == 0
    in_order = got["seqs"] == list(range(count))
    # CBUS's own counters against what the socket got: every event sent, one netlink message per bundle
    d = stats_delta(s0, s1)
    counted = d["sent"] == count and d["nl_msgs"] == d["bundles"] == len(got["sizes"])
    good = (g is not None and bool(held) and drained and got["sizes"] == expected and got["unbundled"] == 0
            and got["others"] == 0 and got["foreign_inner"] == 0 and got["bad_header_seq"] == 0 and in_order
            and counted)
    return report("bundle_pack", good, error=err, held=bool(held), expected=expected, bundles=got["sizes"][:20],
                  unbundled=got["unbundled"], others=got["others"], foreign_inner=got["foreign_inner"],
                  bad_header_seq=got["bad_header_seq"], in_order=in_order, received=len(got["seqs"]),
                  counted=counted, cbus_delta=d)


def t_hwm_reset(c):
    """STATS with CNLAB_STATS_F_RESET_HWM restarts the high-water mark: a stalled queue's peak is gone after it."""
    wait_drained(c)
    cons = Consumer()
    cons.start()
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 30000)
    g, err = run_gen(c, cons, 12, 150, context="kthread", path="cbus", cpu_mask=1, rate=0)
    kabi.wait_until(lambda: c.stats().body["total"]["queued"] >= 150, 5)
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 0)
    peak = wait_drained(c).body["total"]["hwm"]
    cons.wait_for(150, 10)
    cons.stop()
    reset = c.stats(reset_hwm=True)
    after = c.stats().body["total"]["hwm"]
    good = g is not None and peak >= 150 and reset.ok and reset.body["total"]["hwm"] == 0 and after == 0
    return report("hwm_reset", good, error=err, peak=peak, reset=reset.error_name or "ok",
                  hwm_in_reply=reset.body.get("total", {}).get("hwm"), hwm_after=after)


#: A CPU's STATS counters that only grow: its producers and its drain count up; nothing counts them down or resets
#: them (hwm is reset by a STATS flag, queued is derived, batch_max is a maximum).
GROWING = ("inserted", "enqueued", "drop_full", "drop_nomem", "rejected", "kicks", "dequeued", "sent",
           "drop_nolistener", "drop_overrun", "drop_nlerr", "batches", "nl_msgs", "bundles")


def went_back(prev, cur):
    """The growing counters of one CPU's STATS entry that are lower in ``cur`` than in ``prev`` (an earlier
    snapshot by the same reader), as "name before -> after"."""
    return [f"{k} {prev[k]} -> {cur[k]}" for k in GROWING if cur[k] < prev[k]]


#: A STATS reader's pause between requests: it runs SCHED_FIFO, so that the producers and the drain threads (nice
#: -20, runnable all the time under a full-rate load) cannot starve it (a debug-flavour guest's readers once got
#: no snapshot in 3 s), and the pause leaves its CPU to them in between.
STATS_READER_PAUSE_S = 0.002


def _stats_reader(cpu, end, reset_every, out):
    """Pinned to ``cpu`` at real-time priority: STATS until ``end`` (monotonic), every ``reset_every``-th with
    the high-water mark reset, ``STATS_READER_PAUSE_S`` apart; in ``out``: snapshots, those in which some CPU's
    ``inserted`` had grown since the last, and the counters that went back."""
    snapshots = overlapped = 0
    back, over_limit, errors = [], [], []
    last = None
    try:
        os.sched_setaffinity(0, {cpu})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        with kabi.CtlClient(timeout=5.0) as q:
            while time.monotonic() < end and snapshots < 20000:
                time.sleep(STATS_READER_PAUSE_S)
                r = q.stats(reset_hwm=snapshots % reset_every == reset_every - 1)
                if not r.ok:
                    errors.append(r.error_name)
                    break
                snapshots += 1
                cpus = {cs["cpu"]: cs for cs in r.body["cpus"]}
                if last is not None:
                    overlapped += any(cs["inserted"] > last[n]["inserted"] for n, cs in cpus.items() if n in last)
                    back += [f"cpu {n}: {b}" for n, cs in cpus.items() if n in last for b in went_back(last[n], cs)]
                over_limit += [f"cpu {n}: hwm {cs['hwm']} > limit {r.body['queue_limit']}"
                               for n, cs in cpus.items() if cs["hwm"] > r.body["queue_limit"]]
                last = cpus
    except Exception as e:  # noqa: BLE001 - named in the check's record, not lost on the thread's stderr
        errors.append(repr(e))
    finally:
        out[cpu] = {"snapshots": snapshots, "overlapped": overlapped, "went_back": back[:5],
                    "over_limit": over_limit[:5], "errors": errors}


def t_stats_live(c, seconds=3.0, reset_every=2):
    """STATS under full load on every CPU, from a reader on every CPU.

    A kthread producer at full rate and a hard-IRQ producer insert on every CPU (nobody listens: each message is
    counted dropped) while a reader thread pinned to each CPU asks STATS, one request in ``reset_every`` with
    CNLAB_STATS_F_RESET_HWM. No growing counter of any CPU goes back from one snapshot of a reader to its next,
    no high-water mark is above the queue limit, and once the producers stop and the queues drain the invariant
    and the ledger hold. Evidence that the reads overlapped the inserts: in at least half the snapshots some CPU's
    ``inserted`` had grown since that reader's last. On the kcsan flavour this is the load under which a read of
    a counter that races its producer's store is reported: STATS reads each counter with READ_ONCE(), the insert
    path reads the high-water mark the reset writes with READ_ONCE()."""
    cpus = online_cpus()
    mask = sum(1 << cpu for cpu in cpus)
    wait_drained(c)
    common = dict(idx=GEN_IDX, val=GEN_VAL, group=GROUP, cpu_mask=mask, count=0, size_min=32, size_max=96,
                  path="cbus", duration_ns=int((seconds + 2) * 1e9))
    started = [c.gen_start(gen_id=13, context="kthread", rate=0, **common),
               c.gen_start(gen_id=14, context="hardirq", rate=20000, burst=8, **common)]
    out = {}
    end = time.monotonic() + seconds
    readers = [threading.Thread(target=_stats_reader, args=(cpu, end, reset_every, out), daemon=True) for cpu in cpus]
    for t in readers:
        t.start()
    for t in readers:
        t.join(seconds + 30)
    stuck = [cpu for cpu, t in zip(cpus, readers, strict=True) if t.is_alive()]
    out = {cpu: dict(v) for cpu, v in list(out.items())}  # a reader still running writes no more into this copy
    for gid in (13, 14):
        c.gen_stop(gid)
    if not all(r.ok for r in started):
        return report("stats_live", False, started=[r.error_name or "ok" for r in started], readers=out)
    gens = [wait_gen_done(c, gid) for gid in (13, 14)]
    final = wait_drained(c)
    problems = kabi.counter_problems(final.body)
    snapshots = sum(v["snapshots"] for v in out.values())
    overlapped = sum(v["overlapped"] for v in out.values())
    generated = gen_totals_all(gens)["generated"]
    good = (not stuck and len(out) == len(cpus) and snapshots >= 2 * len(cpus)
            and not any(v["went_back"] or v["over_limit"] or v["errors"] for v in out.values())
            and 2 * overlapped >= snapshots - len(cpus) and invariant_ok(final) and not problems and generated > 0)
    return report("stats_live", good, readers=out, stuck_readers=stuck, snapshots=snapshots, overlapped=overlapped,
                  generated=generated, started=["ok", "ok"], counter_problems=problems)


def t_gen_fail_keeps(c):
    """A GEN_START that fails (no online CPU in its mask) leaves the id's previous run and statistics alone."""
    gid = 11
    base = dict(gen_id=gid, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=100, rate=0, size_min=32,
                size_max=32, context="kthread", path="cbus")
    r = c.gen_start(cpu_mask=1, **base)
    g = wait_gen_done(c, gid)
    before = (g.body["state"], gen_totals(g), g.body["cfg"], g.body["start_ns"], g.body["end_ns"])
    bad = c.gen_start(cpu_mask=1 << 63, **base)    # CPU 63 is not online here
    a = c.gen_stats(gid)
    after = (a.body["state"], gen_totals(a), a.body["cfg"], a.body["start_ns"], a.body["end_ns"])
    good = r.ok and bad.status == -errno.EINVAL and before == after and before[1]["generated"] == 100
    return report("gen_fail_keeps", good, start=r.error_name, failed_start=bad.error_name,
                  state_before=before[0], state_after=after[0], generated_before=before[1]["generated"],
                  generated_after=after[1]["generated"])


FAIL_FUNCTION = "/sys/kernel/debug/fail_function"


def t_insert_refusals(c, times=100, count=1000, gen_id=14):
    """An insert CBUS refuses for a reason of its own is counted as that (debug flavour): ``fail_function``
    makes ``cbus_insert_group()`` return -EINVAL (the kernel's default for an errno function) for the first
    ``times`` calls, made by a kthread generator of ``count`` messages on CPU 0. The injection's own counter
    shows each failure (evidence); the generator must count them in ``err_other``, every message in exactly one
    outcome, and CBUS must have seen only the others."""
    if not os.path.exists(f"{FAIL_FUNCTION}/inject"):
        return report("insert_refusals", True, skipped="no fail_function (CONFIG_FAIL_FUNCTION)")
    s0 = wait_drained(c).body["total"]

    def put(name, value):
        fault_knobs.write(f"fail_function/{name}", value)

    put("probability", "0")
    put("inject", "cbus_insert_group")
    try:
        for name, value in (("verbose", "0"), ("interval", "1"), ("task-filter", "N"), ("times", str(times)),
                            ("probability", "100")):
            put(name, value)
        r = c.gen_start(gen_id=gen_id, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=count, rate=0, cpu_mask=1,
                        size_min=32, size_max=32, context="kthread", path="cbus")
        g = wait_gen_done(c, gen_id)
        with open(f"{FAIL_FUNCTION}/times") as fh:
            injected = times - int(fh.read())
    finally:
        put("probability", "0")
        put("inject", "!cbus_insert_group")
    t = gen_totals(g)
    inserted = wait_drained(c).body["total"]["inserted"] - s0["inserted"]
    good = (r.ok and injected == times and t["generated"] == count and t["err_other"] == injected
            and sum(t[k] for k in GEN_KEYS if k != "generated") == count and inserted == count - injected)
    return report("insert_refusals", good, injected=injected, generator=t, cbus_inserted=inserted)


#: failslab for a BENCH round: the first slab allocation a task marked ``make-it-fail`` makes fails, those
#: that may sleep too, with no stack trace on the console; ``probability`` last, so the rest is in place.
BENCH_NOMEM_KNOBS = {"failslab/ignore-gfp-wait": "N", "failslab/verbose": "0", "failslab/task-filter": "Y",
                     "failslab/interval": "1", "failslab/space": "0", "failslab/times": "1",
                     "failslab/probability": "100"}


#: Why a check that needs failslab is skipped on a kernel without it.
NO_FAILSLAB = "no failslab (CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS)"


def bench_reply_body(r):
    """A BENCH reply's result body, decoded also when the header carries an error."""
    return r.body or (kabi.BENCH_RESULT.unpack(r.raw) if r.raw else {})


def bench_nomem_outcome(injected, reply):
    """One ``bench_nomem`` round: ``enomem`` (the run answered -ENOMEM in the header and the body, having
    measured nothing), ``elsewhere`` (the failure went to another work item or to a send the run counted: it
    measured), ``missed`` (nothing was failed), or what is wrong."""
    if reply is None:
        return "no reply"
    body = bench_reply_body(reply)
    calls = body.get("cbus_calls", 0) + body.get("direct_calls", 0)
    if not injected:
        return "missed"
    if reply.status == body.get("status") == -errno.ENOMEM and not calls:
        return "enomem"
    if reply.status == body.get("status") == 0 and body.get("cbus_calls") and body.get("direct_calls"):
        return "elsewhere"
    return f"answered {reply.error_name or 'OK'} (body {body.get('status')}) with {calls} calls measured"


def t_bench_nomem(c, rounds=3):
    """A BENCH whose message buffer cannot be allocated answers -ENOMEM, with nothing measured (debug flavour).

    BENCH runs in a workqueue worker of its CPU, which the requester's ``fail-nth`` (``alloc_sweep``) does not
    reach: ``failslab``, filtered to the workers bound to that CPU (``make-it-fail``), fails the first slab
    allocation one of them makes, once. The run's first allocation is its message buffer. ``failslab``'s
    ``times`` shows that a failure happened (evidence); a round whose failure went elsewhere (the run measured)
    or that failed nothing is run again, at most ``rounds`` times, and one must end in -ENOMEM.
    """
    if not os.path.isdir(f"{fault_knobs.DEBUGFS}/failslab"):
        return report("bench_nomem", True, skipped=NO_FAILSLAB)
    cpu = ncpus() - 1
    outcomes = []
    for _ in range(rounds):
        wait_drained(c)
        with fault_knobs.tasks_made_to_fail(fault_knobs.kworkers_of(cpu)) as marked, \
                fault_knobs.knobs_set(BENCH_NOMEM_KNOBS):
            r = c.bench(timeout=30, idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32, iterations=8,
                        chunk=8, pause_us=0, cpu=cpu)
            injected = fault_knobs.read("failslab/times") == "0"
        outcomes.append(bench_nomem_outcome(injected, r))
        outcomes[-1] += "" if marked else " (no worker of the CPU found)"
        if outcomes[-1] not in ("elsewhere", "missed"):
            break
    good = outcomes[-1] == "enomem"
    return report("bench_nomem", good, cpu=cpu, rounds=outcomes)


#: failslab for BENCH's direct sends: the first allocations that cannot sleep made by a task marked
#: ``make-it-fail`` fail (the sends' GFP_ATOMIC skbs); its buffer, GFP_KERNEL, is spared.
BENCH_DIRECT_FAIL_KNOBS = dict(BENCH_NOMEM_KNOBS, **{"failslab/ignore-gfp-wait": "Y", "failslab/times": "8"})


def t_bench_direct_err(c, rounds=3, iterations=64):
    """A direct send that BENCH times and that fails for a reason other than -ESRCH is counted (debug flavour).

    With a listener on the group, ``failslab`` filtered to the BENCH CPU's workers and to allocations that
    cannot sleep fails the first 8 the run makes: its direct sends' skbs (its CBUS inserts take pool slots).
    Every direct call must then be exactly one of ``direct_ok``, ``direct_esrch``, ``direct_err``, with
    ``direct_err`` above 0; ``failslab``'s ``times`` going down is the evidence. A round whose failures all went
    to other work of those workers is run again, at most ``rounds`` times."""
    if not os.path.isdir(f"{fault_knobs.DEBUGFS}/failslab"):
        return report("bench_direct_err", True, skipped=NO_FAILSLAB)
    cpu = ncpus() - 1
    sock = kabi.open_socket([BENCH_GROUP], 16 << 20)
    outcomes = []
    try:
        for _ in range(rounds):
            wait_drained(c)
            with fault_knobs.tasks_made_to_fail(fault_knobs.kworkers_of(cpu)) as marked, \
                    fault_knobs.knobs_set(BENCH_DIRECT_FAIL_KNOBS):
                r = c.bench(timeout=30, idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32,
                            iterations=iterations, chunk=8, pause_us=0, cpu=cpu)
                failed = int(BENCH_DIRECT_FAIL_KNOBS["failslab/times"]) - int(fault_knobs.read("failslab/times"))
            b = bench_reply_body(r) if r is not None else {}
            row = {k: b.get(k) for k in ("status", "direct_calls", "direct_ok", "direct_esrch", "direct_err")}
            outcomes.append(dict(row, injected=failed, marked=bool(marked)))
            if b.get("direct_err") or not failed:
                break
    finally:
        sock.close()
    last = outcomes[-1]
    counted = (last["direct_ok"] or 0) + (last["direct_esrch"] or 0) + (last["direct_err"] or 0)
    good = (last["status"] == 0 and last["injected"] > 0 and (last["direct_err"] or 0) > 0
            and counted == last["direct_calls"] == iterations)
    return report("bench_direct_err", good, cpu=cpu, rounds=outcomes)


def alloc_failures(cons, gen_id, cpu, generated):
    """The sequence numbers of (gen_id, cpu) that never arrived, sorted."""
    seen = {s for s, _ in cons.seqs.get((gen_id, cpu), [])}
    return [s for s in range(generated) if s not in seen]


def check_nth_epochs(fails, m):
    """Each run of consecutive failures (ALLOC_NTH 1) must be followed by failures exactly m apart (ALLOC_NTH m).

    Returns (transitions checked, list of violations). After a run ending at a, the next failure is a + m,
    a + 2m, ..., until the next run (of two or more) starts, no later than m after the last failure.
    """
    runs = []
    i = 0
    while i < len(fails):
        j = i
        while j + 1 < len(fails) and fails[j + 1] == fails[j] + 1:
            j += 1
        runs.append((fails[i], fails[j]))
        i = j + 1
    checked = 0
    bad = []
    k = 0
    while k < len(runs):
        start, end = runs[k]
        if end == start:        # an isolated failure where a run should end: counted below
            k += 1
            continue
        last = end
        k += 1
        while k < len(runs) and runs[k][0] == runs[k][1]:   # isolated failures: the m epoch
            f = runs[k][0]
            if f != last + m:
                bad.append({"after": last, "failure": f, "want": last + m})
            last = f
            k += 1
        if k < len(runs):
            if runs[k][0] > last + m:
                bad.append({"after": last, "next_run": runs[k][0], "want_by": last + m})
            checked += 1
    return checked, bad


def t_alloc_nth_exact(c, seconds=5.0, m=7):
    """ALLOC_NTH set while producers run on other CPUs is exact on every CPU.

    The setter (this process, pinned to CPU 0) switches ALLOC_NTH between 1 (every insert fails: a run of
    missing sequence numbers marks the epoch; the setter waits for two of them) and m, while kthread generators
    insert on the other CPUs. After
    each switch to m, each CPU's first failure must be exactly its m-th insert after its last 1-epoch insert,
    then every m-th: a reset that misses a CPU, or inserts let through uncounted during the switch, show as
    a failure out of step.
    """
    cpus = [cpu for cpu in online_cpus() if cpu != 0]
    if not cpus:
        return report("alloc_nth_exact", True, skipped="1 CPU")
    os.sched_setaffinity(0, {0})
    mask = sum(1 << cpu for cpu in cpus)
    prev_limit = c.stats().body["queue_limit"]
    c.fault(kabi.CNLAB_FAULT_QLIMIT, kabi.CNLAB_QLIMIT_MAX)
    s0 = wait_drained(c).body["total"]
    cons = Consumer(keep_seqs=True)
    cons.start()
    gid = 9
    r = c.gen_start(gen_id=gid, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0, duration_ns=int(seconds * 1e9),
                    cpu_mask=mask, rate=30000, size_min=32, size_max=32, context="kthread", path="cbus")
    switches = 0
    end = time.monotonic() + seconds

    def nomem():
        return c.stats().body["total"]["drop_nomem"]

    while r.ok and time.monotonic() < end:
        # Each epoch must see inserts, else it leaves no mark: a 1-epoch without inserts would look like
        # an m-epoch whose count restarted. So wait for two failures of the 1-epoch (its run) before
        # switching to m, and for two of the m-epoch before switching back.
        c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, 1)
        base = nomem()
        kabi.wait_until(lambda b=base: nomem() >= b + 2, 2, pause=0.001)
        c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, m)
        base = nomem()
        kabi.wait_until(lambda b=base: nomem() >= b + 2, 2, pause=0.002)
        switches += 1
    c.fault(kabi.CNLAB_FAULT_ALLOC_NTH, 0)
    g = wait_gen_done(c, gid)
    s1 = wait_drained(c).body["total"]
    c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
    cons.wait_read(30)
    time.sleep(0.1)
    cons.stop()
    os.sched_setaffinity(0, set(online_cpus()))
    d = stats_delta(s0, s1)
    checked = 0
    bad = []
    per_cpu = {}
    for cs in g.body["cpus"]:
        if not cs["generated"]:
            continue
        fails = alloc_failures(cons, gid, cs["cpu"], cs["generated"])
        n, b = check_nth_epochs(fails, m)
        checked += n
        bad += [dict(v, cpu=cs["cpu"]) for v in b]
        per_cpu[cs["cpu"]] = {"generated": cs["generated"], "err_nomem": cs["err_nomem"], "missing": len(fails)}
    counted = all(v["missing"] == v["err_nomem"] for v in per_cpu.values())
    good = (r.ok and d["drop_nomem"] == sum(v["err_nomem"] for v in per_cpu.values()) and counted
            and d["drop_full"] == d["drop_nolistener"] == d["drop_nlerr"] == 0 and cons.reordered == 0
            and checked >= 20 and not bad)
    return report("alloc_nth_exact", good, error=r.error_name, switches=switches, transitions_checked=checked,
                  out_of_step=len(bad), examples=bad[:5], per_cpu=per_cpu, cbus_delta=d)


def t_drain_budget(c, budget=16, count=1000):
    """With drain_budget=N one drain call sends at most N messages, whatever one queue batch holds."""
    err = reload_module(f"drain_budget={budget}")
    if err:
        return report("drain_budget", False, error="load: " + err)
    try:
        cons = Consumer()
        cons.start()
        c.fault(kabi.CNLAB_FAULT_STALL_MS, 1000)
        g, gerr = run_gen(c, cons, 13, count, context="kthread", path="cbus", cpu_mask=1, rate=0)
        s1 = wait_drained(c, 15)
        cons.wait_for(count, 20)
        cons.stop()
        cpu0 = s1.body["cpus"][0]
        good = (g is not None and cons.received == count and cons.lost == cons.reordered == 0
                and 0 < cpu0["batch_max"] <= budget and cpu0["batches"] >= count // budget)
        return report("drain_budget", good, error=gerr, budget=budget, batch_max=cpu0["batch_max"],
                      batches=cpu0["batches"], received=cons.received)
    finally:
        err = reload_module("")
        if err:
            report("drain_budget", False, error="reload: " + err)


def t_bench_status(c):
    """A BENCH run that fails answers with its error in the reply header, not only in the body."""
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 5000)
    run_gen(c, None, 10, 10, context="kthread", path="cbus", cpu_mask=1, rate=0)  # 10 stay queued on CPU 0
    r = c.bench(timeout=30, idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32, iterations=8, chunk=8,
                pause_us=0, cpu=0)
    stall_end(c)
    body_status = bench_reply_body(r).get("status")
    good = r.status == -errno.ETIMEDOUT and body_status == -errno.ETIMEDOUT
    return report("bench_status", good, header_status=r.status, body_status=body_status)


def t_bench_offline(c):
    """A BENCH whose CPU goes offline settles on the CPU its work moved to.

    The run starts on CPU 1 (chunks of one call, 100 ms apart); CPU 1 goes offline (the work moves to CPU 0),
    then the drain threads stall. The insert on CPU 0 stays queued, so waiting for the queue of the CPU the
    work runs on must time out (-ETIMEDOUT); waiting on CPU 1's queue (empty, its CPU is dead) lets the run
    carry on into a queue that never empties.
    """
    if ncpus() < 2:
        return report("bench_offline", True, skipped="1 CPU")
    b = kabi.CtlClient(timeout=60)
    seq = b.next_seq()
    b.send_raw(kabi.encode_request(kabi.CNLAB_MSG_BENCH, kabi.BENCH.pack(
        idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32, iterations=30, chunk=1, pause_us=100000,
        cpu=1), seq=seq))
    time.sleep(0.5)
    cpu_set(1, False)
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 20000)
    r = b.recv_reply(seq, 60)
    b.close()
    stall_end(c)
    cpu_set(1, True)
    if r is None:
        return report("bench_offline", False, error="no BENCH reply")
    res = r.body if r.body else kabi.BENCH_RESULT.unpack(r.raw)
    good = r.status == -errno.ETIMEDOUT and res["status"] == -errno.ETIMEDOUT
    return report("bench_offline", good, header_status=r.status, body_status=res["status"],
                  cbus_calls=res["cbus_calls"], direct_calls=res["direct_calls"], started_on=res["cpu"])


def possible_cpus():
    with open("/sys/devices/system/cpu/possible") as f:
        out = []
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            out += range(int(lo), int(hi or lo) + 1)
        return out


#: STATS fields whose total is the sum of the CPUs' entries, and those whose total is their largest.
SUMMED_FIELDS = ("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr",
                 "rejected", "queued", "kicks", "batches", "nl_msgs", "bundles", "enqueued", "dequeued", "online")
MAXED_FIELDS = ("hwm", "batch_max")


def total_mismatches(stats):
    """The fields of a STATS reply's total that are not the sum (or maximum) of its CPU entries, as
    {field: (total, from the entries)}. Only meaningful with nothing running and every CPU in the entries."""
    cpus, total = stats["cpus"], stats["total"]
    expected = {k: sum(e[k] for e in cpus) for k in SUMMED_FIELDS}
    expected.update({k: max((e[k] for e in cpus), default=0) for k in MAXED_FIELDS})
    expected["batch_hist"] = [sum(col) for col in zip(*(e["batch_hist"] for e in cpus), strict=True)]
    actual = {**total, "batch_hist": list(total["batch_hist"])}
    return {k: (actual[k], v) for k, v in expected.items() if actual[k] != v}


#: The module parameters' documented defaults (docs/kmod.md, "Parameters"; a unit test keeps the two in step),
#: as /sys/module/cnlab/parameters/ shows them.
PARAM_DEFAULTS = {"queue_limit": "4096", "queue_bytes": "67108864", "bundle_bytes": "8192", "drain_budget": "4096",
                  "drain_nice": "-20", "pool_slots": "1024", "debug_warn": "N", "debug_panic": "N", "fail_init": "0"}


#: Each parameter file's mode (docs/kmod.md "Module parameters"): read-only, but for the two debug switches root may
#: turn on at run time; a file others may write would let any user steer the module.
PARAM_MODES = dict.fromkeys(PARAM_DEFAULTS, 0o444) | {"debug_warn": 0o644, "debug_panic": 0o644}


def t_defaults(c, params="/sys/module/cnlab/parameters"):
    """Every module parameter exists and, loaded without arguments, has its documented default and file mode:
    users size queues and readers by them, and no other check would see a default that moved (bundle_bytes
    8191) or a mode that changed (pool_slots 0644: a pool resized under the running module)."""
    got = {}
    for name in PARAM_DEFAULTS:
        try:
            with open(os.path.join(params, name)) as fh:
                got[name] = fh.read().strip()
        except OSError as e:
            got[name] = f"unreadable: {e.strerror}"
    modes = {}
    for name in PARAM_DEFAULTS:
        try:
            modes[name] = os.stat(os.path.join(params, name)).st_mode & 0o7777
        except OSError:
            modes[name] = None  # already named in wrong
    extra = sorted(set(os.listdir(params)) - set(PARAM_DEFAULTS)) if os.path.isdir(params) else []
    wrong = {k: v for k, v in got.items() if v != PARAM_DEFAULTS[k]}
    wrong_modes = {k: oct(m) for k, m in modes.items() if m is not None and m != PARAM_MODES[k]}
    return report("defaults", not wrong and not extra and not wrong_modes, wrong=wrong, undocumented=extra,
                  wrong_modes=wrong_modes)


#: The module parameters with a documented range (docs/kmod.md "Module parameters"; a unit test keeps the two in
#: step): (lowest, highest), None where there is no upper end. fail_init is a test hook, checked by initfail.
PARAM_RANGES = {"queue_limit": (1, 1048576), "queue_bytes": (65536, 1073741824), "bundle_bytes": (256, 16364),
                "drain_budget": (1, None), "drain_nice": (-20, 19), "pool_slots": (0, 65536)}
SIGNED_PARAMS = {"drain_nice"}


def param_bound_values(name):
    """(the ends of ``name``'s range, the values one past them) as load arguments; a value below 0 of an
    unsigned parameter is left out (the kernel's parser refuses it before the module sees it)."""
    lo, hi = PARAM_RANGES[name]
    ends = [lo] + ([hi] if hi is not None else [])
    past = [v for v in (lo - 1, None if hi is None else hi + 1)
            if v is not None and (v >= 0 or name in SIGNED_PARAMS)]
    return ends, past


def t_param_bounds(c, params="/sys/module/cnlab/parameters"):
    """Every module parameter with a documented range loads at both ends of it, reads back the value given and
    answers ECHO; one past either end fails the load. A refusal one step inside the range (``>=`` for ``>``)
    or a value let through one step outside it shows here and nowhere else."""
    res, good = {}, True
    try:
        for name in PARAM_RANGES:
            ends, past = param_bound_values(name)
            for value in ends:
                err = reload_module(f"{name}={value}")
                row = {"load": err or "loaded"}
                if not err:
                    with open(f"{params}/{name}") as fh:
                        row["read_back"] = fh.read().strip()
                    with kabi.CtlClient(timeout=10.0) as q:
                        row["echo"] = q.echo(b"bounds").error_name or "ok"
                res[f"{name}={value}"] = row
                good = good and row == {"load": "loaded", "read_back": str(value), "echo": "ok"}
            for value in past:
                err = reload_module(f"{name}={value}")
                res[f"{name}={value}"] = {"load": err or "loaded"}
                good = good and bool(err)
    finally:
        err = reload_module("")
    return report("param_bounds", good and not err, results=res, reload=err or "loaded")


def t_group_bounds(c, count=20):
    """Generators reach the lowest and the highest multicast group (1 and 32) on every path: direct, CBUS and
    CBUS bundles each deliver all ``count`` messages of a kthread generator to a reader of that group; groups
    0 and 33 are refused (-EINVAL)."""
    res, good = {}, True
    for group in (kabi.CNLAB_GROUP_MIN, kabi.CNLAB_GROUP_MAX):
        for path, flags in (("direct", 0), ("cbus", 0), ("cbus", kabi.CNLAB_GEN_F_BUNDLE)):
            wait_drained(c)
            cons = Consumer(group=group)
            cons.start()
            g, err = run_gen(c, cons, 11, count, context="kthread", path=path, flags=flags, cpu_mask=1, group=group)
            wait_drained(c)
            tot = gen_totals(g) if g is not None else {}
            cons.wait_for(count, 10)
            cons.stop()
            row = {"error": err, "ok": tot.get("ok"), "received": cons.received, "lost": cons.lost}
            res[f"{group} {path}{' bundle' if flags else ''}"] = row
            good = good and row == {"error": None, "ok": count, "received": count, "lost": 0}
    for group in (kabi.CNLAB_GROUP_MIN - 1, kabi.CNLAB_GROUP_MAX + 1):
        r = c.gen_start(gen_id=11, idx=GEN_IDX, val=GEN_VAL, group=group, count=count, cpu_mask=1, rate=0,
                        size_min=32, size_max=32, context="kthread", path="cbus")
        res[f"{group} refused"] = r.error_name or "started"
        good = good and r.status == -errno.EINVAL
        if r.ok:
            wait_gen_done(c, 11)
    return report("group_bounds", good, results=res)


def message_problems(buf, off, end, gen_id, cbus):
    """What is wrong with one generated connector message at ``buf[off:end]`` (its ``cn_msg`` and data) by
    docs/kmod.md "Generated messages": ``cn_msg{idx, val, seq = low 32 bits of the sequence, ack 0, len,
    flags 0}``, the event (its ``len`` the message's, ``flags`` CBUS for that path) and filler bytes equal to
    ``seq & 0xff``. A list of problem names (empty: right) and the event's seq, or None when too short."""
    if end - off < kabi.CN_MSG.size + kabi.EVENT_S.size:
        return ["short"], None
    idx, val, seq, ack, length, flags = kabi.CN_MSG_S.unpack_from(buf, off)
    data = off + kabi.CN_MSG.size
    ev_gen, _cpu, ev_seq, _ts, ev_len, ev_flags = kabi.EVENT_S.unpack_from(buf, data)
    problems = []
    if (idx, val) != (GEN_IDX, GEN_VAL) or ev_gen != gen_id:
        problems.append("id")
    if seq != ev_seq & 0xFFFFFFFF:
        problems.append("cn seq")
    if ack:
        problems.append("ack")
    if flags:
        problems.append("cn flags")
    if length != ev_len or data + length > end:
        problems.append("len")
    if ev_flags != (kabi.CNLAB_EV_F_CBUS if cbus else 0):
        problems.append("event flags")
    filler = bytes(buf[data + kabi.EVENT_S.size:min(data + length, end)])
    if filler.count(ev_seq & 0xFF) != len(filler):
        problems.append("filler")
    return problems, ev_seq


def datagram_problems(buf, n, gen_id, cbus):
    """Every generated message of one datagram checked by :func:`message_problems`, inner messages of a CBUS
    bundle too (the bundle's own header: id and seq of its first message, ack 0, flags CNLAB_CN_F_BUNDLE):
    (problem name -> count, messages seen)."""
    found, seen, off = {}, 0, 0
    while off + kabi.DATA_OFFSET <= n:
        nl_len = kabi.NLMSGHDR_S.unpack_from(buf, off)[0]
        if nl_len < kabi.DATA_OFFSET or off + nl_len > n:
            found["nlmsg"] = found.get("nlmsg", 0) + 1
            break
        cn = off + kabi.NLMSG_HDRLEN
        idx, val, seq, ack, length, flags = kabi.CN_MSG_S.unpack_from(buf, cn)
        if flags & kabi.CNLAB_CN_F_BUNDLE:
            p, end = cn + kabi.CN_MSG.size, min(cn + kabi.CN_MSG.size + length, off + nl_len)
            first = None
            while p < end:
                problems, ev_seq = message_problems(buf, p, end, gen_id, cbus)
                first = ev_seq if first is None else first
                for name in problems:
                    found[name] = found.get(name, 0) + 1
                seen += 1
                if ev_seq is None:
                    break
                p += kabi.CN_MSG.size + kabi.CN_MSG_S.unpack_from(buf, p)[4]
            if (idx, val) != (GEN_IDX, GEN_VAL) or ack or flags != kabi.CNLAB_CN_F_BUNDLE or \
                    first is None or seq != first & 0xFFFFFFFF:
                found["bundle header"] = found.get("bundle header", 0) + 1
        else:
            problems, _ = message_problems(buf, cn, off + nl_len, gen_id, cbus)
            for name in problems:
                found[name] = found.get(name, 0) + 1
            seen += 1
        off += (nl_len + 3) & ~3
    return found, seen


def t_wire_format(c, count=100):
    """Every generated message is as docs/kmod.md "Generated messages" says, field by field, on every path:
    ``cn_msg`` seq the event's low 32 bits, ack 0, flags 0, len the event's; the event's CBUS flag only on the
    CBUS path; filler bytes ``seq & 0xff``; bundles' own headers too. Consumers match on these; a field the
    readers' fast path skips (ack, filler) shows nowhere else."""
    res, good = {}, True
    mask = (1 << ncpus()) - 1
    for path, flags in (("direct", 0), ("cbus", 0), ("cbus", kabi.CNLAB_GEN_F_BUNDLE)):
        wait_drained(c)
        sock = kabi.open_socket([GROUP], reader_buffer())
        try:
            g, err = run_gen(c, None, 10, count, context="kthread", path=path, flags=flags, cpu_mask=mask,
                             size_min=32, size_max=200)
            wait_drained(c)
            want = gen_totals(g)["ok"] if g is not None else 0
            found, seen = {}, 0
            buf = bytearray(1 << 17)
            deadline = time.monotonic() + 20
            while seen < want and time.monotonic() < deadline:
                if not select.select([sock], [], [], 0.2)[0]:
                    continue
                n = sock.recv_into(buf)
                got, k = datagram_problems(buf, n, 10, path == "cbus")
                seen += k
                for name, m in got.items():
                    found[name] = found.get(name, 0) + m
        finally:
            sock.close()
        key = f"{path}{' bundle' if flags else ''}"
        res[key] = {"error": err, "generated": want, "seen": seen, "problems": found}
        good = good and err is None and want == count * ncpus() and seen == want and not found
    return report("wire_format", good, results=res)


def t_cpu_entries(c):
    """STATS and GEN_STATS have one entry per possible CPU (the first 64), each with its CPU number; with
    nothing running, STATS' total is the sum of those entries field by field (the largest, for the high-water
    marks), and its ``online`` the number of CPUs online by sysfs."""
    want = possible_cpus()[:kabi.CNLAB_MAX_CPUS]
    online = set(online_cpus())
    run_gen(c, None, 8, 10, context="kthread", path="cbus", cpu_mask=1, rate=0)
    wait_drained(c)
    s = c.stats().body
    g = c.gen_stats(8).body
    got_s = [e["cpu"] for e in s["cpus"]]
    got_g = [e["cpu"] for e in g["cpus"]]
    every_cpu = len(want) == len(possible_cpus())
    mismatched = total_mismatches(s) if every_cpu else {}
    good = (got_s == want and got_g == want and s["nr_cpus"] == g["nr_cpus"] == len(want)
            and all(bool(e["online"]) == (e["cpu"] in online) for e in s["cpus"])
            and not mismatched and (not every_cpu or s["total"]["online"] == len(online)))
    return report("cpu_entries", good, possible=len(want), stats_cpus=got_s[:8], gen_stats_cpus=got_g[:8],
                  online=sorted(online), total_online=s["total"]["online"], total_mismatches=mismatched)


def bundled_datagrams(c, size=8000, count=40):
    """Bundled CBUS messages of ``size`` bytes through a reader sized for the connector's maximum:
    (largest datagram, datagrams cut short, bundles, messages received)."""
    limit = kabi.NLMSG_HDRLEN + kabi.CONNECTOR_MAX_MSG_SIZE
    sock = kabi.open_socket([GROUP], 64 << 20)
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 300)     # the whole run in one queue batch
    run_gen(c, None, 7, count, context="kthread", path="cbus", cpu_mask=1, rate=0, size_min=size,
            size_max=size, flags=kabi.CNLAB_GEN_F_BUNDLE)
    wait_drained(c, 10)
    buf = bytearray(limit)
    biggest = cut = bundles = received = 0
    while select.select([sock], [], [], 0.5)[0]:
        n = sock.recv_into(buf, 0, socket.MSG_TRUNC)
        biggest = max(biggest, n)
        if n > limit:
            cut += 1
            continue
        bundles += kabi.walk_datagram(buf, n, 0, lambda _ev, _now: None)
        received += sum(len(kabi.expand(m)) for m in kabi.parse_datagram(buf, n))
    sock.close()
    return biggest, cut, bundles, received


def t_bundle_bound(c):
    """bundle_bytes is bounded by the connector's maximum message (16,364 data bytes): a larger value is
    refused at load, and the largest allowed one gives datagrams a reader sized for that maximum takes whole;
    at the low end 256 loads and 255 does not."""
    res = {}
    try:
        for value in (255, 256):
            res[value] = {"load": reload_module(f"bundle_bytes={value}") or "ok"}
        for value in (32768, 16365):
            err = reload_module(f"bundle_bytes={value}")
            res[value] = {"load": err or "ok"}
            if not err:
                res[value].update(zip(("biggest", "cut", "bundles", "received"), bundled_datagrams(c), strict=True))
        err = reload_module(f"bundle_bytes={kabi.CONNECTOR_MAX_MSG_SIZE - kabi.CN_MSG.size}")
        res["max"] = {"load": err or "ok"}
        if not err:
            res["max"].update(zip(("biggest", "cut", "bundles", "received"), bundled_datagrams(c), strict=True))
    finally:
        reload_module("")
    mx = res["max"]
    good = (res[255]["load"] != "ok" and res[256]["load"] == "ok"
            and res[32768]["load"] != "ok" and res[16365]["load"] != "ok" and mx["load"] == "ok" and mx["cut"] == 0
            and mx["bundles"] > 0 and mx["received"] == 40
            and mx["biggest"] <= kabi.NLMSG_HDRLEN + kabi.CONNECTOR_MAX_MSG_SIZE)
    return report("bundle_bound", good, results={str(k): v for k, v in res.items()})


def netlink_drops(sock):
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/net/netlink") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 10 and parts[-1] == inode:
                return int(parts[8])
    return -1


def t_overrun(c, count=300):
    """A listener whose socket is full is an overrun, not "no listener": CBUS and the direct path count
    it apart (drop_overrun, err_overrun), equal to the socket's own drop count; with nobody listening the
    drops are drop_nolistener / err_nolistener."""
    out = {}
    for path, gid in (("cbus", 13), ("direct", 12)):
        s0 = wait_drained(c).body["total"]
        sock = kabi.open_socket([GROUP], 4096)     # never read: full after a few messages
        g, err = run_gen(c, None, gid, count, context="kthread", path=path, cpu_mask=1, rate=0)
        s1 = wait_drained(c).body["total"]
        drops = netlink_drops(sock)
        sock.close()
        d = stats_delta(s0, s1)
        t = gen_totals(g) if g else {}
        out[path] = {"error": err, "socket_drops": drops, "gen": t, "cbus_delta": d}
    s0 = wait_drained(c).body["total"]
    g, err = run_gen(c, None, 13, 100, context="kthread", path="cbus", cpu_mask=1, rate=0)
    s1 = wait_drained(c).body["total"]
    nobody = {"drop_nolistener": s1["drop_nolistener"] - s0["drop_nolistener"],
              "drop_overrun": s1["drop_overrun"] - s0["drop_overrun"]}
    cb, di = out["cbus"], out["direct"]
    good = (cb["cbus_delta"]["drop_nolistener"] == 0 and cb["cbus_delta"]["drop_overrun"] == cb["socket_drops"] > 0
            and cb["cbus_delta"]["sent"] + cb["socket_drops"] == count
            and di["gen"]["err_nolistener"] == 0 and di["gen"]["err_overrun"] == di["socket_drops"] > 0
            and di["gen"]["ok"] + di["socket_drops"] == count
            and nobody == {"drop_nolistener": 100, "drop_overrun": 0})
    return report("overrun", good, results=out, nobody_listening=nobody)


def burst_shape(seqs, b, period_ns):
    """How clustered one stream's kernel timestamps are, given B messages per burst every period_ns."""
    seqs = sorted(seqs)
    ts = [t for _, t in seqs]
    intra = sorted(ts[i] - ts[i - 1] for i in range(1, len(ts)) if seqs[i][0] % b)
    inter = sorted(ts[i] - ts[i - 1] for i in range(1, len(ts)) if not seqs[i][0] % b)
    starts = [ts[i] for i in range(0, len(ts), b)]
    spacing = sorted(starts[i] - starts[i - 1] for i in range(1, len(starts)))
    spans = [ts[min(i + b, len(ts)) - 1] - ts[i] for i in range(0, len(ts), b)]

    def median(v):
        return v[len(v) // 2] if v else 0
    return {"intra_median_us": median(intra) / 1e3, "inter_median_us": median(inter) / 1e3,
            "spacing_median_us": median(spacing) / 1e3,
            "tight_bursts": sum(1 for s in spans if s < period_ns / 4), "bursts": len(spans)}


def early_messages(seqs, start_ns, rate):
    """The ``(seq, ns_early)`` of messages stamped before their slot: a paced generator's message ``k`` (per
    CPU, from 0) is due ``k / rate`` s after GEN_START, and the module stamps it after it found it due."""
    early = []
    for seq, ts in seqs:
        due_ns = -(-seq * 10**9 // rate)  # the slot rounded up: (ts - start) * rate // 1e9 >= seq
        if ts - start_ns < due_ns:
            early.append((seq, due_ns - (ts - start_ns)))
    return early


def t_pace(c, rate=2000, count=60):
    """A paced generator (rate R, no bursts) never sends ahead of its schedule, in every context.

    Per CPU, message ``k`` must carry a kernel timestamp at least ``k / R`` s after the generator's
    ``start_ns``, to the nanosecond: the module stamps a message after it found it due, so an unbroken rate
    limiter has no early message at all. Late ones are allowed (TCG, a loaded host); every message must come.
    """
    ok_all = True
    mask = (1 << ncpus()) - 1
    for gid, ctx in enumerate(("kthread", "softirq", "timer", "hardirq")):
        wait_drained(c)
        cons = Consumer(keep_seqs=True)
        cons.start()
        g, err = run_gen(c, cons, gid, count, context=ctx, path="cbus", rate=rate, cpu_mask=mask)
        if g is None:
            cons.stop()
            ok_all = report("pace", False, ctx=ctx, error=err) and ok_all
            continue
        wait_drained(c)
        generated = gen_totals(g)["generated"]
        cons.wait_for(generated, 20)
        cons.stop()
        start = g.body["start_ns"]
        early = {cpu: early_messages(cons.seqs.get((gid, cpu), []), start, rate) for cpu in range(ncpus())}
        good = (generated == cons.received == count * ncpus() and cons.lost == cons.reordered == 0
                and not any(early.values()))
        ok_all = report("pace", good, ctx=ctx, rate=rate, generated=generated, received=cons.received,
                        lost=cons.lost, early={cpu: len(e) for cpu, e in early.items()},
                        first_early={cpu: e[:3] for cpu, e in early.items() if e}) and ok_all
    return ok_all


def t_bursts(c, rate=50, burst=32, nbursts=12):
    """GEN_START with CNLAB_GEN_F_BURSTS: B messages back to back every 1/R s, in every context.

    Per context and CPU, from the messages' kernel timestamps: the gaps inside a burst are tiny and the gaps
    between bursts about 1/R (median); most bursts are tight (all B within a quarter period). The same
    message rate without the flag (9/10 of R*B msgs/s) is smoothed: no such gap at burst boundaries.
    Limits: configs beyond the documented bounds are refused with -EINVAL.
    """
    period = 1e9 / rate
    ok_all = True
    mask = (1 << ncpus()) - 1
    for i, ctx in enumerate(("kthread", "softirq", "timer", "hardirq")):
        shapes = {}
        for mode in ("bursts", "smoothed"):
            cons = Consumer(keep_seqs=True)
            cons.start()
            cfg = dict(gen_id=i, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=burst * nbursts, cpu_mask=mask,
                       size_min=32, size_max=64, context=ctx, path="cbus", burst=burst)
            if mode == "bursts":
                cfg.update(rate=rate, bursts=True)
            else:
                # A paced generator that wakes late sends what is due, up to its burst cap. With the cap at B,
                # a guest whose timers fire only every 1/R s (a loaded debug guest) sends groups of exactly B,
                # aligned with the B-message boundaries this check measures: B - 1 keeps them apart. The rate is
                # 9/10 of R * B: at R * B, B messages take exactly 1/R s, five 4 ms ticks of the timer context
                # (HZ 250), so every B-th message began a tick's group, 4 ms after the one before, and the control
                # failed whenever ticks came 8 ms apart (a loaded debug guest); at 9/10 the groups drift past the
                # boundaries.
                cfg.update(rate=rate * burst * 9 // 10, burst=burst - 1)
            r = c.gen_start(**cfg)
            if not r.ok:
                cons.stop()
                ok_all = report("bursts", False, ctx=ctx, mode=mode, error=r.error_name) and ok_all
                break
            g = wait_gen_done(c, i)
            wait_drained(c)
            cons.wait_for(gen_totals(g)["generated"], 20)
            cons.stop()
            shapes[mode] = {cpu: burst_shape(cons.seqs.get((i, cpu), []), burst, period)
                            for cpu in range(ncpus())}
            shapes[mode]["received"] = cons.received
            shapes[mode]["generated"] = gen_totals(g)["generated"]
            shapes[mode]["gen_bursts"] = [cs.get("bursts") for cs in g.body["cpus"]]
        else:
            bs, sm = shapes["bursts"], shapes["smoothed"]
            good = bs["received"] == bs["generated"] == burst * nbursts * ncpus()
            for cpu in range(ncpus()):
                x = bs[cpu]
                good = (good and x["bursts"] == nbursts and x["intra_median_us"] < period / 20e3
                        and x["inter_median_us"] > period / 2e3
                        and period / 2e3 < x["spacing_median_us"] < 3 * period / 1e3
                        and x["tight_bursts"] >= 0.75 * nbursts
                        and sm[cpu]["inter_median_us"] < period / 4e3)
            good = good and all(n == nbursts for n in bs["gen_bursts"])
            ok_all = report("bursts", good, ctx=ctx, period_us=period / 1e3, bursts=bs, smoothed=sm) and ok_all
    # limits
    base = dict(gen_id=15, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=64, cpu_mask=1, size_min=32,
                size_max=32, context="hardirq", path="cbus", bursts=True)
    bad = {"rate 0": dict(rate=0, burst=8), "burst 0": dict(rate=100, burst=0),
           "rate over the burst-rate cap": dict(rate=50001, burst=1),
           "msgs/s over the cap": dict(rate=1000, burst=1001),
           "bytes per burst over the cap": dict(rate=10, burst=200, size_max=8192),
           "bytes/s over the cap": dict(rate=1000, burst=64, size_max=8192),
           "timer faster than HZ": dict(rate=1001, burst=1, context="timer")}
    refused = {}
    for name, over in bad.items():
        refused[name] = c.gen_start(**{**base, **over}).status
    edge = c.gen_start(**{**base, "rate": 244, "burst": 4096, "count": 4096})
    wait_gen_done(c, 15)
    good = all(v == -errno.EINVAL for v in refused.values()) and edge.ok
    return report("burst_limits", good, refused=refused, edge=edge.error_name or "ok") and ok_all


# ------------------------------------------ issue 12: hard classes, bounds, the ABI fuzzer

def t_abi_fuzz(c, n=4000, seed=12):
    """The structure-aware ABI fuzzer (abi_fuzz.py): exact reply status of every request, privileged or not."""
    import abi_fuzz

    out = abi_fuzz.fuzz(n, seed)
    out.pop("test")
    return report("abi_fuzz", out.pop("ok"), **out)


def t_alloc_sweep(c):
    """Every allocation of six control requests fails once, in turn (alloc_sweep.py; debug kernel flavour):
    each request is answered once, with success or -ENOMEM, or its loss is counted, and changes nothing else."""
    import alloc_sweep

    out = alloc_sweep.sweep(c)
    return report("alloc_sweep", out.pop("ok"), **out)


def last_cpu():
    cpus = online_cpus()
    return cpus[-1] if len(cpus) > 1 else None


def busy_rate(cpu, seconds):
    """Loop iterations per second of a busy child process pinned to ``cpu`` for ``seconds``."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.sched_setaffinity(0, {cpu})
        n = 0
        t0 = time.monotonic()
        end = t0 + seconds
        while True:
            for _ in range(2000):
                n += 1
            if time.monotonic() >= end:
                break
        os.write(wfd, json.dumps(n / (time.monotonic() - t0)).encode())
        os._exit(0)
    os.close(wfd)
    data = os.read(rfd, 100)
    os.close(rfd)
    os.waitpid(pid, 0)
    return json.loads(data)


def gen_reply_status(c, **cfg):
    """GEN_START's status and effective burst; a generator that started is stopped again."""
    base = dict(gen_id=14, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=1, cpu_mask=1, rate=0,
                size_min=32, size_max=32, path="cbus")
    base.update(cfg)
    r = c.gen_start(**base)
    if r.ok:
        c.gen_stop(base["gen_id"])
    return r.status, (r.body.get("burst") if r.ok else None)


def t_bounds(c):
    """Limits a privileged user could otherwise exceed (docs/kmod.md "Bounds"), each enforced and measured.

    1. A rate-paced hard-IRQ generator keeps at most half of its CPU: a busy loop pinned to that CPU keeps at
       least a quarter of its speed beside the heaviest generator allowed (rate 10^7, burst 4096 x 256 bytes:
       firings re-armed every 20 us that each take far longer).
    2. Softirq, timer and hard-IRQ generators copy at most 1 MiB per firing (burst x size_max, -EINVAL
       beyond); the default burst shrinks to fit.
    3. A BENCH chunk (preemption off) is at most 4096 calls (-ERANGE) and 1 MiB (chunk x payload, -EINVAL),
       whatever the queue limit.
    4. CBUS queues at most queue_bytes per CPU (module parameter, 64 MiB by default, 64 KiB..1 GiB), also
       when the message limit is raised to 2^20: exactly as many messages as fit are queued.
    """
    out = {}
    good = True
    cpu = last_cpu()
    # 1. the hard-IRQ duty cap
    if cpu is not None:
        wait_drained(c)
        c.fault(kabi.CNLAB_FAULT_STALL_MS, 10000)   # the drain thread sleeps: the loop competes with the IRQ only
        base = busy_rate(cpu, 1.5)
        # the most a rate-paced firing may do: 4096 messages of 256 bytes (1 MiB) due every 20 us
        r = c.gen_start(gen_id=12, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0, duration_ns=4 * 10**9,
                        cpu_mask=1 << cpu, rate=kabi.CNLAB_RATE_MAX, burst=kabi.CNLAB_BURST_MAX, size_min=256,
                        size_max=256, context="hardirq", path="cbus")
        time.sleep(0.2)
        loaded = busy_rate(cpu, 1.5) if r.ok else 0.0
        g = c.gen_stats(12).body
        c.gen_stop(12)
        stall_end(c)
        ratio = loaded / base if base else 0.0
        generated = sum(cs["generated"] for cs in g["cpus"])
        out["duty"] = {"start": r.error_name or "ok", "loop_alone": round(base), "loop_beside_irq": round(loaded),
                       "ratio": round(ratio, 3), "generated": generated}
        good = r.ok and ratio >= 0.25 and generated > 0 and good
    # 2. per firing: burst x size_max <= 1 MiB in atomic contexts; kthread context is preemptible between messages
    firing = {
        "hardirq 4096x8192": gen_reply_status(c, context="hardirq", burst=4096, size_max=8192),
        "timer 129x8192": gen_reply_status(c, context="timer", burst=129, size_max=8192),
        "timer 128x8192": gen_reply_status(c, context="timer", burst=128, size_max=8192),
        "softirq 4096x257": gen_reply_status(c, context="softirq", burst=4096, size_max=257),
        "softirq 4096x256": gen_reply_status(c, context="softirq", burst=4096, size_max=256),
        "kthread 4096x8192": gen_reply_status(c, context="kthread", burst=4096, size_max=8192),
        "timer default x8192": gen_reply_status(c, context="timer", burst=0, size_max=8192),
        "hardirq default x8192": gen_reply_status(c, context="hardirq", burst=0, size_max=8192),
    }
    einval = -errno.EINVAL
    want = {"hardirq 4096x8192": (einval, None), "timer 129x8192": (einval, None), "timer 128x8192": (0, 128),
            "softirq 4096x257": (einval, None), "softirq 4096x256": (0, 4096), "kthread 4096x8192": (0, 4096),
            "timer default x8192": (0, 128), "hardirq default x8192": (0, 64)}
    out["firing"] = {k: list(v) for k, v in firing.items()}
    good = firing == want and good
    # 3. BENCH chunks, even with the message limit at its maximum
    prev_limit = c.stats().body["queue_limit"]
    c.fault(kabi.CNLAB_FAULT_QLIMIT, kabi.CNLAB_QLIMIT_MAX)
    bench = dict(idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, iterations=1, pause_us=0, cpu=0)
    chunks = {"2^20 x 32": c.bench(timeout=60, chunk=1 << 20, payload=32, **bench).status,
              "4097 x 32": c.bench(timeout=60, chunk=4097, payload=32, **bench).status,
              "4096 x 257": c.bench(timeout=60, chunk=4096, payload=257, **bench).status,
              "4096 x 256": c.bench(timeout=60, chunk=4096, payload=256, **bench).status}
    c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
    out["bench_chunks"] = chunks
    good = chunks == {"2^20 x 32": -errno.ERANGE, "4097 x 32": -errno.ERANGE, "4096 x 257": einval,
                      "4096 x 256": 0} and good
    # 4. bytes per CPU queue
    default_bytes = c.stats().body.get("queue_bytes")
    qb = {"default": default_bytes}
    for value in (kabi.CNLAB_QBYTES_MIN - 1, kabi.CNLAB_QBYTES_MAX + 1):
        qb[f"load {value}"] = reload_module(f"queue_bytes={value}") or "loaded"
    err = reload_module(f"queue_bytes={kabi.CNLAB_QBYTES_MIN}")
    qb["load 65536"] = err or "loaded"
    if not err:
        with kabi.CtlClient(timeout=5.0) as q:
            qb["reported"] = q.stats().body.get("queue_bytes")
            q.fault(kabi.CNLAB_FAULT_QLIMIT, kabi.CNLAB_QLIMIT_MAX)
            for size, fits in ((4076, 16), (32, 300)):  # 16 x (20 + 4076) = 64 KiB exactly; 300 x 52 bytes fit
                s0 = wait_drained(q).body["cpus"][0]
                cons = Consumer()
                cons.start()
                q.fault(kabi.CNLAB_FAULT_STALL_MS, 20000)
                g, gerr = run_gen(q, cons, 13, 300, context="kthread", path="cbus", cpu_mask=1, rate=0,
                                  size_min=size, size_max=size)
                held = q.stats().body["cpus"][0]
                stall_end(q)
                cons.wait_for(fits, 10)
                cons.stop()
                d = stats_delta(s0, held)
                qb[f"{size} bytes"] = {"queued": d["queued"], "full": d["drop_full"], "received": cons.received,
                                       "error": gerr}
                good = (g is not None and d["queued"] == fits and d["drop_full"] == 300 - fits
                        and cons.received == fits and good)
    err = reload_module("")
    qb["reload"] = err or "loaded"
    out["queue_bytes"] = qb
    good = (default_bytes == kabi.CNLAB_QBYTES_DEFAULT and qb["reported"] == kabi.CNLAB_QBYTES_MIN
            and qb[f"load {kabi.CNLAB_QBYTES_MIN - 1}"] != "loaded" and qb[f"load {kabi.CNLAB_QBYTES_MAX + 1}"]
            != "loaded" and not err and good) if "reported" in qb else False
    return report("bounds", good, **out)


def drain_thread_state(cpu):
    """The state letter of CBUS's drain thread of ``cpu`` (P: parked), or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != f"cbus/{cpu}":
                    continue
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
    return None


def last_final_line():
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    finals = [line for line in log.splitlines() if "cbus final:" in line]
    if not finals:
        return None
    words = finals[-1].split("cbus final:")[1].split()
    return {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}


def t_offline_end(c, seconds=3.0, rate=300):
    """A CPU goes offline under load and stays offline to the end of the run, and through an unload.

    Its queue holds 300 messages (the drain threads stall) when it goes down: the hotplug drain delivers them
    though the stall goes on. Producers of every context keep running (their instances on that CPU move to
    another one); afterwards everything is delivered, in order, the ledger holds on every CPU and the dead
    CPU's queue is empty, its drain thread parked. While it is down a BENCH or generator on it is refused, the
    module unloads with balanced final counts and loads again; after it comes back a generator on it works.
    """
    cpu = last_cpu()
    if cpu is None:
        return report("offline_end", True, skipped="1 CPU")
    try:
        return _offline_end(c, cpu, seconds, rate)
    finally:
        if open(f"/sys/devices/system/cpu/cpu{cpu}/online").read().strip() != "1":
            cpu_set(cpu, True)


def _offline_end(c, cpu, seconds, rate):
    out = {"cpu": cpu}
    s0 = wait_drained(c)
    cons = Consumer()
    cons.start()
    c.fault(kabi.CNLAB_FAULT_QLIMIT, 1 << 16)
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 30000)
    g0, err = run_gen(c, cons, 0, 300, context="kthread", path="cbus", cpu_mask=1 << cpu, rate=0)
    held = c.stats().body["cpus"][cpu]
    out["held_before_offline"] = held["enqueued"] - held["dequeued"]
    mask = (1 << ncpus()) - 1
    specs = HOTPLUG_LOAD
    for i, (ctx, path, fl, burst) in enumerate(specs, start=1):
        r = c.gen_start(gen_id=i, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0, duration_ns=int(seconds * 1e9),
                        cpu_mask=mask, rate=rate, size_min=32, size_max=64, context=ctx, path=path, flags=fl,
                        burst=burst)
        if not r.ok:
            out.setdefault("start_errors", []).append((ctx, path, r.error_name))
    time.sleep(0.3)
    t0 = time.monotonic()
    cpu_set(cpu, False)
    out["offline_s"] = round(time.monotonic() - t0, 2)
    after = c.stats().body
    dead = after["cpus"][cpu]
    out["dead_cpu_after_offline"] = {k: dead[k] for k in ("online", "enqueued", "dequeued", "sent")}
    out["stall_still_on"] = after["stall_ms"] == 30000
    delivered_in_stall = kabi.wait_until(lambda: cons.expected.get((0, cpu), 0) >= 300, 10)
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 0)
    gens = [g0] + [wait_gen_done(c, i, 60) for i in range(1, len(specs) + 1)]
    s1 = wait_drained(c, 30)
    ok = sum(gen_totals(g)["ok"] for g in gens)
    generated = sum(gen_totals(g)["generated"] for g in gens)
    cons.wait_for(ok, 30)
    cons.stop()
    d = stats_delta(s0.body["total"], s1.body["total"])
    problems = kabi.counter_problems(s1.body)  # the dead CPU's counters too
    online_file = open(f"/sys/devices/system/cpu/cpu{cpu}/online").read().strip()
    out.update(generated=generated, accepted=ok, received=cons.received, lost=cons.lost, reordered=cons.reordered,
               cbus_delta=d, counter_problems=problems, drain_thread=drain_thread_state(cpu),
               online_at_end=online_file, delivered_during_stall=bool(delivered_in_stall))
    good = (g0 is not None and out["held_before_offline"] == 300 and dead["online"] == 0
            and dead["enqueued"] == dead["dequeued"] and out["stall_still_on"] and bool(delivered_in_stall)
            and all(g.body["state"] == kabi.CNLAB_GEN_DONE for g in gens) and not out.get("start_errors")
            and d["queued"] == 0 and not problems and cons.lost == 0 and cons.reordered == 0
            and cons.received == ok == generated and online_file == "0" and out["drain_thread"] == "P"
            and s1.body["cpus"][cpu]["online"] == 0)
    # refused while it is down
    out["bench_on_dead_cpu"] = c.bench(timeout=30, idx=GEN_IDX, val=BENCH_VAL, group=BENCH_GROUP, payload=32,
                                       iterations=1, chunk=1, pause_us=0, cpu=cpu).status
    out["gen_on_dead_cpu"] = c.gen_start(gen_id=9, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=10,
                                         cpu_mask=1 << cpu, size_min=32, size_max=32, context="kthread",
                                         path="cbus").status
    good = good and out["bench_on_dead_cpu"] == out["gen_on_dead_cpu"] == -errno.EINVAL
    # unload and load with the CPU down
    err = reload_module("")
    final = last_final_line()
    out["reload_offline"] = err or "ok"
    out["final"] = final
    good = (good and not err and final is not None and final["queued"] == 0
            and final["inserted"] == final["sent"] + final["full"] + final["nomem"] + final["nolistener"]
            + final["overrun"] + final["nlerr"])
    with kabi.CtlClient(timeout=5.0) as q:
        s = q.stats().body
        good = good and q.echo(b"down").ok and s["cpus"][cpu]["online"] == 0
        cpu_set(cpu, True)
        cons = Consumer()
        cons.start()
        g, err = run_gen(q, cons, 2, 200, context="kthread", path="cbus", cpu_mask=1 << cpu, rate=0)
        wait_drained(q)
        cons.wait_for(200, 10)
        cons.stop()
        out["back_online"] = {"error": err, "received": cons.received, "lost": cons.lost}
        good = good and g is not None and cons.received == 200 and cons.lost == cons.reordered == 0
    return report("offline_end", good, **out)


def cpu_delta(a, b):
    """Every counter of one cnlab_cbus_stats entry, b - a (the ledger's counters included)."""
    keys = ("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr",
            "queued", "enqueued", "dequeued", "rejected")
    return {k: b[k] - a[k] for k in keys}


class OrderConsumer(Consumer):
    """A Consumer that also keeps every message's (gen, cpu, seq, ts) in arrival order."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.order = []

    def _event(self, ev, now):
        super()._event(ev, now)
        self.order.append((ev[0], ev[1], ev[2], ev[3]))


def overtakes(order, cpu, irq_gen, thread_gen):
    """Hard-IRQ messages queued ahead of a thread message stamped before them: the IRQ came mid-insert."""
    n = 0
    last_irq_ts = None
    for gen, c, _seq, ts in order:
        if c != cpu:
            continue
        if gen == irq_gen:
            last_irq_ts = ts
        elif gen == thread_gen and last_irq_ts is not None:
            if last_irq_ts > ts:
                n += 1
            last_irq_ts = None
    return n


def _nested_round(c, cpu, count, common):
    """One full-rate round of ``t_nested_irq``: (the books balance, its figures with ``overtakes``)."""
    s0 = wait_drained(c).body["cpus"][cpu]
    cons = OrderConsumer()
    cons.start()
    rk = c.gen_start(gen_id=0, count=count, context="kthread", **common)
    ri = c.gen_start(gen_id=1, count=0, duration_ns=60 * 10**9, context="hardirq", burst=16, **common)
    gk = wait_gen_done(c, 0, 120)
    c.gen_stop(1)
    gi = c.gen_stats(1)
    s1 = wait_drained(c, 30).body["cpus"][cpu]
    tk, ti = gen_totals(gk), gen_totals(gi)
    cons.wait_for(s1["sent"] - s0["sent"], 30)
    cons.wait_read(10)
    time.sleep(0.1)
    cons.stop()
    d = cpu_delta(s0, s1)
    drops = d["drop_full"] + d["drop_nomem"] + d["drop_nolistener"] + d["drop_overrun"] + d["drop_nlerr"]
    tails = sum(g.body["cpus"][cpu]["generated"] - cons.expected.get((gid, cpu), 0)
                for gid, g in ((0, gk), (1, gi)))
    nested = overtakes(cons.order, cpu, 1, 0)
    full_rate = {"kthread": tk, "hardirq": ti, "cbus_delta": d, "received": cons.received, "gaps": cons.lost,
                 "tails": tails, "reordered": cons.reordered, "overtakes": nested, "ledger": kabi.ledger_problems(s1)}
    good = (rk.ok and ri.ok and tk["generated"] == count and ti["generated"] > 0
            and d["inserted"] == tk["generated"] + ti["generated"]
            and d["enqueued"] + d["drop_full"] + d["drop_nomem"] == d["inserted"]
            and tk["ok"] + ti["ok"] == d["enqueued"] and tk["err_full"] + ti["err_full"] == d["drop_full"]
            and tk["err_nomem"] + ti["err_nomem"] == d["drop_nomem"] and tk["err_other"] == ti["err_other"] == 0
            and not kabi.ledger_problems(s1) and cons.received == d["sent"] and cons.reordered == 0
            and cons.lost + tails == drops)
    return good, full_rate


def t_nested_irq(c, count=1500):
    """A hard-IRQ producer interrupts a kthread producer mid-insert, both at full rate, on one CPU.

    Both insert 200..600-byte messages (beyond a pool slot: allocated and copied before the IRQ-off section, a
    wide window for the interrupt). Evidence of nesting: hard-IRQ messages that reached the queue ahead of a
    kthread message stamped before them. Then exact accounting: the generators' books against CBUS's on that
    CPU, the ledger, the reader's receipts, gaps and order. A second phase with a stalled drain and a 64-message
    limit: the CPU's high-water mark is exactly 64, the rest exactly counted as full, from both producers.
    """
    cpu = last_cpu()
    if cpu is None:
        return report("nested_irq", True, skipped="1 CPU")
    out = {"cpu": cpu}
    prev_limit = c.stats().body["queue_limit"]
    c.fault(kabi.CNLAB_FAULT_QLIMIT, 1 << 16)
    common = dict(idx=GEN_IDX, val=GEN_VAL, group=GROUP, cpu_mask=1 << cpu, rate=0, size_min=200, size_max=600,
                  path="cbus")
    # The interrupt must land in the kthread's window, which on a loaded host it sometimes did not in one round
    # of 1,500 inserts (CI: 5,536 hard-IRQ messages, no overtake): rounds until one shows nesting, at most
    # four; every round's books must balance.
    rounds = 0
    while True:
        rounds += 1
        good, full_rate = _nested_round(c, cpu, count, common)
        if not good or full_rate["overtakes"] > 0 or rounds == 4:
            break
    out["full_rate"], out["rounds"] = full_rate, rounds
    good = good and full_rate["overtakes"] > 0
    # exact limit while both producers nest on the CPU
    c.fault(kabi.CNLAB_FAULT_QLIMIT, 64)
    c.stats(reset_hwm=True)
    a = c.stats().body["cpus"][cpu]
    c.fault(kabi.CNLAB_FAULT_STALL_MS, 20000)
    cons = Consumer()
    cons.start()
    c.gen_start(gen_id=2, count=3000, context="kthread", **common)
    c.gen_start(gen_id=3, count=0, duration_ns=60 * 10**9, context="hardirq", burst=16, **common)
    g2 = wait_gen_done(c, 2, 60)
    c.gen_stop(3)
    g3 = c.gen_stats(3)
    b = c.stats().body["cpus"][cpu]
    stall_end(c)
    cons.wait_for(64, 10)
    cons.stop()
    c.fault(kabi.CNLAB_FAULT_QLIMIT, prev_limit)
    e = cpu_delta(a, b)
    t2, t3 = gen_totals(g2), gen_totals(g3)
    out["limit_64"] = {"hwm": b["hwm"], "cbus_delta": e, "kthread_full": t2["err_full"],
                       "hardirq_full": t3["err_full"], "received": cons.received}
    good = (good and b["hwm"] == 64 and e["enqueued"] == 64 and e["drop_full"] == e["inserted"] - 64
            and t2["err_full"] > 0 and t3["err_full"] > 0 and t2["err_full"] + t3["err_full"] == e["drop_full"]
            and cons.received == 64)
    return report("nested_irq", good, **out)


def kmsg_open():
    """/dev/kmsg, positioned after the last record (read what is logged from now on with :func:`kmsg_read`)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def kmsg_read(fd):
    """The kernel log lines written since the last read (records overwritten before it are skipped)."""
    out = []
    while True:
        try:
            rec = os.read(fd, 8192)
        except BlockingIOError:
            return out
        except BrokenPipeError:
            continue
        out.append(rec.decode(errors="replace").split(";", 1)[-1].rstrip("\n"))


def t_unload_inflight(c, cycles=20):
    """GEN_START, GEN_STOP, GEN_STATS and BENCH requests in flight while the module unloads, again and again.

    Four threads send them without pause (each its own socket; a reply that does not come within 0.5 s, the
    module being away, is counted as none); the main thread unloads and loads the module ``cycles`` times. Every
    reply must carry a status its type allows at such times (0, the state errors, -ESHUTDOWN), each type must have
    succeeded and BENCH runs must have been cut short by unloads (-ESHUTDOWN); every unload's final counts balance.
    """
    # BENCH may also time out settling (-ETIMEDOUT): its CPU's queue must empty first, and the GEN_START
    # thread's generators keep filling it (seen once in 20 cycles on a loaded debug-flavour guest)
    allowed = {"GEN_START": {0, -errno.EBUSY, -errno.ESHUTDOWN}, "GEN_STOP": {0, -errno.ENOENT, -errno.ESHUTDOWN},
               "GEN_STATS": {0, -errno.ESHUTDOWN}, "BENCH": {0, -errno.EBUSY, -errno.ESHUTDOWN, -errno.ETIMEDOUT}}
    seen = {k: {} for k in allowed}
    bench_runs = []  # (iterations, status, seconds) of the first BENCH requests
    stop = threading.Event()
    mask = (1 << ncpus()) - 1
    ctxs = ("kthread", "timer", "hardirq", "softirq")
    gen_ids = range(8, 12)  # the GEN_START thread's generators, stopped again at the end

    def loop(kind):
        i = 0
        while not stop.is_set():
            try:
                with kabi.CtlClient(timeout=0.5) as s:
                    while not stop.is_set():
                        i += 1
                        gid = gen_ids[i % len(gen_ids)]
                        t_req = time.monotonic()
                        try:
                            if kind == "GEN_START":
                                r = s.gen_start(gen_id=gid, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0,
                                                duration_ns=5 * 10**9, cpu_mask=mask, rate=2000, size_min=32,
                                                size_max=128, context=ctxs[i % 4], path="cbus")
                            elif kind == "GEN_STOP":
                                r = s.gen_stop(gid if i % 5 else kabi.CNLAB_GEN_ALL)
                            elif kind == "GEN_STATS":
                                r = s.gen_stats(i % kabi.CNLAB_MAX_GENS)
                            else:  # every other run long enough (4 s) for an unload to cut it short; a
                                # request sent while the module is away gets no reply: short waits
                                long_run = i % 2
                                r = s.bench(timeout=10 if long_run else 2, idx=GEN_IDX, val=BENCH_VAL,
                                            group=BENCH_GROUP, payload=32, iterations=400 if long_run else 4,
                                            chunk=1, pause_us=5000, cpu=i % ncpus())
                            status = r.status
                        except TimeoutError:
                            status = None
                        seen[kind][status] = seen[kind].get(status, 0) + 1
                        if kind == "BENCH" and len(bench_runs) < 40:
                            bench_runs.append((400 if long_run else 4, status, round(time.monotonic() - t_req, 2)))
                        if kind == "BENCH" and status in (None, -errno.ESHUTDOWN):
                            # an unload ended it (or the module was away): the next run starts once the module
                            # answers again, else every short run would fall into the gap the unload left
                            while not stop.is_set() and not echo_answers(s):
                                pass
                        if kind == "GEN_STOP":
                            time.sleep(0.05)
            except OSError:
                time.sleep(0.01)

    def echo_answers(s):
        try:
            return s.request(kabi.CNLAB_MSG_ECHO, kabi.ECHO.pack(user_ns=1, data_len=0), 0.2).ok
        except TimeoutError:
            return False

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in allowed]
    for t in threads:
        t.start()
    failures = []
    t0 = time.monotonic()
    rng = random.Random(5)
    kmsg = kmsg_open()
    finals = []  # each unload's "cbus final" line, read as it comes (100 unloads outrun the log buffer)
    for i in range(cycles):
        time.sleep(rng.uniform(0.3, 0.8))
        err = module_unload("cnlab")
        if err:
            failures.append(("rmmod", i, err))
            break
        finals += [line for line in kmsg_read(kmsg) if "cbus final:" in line]
        err = module_load(MODULE)
        if err:
            failures.append(("insmod", i, err))
            break
    os.close(kmsg)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(20)
    # the GEN_START thread's last generators run up to 5 s more: stopped here, not in the next check's counts
    for gid in gen_ids:
        c.gen_stop(gid)
    unbalanced = []
    for line in finals:
        words = line.split("cbus final:")[1].split()
        f = {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}
        if f["queued"] or f["inserted"] != (f["sent"] + f["full"] + f["nomem"] + f["nolistener"] + f["overrun"]
                                            + f["nlerr"]):
            unbalanced.append(line)
    wrong = {k: {str(s): n for s, n in v.items() if s is not None and s not in allowed[k]} for k, v in seen.items()}
    echo_after = c.echo(b"after").ok
    good = (not failures and not unbalanced and len(finals) == cycles and not any(wrong.values())
            and all(v.get(0, 0) > 0 for v in seen.values())
            and seen["BENCH"].get(-errno.ESHUTDOWN, 0) > 0 and echo_after)
    return report("unload_inflight", good, cycles=cycles, seconds=round(elapsed, 1), failures=failures[:5],
                  final_lines=len(finals), echo_after=echo_after,
                  unbalanced=unbalanced[:3], wrong=wrong, bench_runs=bench_runs,
                  statuses={k: {str(s): n for s, n in v.items()} for k, v in seen.items()})


# Cheap checks that look at much come first, the long ones last: a mutation run (cnlab mutate --select every,
# --stop-on-failure) stops at the first failure, so most mutants end within the first minute.
TESTS = {"echo": t_echo, "defaults": t_defaults, "perm": t_perm, "reply_fail": t_reply_fail, "balance": t_balance,
         "invariant": t_invariant, "bench": t_bench,
         "stall_end": t_stall_end, "bundle_pack": t_bundle_pack, "gen_fail_keeps": t_gen_fail_keeps,
         "cpu_entries": t_cpu_entries,
         "overrun": t_overrun, "hwm_reset": t_hwm_reset, "stats_live": t_stats_live, "faults": t_faults,
         "initfail": t_initfail,
         "drain_budget": t_drain_budget, "bundle_bound": t_bundle_bound, "bench_status": t_bench_status,
         "alloc_sweep": t_alloc_sweep, "insert_refusals": t_insert_refusals, "bench_nomem": t_bench_nomem,
         "bench_direct_err": t_bench_direct_err,
         "wire_format": t_wire_format, "pool_slots": t_pool_slots, "bench_offline": t_bench_offline, "pace": t_pace,
         "bursts": t_bursts, "offline_end": t_offline_end, "bounds": t_bounds, "param_bounds": t_param_bounds,
         "group_bounds": t_group_bounds,
         "abi_fuzz": t_abi_fuzz, "fuzz": t_fuzz, "deliver": t_deliver, "hotplug": t_hotplug,
         "alloc_nth_exact": t_alloc_nth_exact, "unload_inflight": t_unload_inflight, "nested_irq": t_nested_irq,
         "unload": t_unload}
ALL = ["echo", "defaults", "deliver", "balance", "invariant", "perm", "reply_fail", "fuzz", "faults", "bench",
       "hotplug", "invariant", "initfail", "unload"]


LOADING_TAINT = 1 << 12 | 1 << 13  # O and E: loading an out-of-tree, unsigned module (lab.guest.kcheck allows them)


def read_taint():
    with open("/proc/sys/kernel/tainted") as fh:
        return int(fh.read().strip())


def leftovers(c, after):
    """After every check: no generator left running, and no idle one claiming running instances.

    A check that leaves a generator behind puts its messages into the next check's counts (the last
    generators ``unload_inflight``'s GEN_START thread started, 5 s of them, once failed ``nested_irq`` on a
    mutant that changed nothing either touches); a module whose GEN_STOP of all generators misses one leaves it
    running for good. What is found is reported as a failed ``leftovers`` result naming the check before it,
    then stopped and drained, so that the checks after it start clean. A module that does not answer is left
    to the next check to find."""
    running, wrong = [], []
    try:
        for gid in range(kabi.CNLAB_MAX_GENS):
            r = c.gen_stats(gid)
            if not r.ok:
                wrong.append({"gen_id": gid, "status": r.status})
            elif r.body["state"] == kabi.CNLAB_GEN_RUNNING:
                running.append(gid)
            elif r.body["state"] == kabi.CNLAB_GEN_IDLE and r.body["active"]:
                wrong.append({"gen_id": gid, "state": "idle", "active": r.body["active"]})
    except (TimeoutError, OSError):
        return True
    if not running and not wrong:
        return True
    for gid in running:
        c.gen_stop(gid)
    wait_drained(c)
    return report("leftovers", False, after=after, running=running, wrong=wrong[:4])


def stop_reason(results, taint_at_start):
    """Why --stop-on-failure stops after a check ("" to go on): one of its results failed, or the kernel's
    taint changed while it ran (a WARNING, lockdep or KASAN report the host's console check will name)."""
    failed = [r["test"] for r in results if not r["ok"]]
    if failed:
        return f"{failed[0]} failed"
    taint = read_taint()
    if (taint & ~taint_at_start) & ~LOADING_TAINT:
        return f"kernel taint {taint_at_start:#x} -> {taint:#x}"
    return ""


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-klog", action="store_true", help="skip the final kernel log check")
    ap.add_argument("--unload-cycles", type=int, default=100)
    ap.add_argument("--fuzz-count", type=int, default=12000)
    ap.add_argument("--abi-fuzz-requests", type=int, default=4000, help="abi_fuzz: request budget")
    ap.add_argument("--abi-fuzz-seed", type=int, default=12)
    ap.add_argument("--inflight-cycles", type=int, default=20, help="unload_inflight: unload/load cycles")
    ap.add_argument("--deliver-count", type=int, default=2000, help="messages per CPU and combination")
    ap.add_argument("--hotplug-seconds", type=float, default=6.0, help="hotplug: least seconds of load")
    ap.add_argument("--hotplug-cycles", type=int, default=0,
                    help="hotplug: least offline/online cycles (the load lasts until done, at most 150 s or "
                         "--hotplug-seconds)")
    ap.add_argument("--hotplug-rate", type=int, default=HOTPLUG_RATE, help="msgs/s per generator instance")
    ap.add_argument("--hotplug-rcvbuf", type=int, default=None,
                    help="hotplug: the reader's receive buffer in bytes (default: reader_buffer())")
    ap.add_argument("--stop-on-failure", action="store_true",
                    help="stop after the first check that fails or leaves the kernel tainted (mutation runs: "
                         "one failure decides); a line {\"stopped\": ...} says after which check and why")
    ap.add_argument("tests", nargs="*", default=["all"])
    args = ap.parse_args(argv)
    names = ALL if args.tests in ([], ["all"]) else args.tests
    params = {"unload": {"cycles": args.unload_cycles}, "fuzz": {"n": args.fuzz_count},
              "deliver": {"count": args.deliver_count},
              "hotplug": {"seconds": args.hotplug_seconds, "rate": args.hotplug_rate,
                          "min_cycles": args.hotplug_cycles, "rcvbuf": args.hotplug_rcvbuf},
              "abi_fuzz": {"n": args.abi_fuzz_requests, "seed": args.abi_fuzz_seed},
              "unload_inflight": {"cycles": args.inflight_cycles}}
    for name in names:
        if name not in TESTS:
            ap.error(f"unknown test {name!r} (choose from {', '.join(TESTS)})")
    taint_at_start = read_taint()
    for index, name in enumerate(names):
        t0 = time.monotonic()
        already = len(RESULTS)
        with kabi.CtlClient(timeout=5.0) as c:
            try:
                TESTS[name](c, **params.get(name, {}))
            except Exception as e:  # noqa: BLE001
                report(name, False, exception=repr(e))
            leftovers(c, name)
        print(json.dumps({"test": name, "ok": True, "timing": True,
                          "seconds": round(time.monotonic() - t0, 2)}), flush=True)
        if args.stop_on_failure and index + 1 < len(names):
            reason = stop_reason(RESULTS[already:], taint_at_start)
            if reason:
                print(json.dumps({"stopped": True, "after": name, "reason": reason,
                                  "not_run": names[index + 1:]}), flush=True)
                break
    if not args.no_klog:
        kernel_log_clean()
    return 0 if all(r["ok"] for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
