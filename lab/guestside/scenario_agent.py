"""Runs one scenario's load inside a guest and reports what it saw (JSON).

Reads the plan (generators and consumers, from lab.runner) as JSON on stdin,
starts the consumers, snapshots the module's statistics, starts the
generators, prints ``CNLAB-AGENT started`` on stderr (the host starts its
fault timeline then), waits for the generators to finish and the CBUS queues
to drain, lets the consumers catch up, and prints one JSON object: per
consumer counts, gaps, reorders, ENOBUFS, socket drops, latency percentiles
and a time series; per generator the kernel's counters; CBUS before/after.
"""

import errno
import json
import select
import sys
import threading
import time

import kabi

BIN_NS = 250_000_000
MAX_LATENCY_SAMPLES = 200_000


def online_cpus():
    with open("/sys/devices/system/cpu/online") as f:
        spec = f.read().strip()
    cpus = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


class Consumer(threading.Thread):
    """A listener on some groups that checks per-(generator, CPU) order."""

    def __init__(self, name, groups, rcvbuf, slow_us, start_ns):
        super().__init__(daemon=True)
        self.name = name
        self.sock = kabi.open_socket(list(groups), rcvbuf)
        self.portid = self.sock.getsockname()[0]
        self.slow_s = slow_us / 1e6
        self.start_ns = start_ns
        self.expected = {}
        self.per_gen = {}
        self.enobufs = 0
        self.latencies = []
        self.bins = {}
        self.first_ns = 0
        self.last_ns = 0
        self.halt = threading.Event()
        self.busy = False  # True from a ready select() until its datagram is handled

    def run(self):
        buf = bytearray(1 << 17)
        while not self.halt.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            self.busy = True
            try:
                n = self.sock.recv_into(buf)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    self.busy = False
                    continue
                raise
            kabi.walk_datagram(buf, n, time.monotonic_ns(), self.event)
            if self.slow_s:
                time.sleep(self.slow_s)
            self.busy = False

    def event(self, ev, now):
        gen_id, cpu, seq, ts, _len, _flags = ev
        stats = self.per_gen.setdefault(gen_id, {"received": 0, "gaps": 0, "reordered": 0})
        key = (gen_id, cpu)
        expected = self.expected.get(key, 0)
        if seq > expected:
            stats["gaps"] += seq - expected
        elif seq < expected:
            stats["reordered"] += 1
        self.expected[key] = max(expected, seq + 1)
        stats["received"] += 1
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        if len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(now - ts)
        slot = (now - self.start_ns) // BIN_NS
        cell = self.bins.setdefault(slot, [0, 0])
        cell[0] += 1
        if seq > expected:
            cell[1] += seq - expected

    def received(self):
        return sum(s["received"] for s in self.per_gen.values())

    def _netlink_row(self):
        with open("/proc/net/netlink") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if len(cols) >= 9 and cols[1] == str(kabi.NETLINK_CONNECTOR) and cols[2] == str(self.portid):
                    return cols
        return None

    def socket_drops(self):
        row = self._netlink_row()
        return int(row[8]) if row else -1

    def caught_up(self):
        """Everything queued for this socket has been read and handled.

        Called once nothing can arrive any more (generators done, CBUS
        drained): the receive queue is empty (Rmem in /proc/net/netlink),
        read before ``busy``, so a datagram taken from the queue before that
        read is still being handled if ``busy`` is set.
        """
        row = self._netlink_row()
        return row is not None and int(row[4]) == 0 and not self.busy

    def report(self):
        lat = sorted(self.latencies)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(len(lat) * p))] / 1000, 1) if lat else None

        span = (self.last_ns - self.first_ns) / 1e9
        return {
            "name": self.name,
            "received": self.received(),
            "per_gen": {str(k): v for k, v in sorted(self.per_gen.items())},
            "enobufs": self.enobufs,
            "socket_drops": self.socket_drops(),
            "rate": round(self.received() / span, 1) if span > 0 else 0.0,
            "latency_us": {"p50": pct(0.50), "p99": pct(0.99), "p999": pct(0.999), "max": pct(1.0)},
            "series": [[round(slot * BIN_NS / 1e9, 2), c[0], c[1]] for slot, c in sorted(self.bins.items())],
        }


KNOBS = {
    "stall": kabi.CNLAB_FAULT_STALL_MS,
    "alloc_fail": kabi.CNLAB_FAULT_ALLOC_NTH,
    "queue_limit": kabi.CNLAB_FAULT_QLIMIT,
    "warn": kabi.CNLAB_FAULT_WARN,
}


def cpu_online(cpu, online):
    with open(f"/sys/devices/system/cpu/cpu{cpu}/online", "w") as f:
        f.write("1" if online else "0")


def default_queue_limit():
    with open("/sys/module/cnlab/parameters/queue_limit") as f:
        return int(f.read())


class InGuestFaults(threading.Thread):
    """Applies the plan's in-guest faults on time (seconds after the load starts).

    Module knobs set here are restored when the run ends, so a reused guest
    starts the next scenario with the module's defaults.
    """

    def __init__(self, faults, duration, t0, probes=None):
        super().__init__(daemon=True)
        self.client = kabi.CtlClient(timeout=10.0)
        self.client_lock = threading.Lock()
        self.events = []
        self.waiting = []  # faults waiting for an event (fault["on"]), each applied once
        self.probes = probes or {}
        for fault in faults:
            if fault.get("on"):
                self.waiting.append(fault)
            elif fault["at"] is not None:
                self.events.append((fault["at"], fault))
            else:
                t = fault["every"]
                while t < duration:
                    self.events.append((t, fault))
                    t += fault["every"]
        self.events.sort(key=lambda e: e[0])
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.t0 = t0
        self.halt = threading.Event()
        self.applied = []
        self.offline = set()

    def now(self):
        return time.monotonic() - self.t0

    def knob(self, kind, value):
        if kind == "warn":
            with open("/sys/module/cnlab/parameters/debug_warn", "w") as f:
                f.write("1")
            value = kabi.CNLAB_WARN_MAGIC
        with self.client_lock:  # timed and event faults share one client; it drops replies it did not ask for
            reply = self.client.fault(KNOBS[kind], value)
        if not reply.ok:
            raise OSError(f"{kind}={value} refused: {reply.error_name}")

    def apply(self, fault):
        kind = fault["kind"]
        record = {"kind": kind, "at": round(self.now(), 3), "until": None, "ok": True, "detail": ""}
        if fault.get("on"):
            record["on"] = event_name(fault)
        self.applied.append(record)
        try:
            if kind == "cpu_offline":
                cpu_online(fault["cpu"], False)
                self.offline.add(fault["cpu"])
                self.halt.wait(fault["duration"])
                cpu_online(fault["cpu"], True)
                self.offline.discard(fault["cpu"])
                record["detail"] = f"cpu{fault['cpu']} offline for {fault['duration']} s"
            elif kind == "stall":
                value = fault["value"] or int(fault["duration"] * 1000)
                self.knob("stall", value)
                record["detail"] = f"drain worker stalled {value} ms"
            elif kind == "alloc_fail":
                value = fault["value"] or 10
                self.knob("alloc_fail", value)
                self.halt.wait(fault["duration"])
                self.knob("alloc_fail", 0)
                record["detail"] = f"every {value}th allocation failed for {fault['duration']} s"
            elif kind == "queue_limit":
                value = fault["value"] or 64
                self.knob("queue_limit", value)
                record["detail"] = f"queue limit {value}"
            elif kind == "warn":
                self.knob("warn", 1)
                record["detail"] = "WARN requested"
            record["until"] = round(self.now(), 3)
        except OSError as exc:
            record["ok"] = False
            record["detail"] = str(exc)

    def run(self):
        if self.waiting:
            self.watcher.start()
        for at, fault in self.events:
            if self.halt.wait(max(0.0, self.t0 + at - time.monotonic())):
                return
            self.apply(fault)

    def watch(self):
        """Apply each event-triggered fault once, when its event happens (polled: no notification)."""
        while self.waiting and not self.halt.wait(EVENT_POLL_S):
            for fault in list(self.waiting):
                if self.probes[fault["on"]](fault["threshold"]):
                    self.waiting.remove(fault)
                    self.apply(fault)

    def never_triggered(self):
        """Event-triggered faults whose event never happened during the load."""
        return [f"fault {f['kind']} on {event_name(f)}: the event never happened" for f in self.waiting]

    def finish(self):
        """Stop, bring CPUs back, and restore the module's knobs."""
        self.halt.set()
        self.join(30)
        if self.watcher.is_alive():
            self.watcher.join(30)
        for cpu in list(self.offline):
            cpu_online(cpu, True)
        kinds = {f["kind"] for _, f in self.events} | {r["kind"] for r in self.applied}
        if "alloc_fail" in kinds:
            self.knob("alloc_fail", 0)
        if "queue_limit" in kinds:
            self.knob("queue_limit", default_queue_limit())
        return self.applied


EVENT_POLL_S = 0.02


def event_name(fault):
    """``queue_depth>=200``, ``gap``: how a fault's event reads in results."""
    return f"{fault['on']}>={fault['threshold']}" if fault.get("threshold") else fault["on"]


DROP_KEYS = ("drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr")


def event_probes(consumers, client, generators, stats_before):
    """The events a fault can wait for: each takes the fault's threshold, True once it happened.

    ``stats_before``: the CBUS totals from before the generators started
    (they are cumulative; a generator's own counts start at zero).
    """

    def total():
        return client.stats().body["total"]

    def kernel_drops():
        now = total()
        cbus = sum(now[k] - stats_before[k] for k in DROP_KEYS)
        direct = 0
        for gen in generators:
            for cpu in client.gen_stats(gen["gen_id"]).body.get("cpus", []):
                direct += sum(cpu[k] for k in ("err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other"))
        return cbus + direct

    def guarded(probe):
        def check(threshold):
            try:
                return probe(threshold)
            except (TimeoutError, OSError):
                return False
        return check

    return {
        "received": lambda threshold: sum(c.received() for c in consumers) >= threshold,
        "queue_depth": guarded(lambda threshold: total()["queued"] >= threshold),
        "drop": guarded(lambda _: kernel_drops() > 0),
        "gap": lambda _: any(s["gaps"] for c in consumers for s in list(c.per_gen.values())),
        "enobufs": lambda _: any(c.enobufs for c in consumers),
    }


wait_until = kabi.wait_until


def main():
    plan = json.load(sys.stdin)
    start_ns = time.monotonic_ns()
    client = kabi.CtlClient(timeout=10.0)
    consumers = [Consumer(c["name"], c["groups"], c["rcvbuf"], c["slow_us"], start_ns) for c in plan["consumers"]]
    for consumer in consumers:
        consumer.start()
    before = client.stats().body["total"]
    all_cpus = sum(1 << c for c in online_cpus())
    errors = []
    for gen in plan["generators"]:
        cfg = dict(gen)
        cfg["cpu_mask"] = cfg.get("cpu_mask") or all_cpus
        reply = client.gen_start(**cfg)
        if not reply.ok:
            errors.append(f"GEN_START {gen['gen_id']}: {reply.error_name}")
    faults = InGuestFaults(plan.get("faults", []), plan["duration"], time.monotonic(),
                           event_probes(consumers, kabi.CtlClient(timeout=10.0), plan["generators"], before))
    faults.start()
    print(f"CNLAB-AGENT started {time.monotonic_ns()}", file=sys.stderr, flush=True)
    done_states = (kabi.CNLAB_GEN_DONE, kabi.CNLAB_GEN_STOPPED)

    def all_done():
        return all(client.gen_stats(g["gen_id"]).body.get("state") in done_states for g in plan["generators"])

    finished = wait_until(all_done, plan["duration"] + 30 * plan.get("timeout_scale", 1))
    if not finished:
        errors.append("generators did not finish in time; stopping them")
        for gen in plan["generators"]:
            client.gen_stop(gen["gen_id"])
    applied = faults.finish()
    wait_until(lambda: client.stats().body["total"]["queued"] == 0, 10)
    # Nothing can arrive any more: wait until every consumer has read and handled its queue.
    if not wait_until(lambda: all(c.caught_up() for c in consumers), 15 * plan.get("timeout_scale", 1), pause=0.01):
        errors.append("consumers did not catch up with their receive queues in time")
    generators = {}
    for gen in plan["generators"]:
        reply = client.gen_stats(gen["gen_id"])
        totals = {}
        for cpu in reply.body.get("cpus", []):
            for key in ("generated", "ok", "err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other"):
                totals[key] = totals.get(key, 0) + cpu[key]
        generators[str(gen["gen_id"])] = totals
    after_reply = client.stats()
    after = after_reply.body["total"]
    for consumer in consumers:
        consumer.halt.set()
    for consumer in consumers:
        consumer.join(2)
    keys = ("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr", "queued",
            "rejected")
    print(json.dumps({
        "errors": errors,
        "faults": applied,
        "faults_never_triggered": faults.never_triggered(),
        "elapsed_s": round((time.monotonic_ns() - start_ns) / 1e9, 3),
        "consumers": [c.report() for c in consumers],
        "generators": generators,
        "cbus": {k: after[k] - before[k] for k in keys if k != "queued"} | {"queued": after["queued"]},
        "cbus_balanced": kabi.check_invariant(after),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
