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

A module reloaded under the load (fault ``module-reload``) takes its
generator and CBUS statistics with it; the module logs them when it unloads
("gen G final", "gen G cpu C final", "cbus final" lines), so the final counts
are read back from ``/dev/kmsg``, from a position taken before the load (old
lines of earlier runs on the guest are never used), and the accounting stays
exact.  Without those lines it is reported as partial, with the reason.
"""

import json
import os
import re
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
CBUS_KEYS = ("inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr",
             "rejected")
GEN_KEYS = ("generated", "ok", "err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other")
# The module's unload lines (kmod/gen.c gen_log_final(), kmod/cbus.c cnlab_cbus_exit()) and their words
GEN_FINAL = re.compile(r"cnlab: gen (\d+) final: state (\w+) cpus (\d+)$")
GEN_CPU_FINAL = re.compile(r"cnlab: gen (\d+) cpu (\d+) final: (.*)$")
CBUS_FINAL = re.compile(r"cnlab: cbus final: (.*)$")
GEN_WORDS = {"generated": "generated", "ok": "ok", "nolistener": "err_nolistener", "overrun": "err_overrun",
             "nomem": "err_nomem", "full": "err_full", "other": "err_other"}
CBUS_WORDS = {"inserted": "inserted", "sent": "sent", "full": "drop_full", "nomem": "drop_nomem",
              "nolistener": "drop_nolistener", "overrun": "drop_overrun", "nlerr": "drop_nlerr", "queued": "queued",
              "rejected": "rejected"}


def online_mask():
    with open("/sys/devices/system/cpu/online") as f:
        mask = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            for c in range(int(lo), int(hi or lo) + 1):
                mask |= 1 << c
        return mask


wait_until = kabi.wait_until


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


class KernelLog:
    """The kernel log from the moment it is made on: ``/dev/kmsg`` opened non-blocking and moved to its end."""

    def __init__(self, path="/dev/kmsg"):
        self.lines = []
        self.partial = b""
        self.lost = 0  # records overwritten in the ring buffer before they were read (EPIPE)
        self.error = None
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as exc:
            self.fd = None
            self.error = f"{path}: {exc}"

    def read(self):
        """Every message logged since the mark, without the record prefix ("6,SEQ,USEC,-;") and without the
        continuation lines (" KEY=value").  /dev/kmsg gives one record per read; a plain file works too."""
        while self.fd is not None:
            try:
                chunk = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:
                self.lost += 1
                continue
            except OSError as exc:
                self.error = str(exc)
                break
            if not chunk:
                break
            *complete, self.partial = (self.partial + chunk).split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                if line and not line.startswith(" "):
                    self.lines.append(line.partition(";")[2])
        return self.lines

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _words(text, names):
    words = text.split()
    if len(words) % 2:
        raise ValueError(text)
    pairs = dict(zip(words[::2], words[1::2], strict=True))
    return {names[k]: int(v) for k, v in pairs.items() if k in names}


def parse_unloads(lines):
    """The final counts the module logged at each unload, oldest first.

    Each unload is ``{"gens": {gid: {"state", "cpus": {cpu: counts}, "expected_cpus"}}, "cbus": {...} or
    None}``: the generator lines come first (generators stop before CBUS), the "cbus final" line closes the
    unload.  Lines of other modules or messages are ignored.
    """
    unloads = []
    current = None
    for line in lines:
        line = line.strip()
        m = GEN_FINAL.search(line)
        if m:
            current = current or {"gens": {}, "cbus": None}
            current["gens"][int(m[1])] = {"state": m[2], "expected_cpus": int(m[3]), "cpus": {}}
            continue
        m = GEN_CPU_FINAL.search(line)
        if m:
            current = current or {"gens": {}, "cbus": None}
            gen = current["gens"].setdefault(int(m[1]), {"state": None, "expected_cpus": None, "cpus": {}})
            try:
                gen["cpus"][int(m[2])] = _words(m[3], GEN_WORDS)
            except ValueError:
                gen["bad"] = line
            continue
        m = CBUS_FINAL.search(line)
        if m:
            current = current or {"gens": {}, "cbus": None}
            try:
                current["cbus"] = _words(m[1], CBUS_WORDS)
            except ValueError:
                current["cbus"] = None
            unloads.append(current)
            current = None
    if current is not None:
        unloads.append(current)  # generator lines without the closing "cbus final" line
    return unloads


def recover(gens, unloads, before, after):
    """Fill in statistics a module unload took away, from its final log lines.

    ``gens`` (gen_totals, None where lost) is completed in place; returns ``(cbus, reason)``: the CBUS
    deltas over the load summed across the unloads (each unload's final totals, minus ``before`` for the
    first module instance, plus ``after`` of the module loaded now), and why the accounting cannot be
    exact (None if it can).
    """
    problems = []
    for gid in [g for g, totals in gens.items() if totals is None]:
        found = [u["gens"][gid] for u in unloads if gid in u["gens"]]
        if not found:
            problems.append(f"generator {gid}: no final counts in the kernel log")
            continue
        if len(found) > 1:
            problems.append(f"generator {gid}: final counts logged by {len(found)} unloads")
            continue
        gen = found[0]
        cpus = {cpu: c for cpu, c in gen["cpus"].items() if c.get("generated")}
        if gen.get("bad") or gen["expected_cpus"] != len(cpus) or any(set(c) != set(GEN_KEYS) for c in cpus.values()):
            problems.append(f"generator {gid}: incomplete final counts in the kernel log "
                            f"({len(cpus)} CPU lines of {gen['expected_cpus']})")
            continue
        gens[gid] = {"state": kabi.CNLAB_GEN_STOPPED, "unloaded": gen["state"], "cpus": cpus}
    cbus = None
    if any(u["cbus"] is None or set(u["cbus"]) != set(CBUS_WORDS.values()) for u in unloads):
        problems.append("module unloaded but its 'cbus final' line is missing or malformed")
    elif before is None or after is None:
        problems.append("CBUS statistics before or after the load are missing")
    else:
        cbus = {k: sum(u["cbus"][k] for u in unloads) - before[k] + after[k] for k in CBUS_KEYS}
        cbus["queued"] = after["queued"]
        cbus["balanced"] = kabi.check_invariant(after) and all(
            kabi.check_invariant(u["cbus"]) and u["cbus"]["queued"] == 0 for u in unloads)
        cbus["unloads"] = len(unloads)
    return cbus, "; ".join(problems) or None


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
                    "cpus": {c["cpu"]: {k: c[k] for k in GEN_KEYS}
                             for c in rep.body["cpus"] if c["generated"]}}
    return out


def reconcile(report, gens, cbus_nlerr, groups_of_gen, lost_reason=None):
    """Loss of one consumer against the kernel's counts (``exact: False`` and why, if it cannot be exact).

    ``lost_reason``: why statistics a module unload took away could not be recovered from the kernel log.
    """
    if report.get("protocol") == "oneshot":
        return {"exact": False, "reason": "one-shot consumer: no per-stream report"}
    if lost_reason or any(totals is None for totals in gens.values()):
        why = lost_reason or "generator statistics lost (module reloaded?)"
        return {"exact": False, "reason": f"{why}: partial accounting"}
    if report.get("missing"):
        return {"exact": False, "reason": "missing consumer: partial accounting"}
    if report.get("churns") and report["socket_drops"]:
        # A drop just before the consumer left its groups shows no gap: the next message of that stream
        # came while it was away, or after it rejoined and restarted the stream.
        return {"exact": False, "reason": f"{report['socket_drops']} socket drops and {report['churns']} rejoins: "
                                          "drops just before leaving cannot be seen as gaps; partial accounting"}
    # A restarted consumer (resync), or one that left and rejoined its groups (churns), counts each
    # stream from the first message it saw since it (re)joined: exact while the only sends that failed
    # were those with no listener at all (while it was away).
    resync = bool(report.get("resync") or report.get("churns"))
    lost = 0
    pre_socket = 0
    streams = report["streams"]
    for gid, totals in gens.items():
        if totals is None or not (set(groups_of_gen[gid]) & set(report["groups"])):
            continue
        for cpu, c in totals["cpus"].items():
            s = streams.get(f"{gid}/{cpu}")
            if resync and (s is None or s.get("next") is None):
                continue  # not seen since it (re)joined: the stream may have ended before
            nxt = s["next"] if s else 0
            lost += (s["gaps"] if s else 0) + max(0, c["generated"] - nxt)
            pre_socket += c["err_nomem"] + c["err_full"] + c["err_other"]
    if resync and pre_socket:
        return {"exact": False, "reason": f"restarted or rejoining consumer and {pre_socket} failed sends: "
                                          "which of them came while it listened is unknown"}
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
    klog = KernelLog()  # the mark: unload lines of this load only
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
    bind_timeout = plan.get("bind_timeout_s", 20)
    if not wait_until(lambda: all(c.ready() for c in consumers), bind_timeout):
        late = ", ".join(c.name for c in consumers if not c.ready())
        errors.append(f"consumers did not bind within {bind_timeout:g} s: {late}")
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
    unloads = parse_unloads(klog.read())
    klog.close()
    lost_reason = None
    if unloads:  # the module was reloaded: its statistics restarted at zero, the gone ones are in the log
        cbus, lost_reason = recover(gens, unloads, before, after)
        if klog.lost and lost_reason:
            lost_reason += f" ({klog.lost} kernel log records overwritten before they were read)"
        cbus = cbus or {"partial": lost_reason}
    else:
        cbus = {k: after[k] - before[k] for k in CBUS_KEYS} if before and after else {}
        if after:
            cbus["queued"] = after["queued"]
            cbus["balanced"] = kabi.check_invariant(after)
        if any(totals is None for totals in gens.values()):
            lost_reason = "generator statistics unavailable and no unload lines in the kernel log since the load began"
            if klog.error:
                lost_reason += f" ({klog.error})"
    reports = []
    for c in consumers:
        for r in c.stop():
            r["accounting"] = reconcile(r, gens, cbus.get("drop_nlerr", 0), groups_of_gen, lost_reason)
            reports.append(r)
    live = []
    for src, d in zip(plan.get("live", []), drivers, strict=True):
        out, err = d.communicate()
        live.append({"name": src["name"], "status": d.returncode, "stdout": out.decode(errors="replace")[-500:],
                     "stderr": err.decode(errors="replace")[-300:]})
    print(json.dumps({"errors": errors, "load_s": round(load_s, 3), "consumers": reports,
                      "generators": {str(k): v for k, v in gens.items()}, "cbus": cbus, "live": live,
                      "faults": log, "unloads": len(unloads)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
