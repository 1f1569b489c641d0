"""Invariant verdicts: what a finished scenario's numbers and console mean.

Pure functions of the guest agent's report, the console's kernel reports and
the taint masks, so every rule is unit-tested without a guest.
"""

from __future__ import annotations

from .kcheck import ALLOWED_TAINT, unexpected_taint
from .scenario import Scenario

__all__ = ["evaluate", "verdict", "TAINT_FOR_KIND"]

#: Taint a kernel report of this kind sets (W for a WARNING), allowed when the report is expected.
TAINT_FOR_KIND = {"warning": 1 << 9}


# --------------------------------------------------------------- evaluation
def verdict(name: str, ok: bool, detail: str) -> dict:
    return {"name": name, "ok": bool(ok), "detail": detail}


def evaluate(scenario: Scenario, report: dict, kernel_reports: list[dict], taint_before: int,
             taint_after: int, slowdown: int = 1) -> tuple[list[dict], dict]:
    """Invariant verdicts and headline metrics for one finished scenario.

    Latency bounds are written for KVM and multiplied by ``slowdown`` (10 under TCG).
    """
    inv = scenario.invariants
    verdicts = []
    expected_kinds = set(inv.expect_problems)
    kinds = {r["kind"] for r in kernel_reports}
    if inv.no_kernel_problems or expected_kinds:
        unexpected = sorted(kinds - expected_kinds)
        missing = sorted(expected_kinds - kinds)
        verdicts.append(verdict("kernel_problems", not unexpected and not missing,
                                 f"unexpected: {unexpected or 'none'}; expected but absent: {missing or 'none'}"))
    if inv.no_new_taint:
        allowed = ALLOWED_TAINT | sum(TAINT_FOR_KIND.get(k, 0) for k in expected_kinds)
        new = unexpected_taint(taint_before, taint_after, allowed)
        verdicts.append(verdict("taint", new == 0, f"before {taint_before}, after {taint_after}, new bits {new:#x}"))
    generated = sum(g.get("generated", 0) for g in report["generators"].values())
    received = sum(c["received"] for c in report["consumers"])
    direct_ids = {str(i + 1) for i, e in enumerate(scenario.emulators) if e.path == "direct"}
    counted = sum(g.get(k, 0) for gid, g in report["generators"].items() if gid in direct_ids
                  for k in ("err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other"))
    cbus = report["cbus"]
    counted += sum(cbus.get(k, 0) for k in ("drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr",
                                            "rejected"))
    loss = generated - received if len(report["consumers"]) == 1 else None
    if inv.accounting:
        ok = report["cbus_balanced"] and cbus["queued"] == 0 and not report["errors"]
        detail = f"cbus balanced={report['cbus_balanced']} queued={cbus['queued']} errors={report['errors']}"
        if loss is not None:
            ok = ok and loss == counted
            detail += f"; lost {loss} = counted drops {counted}" if loss == counted else \
                f"; lost {loss} != counted drops {counted} (silent loss)"
        verdicts.append(verdict("accounting", ok, detail))
    if loss is not None:
        verdicts.append(verdict("loss", loss <= inv.max_loss, f"lost {loss} of {generated} (max {inv.max_loss})"))
    if scenario.faults:
        failed = [f"{f['kind']}: {f['detail']}" for f in report.get("faults", ()) if not f["ok"]]
        failed += report.get("faults_never_triggered", [])
        verdicts.append(verdict("faults", not failed, "; ".join(failed) or
                                 f"{len(report.get('faults', ()))} in-guest fault(s) applied"))
    gaps = sum(s["gaps"] for c in report["consumers"] for s in c["per_gen"].values())
    reordered = sum(s["reordered"] for c in report["consumers"] for s in c["per_gen"].values())
    verdicts.append(verdict("order", reordered == 0, f"{reordered} out-of-order per (generator, CPU)"))
    p99 = max((c["latency_us"]["p99"] or 0.0) for c in report["consumers"])
    if inv.p99_latency_us:
        bound = inv.p99_latency_us * slowdown
        verdicts.append(verdict("latency", p99 <= bound, f"p99 {p99} us (max {bound:.0f}: "
                                 f"{inv.p99_latency_us:.0f} x accelerator slowdown {slowdown})"))
    rate = sum(c["rate"] for c in report["consumers"])
    if inv.min_rate:
        verdicts.append(verdict("throughput", rate >= inv.min_rate, f"{rate:.0f} msgs/s (min {inv.min_rate})"))
    metrics = {
        "generated": generated, "received": received, "lost": loss, "gaps": gaps, "reordered": reordered,
        "counted_drops": counted, "rate": round(rate, 1),
        "latency_us": report["consumers"][0]["latency_us"] if report["consumers"] else {},
        "enobufs": sum(c["enobufs"] for c in report["consumers"]),
        "socket_drops": sum(max(c["socket_drops"], 0) for c in report["consumers"]),
        "cbus": cbus,
    }
    return verdicts, metrics


