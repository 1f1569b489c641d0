"""Loss accounting inside the guest agent: the kernel's counts against each consumer's report.

Per (generator, CPU) stream a consumer's loss is its sequence gaps plus its
tail (the generator's count minus the next sequence number it expected).
That must equal what the kernel says never reached the consumer: the
socket's drops (``/proc/net/netlink``), the generators' failed sends other
than "no listener", and CBUS's ``drop_nlerr``.

A module reloaded under the load takes its generator and CBUS statistics
with it; the module logs them when it unloads ("gen G final", "gen G cpu C
final", "cbus final" lines), so the final counts are read back from
``/dev/kmsg``, from a position taken before the load (old lines of earlier
runs on the guest are never used), and the accounting stays exact.  Without
those lines it is reported as partial, with the reason.  Standard library only.
"""

import os
import re

import kabi

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
                    "cpus": {c["cpu"]: {k: c[k] for k in GEN_KEYS} for c in rep.body["cpus"] if c["generated"]}}
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
    lacking = [k for k in ("streams", "groups", "socket_drops") if k not in report]
    if lacking:
        return {"exact": False, "reason": f"the report lacks {', '.join(lacking)} (docs/guest-contract.md): "
                                          "partial accounting"}
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
