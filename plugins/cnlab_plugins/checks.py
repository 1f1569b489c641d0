"""Essential plugin: the engine's checks of every scenario, as verdicts (``lab_result_check``).

Each verdict compares numbers that come from different places: the
generators' own counts, CBUS's counters, every consumer's receipts and its
socket's drops, the console, the taint mask, the fault records.

========================= =============================================================================
verdict                   holds when
========================= =============================================================================
``kernel_problems``       the console shows no oops/BUG/WARNING/lockup... except the expected kinds
``taint``                 no new taint bit beyond the out-of-tree module's (and expected WARNs)
``agent``                 the guest agent reported no error (bind, GEN_START, timeouts, drain)
``consumers``             every consumer reported, and each heard something when emulators ran
``accounting``            every consumer's loss equals what the kernel counted for it; CBUS balances
``loss``                  no consumer lost more than ``max_loss``
``order``                 no message arrived out of order or twice, per (generator, CPU)
``drain``                 every CPU's CBUS queue was empty after the load (or: which CPU held what)
``cbus_ledger``           CBUS's independent counters agree, per CPU and in total: inserted = enqueued +
                          full + nomem drops, enqueued = dequeued, dequeued = sent + send drops; the
                          drain's batch histogram sums to its batches, bounds dequeued from both sides
                          and holds the largest batch in its highest bucket used
``faults``                every fault fired, and every action of every firing succeeded
``latency``               every consumer's p99 within ``p99_latency_us`` x the accelerator's slowdown
``throughput``            delivered rate at least ``min_rate``
``live``                  every live source's driver exited 0
========================= =============================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import hookimpl
from lab.guest.kcheck import ALLOWED_TAINT, unexpected_taint
from lab.plugin import Scenario, Verdict

#: Taint a kernel report of this kind sets (W for a WARNING), allowed when the report is expected.
TAINT_FOR_KIND = {"warning": 1 << 9}


def _kernel(scenario: Scenario, kernel: Mapping[str, Any]) -> list[Verdict]:
    inv = scenario.invariants
    out = []
    expected = set(inv.expect_problems)
    kinds = {r["kind"] for r in kernel.get("reports", ())}
    if inv.no_kernel_problems or expected:
        unexpected, missing = sorted(kinds - expected), sorted(expected - kinds)
        out.append(Verdict("kernel_problems", not unexpected and not missing,
                           f"unexpected: {unexpected or 'none'}; expected but absent: {missing or 'none'}"))
    if inv.no_new_taint:
        before, after = kernel.get("taint_before", 0), kernel.get("taint_after", 0)
        allowed = ALLOWED_TAINT | sum(TAINT_FOR_KIND.get(k, 0) for k in expected)
        new = unexpected_taint(before, after, allowed)
        out.append(Verdict("taint", new == 0, f"before {before}, after {after}, new bits {new:#x}"))
    return out


def _consumers(scenario: Scenario, agent: Mapping[str, Any], faults: list) -> list[Verdict]:
    inv = scenario.invariants
    reports = agent.get("consumers", [])
    killed = any(a.get("action") == "signal consumers KILL" and a.get("ok") for f in faults
                 for a in f.get("actions", ()))
    problems = []
    for c in reports:
        if c.get("missing"):
            if not (killed and c.get("status") == -9):
                problems.append(f"{c.get('name')}: no report (exit status {c.get('status')}): "
                                f"{(c.get('stderr') or '').strip()[-200:]}")
        elif c.get("received", 0) == 0 and scenario.emulators and not c.get("resync") \
                and c.get("protocol") != "oneshot":
            problems.append(f"{c.get('name')}: received nothing")
    out = [Verdict("consumers", not problems, "; ".join(problems) or f"{len(reports)} consumer report(s)")]
    heard = [c for c in reports if not c.get("missing")]
    exact = [(c["name"], c["accounting"]) for c in heard if (c.get("accounting") or {}).get("exact")]
    if inv.accounting:
        wrong = [f"{name}: lost {a['lost']} != socket drops {a['socket_drops']} + failed sends {a['pre_socket']} "
                 f"+ CBUS send errors {a['cbus_nlerr']} (silent loss)" for name, a in exact if not a["reconciled"]]
        cbus = agent.get("cbus") or {}
        if cbus and not cbus.get("balanced", True):
            wrong.append(f"CBUS counters do not balance: {cbus}")
        partial = [f"{c['name']}: {(c.get('accounting') or {}).get('reason', 'partial')}" for c in heard
                   if not (c.get("accounting") or {}).get("exact")]
        detail = "; ".join(wrong) or (f"{len(exact)} consumer(s) reconciled exactly: lost = kernel-counted drops"
                                      + (f"; not exact: {'; '.join(partial)}" if partial else ""))
        out.append(Verdict("accounting", not wrong, detail))
    if exact:
        worst_name, worst = max(exact, key=lambda e: e[1]["lost"])
        out.append(Verdict("loss", worst["lost"] <= inv.max_loss,
                           f"worst consumer {worst_name} lost {worst['lost']} (max {inv.max_loss})"))
    reordered = sum(c.get("reordered", 0) for c in heard)
    out.append(Verdict("order", reordered == 0, f"{reordered} out of order or duplicated per (generator, CPU)"))
    return out


def _faults(scenario: Scenario, agent: Mapping[str, Any], records: list) -> Verdict | None:
    if not scenario.faults:
        return None
    failed = []
    for r in records:
        for a in r.get("actions", ()):
            if not a.get("ok"):
                failed.append(f"{r['label']} ({r.get('trigger')}): {a['action']}: {a.get('error')}")
        if not r.get("ok") and not r.get("actions"):
            failed.append(f"{r['label']}: {r.get('detail', 'failed')}")
    failed += agent.get("faults_never_fired", [])
    fired = {r["label"] for r in records}
    failed += [f"{f.label}: never fired" for f in scenario.faults
               if f.label not in fired and not any(f.label in n for n in agent.get("faults_never_fired", []))]
    return Verdict("faults", not failed, "; ".join(failed) or f"{len(records)} firing(s), every action succeeded")


@hookimpl
def lab_result_check(scenario: Scenario, data: Mapping[str, Any]) -> list[Verdict]:
    """The engine's verdicts for one scenario (see the module docstring)."""
    out = _kernel(scenario, data.get("kernel") or {})
    agent = data.get("agent")
    if not agent:
        return out + [Verdict("agent", False, "the guest agent left no report")]
    errors = agent.get("errors", [])
    out.append(Verdict("agent", not errors, "; ".join(errors) or "no errors"))
    records = list(data.get("faults") or agent.get("faults", []))
    out += _consumers(scenario, agent, records)
    drain = agent.get("drain") or {}
    held = ", ".join(f"cpu{cpu} holds {n}" for cpu, n in sorted((drain.get("cpus") or {}).items()))
    out.append(Verdict("drain", bool(drain.get("ok")),
                       f"CBUS empty {drain.get('waited_s')} s after the load" if drain.get("ok")
                       else f"CBUS not empty after {drain.get('waited_s')} s: {held or drain.get('error', '?')}"))
    ledger = agent.get("ledger")
    if ledger is not None:
        wrong = [f"total: {p}" for p in ledger.get("total", [])]
        wrong += [f"cpu{cpu}: {p}" for cpu, problems in sorted((ledger.get("cpus") or {}).items()) for p in problems]
        out.append(Verdict("cbus_ledger", not wrong, "; ".join(wrong) or "inserted = enqueued + full + nomem, "
                                                                          "enqueued = dequeued, dequeued = sent + "
                                                                          "send drops, batches = histogram, on "
                                                                          "every CPU"))
    faults = _faults(scenario, agent, records)
    if faults:
        out.append(faults)
    inv = scenario.invariants
    heard = [c for c in agent.get("consumers", []) if not c.get("missing")]
    if inv.p99_latency_us:
        slowdown = (data.get("guest") or {}).get("slowdown", 1)
        bound = inv.p99_latency_us * slowdown
        p99 = max(((c.get("latency_us") or {}).get("p99") or 0.0) for c in heard) if heard else 0.0
        out.append(Verdict("latency", p99 <= bound, f"p99 {p99} us (max {bound:.0f}: {inv.p99_latency_us:.0f} x "
                                                    f"accelerator slowdown {slowdown})"))
    if inv.min_rate:
        load_s = agent.get("load_s") or 0
        rate = sum(c.get("received", 0) for c in heard) / load_s if load_s else 0.0
        out.append(Verdict("throughput", rate >= inv.min_rate, f"{rate:.0f} msgs/s (min {inv.min_rate:g})"))
    bad = [f"{s['label']}: driver exited {s['status']}: {s.get('stderr', '')[-200:]}" for s in agent.get("live", [])
           if s.get("status")]
    if agent.get("live"):
        out.append(Verdict("live", not bad, "; ".join(bad) or f"{len(agent['live'])} live source(s) ran"))
    return out
