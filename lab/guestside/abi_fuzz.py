#!/usr/bin/env python3
"""Structure-aware fuzzer of the cnlab control ABI (runs in a guest as root, next to ``kabi.py``).

    python3 abi_fuzz.py [--requests N] [--seed S] [--no-reload]

The requests are generated from the ``kabi`` layouts: for every request type and every field of its body
layout, of ``cnlab_hdr``, of ``cn_msg`` and of ``nlmsghdr``, the values 0, 1, the field's maximum under the
ABI rules, that maximum + 1 and all ones (:func:`field_values`); every length one short and one long (the
body, ``cnlab_hdr.len``, ``cn_msg.len``, ``nlmsg_len``, ECHO's ``data_len``); reserved fields non-zero; two
netlink messages in one send; every request type from a privileged sender and from three unprivileged ones
(uid 65534 with its own socket, uid 65534 on a socket root opened, root on a socket opened as uid 65534).
That systematic part runs first and whole; a seeded random part combines one to three of the same
mutations (and random values) until the request budget is spent.

Each request's outcome is predicted by :class:`Model`, which reads the datagram as the 6.1 connector core and
the module do (``docs/kmod.md`` "Validation and error codes", connector.md section 5) and keeps the module
state those rules depend on (generators running, bench running, fault knobs, online CPUs).  The fuzzer then
checks the reply: that there is exactly one when the connector passes the datagram on and none when it drops
it, its status, its header (seq, ack + 1, type, flags, version, reserved, lengths) and, for a success, its
body (the effective generator config, the previous knob value, the echoed data, the statistics' shape).
Afterwards the module's own request and error counters must equal the fuzzer's.

Successful requests that change state are undone at once (a started generator is started again, which must
give ``-EBUSY`` when it cannot have finished, then stopped; a knob is set back, the reply giving the fuzzed
value back); a long, slow BENCH runs for the whole fuzz so every valid BENCH answers ``-EBUSY`` (one short
BENCH runs to completion first), and the module is reloaded at the end, which must end that BENCH with
``-ESHUTDOWN``.  With ``--no-reload`` the module is not reloaded at the start or the end, and the BENCH
cases are left out.

Prints one JSON line (``{"test": "abi_fuzz", "ok": ...}``) with the figures.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import socket
import subprocess
import sys
import time

import kabi

MODULE = os.environ.get("CNLAB_KO", "/run/cnlab/cnlab.ko")
NOBODY = 65534
HZ = 250  # the Debian cloud kernel's CONFIG_HZ (timer-context burst mode: rate <= HZ)
GEN_IDX, GEN_VAL, GROUP = 0x22, 0x1, 4
BENCH_GROUP = 6
#: the long BENCH that keeps every other valid BENCH busy: one call per chunk, 100 ms apart
BLOCKER = {"idx": GEN_IDX, "val": 0x7, "group": BENCH_GROUP, "payload": 32, "iterations": kabi.CNLAB_BENCH_ITER_MAX,
           "chunk": 1, "pause_us": kabi.CNLAB_BENCH_PAUSE_MAX_US, "cpu": 0}
SHORT_BENCH = dict(BLOCKER, iterations=4, chunk=2, pause_us=0)

EPERM, ENOENT, EBADMSG, EINVAL, ERANGE = -errno.EPERM, -errno.ENOENT, -errno.EBADMSG, -errno.EINVAL, -errno.ERANGE
EMSGSIZE, EOPNOTSUPP, EPROTONOSUPPORT = -errno.EMSGSIZE, -errno.EOPNOTSUPP, -errno.EPROTONOSUPPORT
EBUSY, ENODATA, ESHUTDOWN = -errno.EBUSY, -errno.ENODATA, -errno.ESHUTDOWN

#: request type -> body layout (BENCH_RESULT has an empty body)
BODY = {kabi.CNLAB_MSG_ECHO: kabi.ECHO, kabi.CNLAB_MSG_GEN_START: kabi.GEN_START,
        kabi.CNLAB_MSG_GEN_STOP: kabi.GEN_STOP, kabi.CNLAB_MSG_STATS: kabi.STATS_REQ,
        kabi.CNLAB_MSG_GEN_STATS: kabi.GEN_STATS_REQ, kabi.CNLAB_MSG_SET_FAULT: kabi.FAULT,
        kabi.CNLAB_MSG_BENCH: kabi.BENCH, kabi.CNLAB_MSG_BENCH_RESULT: None}
PRIVILEGED = {kabi.CNLAB_MSG_GEN_START, kabi.CNLAB_MSG_GEN_STOP, kabi.CNLAB_MSG_SET_FAULT, kabi.CNLAB_MSG_BENCH}
MODES = ("root", "nobody", "nobody_rootsock", "root_nobodysock")

_GEN = dict(gen_id=3, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=0, duration_ns=60 * 10**9, cpu_mask=1, rate=1,
            size_min=32, size_max=64, context=0, path=1, flags=0, burst=0)
#: valid bodies per request type (field dicts); the first is the one header and length mutations use
BASES: dict[int, list[dict]] = {
    kabi.CNLAB_MSG_ECHO: [dict(user_ns=7, data_len=0), dict(user_ns=1 << 63, data_len=5)],
    kabi.CNLAB_MSG_GEN_START: [
        _GEN,
        dict(_GEN, gen_id=4, context=kabi.CNLAB_CTX_SOFTIRQ, rate=10, flags=kabi.CNLAB_GEN_F_BUNDLE),
        dict(_GEN, gen_id=5, context=kabi.CNLAB_CTX_TIMER, rate=10),
        dict(_GEN, gen_id=6, context=kabi.CNLAB_CTX_HARDIRQ, rate=10, burst=4),
        dict(_GEN, gen_id=7, context=kabi.CNLAB_CTX_KTHREAD, path=kabi.CNLAB_PATH_DIRECT, count=5, duration_ns=0),
        dict(_GEN, gen_id=8, context=kabi.CNLAB_CTX_HARDIRQ, rate=2, burst=8, flags=kabi.CNLAB_GEN_F_BURSTS),
        dict(_GEN, gen_id=9, context=kabi.CNLAB_CTX_TIMER, rate=2, burst=8, flags=kabi.CNLAB_GEN_F_BURSTS),
    ],
    kabi.CNLAB_MSG_GEN_STOP: [dict(gen_id=3), dict(gen_id=kabi.CNLAB_GEN_ALL)],
    kabi.CNLAB_MSG_STATS: [dict(flags=0), dict(flags=kabi.CNLAB_STATS_F_RESET_HWM)],
    kabi.CNLAB_MSG_GEN_STATS: [dict(gen_id=3)],
    kabi.CNLAB_MSG_SET_FAULT: [dict(op=kabi.CNLAB_FAULT_QLIMIT, value=100),
                               dict(op=kabi.CNLAB_FAULT_ALLOC_NTH, value=3),
                               dict(op=kabi.CNLAB_FAULT_STALL_MS, value=10),
                               dict(op=kabi.CNLAB_FAULT_WARN, value=kabi.CNLAB_WARN_MAGIC)],
    kabi.CNLAB_MSG_BENCH: [dict(BLOCKER, iterations=1, pause_us=0)],
    kabi.CNLAB_MSG_BENCH_RESULT: [{}],
}
ALL_ONES = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": (1 << 64) - 1}


def field_max(layout_name: str, field: str, base: dict, nr_cpu_ids: int = 2) -> int | None:
    """The largest value the ABI rules allow in a field (None: any value of its width; 0: must be zero)."""
    if field == "reserved":
        return 0
    gen = {"gen_id": kabi.CNLAB_MAX_GENS - 1, "group": kabi.CNLAB_GROUP_MAX, "count": kabi.CNLAB_COUNT_MAX,
           "duration_ns": kabi.CNLAB_DURATION_MAX_NS, "size_min": kabi.CNLAB_PAYLOAD_MAX,
           "size_max": kabi.CNLAB_PAYLOAD_MAX, "context": kabi.CNLAB_CTX_MAX, "path": kabi.CNLAB_PATH_MAX,
           "flags": kabi.CNLAB_GEN_F_ALL, "burst": kabi.CNLAB_BURST_MAX,
           "rate": (kabi.CNLAB_BURST_RATE_MAX if base.get("flags", 0) & kabi.CNLAB_GEN_F_BURSTS
                    else kabi.CNLAB_RATE_MAX)}
    table = {
        "cnlab_echo": {"rx_ns": 0, "tx_ns": 0, "cpu": 0, "data_len": kabi.CNLAB_ECHO_MAX_DATA},
        "cnlab_gen_start": gen,
        "cnlab_gen_stop": {"gen_id": kabi.CNLAB_MAX_GENS - 1},
        "cnlab_stats_req": {"flags": kabi.CNLAB_STATS_F_ALL},
        "cnlab_gen_stats_req": {"gen_id": kabi.CNLAB_MAX_GENS - 1},
        "cnlab_fault": {"op": kabi.CNLAB_FAULT_MAX,
                        "value": {kabi.CNLAB_FAULT_ALLOC_NTH: 0xFFFFFFFF, kabi.CNLAB_FAULT_STALL_MS:
                                  kabi.CNLAB_STALL_MAX_MS, kabi.CNLAB_FAULT_QLIMIT: kabi.CNLAB_QLIMIT_MAX,
                                  kabi.CNLAB_FAULT_WARN: kabi.CNLAB_WARN_MAGIC,
                                  kabi.CNLAB_FAULT_PANIC: kabi.CNLAB_PANIC_MAGIC}.get(base.get("op"))},
        "cnlab_bench": {"group": kabi.CNLAB_GROUP_MAX, "payload": kabi.CNLAB_PAYLOAD_MAX,
                        "iterations": kabi.CNLAB_BENCH_ITER_MAX, "chunk": kabi.CNLAB_BENCH_CHUNK_MAX,
                        "pause_us": kabi.CNLAB_BENCH_PAUSE_MAX_US, "cpu": nr_cpu_ids - 1},
        "cnlab_hdr": {"version": kabi.CNLAB_ABI_VERSION, "flags": 0, "status": 0, "type": kabi.CNLAB_MSG_MAX},
        "cn_msg": {"flags": 0},
    }
    return table.get(layout_name, {}).get(field)


def field_values(layout_name: str, field: str, fmt: str, base: dict, nr_cpu_ids: int = 2) -> list[int]:
    """0, 1, max, max + 1 and all ones of one field (fewer where they coincide), in that order."""
    ones = ALL_ONES[fmt]
    top = field_max(layout_name, field, base, nr_cpu_ids)
    values = [0, 1]
    if top is not None:
        values += [top, top + 1]
    values.append(ones)
    out: list[int] = []
    for v in values:
        if 0 <= v <= ones and v not in out:
            out.append(v)
    return out


# --------------------------------------------------------------------------------------------- requests

class Case:
    """One request to send: a body from fields, then header, framing and length changes, and a sender."""

    __slots__ = ("mtype", "fields", "data", "hdr", "cn", "nl", "cut", "tail", "second", "mode", "label")

    def __init__(self, mtype: int, fields: dict, label: str, mode: str = "root", **kw: object) -> None:
        self.mtype, self.fields, self.label, self.mode = mtype, dict(fields), label, mode
        self.data = kw.get("data")          # ECHO data bytes (default: data_len bytes)
        self.hdr = dict(kw.get("hdr") or {})
        self.cn = dict(kw.get("cn") or {})
        self.nl = dict(kw.get("nl") or {})
        self.cut = int(kw.get("cut") or 0)
        self.tail = kw.get("tail") or b""
        self.second = bool(kw.get("second"))  # a second netlink message after the first

    def with_mode(self, mode: str) -> Case:
        c = Case(self.mtype, self.fields, self.label, mode, data=self.data, hdr=self.hdr, cn=self.cn, nl=self.nl,
                 cut=self.cut, tail=self.tail, second=self.second)
        return c

    def body(self) -> bytes:
        layout = BODY.get(self.mtype) if self.mtype in BODY else None
        if layout is None:
            raw = b""
        else:
            raw = layout.pack(**self.fields)
        if self.mtype == kabi.CNLAB_MSG_ECHO:
            n = self.fields.get("data_len", 0)
            raw += self.data if self.data is not None else bytes((i * 7) & 0xFF for i in range(min(n, 2048)))
        if self.cut:
            raw = raw[:max(0, len(raw) - self.cut)]
        return raw + self.tail

    def encode(self, seq: int) -> bytes:
        """The datagram, with cn_msg.seq = ``seq`` (unless the case sets it)."""
        body = self.body()
        h = dict(version=kabi.CNLAB_ABI_VERSION, flags=0, type=self.mtype, status=0, len=len(body), reserved=0)
        h.update(self.hdr)
        payload = kabi.HDR.pack(**h) + body
        if "hdr_bytes" in self.cn:  # a cnlab_hdr cut short: only this many of its bytes
            payload = payload[:self.cn["hdr_bytes"]]
        cn = dict(idx=kabi.CNLAB_CTL_IDX, val=kabi.CNLAB_CTL_VAL, seq=seq, ack=seq ^ 0x5A5A5A5A, len=len(payload),
                  flags=0)
        cn.update({k: v for k, v in self.cn.items() if k != "hdr_bytes"})
        inner = kabi.CN_MSG.pack(**cn) + payload
        nl = dict(len=kabi.NLMSG_HDRLEN + len(inner), type=kabi.NLMSG_DONE, flags=0, seq=seq, pid=0)
        nl.update(self.nl)
        dg = kabi.NLMSGHDR.pack(**nl) + inner
        if self.second:
            dg += b"\0" * (kabi.nlmsg_align(len(dg)) - len(dg))
            dg += kabi.encode_echo(user_ns=1, seq=(seq + 1) & 0xFFFFFFFF)
        return dg


def _body_layout_fields(mtype: int) -> list[tuple[str, str]]:
    layout = BODY[mtype]
    return [] if layout is None else [(f, spec) for f, spec in layout.fields]


def structural_mutations(mtype: int, base: dict, nr_cpu_ids: int) -> list[tuple[str, dict]]:
    """Every single mutation of one request: (label, Case keyword changes)."""
    out: list[tuple[str, dict]] = []
    layout = BODY[mtype]
    name = layout.name if layout is not None else "empty"
    for field, fmt in _body_layout_fields(mtype):
        for v in field_values(name, field, fmt, base, nr_cpu_ids):
            if v == base.get(field, 0):
                continue
            fields = dict(base, **{field: v})
            kw: dict = {"fields": fields}
            if mtype == kabi.CNLAB_MSG_ECHO and field == "data_len":
                kw["data"] = b"\xa5" * min(v, kabi.CNLAB_ECHO_MAX_DATA + 1)  # data as long as it says, up to 1025
            out.append((f"{name}.{field}={v:#x}", kw))
    if mtype == kabi.CNLAB_MSG_GEN_START:  # combinations the single fields cannot reach
        out.append(("gen_start.id=control", {"fields": dict(base, idx=kabi.CNLAB_CTL_IDX, val=kabi.CNLAB_CTL_VAL)}))
        out.append(("gen_start.count=duration=0", {"fields": dict(base, count=0, duration_ns=0)}))
        out.append(("gen_start.size_min>size_max", {"fields": dict(base, size_min=65, size_max=64)}))
        out.append(("gen_start.size_min=31", {"fields": dict(base, size_min=31)}))
        out.append(("gen_start.direct+hardirq", {"fields": dict(base, context=kabi.CNLAB_CTX_HARDIRQ,
                                                                path=kabi.CNLAB_PATH_DIRECT)}))
        out.append(("gen_start.bundle+direct", {"fields": dict(base, flags=kabi.CNLAB_GEN_F_BUNDLE,
                                                               path=kabi.CNLAB_PATH_DIRECT)}))
        out.append(("gen_start.burst*size_max>1MiB", {"fields": dict(base, burst=129, size_max=8192)}))
        out.append(("gen_start.burst*size_max=1MiB", {"fields": dict(base, burst=128, size_max=8192)}))
        out.append(("gen_start.size_max=8192,burst=0", {"fields": dict(base, size_max=8192, burst=0)}))
    if mtype == kabi.CNLAB_MSG_BENCH:
        out.append(("bench.id=control", {"fields": dict(base, idx=kabi.CNLAB_CTL_IDX, val=kabi.CNLAB_CTL_VAL)}))
        out.append(("bench.chunk*payload>1MiB", {"fields": dict(base, chunk=257, payload=4096)}))
        out.append(("bench.chunk*payload=1MiB", {"fields": dict(base, chunk=256, payload=4096)}))
    if mtype == kabi.CNLAB_MSG_GEN_STOP:
        out.append(("gen_stop.gen_id=ALL-1", {"fields": dict(base, gen_id=kabi.CNLAB_GEN_ALL - 1)}))
    if mtype == kabi.CNLAB_MSG_SET_FAULT:
        for op in range(0, kabi.CNLAB_FAULT_MAX + 2):
            out.append((f"fault.op={op}", {"fields": dict(base, op=op)}))
    # cnlab_hdr (its len below, with the other lengths)
    defaults = {"version": kabi.CNLAB_ABI_VERSION, "flags": 0, "type": mtype, "status": 0, "reserved": 0}
    for field, fmt in kabi.HDR.fields:
        if field == "len":
            continue
        values = [1, 0x7FFFFFFF, -0x80000000, -1] if fmt == "i" else field_values("cnlab_hdr", field, fmt, {})
        for v in values:
            if v != defaults[field]:
                out.append((f"hdr.{field}={v}", {"hdr": {field: v}}))
    # every length one short and one long, and the extremes
    blen = len(Case(mtype, base, "").body())
    for v in sorted({blen - 1, blen + 1, 0, 1, 0xFFFFFFFF} - {blen}):
        if v >= 0:
            out.append((f"hdr.len={v}", {"hdr": {"len": v}}))
    cnlen = kabi.HDR.size + blen
    for v in sorted({cnlen - 1, cnlen + 1, 0, 1, kabi.HDR.size - 1, kabi.HDR.size, 0xFFFF} - {cnlen}):
        out.append((f"cn.len={v}", {"cn": {"len": v}}))
    nllen = kabi.DATA_OFFSET + cnlen
    for v in sorted({nllen - 1, nllen + 1, 0, 1, kabi.NLMSG_HDRLEN - 1, kabi.NLMSG_HDRLEN, kabi.DATA_OFFSET - 1,
                     kabi.DATA_OFFSET, 0xFFFFFFFF} - {nllen}):
        out.append((f"nl.len={v}", {"nl": {"len": v}}))
    if blen:
        out.append(("body-1", {"cut": 1}))
    out.append(("body+1", {"tail": b"\x01"}))
    out.append(("body+8", {"tail": b"\x00" * 8}))
    for n in (0, 1, 8, 15):
        out.append((f"hdr cut to {n} bytes", {"cn": {"hdr_bytes": n}}))
    # cn_msg and nlmsghdr fields the connector passes on or drops
    for v in field_values("cn_msg", "flags", "H", {}):
        if v:
            out.append((f"cn.flags={v:#x}", {"cn": {"flags": v}}))
    for v in (0, 1, 0xFFFFFFFF):
        out.append((f"cn.seq={v:#x}", {"cn": {"seq": v}}))
        out.append((f"cn.ack={v:#x}", {"cn": {"ack": v}}))
    for idx in (kabi.CNLAB_CTL_IDX + 2, 0xFFFFFFFF):
        out.append((f"cn.idx={idx:#x}", {"cn": {"idx": idx}}))
    for val in (0, 2, 0xFFFFFFFF):
        out.append((f"cn.val={val:#x}", {"cn": {"val": val}}))
    for v in (0, 1, 2, 0x10, 0xFFFF):
        out.append((f"nl.type={v:#x}", {"nl": {"type": v}}))
        out.append((f"nl.flags={v:#x}", {"nl": {"flags": v}}))
    for v in (1, 0xFFFFFFFF):
        out.append((f"nl.pid={v:#x}", {"nl": {"pid": v}}))
    out.append(("two nlmsgs", {"second": True}))
    return out


def _case(mtype: int, base: dict, label: str, kw: dict, mode: str = "root") -> Case:
    kw = dict(kw)
    fields = kw.pop("fields", base)
    return Case(mtype, fields, label, mode, **kw)


def systematic_cases(nr_cpu_ids: int, bench: bool = True) -> list[Case]:
    """Every base unchanged and every single mutation of it, from root (header and length mutations on each type's
    first base only); the unprivileged modes follow in :func:`mode_cases`."""
    out = []
    for mtype, bases in BASES.items():
        if not bench and mtype == kabi.CNLAB_MSG_BENCH:
            continue
        for i, base in enumerate(bases):
            out.append(Case(mtype, base, f"{kabi.MSG_NAMES[mtype]} base {i}"))
            for label, kw in structural_mutations(mtype, base, nr_cpu_ids):
                if i and ("fields" not in kw or label.startswith("hdr.type")):
                    continue  # header, framing and length changes: on the first base only
                out.append(_case(mtype, base, f"{kabi.MSG_NAMES[mtype]} {label}", kw))
    return out


def mode_cases(cases: list[Case]) -> list[Case]:
    """The unprivileged sender (own socket) for every case; the two mixed modes for each type's bases."""
    out = [c.with_mode("nobody") for c in cases]
    for c in cases:
        if " base " in c.label:
            out += [c.with_mode("nobody_rootsock"), c.with_mode("root_nobodysock")]
    return out


def random_case(rng: random.Random, nr_cpu_ids: int, bench: bool = True) -> Case:
    """One to three mutations of a random base, some with random values instead of the boundary ones."""
    types = [t for t in BASES if bench or t != kabi.CNLAB_MSG_BENCH]
    mtype = rng.choice(types)
    base = rng.choice(BASES[mtype])
    pool = structural_mutations(mtype, base, nr_cpu_ids)
    merged: dict = {"fields": dict(base)}
    labels = []
    for _ in range(rng.choice((1, 1, 2, 2, 3))):
        if rng.random() < 0.25 and BODY[mtype] is not None:
            field, fmt = rng.choice(_body_layout_fields(mtype))
            v = rng.randint(0, ALL_ONES[fmt]) if rng.random() < 0.5 else rng.randint(0, 1 << rng.randint(0, 16))
            merged["fields"][field] = v & ALL_ONES[fmt]
            labels.append(f"{field}={merged['fields'][field]:#x}")
            continue
        label, kw = rng.choice(pool)
        labels.append(label)
        for key, value in kw.items():
            if key == "fields":
                changed = {k: v for k, v in value.items() if base.get(k, 0) != v}
                merged["fields"].update(changed)
            elif isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    if mtype == kabi.CNLAB_MSG_ECHO and "data" not in merged:
        merged["data"] = b"\x5a" * min(merged["fields"].get("data_len", 0), kabi.CNLAB_ECHO_MAX_DATA + 1)
    mode = "root" if rng.random() < 0.7 else "nobody"
    return _case(mtype, base, f"{kabi.MSG_NAMES[mtype]} " + " + ".join(labels), merged, mode)


# ------------------------------------------------------------------------------------------------ oracle

class Prediction:
    """What the module answers: a reply or none, its status and the body length a success carries."""

    __slots__ = ("reply", "status", "type", "body_len", "effect", "why")

    def __init__(self, reply: bool, status: int = 0, mtype: int = 0, body_len: int = 0, effect: tuple = (),
                 why: str = "") -> None:
        self.reply, self.status, self.type, self.body_len, self.effect, self.why = (reply, status, mtype, body_len,
                                                                                   effect, why)

    def __repr__(self) -> str:
        if not self.reply:
            return f"no reply ({self.why})"
        return f"status {self.status} ({self.why}), type {self.type}, body {self.body_len}"


def _u(buf: bytes, fmt: str, off: int) -> int:
    import struct
    return struct.unpack_from("=" + fmt, buf, off)[0]


class Model:
    """The module state the ABI rules depend on, and the rules (what the module answers to a datagram)."""

    def __init__(self, online: list[int], nr_cpu_ids: int, nr_stats: int, qlimit: int = 4096,
                 qbytes: int = kabi.CNLAB_QBYTES_DEFAULT, hz: int = HZ) -> None:
        self.online = set(online)
        self.nr_cpu_ids, self.nr_stats, self.qlimit, self.qbytes, self.hz = nr_cpu_ids, nr_stats, qlimit, qbytes, hz
        self.alloc_nth = 0
        self.stall_ms = 0
        self.gens = ["idle"] * kabi.CNLAB_MAX_GENS     # idle, running, stopped
        self.bench = "none"                             # none, running, done
        self.debug_warn = False

    # -- connector core (6.1 cn_rx_skb, cn_call_callback) and the module's dispatch (ctl.c)
    def predict(self, dg: bytes, privileged: bool) -> Prediction:
        if len(dg) < kabi.NLMSG_HDRLEN:
            return Prediction(False, why="skb shorter than nlmsghdr")
        nl_len = _u(dg, "I", 0)
        payload = nl_len - kabi.NLMSG_HDRLEN
        if payload < kabi.CN_MSG.size or len(dg) < nl_len or payload > kabi.CONNECTOR_MAX_MSG_SIZE:
            return Prediction(False, why="connector: nlmsg_len")
        idx, val, _seq, _ack, cn_len, cn_flags = kabi.CN_MSG_S.unpack_from(dg, kabi.NLMSG_HDRLEN)
        if nl_len < kabi.DATA_OFFSET + cn_len:
            return Prediction(False, why="connector: cn_msg.len past nlmsg_len")
        if (idx, val) != (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL):
            return Prediction(False, why="connector: no callback for the id")
        data = dg[kabi.DATA_OFFSET:kabi.DATA_OFFSET + cn_len]
        if cn_len < kabi.HDR.size:
            return Prediction(True, EBADMSG, 0, why="cn_msg.len < cnlab_hdr")
        h = kabi.HDR.unpack(data)
        t = h["type"]
        if h["version"] != kabi.CNLAB_ABI_VERSION:
            return Prediction(True, EPROTONOSUPPORT, t, why="version")
        if h["flags"] or h["status"] or h["reserved"] or cn_flags:
            return Prediction(True, EINVAL, t, why="header flags/status/reserved")
        if h["len"] != cn_len - kabi.HDR.size:
            return Prediction(True, EBADMSG, t, why="hdr.len")
        if t not in BODY:
            return Prediction(True, EOPNOTSUPP, t, why="unknown type")
        if t in PRIVILEGED and not privileged:
            return Prediction(True, EPERM, t, why="not CAP_NET_ADMIN")
        body = data[kabi.HDR.size:]
        status, body_len, effect, why = getattr(self, "_" + kabi.MSG_NAMES[t].lower())(body, privileged)
        return Prediction(True, status, t, body_len if status == 0 else 0, effect, why)

    def _exact(self, body: bytes, layout: kabi.Layout) -> dict | None:
        return layout.unpack(body) if len(body) == layout.size else None

    def _echo(self, body: bytes, _priv: bool):
        if len(body) < kabi.ECHO.size:
            return EBADMSG, 0, (), "echo shorter than cnlab_echo"
        e = kabi.ECHO.unpack(body)
        if e["data_len"] > kabi.CNLAB_ECHO_MAX_DATA:
            return EMSGSIZE, 0, (), "data_len"
        if len(body) != kabi.ECHO.size + e["data_len"]:
            return EBADMSG, 0, (), "echo length"
        if e["rx_ns"] or e["tx_ns"] or e["cpu"]:
            return EINVAL, 0, (), "kernel fields"
        return 0, len(body), ("echo", body), "ok"

    def _stats(self, body: bytes, priv: bool):
        r = self._exact(body, kabi.STATS_REQ)
        if r is None:
            return EBADMSG, 0, (), "length"
        if r["flags"] & ~kabi.CNLAB_STATS_F_ALL or r["reserved"]:
            return EINVAL, 0, (), "flags/reserved"
        if r["flags"] & kabi.CNLAB_STATS_F_RESET_HWM and not priv:
            return EPERM, 0, (), "reset needs CAP_NET_ADMIN"
        return 0, kabi.STATS_REP.size + self.nr_stats * kabi.CBUS_STATS.size, ("stats",), "ok"

    def _gen_stats(self, body: bytes, _priv: bool):
        r = self._exact(body, kabi.GEN_STATS_REQ)
        if r is None:
            return EBADMSG, 0, (), "length"
        if r["reserved"] or r["gen_id"] >= kabi.CNLAB_MAX_GENS:
            return EINVAL, 0, (), "reserved/gen_id"
        return 0, kabi.GEN_STATS_REP.size + self.nr_stats * kabi.GEN_CPU_STATS.size, ("gen_stats", r["gen_id"]), "ok"

    def _bench_result(self, body: bytes, _priv: bool):
        if body:
            return EBADMSG, 0, (), "length"
        if self.bench == "none":
            return ENODATA, 0, (), "no bench yet"
        return 0, kabi.BENCH_RESULT.size, ("bench_result",), "ok"

    def _set_fault(self, body: bytes, _priv: bool):
        f = self._exact(body, kabi.FAULT)
        if f is None:
            return EBADMSG, 0, (), "length"
        if f["reserved"]:
            return EINVAL, 0, (), "reserved"
        op, v = f["op"], f["value"]
        if op == kabi.CNLAB_FAULT_ALLOC_NTH:
            if v > 0xFFFFFFFF:
                return ERANGE, 0, (), "nth"
            return 0, kabi.FAULT.size, ("fault", op, v, self.alloc_nth), "ok"
        if op == kabi.CNLAB_FAULT_STALL_MS:
            if v > kabi.CNLAB_STALL_MAX_MS:
                return ERANGE, 0, (), "stall"
            return 0, kabi.FAULT.size, ("fault", op, v, self.stall_ms), "ok"
        if op == kabi.CNLAB_FAULT_QLIMIT:
            if not v or v > kabi.CNLAB_QLIMIT_MAX:
                return ERANGE, 0, (), "qlimit"
            return 0, kabi.FAULT.size, ("fault", op, v, self.qlimit), "ok"
        if op == kabi.CNLAB_FAULT_WARN:
            if v != kabi.CNLAB_WARN_MAGIC:
                return EINVAL, 0, (), "warn magic"
            if not self.debug_warn:
                return EOPNOTSUPP, 0, (), "debug_warn off"
            return 0, kabi.FAULT.size, ("fault", op, v, 0), "ok"
        if op == kabi.CNLAB_FAULT_PANIC:  # debug_panic is never on here: the magic itself is refused too
            if v != kabi.CNLAB_PANIC_MAGIC:
                return EINVAL, 0, (), "panic magic"
            return EOPNOTSUPP, 0, (), "debug_panic off"
        return EOPNOTSUPP, 0, (), "unknown op"

    def gen_config_error(self, c: dict) -> tuple[int, str]:
        """GEN_START's field rules (gen.c gen_validate), in the module's order; (0, "") when valid."""
        if c["gen_id"] >= kabi.CNLAB_MAX_GENS:
            return EINVAL, "gen_id"
        if (c["idx"], c["val"]) == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL):
            return EINVAL, "control id"
        if not kabi.CNLAB_GROUP_MIN <= c["group"] <= kabi.CNLAB_GROUP_MAX:
            return EINVAL, "group"
        if c["count"] > kabi.CNLAB_COUNT_MAX or c["duration_ns"] > kabi.CNLAB_DURATION_MAX_NS:
            return ERANGE, "count/duration"
        if not c["count"] and not c["duration_ns"]:
            return EINVAL, "neither count nor duration"
        if not c["cpu_mask"]:
            return EINVAL, "empty cpu_mask"
        if c["rate"] > kabi.CNLAB_RATE_MAX:
            return ERANGE, "rate"
        if c["size_min"] < kabi.EVENT.size or c["size_max"] < c["size_min"] or c["size_max"] > kabi.CNLAB_PAYLOAD_MAX:
            return EINVAL, "sizes"
        if c["context"] > kabi.CNLAB_CTX_MAX or c["path"] > kabi.CNLAB_PATH_MAX:
            return EINVAL, "context/path"
        if c["path"] == kabi.CNLAB_PATH_DIRECT and c["context"] == kabi.CNLAB_CTX_HARDIRQ:
            return EINVAL, "direct from hard IRQ"
        if c["flags"] & ~kabi.CNLAB_GEN_F_ALL:
            return EINVAL, "flags"
        if c["flags"] & kabi.CNLAB_GEN_F_BUNDLE and c["path"] != kabi.CNLAB_PATH_CBUS:
            return EINVAL, "bundle without CBUS"
        if c["burst"] > kabi.CNLAB_BURST_MAX:
            return ERANGE, "burst"
        if c["flags"] & kabi.CNLAB_GEN_F_BURSTS:
            b, r, s = c["burst"], c["rate"], c["size_max"]
            if not r or r > kabi.CNLAB_BURST_RATE_MAX or not b:
                return EINVAL, "bursts: rate/burst"
            if c["context"] == kabi.CNLAB_CTX_TIMER and r > self.hz:
                return EINVAL, "bursts: timer faster than HZ"
            if (b * r > kabi.CNLAB_BURST_MSGS_PER_S_MAX or b * s > kabi.CNLAB_BURST_BYTES_MAX
                    or b * s * r > kabi.CNLAB_BURST_BYTES_PER_S_MAX):
                return EINVAL, "bursts: caps"
            return 0, ""
        if c["context"] != kabi.CNLAB_CTX_KTHREAD and c["burst"] * c["size_max"] > kabi.CNLAB_BURST_BYTES_MAX:
            return EINVAL, "burst x size_max in an atomic context"
        return 0, ""

    def effective(self, c: dict) -> dict:
        """The config a successful GEN_START answers with (mask on online CPUs, default burst and duration)."""
        e = dict(c)
        width = min(self.nr_cpu_ids, kabi.CNLAB_MAX_CPUS)
        e["cpu_mask"] = sum(1 << cpu for cpu in self.online if cpu < width and c["cpu_mask"] >> cpu & 1)
        if not e["burst"]:
            burst = 1024 if c["context"] == kabi.CNLAB_CTX_TIMER else 64
            if c["context"] != kabi.CNLAB_CTX_KTHREAD:
                burst = min(burst, kabi.CNLAB_BURST_BYTES_MAX // c["size_max"])
            e["burst"] = burst
        if not e["duration_ns"]:
            e["duration_ns"] = kabi.CNLAB_DURATION_MAX_NS
        return e

    def _gen_start(self, body: bytes, _priv: bool):
        c = self._exact(body, kabi.GEN_START)
        if c is None:
            return EBADMSG, 0, (), "length"
        err, why = self.gen_config_error(c)
        if err:
            return err, 0, (), why
        if self.gens[c["gen_id"]] == "running":
            return EBUSY, 0, (), "running"
        e = self.effective(c)
        if not e["cpu_mask"]:
            return EINVAL, 0, (), "no online CPU in the mask"
        return 0, kabi.GEN_START.size, ("gen_start", e), "ok"

    def _gen_stop(self, body: bytes, _priv: bool):
        s = self._exact(body, kabi.GEN_STOP)
        if s is None:
            return EBADMSG, 0, (), "length"
        if s["reserved"]:
            return EINVAL, 0, (), "reserved"
        gid = s["gen_id"]
        if gid >= kabi.CNLAB_MAX_GENS and gid != kabi.CNLAB_GEN_ALL:
            return EINVAL, 0, (), "gen_id"
        if gid != kabi.CNLAB_GEN_ALL and self.gens[gid] == "idle":
            return ENOENT, 0, (), "never started"
        return 0, kabi.GEN_STOP.size, ("gen_stop", gid), "ok"

    def _bench(self, body: bytes, _priv: bool):
        b = self._exact(body, kabi.BENCH)
        if b is None:
            return EBADMSG, 0, (), "length"
        if (b["idx"], b["val"]) == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL):
            return EINVAL, 0, (), "control id"
        if not kabi.CNLAB_GROUP_MIN <= b["group"] <= kabi.CNLAB_GROUP_MAX:
            return EINVAL, 0, (), "group"
        if (b["payload"] > kabi.CNLAB_PAYLOAD_MAX or not b["iterations"] or b["iterations"] > kabi.CNLAB_BENCH_ITER_MAX
                or not b["chunk"] or b["chunk"] > kabi.CNLAB_BENCH_CHUNK_MAX or b["chunk"] > self.qlimit
                or b["pause_us"] > kabi.CNLAB_BENCH_PAUSE_MAX_US):
            return ERANGE, 0, (), "sizes"
        if b["chunk"] * b["payload"] > kabi.CNLAB_BENCH_CHUNK_BYTES_MAX:
            return EINVAL, 0, (), "chunk x payload"
        if b["cpu"] >= self.nr_cpu_ids or b["cpu"] not in self.online:
            return EINVAL, 0, (), "cpu"
        if self.bench == "running":
            return EBUSY, 0, (), "bench running"
        return 0, 0, ("bench", b), "ok (answered when it ends)"

    def apply(self, effect: tuple) -> None:
        """A successful request's change of state."""
        if not effect:
            return
        kind = effect[0]
        if kind == "gen_start":
            self.gens[effect[1]["gen_id"]] = "running"
        elif kind == "gen_stop":
            ids = range(kabi.CNLAB_MAX_GENS) if effect[1] == kabi.CNLAB_GEN_ALL else [effect[1]]
            for i in ids:
                if self.gens[i] != "idle":
                    self.gens[i] = "stopped"
        elif kind == "fault":
            op, value = effect[1], effect[2]
            if op == kabi.CNLAB_FAULT_ALLOC_NTH:
                self.alloc_nth = value
            elif op == kabi.CNLAB_FAULT_STALL_MS:
                self.stall_ms = value
            elif op == kabi.CNLAB_FAULT_QLIMIT:
                self.qlimit = value
        elif kind == "bench":
            self.bench = "running"


# ----------------------------------------------------------------------------------------------- checking

def check_reply(dg: bytes, p: Prediction, replies: list, model: Model) -> str:
    """"" if the replies to ``dg`` are what ``p`` says, else what differs."""
    if p.reply and p.status == 0 and p.type == kabi.CNLAB_MSG_BENCH:
        # answered when the run ends: nothing yet, or (a short run) its success already
        done = [r for r in replies if r["hdr"]["status"] == 0 and r["hdr"]["len"] == kabi.BENCH_RESULT.size]
        return "" if len(done) == len(replies) <= 1 else f"BENCH replies {[r['hdr'] for r in replies]}"
    if not p.reply:
        return "" if not replies else f"unexpected reply: {replies[0]['hdr']}"
    if len(replies) != 1:
        return f"{len(replies)} replies"
    r = replies[0]
    _nl_len, _idx, _val, seq, ack, cn_len, cn_flags, nl_type, nl_seq = r["framing"]
    req_seq, req_ack = _u(dg, "I", kabi.NLMSG_HDRLEN + 8), _u(dg, "I", kabi.NLMSG_HDRLEN + 12)
    h = r["hdr"]
    problems = []
    if h["status"] != p.status:
        problems.append(f"status {h['status']} ({errno.errorcode.get(-h['status'], '?')}), expected {p.status} "
                        f"({errno.errorcode.get(-p.status, 'ok')}: {p.why})")
    if seq != req_seq or ack != (req_ack + 1) & 0xFFFFFFFF or nl_seq != req_seq or nl_type != kabi.NLMSG_DONE:
        problems.append(f"framing seq {seq} ack {ack} nl_seq {nl_seq} type {nl_type}")
    if (h["version"], h["flags"], h["reserved"], cn_flags) != (kabi.CNLAB_ABI_VERSION, kabi.CNLAB_F_REPLY, 0, 0):
        problems.append(f"header {h}")
    if h["type"] != p.type:
        problems.append(f"type {h['type']}, expected {p.type}")
    if h["len"] != p.body_len or cn_len != kabi.HDR.size + h["len"] or len(r["body"]) != h["len"]:
        problems.append(f"body {h['len']} bytes (cn.len {cn_len}), expected {p.body_len}")
    if not problems and p.status == 0:
        problems += check_body(dg, p, r["body"], model)
    return "; ".join(problems)


def check_body(dg: bytes, p: Prediction, body: bytes, model: Model) -> list[str]:
    """A success reply's body against the model."""
    kind = p.effect[0] if p.effect else ""
    out = []
    if kind == "echo":
        req = p.effect[1]
        e = kabi.ECHO.unpack(body)
        if body[kabi.ECHO.size:] != req[kabi.ECHO.size:] or e["user_ns"] != kabi.ECHO.unpack(req)["user_ns"]:
            out.append("echo data or user_ns changed")
        if not 0 < e["rx_ns"] <= e["tx_ns"] or e["cpu"] not in model.online:
            out.append(f"echo times/cpu {e}")
    elif kind == "gen_start":
        got = kabi.GEN_START.unpack(body)
        if got != p.effect[1]:
            out.append(f"effective config {got}, expected {p.effect[1]}")
    elif kind == "gen_stop":
        if body != dg[kabi.DATA_OFFSET + kabi.HDR.size:kabi.DATA_OFFSET + kabi.HDR.size + kabi.GEN_STOP.size]:
            out.append("GEN_STOP body is not the request")
    elif kind == "fault":
        f = kabi.FAULT.unpack(body)
        if (f["op"], f["reserved"], f["value"]) != (p.effect[1], 0, p.effect[3]):
            out.append(f"SET_FAULT reply {f}, expected op {p.effect[1]} previous {p.effect[3]}")
    elif kind == "stats":
        s = kabi.STATS_REP.unpack(body)
        want = {"nr_cpus": model.nr_stats, "queue_limit": model.qlimit, "alloc_fail_nth": model.alloc_nth,
                "stall_ms": model.stall_ms, "queue_bytes": model.qbytes, "reserved": 0}
        got = {k: s[k] for k in want}
        if got != want:
            out.append(f"STATS {got}, expected {want}")
    elif kind == "gen_stats":
        g = kabi.GEN_STATS_REP.unpack(body)
        state = {"idle": kabi.CNLAB_GEN_IDLE, "stopped": kabi.CNLAB_GEN_STOPPED}.get(model.gens[p.effect[1]])
        if g["gen_id"] != p.effect[1] or g["nr_cpus"] != model.nr_stats or (state is not None and g["state"] != state):
            out.append(f"GEN_STATS {g['gen_id']} state {g['state']} nr_cpus {g['nr_cpus']}, model "
                       f"{model.gens[p.effect[1]]}")
        reserved = [_u(body, "I", kabi.GEN_STATS_REP.size + i * kabi.GEN_CPU_STATS.size + 4)
                    for i in range(g["nr_cpus"])]
        if any(reserved):
            out.append("GEN_STATS per-CPU reserved not zero")
    elif kind == "bench_result":
        b = kabi.BENCH_RESULT.unpack(body)
        if model.bench == "running" and b["status"] != -errno.EINPROGRESS:
            out.append(f"BENCH_RESULT status {b['status']} while the bench runs")
    return out


def decode_replies(buf_list: list[bytes]) -> list[dict]:
    out = []
    for buf in buf_list:
        off = 0
        while off + kabi.DATA_OFFSET <= len(buf):
            nl_len, nl_type, _f, nl_seq, _pid = kabi.NLMSGHDR_S.unpack_from(buf, off)
            if nl_len < kabi.DATA_OFFSET or off + nl_len > len(buf):
                break
            idx, val, seq, ack, cn_len, cn_flags = kabi.CN_MSG_S.unpack_from(buf, off + kabi.NLMSG_HDRLEN)
            data = buf[off + kabi.DATA_OFFSET:off + kabi.DATA_OFFSET + cn_len]
            if (idx, val) == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL) and len(data) >= kabi.HDR.size:
                hdr = kabi.HDR.unpack(data)
                out.append({"framing": (nl_len, idx, val, seq, ack, cn_len, cn_flags, nl_type, nl_seq), "hdr": hdr,
                            "body": data[kabi.HDR.size:]})
            off += kabi.nlmsg_align(nl_len)
    return out


def drain(sock: socket.socket) -> list[bytes]:
    """Everything queued on the socket now (the module answers inside send(), so its reply is already here)."""
    out = []
    while True:
        try:
            out.append(sock.recv(1 << 17, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                continue
            raise


class Tally:
    """What one batch did: counts, statuses, the privilege matrix, mismatches (the first few in full)."""

    def __init__(self) -> None:
        self.sent = self.replies = self.no_reply = self.to_callback = self.errors = self.mismatches = 0
        self.statuses: dict[str, int] = {}
        self.perm: dict[str, dict[str, list[int]]] = {}
        self.coverage: dict[str, int] = {}
        self.examples: list[dict] = []
        self.send_errors = 0

    def merge(self, other: dict) -> None:
        for k in ("sent", "replies", "no_reply", "to_callback", "errors", "mismatches", "send_errors"):
            setattr(self, k, getattr(self, k) + other[k])
        for k, v in other["statuses"].items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        for t, modes in other["perm"].items():
            for m, sts in modes.items():
                cur = self.perm.setdefault(t, {}).setdefault(m, [])
                cur.extend(s for s in sts if s not in cur)
        for k, v in other["coverage"].items():
            self.coverage[k] = self.coverage.get(k, 0) + v
        self.examples = (self.examples + other["examples"])[:20]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("sent", "replies", "no_reply", "to_callback", "errors", "mismatches",
                                              "send_errors", "statuses", "perm", "coverage", "examples")}


class Fuzzer:
    """Sends cases from one socket and process, checking each reply against the model."""

    def __init__(self, model: Model, sock: socket.socket, privileged: bool, seq0: int) -> None:
        self.model, self.sock, self.privileged = model, sock, privileged
        self.seq = seq0
        self.tally = Tally()

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def send(self, case: Case | bytes, label: str = "", mode: str = "root") -> tuple[Prediction, list[dict]]:
        dg = case if isinstance(case, bytes) else case.encode(self.next_seq())
        label = label or (case.label if isinstance(case, Case) else "")
        mode = case.mode if isinstance(case, Case) else mode
        p = self.model.predict(dg, self.privileged)
        t = self.tally
        try:
            self.sock.send(dg)
        except OSError as e:
            t.send_errors += 1
            self._mismatch(label, mode, p, f"send failed: {e}")
            return p, []
        t.sent += 1
        replies = decode_replies(drain(self.sock))
        t.replies += len(replies)
        if p.reply:
            t.to_callback += 1
            if p.status:
                t.errors += 1
        else:
            t.no_reply += 1
        problem = check_reply(dg, p, replies, self.model)
        if problem:
            self._mismatch(label, mode, p, problem)
        status = replies[0]["hdr"]["status"] if replies else None
        key = "none" if status is None else (errno.errorcode.get(-status, str(status)) if status else "0")
        t.statuses[key] = t.statuses.get(key, 0) + 1
        if p.reply and p.type in BODY and status is not None and " base " in label:
            name = kabi.MSG_NAMES[p.type] + (" reset" if "STATS base 1" in label else "")
            cur = t.perm.setdefault(name, {}).setdefault(mode, [])
            if status not in cur:
                cur.append(status)
        field = label.split(" ", 1)[-1].split("=")[0]
        t.coverage[field] = t.coverage.get(field, 0) + 1
        if p.status == 0 and p.reply and not problem:
            self.model.apply(p.effect)
        return p, replies

    def _mismatch(self, label: str, mode: str, p: Prediction, problem: str) -> None:
        self.tally.mismatches += 1
        if len(self.tally.examples) < 20:
            self.tally.examples.append({"case": label, "mode": mode, "expected": repr(p), "got": problem})

    def run(self, cases: list[Case], undo: bool = True) -> None:
        """Send every case; undo what a success changed (generators stopped, knobs set back)."""
        for case in cases:
            p, _ = self.send(case)
            if not (undo and p.reply and p.status == 0 and p.effect):
                continue
            kind = p.effect[0]
            if kind == "gen_start":
                cfg = p.effect[1]
                if not cfg["count"] and cfg["duration_ns"] >= 10 * 10**9:   # cannot have finished: busy
                    self.send(case, case.label + " (again: busy)")
                self.send(Case(kabi.CNLAB_MSG_GEN_STOP, {"gen_id": cfg["gen_id"]}, "undo: GEN_STOP"))
            elif kind == "fault" and p.effect[1] != kabi.CNLAB_FAULT_WARN:
                default = {kabi.CNLAB_FAULT_QLIMIT: 4096, kabi.CNLAB_FAULT_ALLOC_NTH: 0,
                           kabi.CNLAB_FAULT_STALL_MS: 0}[p.effect[1]]
                self.send(Case(kabi.CNLAB_MSG_SET_FAULT, {"op": p.effect[1], "value": default}, "undo: SET_FAULT"))


# -------------------------------------------------------------------------------------------- processes

def _drop_privileges(keep_saved_root: bool = False) -> None:
    os.setgroups([])
    if keep_saved_root:
        os.setresgid(NOBODY, NOBODY, 0)
        os.setresuid(NOBODY, NOBODY, 0)
    else:
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def run_in_child(model: Model, cases: list[Case], mode: str, seq0: int, root_sock: socket.socket | None) -> dict:
    """Run ``cases`` (no state changes: every one is refused or read-only) in a child process sending as ``mode``."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            if mode == "nobody":
                _drop_privileges()
                sock, privileged = kabi.open_socket(), False
            elif mode == "nobody_rootsock":       # a socket root opened, used by nobody
                sock = root_sock
                _drop_privileges()
                privileged = False
            else:                                   # root_nobodysock: opened as nobody, used by root
                _drop_privileges(keep_saved_root=True)
                sock = kabi.open_socket()
                os.setresuid(0, 0, 0)
                os.setresgid(0, 0, 0)
                privileged = False                  # the socket's opener lacked CAP_NET_ADMIN
            fz = Fuzzer(model, sock, privileged, seq0)
            fz.run(cases, undo=False)
            out = fz.tally.as_dict()
        except Exception as e:  # noqa: BLE001 - reported to the parent
            out = {"exception": repr(e)}
            code = 1
        os.write(wfd, json.dumps(out).encode())
        os._exit(code)
    os.close(wfd)
    data = b""
    while True:
        chunk = os.read(rfd, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return json.loads(data or b"{}")


def online_cpus() -> list[int]:
    out = []
    for c in range(os.cpu_count() or 1):
        path = f"/sys/devices/system/cpu/cpu{c}/online"
        if c == 0 or not os.path.exists(path) or open(path).read().strip() == "1":
            out.append(c)
    return out


def nr_cpu_ids() -> int:
    text = open("/sys/devices/system/cpu/possible").read().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def reload_module() -> str:
    subprocess.run(["rmmod", "cnlab"], capture_output=True)
    r = subprocess.run(["insmod", MODULE], capture_output=True, text=True)
    return r.stderr.strip() if r.returncode else ""


def wait_reply(sock: socket.socket, seq: int, timeout: float) -> dict | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for r in decode_replies(drain(sock)):
            if r["framing"][3] == seq:
                return r
        time.sleep(0.02)
    return None


def fuzz(requests: int = 5000, seed: int = 12, reload: bool = True) -> dict:
    """Run the fuzzer; the summary (``ok`` false on any mismatch)."""
    t0 = time.monotonic()
    problems: list[str] = []
    if reload:
        err = reload_module()
        if err:
            return {"test": "abi_fuzz", "ok": False, "error": f"insmod: {err}"}
    bench = reload
    root = kabi.open_socket()
    with kabi.CtlClient() as c:
        s0 = c.stats().body
    model = Model(online_cpus(), nr_cpu_ids(), s0["nr_cpus"], s0["queue_limit"], s0.get("queue_bytes", 0))
    if not reload:
        model.gens = ["stopped"] * kabi.CNLAB_MAX_GENS  # unknown history: every id stopped first
        with kabi.CtlClient() as c:
            c.gen_stop(kabi.CNLAB_GEN_ALL)
            s0 = c.stats().body
    fz = Fuzzer(model, root, True, (seed << 20) & 0xFFFFFFFF)
    cases = systematic_cases(model.nr_cpu_ids, bench)
    # BENCH_RESULT before any bench, from both kinds of sender; then a short bench to its end, then the blocker
    if bench:
        fz.run([Case(kabi.CNLAB_MSG_BENCH_RESULT, {}, "BENCH_RESULT base (no bench yet)")])
        fz.tally.merge(run_in_child(model, [Case(kabi.CNLAB_MSG_BENCH_RESULT, {}, "BENCH_RESULT base (none)",
                                                 "nobody")], "nobody", fz.next_seq() + 50_000_000, None))
        p, replies = fz.send(Case(kabi.CNLAB_MSG_BENCH, SHORT_BENCH, "BENCH short run"))
        r = replies[0] if replies else wait_reply(root, fz.seq, 60)
        if p.status != 0 or r is None or r["hdr"]["status"] != 0:
            problems.append(f"short BENCH: {p!r}, reply {r and r['hdr']}")
        model.bench = "done"
        fz.send(Case(kabi.CNLAB_MSG_BENCH, BLOCKER, "BENCH blocker"))
        blocker_seq = fz.seq
    fz.run(cases)
    unpriv = mode_cases(cases)
    seq_base = fz.next_seq()
    for n, mode in enumerate(MODES[1:], start=1):
        part = [c for c in unpriv if c.mode == mode]
        res = run_in_child(model, part, mode, (seq_base + n * 10_000_000) & 0xFFFFFFFF, root)
        if "exception" in res:
            problems.append(f"{mode}: {res['exception']}")
            continue
        fz.tally.merge(res)
    systematic = fz.tally.sent
    rng = random.Random(seed)
    chunk = 2000
    while fz.tally.sent < requests:
        n = min(chunk, requests - fz.tally.sent)
        batch = [random_case(rng, model.nr_cpu_ids, bench) for _ in range(n)]
        fz.run([c for c in batch if c.mode == "root"])
        nobody = [c for c in batch if c.mode == "nobody"]
        if nobody:
            seq_base = fz.next_seq()
            fz.seq = (fz.seq + len(nobody) + 10) & 0xFFFFFFFF
            res = run_in_child(model, nobody, "nobody", seq_base, None)
            if "exception" in res:
                problems.append(f"random nobody: {res['exception']}")
                break
            fz.tally.merge(res)
    # the module's own books: every datagram the connector passed on was counted, every error answered as one
    with kabi.CtlClient() as c:
        s1 = c.stats().body
    stats_requests = 1  # the STATS just sent
    d_req = s1["ctl_requests"] - s0["ctl_requests"] - stats_requests
    d_err = s1["ctl_errors"] - s0["ctl_errors"]
    t = fz.tally
    counters = {"ctl_requests": d_req, "expected_requests": t.to_callback, "ctl_errors": d_err,
                "expected_errors": t.errors, "ctl_reply_fail": s1["ctl_reply_fail"] - s0["ctl_reply_fail"]}
    if d_req != t.to_callback or d_err != t.errors or counters["ctl_reply_fail"]:
        problems.append(f"module counters disagree: {counters}")
    shutdown = None
    if bench:
        err = reload_module()
        if err:
            problems.append(f"reload: {err}")
        r = wait_reply(root, blocker_seq, 10)
        shutdown = r["hdr"]["status"] if r else None
        if shutdown != ESHUTDOWN:
            problems.append(f"the blocker BENCH ended with {shutdown}, not -ESHUTDOWN")
    root.close()
    elapsed = time.monotonic() - t0
    out = {"test": "abi_fuzz", "ok": not problems and t.mismatches == 0 and t.sent >= requests,
           "seconds": round(elapsed, 1), "requests": t.sent, "systematic": systematic,
           "per_second": round(t.sent / elapsed), "seed": seed, "problems": problems, "counters": counters,
           "blocker_status": shutdown, **{k: v for k, v in t.as_dict().items() if k != "sent"}}
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000, help="request budget (the systematic part runs whole)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--no-reload", action="store_true", help="keep the loaded module (no BENCH cases then)")
    args = ap.parse_args(argv)
    out = fuzz(args.requests, args.seed, not args.no_reload)
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
