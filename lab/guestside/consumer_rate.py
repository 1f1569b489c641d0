#!/usr/bin/env python3
"""Checkers side by side in one guest: rates and accounting (guest side; root, module loaded).

    python3 consumer_rate.py < plan.json

The plan: ``{"consumers": {NAME: ARGV}, "together": BOOL, "backlog": BOOL, "generator": GEN_START fields
(no gen_id), "folder": PATH, "timeout_s": S}``.  Each ARGV is a checker's command line without ``--name`` and
``--out`` (``consume.py`` or ``cnlab-consume``, the checker protocol).  With ``together`` every
checker listens to the same generator run (their accounting can be compared message for message);
otherwise each gets a run of its own (their rates do not share the CPUs).  With ``backlog`` each checker
is stopped (SIGSTOP) once bound, the whole flood is queued on its socket, and its clock starts when it is
let go (SIGCONT): the rate is then the checker's own, not bounded by how fast the generator sends.

For each run: start the checkers and wait for their ``.ready`` files; start the generator; wait until
it is done, CBUS is drained and each checker's socket is empty (``Rmem`` 0 in /proc/net/netlink);
read each ``.live`` file, stop the checkers (SIGTERM) and read their reports.  Prints one JSON
object: per checker its report plus ``seconds`` (generator start, or with ``backlog`` the checker's
release, to its socket empty),
``msgs_per_s`` (received / seconds), ``live`` and the loss accounting: ``lost`` (gaps and tail loss
over the generator's streams) against ``counted`` (the socket's drops plus sends that reached no
socket), ``reconciled`` when they are equal.
"""

import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kabi  # noqa: E402

GEN_ID = 13
DONE = (kabi.CNLAB_GEN_DONE, kabi.CNLAB_GEN_STOPPED)
PRE_SOCKET = ("err_nomem", "err_full", "err_other")


def rmem(portid):
    """Bytes queued on the connector socket of ``portid`` (-1: no such socket)."""
    with open("/proc/net/netlink") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) >= 9 and cols[1] == str(kabi.NETLINK_CONNECTOR) and cols[2] == str(portid):
                return int(cols[4])
    return -1


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Checker:
    def __init__(self, name, argv, folder):
        self.name = name
        self.out = os.path.join(folder, f"{name}.json")
        for suffix in ("", ".ready", ".live", ".tmp", ".live.tmp"):
            if os.path.exists(self.out + suffix):
                os.unlink(self.out + suffix)
        self.proc = subprocess.Popen(list(argv) + ["--name", name, "--out", self.out], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.portid = None
        self.caught_up = None

    def ready(self):
        if self.portid is None and os.path.exists(self.out + ".ready"):
            with open(self.out + ".ready") as f:
                text = f.read().strip()
            self.portid = int(text) if text.isdigit() else None
        return self.portid is not None or self.proc.poll() is not None

    def stop(self):
        live = read_json(self.out + ".live")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        report = read_json(self.out)
        if report is None:
            return {"name": self.name, "missing": True, "status": self.proc.returncode,
                    "stderr": err.decode(errors="replace")[-300:]}
        return dict(report, live=live)


def wait_empty(checker, started, deadline):
    """Until the checker's socket is empty on three polls in a row: when it caught up."""
    zero = 0
    while time.monotonic() < deadline and zero < 3:
        zero = zero + 1 if rmem(checker.portid) == 0 else 0
        if zero == 1:
            checker.caught_up = time.monotonic() - started
        time.sleep(0.01)


def account(report, gen, cbus_nlerr):
    """The checker's loss against what the kernel counted (runplan.py's reconcile, for one generator)."""
    lost = pre = 0
    for cpu, counts in gen.items():
        s = report["streams"].get(f"{GEN_ID}/{cpu}")
        lost += (s["gaps"] if s else 0) + max(0, counts["generated"] - (s["next"] if s and s["next"] is not None
                                                                        else 0))
        pre += sum(counts[k] for k in PRE_SOCKET)
    counted = max(report["socket_drops"], 0) + pre + cbus_nlerr
    return {"lost": lost, "counted": counted, "socket_drops": report["socket_drops"], "pre_socket": pre,
            "cbus_nlerr": cbus_nlerr, "reconciled": lost == counted}


def run(client, consumers, cfg, folder, timeout, backlog=False):
    checkers = [Checker(name, argv, folder) for name, argv in consumers.items()]
    kabi.wait_until(lambda: all(c.ready() for c in checkers), 60)
    late = [c.name for c in checkers if c.portid is None]
    if late:
        for c in checkers:
            c.stop()
        raise RuntimeError(f"checkers did not bind: {late}")
    if backlog:
        for c in checkers:
            c.proc.send_signal(signal.SIGSTOP)
    before = client.stats().body["total"]
    started = time.monotonic()
    rep = client.gen_start(gen_id=GEN_ID, **cfg)
    if not rep.ok:
        raise RuntimeError(f"GEN_START: {rep.error_name}")
    deadline = started + timeout
    kabi.wait_until(lambda: client.gen_stats(GEN_ID).body["state"] in DONE, timeout)
    gen_seconds = time.monotonic() - started
    kabi.wait_until(lambda: client.stats().body["total"]["queued"] == 0, 30)
    if backlog:  # every message is on the sockets now (or counted as dropped): the checkers' clocks start
        started = time.monotonic()
        deadline = started + timeout
        for c in checkers:
            c.proc.send_signal(signal.SIGCONT)
    for c in checkers:
        wait_empty(c, started, deadline)
    stats = client.gen_stats(GEN_ID).body
    gen = {c["cpu"]: {k: c[k] for k in ("generated", "ok", "err_nolistener") + PRE_SOCKET}
           for c in stats["cpus"] if c["generated"]}
    after = client.stats().body["total"]
    nlerr = after["drop_nlerr"] - before["drop_nlerr"]
    generated = sum(c["generated"] for c in gen.values())
    out = {"generated": generated, "gen_seconds": round(gen_seconds, 3),
           "gen_msgs_per_s": round(generated / gen_seconds) if gen_seconds else 0,
           "cbus": {k: after[k] - before[k] for k in ("inserted", "sent", "drop_full", "drop_nomem", "drop_nlerr")},
           "consumers": {}}
    for c in checkers:
        report = c.stop()
        if not report.get("missing"):
            seconds = c.caught_up or (time.monotonic() - started)
            report.update(seconds=round(seconds, 3), msgs_per_s=round(report["received"] / seconds) if seconds else 0,
                          accounting=account(report, gen, nlerr))
        out["consumers"][c.name] = report
    return out


def main():
    plan = json.load(sys.stdin)
    folder = plan.get("folder", "/tmp/consumer-rate")
    os.makedirs(folder, exist_ok=True)
    timeout = plan.get("timeout_s", 300)
    cfg = dict(plan["generator"])
    with kabi.CtlClient(timeout=10.0) as client:
        client.gen_stop(kabi.CNLAB_GEN_ALL)
        backlog = bool(plan.get("backlog", False))
        if plan.get("together", True):
            runs = [run(client, plan["consumers"], cfg, folder, timeout, backlog)]
        else:
            runs = [run(client, {name: argv}, cfg, folder, timeout, backlog)
                    for name, argv in plan["consumers"].items()]
    print(json.dumps({"together": plan.get("together", True), "backlog": backlog, "generator": cfg, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
