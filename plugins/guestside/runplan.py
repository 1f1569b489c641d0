#!/usr/bin/env python3
"""Run one load plan in the guest and print one JSON report (built-in ``runner`` plugin).

The plan (JSON on stdin) comes from the host: GEN_START configs of the
emulators, live sources (cn_proc and its process storm), consumers (argv and
instances) and faults (guest argv to inject after ``delay_s`` and to restore
when the load is over).  Steps: inject faults with no delay, start the
consumers and wait for them to bind, start generators and live drivers, arm
the other faults, wait for the load to end (restarting a consumer once if it
was SIGKILLed), restore faults, wait for CBUS queues to drain, stop the
consumers (they drain their sockets), then reconcile each consumer's loss
with the kernel: per (generator, CPU) stream, ``lost`` = gaps + tail (the
generator's count minus the next expected sequence) must equal the socket's
drops plus the messages that never reached any socket (generator send errors
other than "no listener", CBUS ``drop_nlerr``).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kabi  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# IDLE: the generator is not known (any more): the module was reloaded under the load
DONE = (kabi.CNLAB_GEN_DONE, kabi.CNLAB_GEN_STOPPED, kabi.CNLAB_GEN_IDLE)
CBUS_KEYS = ("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_nlerr", "rejected")


def online_mask():
    with open("/sys/devices/system/cpu/online") as f:
        mask = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            for c in range(int(lo), int(hi or lo) + 1):
                mask |= 1 << c
        return mask


def wait_until(predicate, seconds, pause=0.05):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    return predicate()


def run_argvs(argvs, log, what):
    for argv in argvs:
        proc = subprocess.run(argv, capture_output=True, text=True)
        log.append({"what": what, "argv": argv, "status": proc.returncode, "stderr": proc.stderr.strip()[-300:],
                    "t": round(time.monotonic(), 3)})


class OneShot:
    """A consumer that runs on its own options and prints one JSON line (``protocol = oneshot``)."""

    def __init__(self, name, argv):
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def ready(self):
        return True

    def check_killed(self):
        return False

    def stop(self):
        try:
            out, err = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return [{"name": self.name, "missing": True, "status": self.proc.returncode,
                     "stderr": err.decode(errors="replace")[-300:]}]
        return [dict(report, name=self.name, protocol="oneshot")]


class ConsumerProc:
    def __init__(self, name, argv, listen, folder):
        self.name = name
        self.base = list(argv)
        self.listen = listen
        self.folder = folder
        self.runs = []
        self.restarts = 0
        self.start(False)

    def start(self, resync):
        suffix = f"-r{self.restarts}" if resync else ""
        out = os.path.join(self.folder, f"{self.name}{suffix}.json")
        argv = self.base + ["--name", self.name + suffix, "--out", out]
        if self.listen:
            argv.append("--listen-proc")
        if resync:
            argv.append("--resync")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.runs.append({"out": out, "proc": self.proc, "resync": resync})

    def ready(self):
        return os.path.exists(self.runs[-1]["out"] + ".ready")

    def check_killed(self):
        code = self.proc.poll()
        if code == -signal.SIGKILL and self.restarts < 1:
            self.restarts += 1
            self.start(True)
            return True
        return False

    def stop(self):
        wait_until(lambda: self.ready() or self.proc.poll() is not None, 30)  # a restarted one may still be starting
        for run in self.runs:
            if run["proc"].poll() is None:
                run["proc"].send_signal(signal.SIGTERM)
        reports = []
        for run in self.runs:
            try:
                _, err = run["proc"].communicate(timeout=30)
            except subprocess.TimeoutExpired:
                run["proc"].kill()
                _, err = run["proc"].communicate()
            if os.path.exists(run["out"]):
                with open(run["out"]) as f:
                    reports.append(json.load(f))
            else:
                reports.append({"name": self.name, "missing": True, "status": run["proc"].returncode,
                                "stderr": err.decode(errors="replace")[-300:]})
        return reports


def gen_totals(client, gen_ids):
    out = {}
    for gid in gen_ids:
        try:
            rep = client.gen_stats(gid)
        except (TimeoutError, OSError):
            out[gid] = None
            continue
        if not rep.ok or rep.body["state"] == kabi.CNLAB_GEN_IDLE:
            out[gid] = None
            continue
        out[gid] = {"state": rep.body["state"],
                    "cpus": {c["cpu"]: {k: c[k] for k in ("generated", "ok", "err_nolistener", "err_nomem",
                                                            "err_full", "err_other")}
                             for c in rep.body["cpus"] if c["generated"]}}
    return out


def reconcile(report, gens, cbus_nlerr, groups_of_gen):
    """Loss of one consumer against the kernel's counts (None if it cannot be exact)."""
    if report.get("protocol") == "oneshot":
        return {"exact": False, "reason": "one-shot consumer: no per-stream report"}
    if any(totals is None for totals in gens.values()):
        return {"exact": False, "reason": "generator statistics lost (module reloaded?): partial accounting"}
    if report.get("missing") or report.get("churns"):
        return {"exact": False, "reason": "churning or missing consumer: partial accounting"}
    # A restarted consumer (resync) counts each stream from the first message it saw: exact while
    # the only sends that failed were those with no listener at all (before it joined).
    resync = bool(report.get("resync"))
    lost = 0
    pre_socket = 0
    streams = report["streams"]
    for gid, totals in gens.items():
        if totals is None or not (set(groups_of_gen[gid]) & set(report["groups"])):
            continue
        for cpu, c in totals["cpus"].items():
            s = streams.get(f"{gid}/{cpu}")
            if s is None and resync:
                continue  # never seen since it joined: the stream may have ended before
            nxt = s["next"] if s else 0
            lost += (s["gaps"] if s else 0) + max(0, c["generated"] - nxt)
            pre_socket += c["err_nomem"] + c["err_full"] + c["err_other"]
    if resync and pre_socket:
        return {"exact": False, "reason": f"restarted consumer and {pre_socket} failed sends: which of them "
                                          "came after it joined is unknown"}
    # cn_proc streams: the kernel keeps no per-socket generated count, so only gaps (not tail loss) are known
    lost += sum(s["gaps"] for key, s in streams.items() if key.startswith("proc/"))
    drops = report["socket_drops"]
    expected = drops + pre_socket + cbus_nlerr
    return {"exact": True, "lost": lost, "socket_drops": drops, "pre_socket": pre_socket, "cbus_nlerr": cbus_nlerr,
            "reconciled": lost == expected, "since_join": resync}


def main():
    plan = json.load(sys.stdin)
    folder = plan.get("folder", "/run/cnlab/plugins/out")
    os.makedirs(folder, exist_ok=True)
    log = []
    errors = []
    client = kabi.CtlClient(timeout=10.0)
    faults = plan.get("faults", [])
    for f in faults:
        if not f.get("delay_s"):
            run_argvs(f["inject"], log, f"inject {f['name']}")
    consumers = []
    for c in plan.get("consumers", []):
        for i in range(c.get("instances", 1)):
            name = c["name"] if c.get("instances", 1) == 1 else f"{c['name']}-{i}"
            if c.get("protocol") == "oneshot":
                consumers.append(OneShot(name, c["argv"]))
            else:
                consumers.append(ConsumerProc(name, c["argv"], c.get("listen", False), folder))
    if not wait_until(lambda: all(c.ready() for c in consumers), 20):
        errors.append("consumers did not bind in time")
    try:
        before = client.stats().body["total"]
    except (TimeoutError, OSError) as exc:
        before = None
        errors.append(f"STATS before: {exc}")
    mask = online_mask()
    gen_ids = []
    groups_of_gen = {}
    started = time.monotonic()
    for cfg in plan.get("generators", []):
        cfg = dict(cfg)
        cfg["cpu_mask"] = (cfg.get("cpu_mask") or mask) & mask
        rep = client.gen_start(**cfg)
        if rep.ok:
            gen_ids.append(cfg["gen_id"])
            groups_of_gen[cfg["gen_id"]] = [cfg["group"]]
        else:
            errors.append(f"GEN_START {cfg['gen_id']}: {rep.error_name}")
    drivers = [subprocess.Popen(src["driver"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for src in plan.get("live", [])]
    timers = []
    restored = set()

    def timeline(f):
        # inject, then (with hold_s) restore while the load runs, in order: a reloaded module must be back
        # before the load can end, and insmod must not race a slow rmmod
        time.sleep(f.get("delay_s", 0))
        if f.get("delay_s"):
            run_argvs(f["inject"], log, f"inject {f['name']}")
        if f.get("hold_s"):
            time.sleep(f["hold_s"])
            run_argvs(f.get("restore", []), log, f"restore {f['name']}")

    for f in faults:
        if f.get("delay_s") or f.get("hold_s"):
            t = threading.Thread(target=timeline, args=(f,), daemon=True)
            t.start()
            timers.append(t)
        if f.get("hold_s"):
            restored.add(f["name"])

    def load_over():
        for c in consumers:
            if c.check_killed():
                log.append({"what": f"restarted consumer {c.name}", "t": round(time.monotonic(), 3)})
        if any(d.poll() is None for d in drivers):
            return False
        for gid in gen_ids:
            try:
                rep = client.gen_stats(gid)
            except (TimeoutError, OSError):
                return False
            if rep.ok and rep.body["state"] not in DONE:
                return False
        return True

    if not wait_until(load_over, plan.get("timeout_s", 120), pause=0.1):
        errors.append("load did not finish in time; stopping generators")
        for gid in gen_ids:
            try:
                client.gen_stop(gid)
            except (TimeoutError, OSError) as exc:
                errors.append(f"GEN_STOP {gid}: {exc}")
        for d in drivers:
            d.kill()
    load_s = time.monotonic() - started
    for t in timers:
        t.join()
    for f in reversed(faults):
        if f["name"] not in restored:
            run_argvs(f.get("restore", []), log, f"restore {f['name']}")
    for c in consumers:
        c.check_killed()

    def drained():
        try:
            return client.stats().body["total"]["queued"] == 0
        except (TimeoutError, OSError):
            return False

    wait_until(drained, 15)
    # No settling sleep: the generators are done and CBUS is drained, so everything is in the consumers'
    # receive queues, which they drain (non-blocking, to EAGAIN) when stopped below.
    gens = gen_totals(client, gen_ids)
    try:
        after = client.stats().body["total"]
    except (TimeoutError, OSError) as exc:
        after = None
        errors.append(f"STATS after: {exc}")
    cbus = {k: after[k] - before[k] for k in CBUS_KEYS} if before and after else {}
    if after:
        cbus["queued"] = after["queued"]
        cbus["balanced"] = kabi.check_invariant(after)
    reports = []
    for c in consumers:
        for r in c.stop():
            r["accounting"] = reconcile(r, gens, cbus.get("drop_nlerr", 0), groups_of_gen)
            reports.append(r)
    live = []
    for src, d in zip(plan.get("live", []), drivers, strict=True):
        out, err = d.communicate()
        live.append({"name": src["name"], "status": d.returncode, "stdout": out.decode(errors="replace")[-500:],
                     "stderr": err.decode(errors="replace")[-300:]})
    print(json.dumps({"errors": errors, "load_s": round(load_s, 3), "consumers": reports,
                      "generators": {str(k): v for k, v in gens.items()}, "cbus": cbus, "live": live,
                      "faults": log}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
