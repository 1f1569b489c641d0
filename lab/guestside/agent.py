#!/usr/bin/env python3
"""The guest agent: runs one scenario's load in the guest and prints one JSON report.

The plan (JSON on stdin, from ``lab.engine.plan``) holds GEN_START configs,
live sources (cn_proc and its process storm), consumer command lines, faults
(actions and triggers) and the probes of the events they wait for.  Steps:

1. mark the kernel log; run the plugins' ``setup`` steps (actions, as in
   faults: the flight recorder starts here); faults ``at = 0`` fire;
2. start the consumers and wait until every one has bound its socket;
3. read the module's statistics, start the generators and live drivers,
   print ``CNLAB-AGENT load <ns>`` on stderr (the host's clock for the load);
4. fire faults on their triggers (``agent_faults``) while the load runs,
   restarting a consumer once if a fault SIGKILLed it; the load lasts until
   the generators and live drivers are done and every timed firing has
   fired and been undone;
5. undo every fault, bring CPUs back, and measure the drain: every CPU's
   CBUS queue must empty in time, or the report names the CPUs still holding
   messages;
6. stop the consumers (each drains its socket and writes its report) and
   reconcile each consumer's loss with the kernel's counts
   (``agent_accounting``); run the plugins' ``teardown`` steps.

Standard library only, plus ``kabi`` and the ``agent_*`` modules shipped beside it.
"""

import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kabi  # noqa: E402
from agent_accounting import CBUS_KEYS, DONE, KernelLog, gen_totals, parse_unloads, reconcile, recover  # noqa: E402
from agent_consumers import start_consumers  # noqa: E402
from agent_faults import Actions, FaultScheduler  # noqa: E402

#: How long a fault's evidence may take to show, times the accelerator's timeout scale.
EVIDENCE_SECONDS = 2.0
DROP_KEYS = ("drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr")
GEN_ERR_KEYS = ("err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other")


def online_mask():
    with open("/sys/devices/system/cpu/online") as f:
        mask = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            for c in range(int(lo), int(hi or lo) + 1):
                mask |= 1 << c
        return mask


def read_counter(probe):
    with open(probe["path"]) as f:
        m = re.search(probe["pattern"], f.read())
    if not m:
        raise ValueError(f"{probe['path']}: no match for {probe['pattern']!r}")
    return int(m.group(1))


def stats_body(client, reset_hwm=False):
    """The STATS reply's body; a refused request raises OSError naming the module's error (a module that
    answers STATS with an error must fail the scenario with that, not end the agent with a traceback)."""
    reply = client.stats(reset_hwm=reset_hwm) if reset_hwm else client.stats()
    if not reply.ok:
        raise OSError(f"STATS refused: {reply.error_name}")
    return reply.body


def make_probes(events, consumers, client, gen_ids, before):
    """Event name -> function returning its count now (see lab.plugin.objects.AGENT_EVENTS)."""

    def live(key):
        return lambda: sum(c.live().get(key, 0) for c in consumers)

    def queue_depth():
        return stats_body(client)["total"]["queued"]

    def drops():
        now = stats_body(client)["total"]
        count = sum(now[k] - before[k] for k in DROP_KEYS) if before else 0
        for gid in gen_ids:
            for cpu in client.gen_stats(gid).body.get("cpus", []):
                count += sum(cpu[k] for k in GEN_ERR_KEYS)
        return count

    agent = {"received": live("received"), "gap": live("gaps"), "enobufs": live("enobufs"),
             "queue_depth": queue_depth, "drop": drops}
    probes = {}
    for name, probe in events.items():
        if probe["kind"] == "agent":
            probes[name] = agent[probe["name"]]
        else:
            try:
                base = read_counter(probe) if probe.get("relative", True) else 0
            except (OSError, ValueError):
                base = 0  # counted from 0; each poll that cannot read it is reported if the event never happens
            probes[name] = lambda probe=probe, base=base: read_counter(probe) - base
    return probes


def signal_all(consumers):
    def send(signum):
        """Signal every running consumer process; the pids it reached."""
        sent = []
        for c in consumers:
            for pid in c.pids():
                try:
                    os.kill(pid, signum)
                    sent.append(pid)
                except ProcessLookupError:
                    pass
        return sent
    return send


def drain(client, seconds):
    """Wait for every CBUS queue to empty, measured by the counters nothing derives: ``enqueued ==
    dequeued`` and the drain's books closed (bundles flushed).  ``{"ok", "waited_s", "cpus"?}`` (cpus: those
    still holding, by the derived ``queued``)."""
    started = time.monotonic()
    unreadable = []

    def settled():
        try:
            return not kabi.ledger_problems(stats_body(client)["total"])
        except TimeoutError:
            return False
        except (OSError, KeyError, TypeError) as exc:  # refused or malformed: waiting will not change it
            unreadable.append(f"{type(exc).__name__}: {exc}")
            return True

    ok = bool(kabi.wait_until(settled, seconds, pause=0.01)) and not unreadable
    out = {"ok": ok, "waited_s": round(time.monotonic() - started, 3)}
    if not ok:
        try:
            out["cpus"] = {str(c["cpu"]): c["queued"] for c in stats_body(client)["cpus"] if c["queued"]}
        except (TimeoutError, OSError, KeyError, TypeError) as exc:
            out["cpus"] = {}
            out["error"] = unreadable[-1] if unreadable else str(exc)
    return out


def run_steps(actions, steps, errors, when):
    """A plugin's ``setup`` or ``teardown`` steps (``{"owner", "action", "optional"}``), in order, in this
    process; each step's outcome, with its owner.  A step that is not optional and fails is an error."""
    done = []
    for step in steps:
        out = {"owner": step.get("owner", "?"), "optional": bool(step.get("optional")),
               **actions.run(step["action"]), "action": list(step["action"])}
        if not out["ok"] and not step.get("optional"):
            errors.append(f"{when} step of {out['owner']} failed: {' '.join(map(str, out['action']))}: "
                          f"{out.get('error')}")
        done.append(out)
    return done


def main():
    started = time.monotonic()
    marks = {}

    def mark(name):
        marks[name] = round(time.monotonic() - started, 3)

    plan = json.load(sys.stdin)
    folder = plan["folder"]
    os.makedirs(folder, exist_ok=True)
    os.environ["CNLAB_OUT"] = folder  # every program the agent starts learns the scenario's working folder
    scale = plan.get("timeout_scale", 1)
    errors = []
    klog = KernelLog()  # the mark: unload lines of this load only
    client = kabi.CtlClient(timeout=10.0)
    fault_client = kabi.CtlClient(timeout=10.0)
    consumers = []
    actions = Actions(fault_client, signal_all(consumers), folder)
    scheduler = FaultScheduler(plan.get("faults", []), actions, {}, plan["duration"],
                               evidence_s=EVIDENCE_SECONDS * scale)
    setup = run_steps(actions, plan.get("setup", []), errors, "setup")
    mark("setup")
    scheduler.fire_before_load()
    mark("faults_before_load")
    own_fds = [client.sock.fileno(), fault_client.sock.fileno()] + ([klog.fd] if klog.fd is not None else [])
    consumers.extend(start_consumers(plan, folder, own_fds))
    mark("consumers_started")
    bind_timeout = plan.get("bind_timeout_s", 20)
    bind_started = time.monotonic()
    # bound, or gone: a consumer that died before binding does not cost the whole timeout
    if not kabi.wait_until(lambda: all(c.ready() or c.exited() is not None for c in consumers), bind_timeout,
                           pause=0.02):
        late = ", ".join(c.label for c in consumers if not c.ready())
        errors.append(f"consumers did not bind within {bind_timeout:g} s: {late}")
    for c in consumers:
        if c.exited() is not None:
            errors.append(f"consumer {c.label} exited with status {c.exited()} before it bound its socket")
    bind_s = time.monotonic() - bind_started
    mark("consumers_bound")
    try:  # every scenario starts from its own high-water mark, whether or not the guest ran others before
        before = stats_body(client, reset_hwm=True)["total"]
    except (TimeoutError, OSError, KeyError, TypeError) as exc:
        before = None
        errors.append(f"STATS before (high-water mark reset): {exc}")
    mask = online_mask()
    gen_ids, groups_of_gen = [], {}
    t0 = time.monotonic()
    for cfg in plan.get("generators", []):
        cfg = {k: v for k, v in cfg.items() if k != "label"}
        cfg["cpu_mask"] = (cfg.get("cpu_mask") or mask) & mask
        reply = client.gen_start(**cfg)
        if reply.ok:
            gen_ids.append(cfg["gen_id"])
            groups_of_gen[cfg["gen_id"]] = [cfg["group"]]
        else:
            errors.append(f"GEN_START {cfg['gen_id']}: {reply.error_name}")
    drivers = []
    for n, src in enumerate(plan.get("live", [])):  # output to files: a chatty driver must not block on a pipe
        with open(os.path.join(folder, f"live-{n}.out"), "wb") as out, \
                open(os.path.join(folder, f"live-{n}.stderr"), "wb") as err:
            drivers.append(subprocess.Popen(src["driver"], stdout=out, stderr=err))
    mark("load_started")
    print(f"CNLAB-AGENT load {time.monotonic_ns()}", file=sys.stderr, flush=True)
    scheduler.probes = make_probes(plan.get("events", {}), consumers, fault_client, gen_ids, before)
    scheduler.start_load(t0)
    restarted = []

    def load_over():
        for c in consumers:
            if c.check_killed():
                restarted.append({"consumer": c.label, "t": round(time.monotonic() - t0, 3)})
        if scheduler.busy() or any(d.poll() is None for d in drivers):
            return False
        for gid in gen_ids:
            try:
                reply = client.gen_stats(gid)
            except (TimeoutError, OSError):
                return False
            if reply.ok and reply.body["state"] not in DONE:
                return False
        return True

    if not kabi.wait_until(load_over, plan.get("timeout_s", plan["duration"] + 60 * scale), pause=0.05):
        errors.append("the load did not finish in time; stopping the generators")
        for gid in gen_ids:
            try:
                client.gen_stop(gid)
            except (TimeoutError, OSError) as exc:
                errors.append(f"GEN_STOP {gid}: {exc}")
        for d in drivers:
            d.kill()
    load_s = time.monotonic() - t0
    mark("load_over")
    fault_records, never_fired = scheduler.finish()
    mark("faults_undone")
    for c in consumers:
        c.check_killed()
    drained = drain(client, 15 * scale)
    mark("drained")
    if not drained["ok"] and drained.get("error"):
        errors.append(f"CBUS's drain could not be measured: {drained['error']}")
    elif not drained["ok"]:
        held = ", ".join(f"cpu{cpu} {n}" for cpu, n in sorted(drained.get("cpus", {}).items())) or "unknown"
        errors.append(f"CBUS did not drain within {15 * scale} s: still queued: {held}")
    gens = gen_totals(client, gen_ids)
    ledger = {}
    try:
        after_reply = stats_body(client)
        if kabi.counter_problems(after_reply):  # the last batch is counted just after its last message: look again
            kabi.wait_until(lambda: not kabi.counter_problems(stats_body(client)), 1.0 * scale)
            after_reply = stats_body(client)
        after = after_reply["total"]
        problems = kabi.counter_problems(after_reply)
        ledger = {"total": problems.pop("total", []), "cpus": problems}
    except (TimeoutError, OSError, KeyError, TypeError) as exc:
        after = None
        errors.append(f"STATS after: {type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else
                      f"STATS after: {exc}")
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
            cbus["hwm"] = after.get("hwm", 0)  # the scenario's own peak: reset before the load
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
    mark("consumers_stopped")
    teardown = run_steps(actions, plan.get("teardown", []), errors, "teardown")
    live = []
    for n, (src, d) in enumerate(zip(plan.get("live", []), drivers, strict=True)):
        d.wait()
        with open(os.path.join(folder, f"live-{n}.out"), "rb") as f:
            out = f.read()
        with open(os.path.join(folder, f"live-{n}.stderr"), "rb") as f:
            err = f.read()
        live.append({"label": src["label"], "name": src["name"], "status": d.returncode,
                     "stdout": out.decode(errors="replace")[-500:], "stderr": err.decode(errors="replace")[-300:]})
    print(json.dumps({"errors": errors, "load_s": round(load_s, 3), "bind_s": round(bind_s, 3), "drain": drained,
                      "consumers": reports, "generators": {str(k): v for k, v in gens.items()}, "cbus": cbus,
                      "live": live, "faults": fault_records, "faults_never_fired": never_fired,
                      "restarted": restarted, "unloads": len(unloads), "marks": marks, "ledger": ledger,
                      "setup": setup, "teardown": teardown}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
