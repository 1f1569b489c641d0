"""The headline figures of a finished scenario, from the guest agent's report (pure)."""

from __future__ import annotations

from typing import Any

__all__ = ["headline"]

GEN_ERR_KEYS = ("err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other")
CBUS_DROP_KEYS = ("drop_full", "drop_nomem", "drop_nolistener", "drop_overrun", "drop_nlerr", "rejected")


def headline(agent: dict[str, Any] | None, direct_gen_ids: set[str] = frozenset()) -> dict[str, Any]:
    """The headline figures: generated, received, lost (the worst consumer's reconciled loss), rate (all
    receipts over the load), latency_us and idle_latency_us (of the first consumer with samples; the second
    only over the messages that reached a reader with nothing queued, {} from a consumer that does not
    measure it), gaps, reordered, counted_drops, socket_drops, enobufs, cbus, drain_s; {} without a report.

    :param direct_gen_ids: generators on the direct path: their failed sends are drops; a CBUS generator's
        failed inserts are CBUS's own drops already (``drop_full``, ``drop_nomem``), counted once.
    """
    if not agent:
        return {}
    consumers = [c for c in agent.get("consumers", ()) if not c.get("missing")]
    gens = {gid: g for gid, g in agent.get("generators", {}).items() if g}
    generated = sum(c.get("generated", 0) for g in gens.values() for c in g.get("cpus", {}).values())
    counted = sum(c.get(k, 0) for gid, g in gens.items() if gid in direct_gen_ids
                  for c in g.get("cpus", {}).values() for k in GEN_ERR_KEYS)
    cbus = agent.get("cbus") or {}
    counted += sum(cbus.get(k, 0) for k in CBUS_DROP_KEYS)
    received = sum(c.get("received", 0) for c in consumers)
    exact = [c["accounting"]["lost"] for c in consumers if (c.get("accounting") or {}).get("exact")]
    load_s = agent.get("load_s") or 0
    timed = next((c for c in consumers if (c.get("latency_us") or {}).get("samples")), {})
    return {
        "generated": generated,
        "received": received,
        "lost": max(exact) if exact else None,
        "rate": round(received / load_s, 1) if load_s else 0.0,
        "latency_us": timed.get("latency_us", {}),
        "idle_latency_us": timed.get("idle_latency_us") or {},
        "gaps": sum(c.get("gaps", 0) for c in consumers),
        "reordered": sum(c.get("reordered", 0) for c in consumers),
        "counted_drops": counted,
        "socket_drops": sum(max(c.get("socket_drops", 0), 0) for c in consumers),
        "enobufs": sum(c.get("enobufs", 0) for c in consumers),
        "cbus": cbus,
        "drain_s": (agent.get("drain") or {}).get("waited_s"),
        "load_s": load_s,
    }
