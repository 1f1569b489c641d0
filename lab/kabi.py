"""Python mirror of the cnlab kernel ABI (kmod/include/uapi/cnlab.h).

Standard library only and no imports from other ``lab`` modules, so the file
can be copied into a guest on its own.  tests/unit/test_kabi.py compiles
kmod/tools/abi_dump.c and checks every size, offset and constant below
against the C header.

Layers:

* ``Layout``: one C struct as a precompiled ``struct.Struct`` (native byte
  order, no implicit padding: the C structs carry explicit padding) with
  ``pack(**fields)`` / ``unpack(buf, offset)`` and a field offset table.
* framing: ``nlmsghdr`` + ``cn_msg`` helpers for raw ``AF_NETLINK`` sockets of
  family ``NETLINK_CONNECTOR`` (11).
* requests/replies: ``encode_*`` build a complete netlink datagram for the
  control connector, ``decode_reply`` parses the answer.
* ``CtlClient`` / ``EventListener``: thin socket wrappers for guest tests.
"""

from __future__ import annotations

import errno as _errno
import os
import select
import socket
import struct
import threading
import time

# No dataclasses or typing here: under TCG their imports (inspect, ast, ...)
# cost a guest program about 0.1 s at every start.

# --------------------------------------------------------------------------
# Constants (must equal cnlab.h; checked by tests/unit/test_kabi.py)

NETLINK_CONNECTOR = 11
NLMSG_DONE = 3
NLMSG_HDRLEN = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NETLINK_BROADCAST_ERROR = 4
NETLINK_NO_ENOBUFS = 5
CONNECTOR_MAX_MSG_SIZE = 16384

CNLAB_ABI_VERSION = 1
CNLAB_CTL_IDX = 0x10
CNLAB_CTL_VAL = 0x1
CNLAB_CN_F_BUNDLE = 0x0001

CNLAB_MAX_GENS = 16
CNLAB_MAX_CPUS = 64
CNLAB_GROUP_MIN = 1
CNLAB_GROUP_MAX = 32
CNLAB_PAYLOAD_MAX = 8192
CNLAB_ECHO_MAX_DATA = 1024
CNLAB_RATE_MAX = 10_000_000
CNLAB_DURATION_MAX_NS = 600 * 1_000_000_000
CNLAB_COUNT_MAX = 1 << 40
CNLAB_BURST_MAX = 4096
CNLAB_BURST_RATE_MAX = 50_000
CNLAB_BURST_MSGS_PER_S_MAX = 1_000_000
CNLAB_BURST_BYTES_MAX = 1 << 20
CNLAB_BURST_BYTES_PER_S_MAX = 256 << 20
CNLAB_QLIMIT_MAX = 1 << 20
CNLAB_QBYTES_MIN = 64 << 10
CNLAB_QBYTES_DEFAULT = 64 << 20
CNLAB_QBYTES_MAX = 1 << 30
CNLAB_STALL_MAX_MS = 60_000
CNLAB_BENCH_ITER_MAX = 10_000_000
CNLAB_BENCH_PAUSE_MAX_US = 100_000
CNLAB_BENCH_CHUNK_MAX = 4096
CNLAB_BENCH_CHUNK_BYTES_MAX = 1 << 20
CNLAB_GEN_ALL = 0xFFFFFFFF
CNLAB_WARN_MAGIC = 0x5741524E
CNLAB_PANIC_MAGIC = 0x50414E43

CNLAB_MSG_ECHO = 1
CNLAB_MSG_GEN_START = 2
CNLAB_MSG_GEN_STOP = 3
CNLAB_MSG_STATS = 4
CNLAB_MSG_GEN_STATS = 5
CNLAB_MSG_SET_FAULT = 6
CNLAB_MSG_BENCH = 7
CNLAB_MSG_BENCH_RESULT = 8
CNLAB_MSG_MAX = 8

CNLAB_F_REPLY = 0x01

CNLAB_CTX_KTHREAD = 0
CNLAB_CTX_SOFTIRQ = 1
CNLAB_CTX_TIMER = 2
CNLAB_CTX_HARDIRQ = 3
CNLAB_CTX_MAX = 3

CNLAB_PATH_DIRECT = 0
CNLAB_PATH_CBUS = 1
CNLAB_PATH_MAX = 1

CNLAB_GEN_F_BUNDLE = 0x0001
CNLAB_GEN_F_BURSTS = 0x0002
CNLAB_GEN_F_ALL = CNLAB_GEN_F_BUNDLE | CNLAB_GEN_F_BURSTS
CNLAB_STATS_F_RESET_HWM = 0x0001
CNLAB_STATS_F_ALL = CNLAB_STATS_F_RESET_HWM
CNLAB_EV_F_CBUS = 0x0001

CNLAB_BATCH_BUCKETS = 8

CNLAB_GEN_IDLE = 0
CNLAB_GEN_RUNNING = 1
CNLAB_GEN_DONE = 2
CNLAB_GEN_STOPPED = 3

CNLAB_FAULT_ALLOC_NTH = 1
CNLAB_FAULT_STALL_MS = 2
CNLAB_FAULT_QLIMIT = 3
CNLAB_FAULT_WARN = 4
CNLAB_FAULT_PANIC = 5
CNLAB_FAULT_MAX = 5

CTX_NAMES = {"kthread": CNLAB_CTX_KTHREAD, "softirq": CNLAB_CTX_SOFTIRQ,
             "timer": CNLAB_CTX_TIMER, "hardirq": CNLAB_CTX_HARDIRQ}
PATH_NAMES = {"direct": CNLAB_PATH_DIRECT, "cbus": CNLAB_PATH_CBUS}
MSG_NAMES = {CNLAB_MSG_ECHO: "ECHO", CNLAB_MSG_GEN_START: "GEN_START",
             CNLAB_MSG_GEN_STOP: "GEN_STOP", CNLAB_MSG_STATS: "STATS",
             CNLAB_MSG_GEN_STATS: "GEN_STATS",
             CNLAB_MSG_SET_FAULT: "SET_FAULT", CNLAB_MSG_BENCH: "BENCH",
             CNLAB_MSG_BENCH_RESULT: "BENCH_RESULT"}


# --------------------------------------------------------------------------
# Struct layouts

FieldSpec = "tuple[str, str | Layout]"


class Layout:
    """A C struct: ordered fields, each a struct format code (``"I"``,
    ``"8Q"`` for an array) or a nested ``Layout``."""

    def __init__(self, name: str, fields: list[FieldSpec]):
        self.name = name
        self.fields = list(fields)
        self.offsets: dict[str, tuple[int, int]] = {}
        fmt = ""
        off = 0
        for fname, spec in self.fields:
            if isinstance(spec, Layout):
                size = spec.size
                fmt += spec.struct.format.lstrip("=")
            else:
                size = struct.calcsize("=" + spec)
                fmt += spec
            self.offsets[fname] = (off, size)
            off += size
        self.struct = struct.Struct("=" + fmt)
        self.size = self.struct.size
        assert self.size == off, name

    def _flatten(self, values: dict) -> list:
        out: list = []
        for fname, spec in self.fields:
            v = values.get(fname, 0)
            if isinstance(spec, Layout):
                out.extend(spec._flatten(v if isinstance(v, dict) else {}))
            elif spec[0].isdigit() and spec[-1] != "s":
                n = int(spec[:-1])
                seq = list(v) if v else []
                out.extend((seq + [0] * n)[:n])
            else:
                out.append(v)
        return out

    def pack(self, **values: object) -> bytes:
        unknown = set(values) - set(self.offsets)
        if unknown:
            raise KeyError(f"{self.name}: unknown fields {sorted(unknown)}")
        return self.struct.pack(*self._flatten(values))

    def _build(self, flat: list, pos: int) -> tuple[dict, int]:
        out: dict = {}
        for fname, spec in self.fields:
            if isinstance(spec, Layout):
                out[fname], pos = spec._build(flat, pos)
            elif spec[0].isdigit() and spec[-1] != "s":
                n = int(spec[:-1])
                out[fname] = list(flat[pos:pos + n])
                pos += n
            else:
                out[fname] = flat[pos]
                pos += 1
        return out, pos

    def unpack(self, buf: bytes | bytearray | memoryview,
               offset: int = 0) -> dict:
        return self._build(self.struct.unpack_from(buf, offset), 0)[0]


NLMSGHDR = Layout("nlmsghdr", [("len", "I"), ("type", "H"), ("flags", "H"),
                               ("seq", "I"), ("pid", "I")])
CN_MSG = Layout("cn_msg", [("idx", "I"), ("val", "I"), ("seq", "I"),
                           ("ack", "I"), ("len", "H"), ("flags", "H")])
HDR = Layout("cnlab_hdr", [("version", "B"), ("flags", "B"), ("type", "H"),
                           ("status", "i"), ("len", "I"), ("reserved", "I")])
ECHO = Layout("cnlab_echo", [("user_ns", "Q"), ("rx_ns", "Q"), ("tx_ns", "Q"),
                             ("cpu", "I"), ("data_len", "I")])
GEN_START = Layout("cnlab_gen_start", [
    ("gen_id", "I"), ("idx", "I"), ("val", "I"), ("group", "I"),
    ("count", "Q"), ("duration_ns", "Q"), ("cpu_mask", "Q"),
    ("rate", "I"), ("size_min", "I"), ("size_max", "I"),
    ("context", "H"), ("path", "H"), ("flags", "I"), ("burst", "I")])
GEN_STOP = Layout("cnlab_gen_stop", [("gen_id", "I"), ("reserved", "I")])
EVENT = Layout("cnlab_event", [("gen_id", "I"), ("cpu", "I"), ("seq", "Q"),
                               ("ts_ns", "Q"), ("len", "I"), ("flags", "I")])
STATS_REQ = Layout("cnlab_stats_req", [("flags", "I"), ("reserved", "I")])
CBUS_STATS = Layout("cnlab_cbus_stats", [
    ("inserted", "Q"), ("sent", "Q"), ("drop_full", "Q"),
    ("drop_nomem", "Q"), ("drop_nolistener", "Q"), ("drop_overrun", "Q"), ("drop_nlerr", "Q"),
    ("rejected", "Q"), ("queued", "Q"), ("hwm", "Q"), ("kicks", "Q"),
    ("batches", "Q"), ("batch_max", "Q"), ("nl_msgs", "Q"), ("bundles", "Q"),
    ("enqueued", "Q"), ("dequeued", "Q"),
    ("batch_hist", f"{CNLAB_BATCH_BUCKETS}Q"), ("cpu", "I"),
    ("online", "I")])
STATS_REP = Layout("cnlab_stats_rep", [
    ("nr_cpus", "I"), ("queue_limit", "I"), ("alloc_fail_nth", "I"),
    ("stall_ms", "I"), ("queue_bytes", "I"), ("reserved", "I"), ("ctl_requests", "Q"), ("ctl_errors", "Q"),
    ("ctl_reply_fail", "Q"), ("total", CBUS_STATS)])
GEN_STATS_REQ = Layout("cnlab_gen_stats_req", [("gen_id", "I"),
                                               ("reserved", "I")])
GEN_CPU_STATS = Layout("cnlab_gen_cpu_stats", [
    ("cpu", "I"), ("reserved", "I"), ("generated", "Q"), ("ok", "Q"),
    ("err_nolistener", "Q"), ("err_overrun", "Q"), ("err_nomem", "Q"), ("err_full", "Q"),
    ("err_other", "Q"), ("bursts", "Q"), ("bursts_missed", "Q")])
GEN_STATS_REP = Layout("cnlab_gen_stats_rep", [
    ("gen_id", "I"), ("state", "I"), ("nr_cpus", "I"), ("active", "I"),
    ("start_ns", "Q"), ("end_ns", "Q"), ("cfg", GEN_START)])
FAULT = Layout("cnlab_fault", [("op", "I"), ("reserved", "I"),
                               ("value", "Q")])
BENCH = Layout("cnlab_bench", [
    ("idx", "I"), ("val", "I"), ("group", "I"), ("payload", "I"),
    ("iterations", "I"), ("chunk", "I"), ("pause_us", "I"), ("cpu", "I")])
BENCH_RESULT = Layout("cnlab_bench_result", [
    ("status", "i"), ("cpu", "I"), ("cbus_ns", "Q"), ("cbus_calls", "Q"),
    ("cbus_ok", "Q"), ("direct_ns", "Q"), ("direct_calls", "Q"),
    ("direct_ok", "Q"), ("direct_esrch", "Q"), ("direct_err", "Q"),
    ("cbus_ns_min_chunk", "Q"), ("direct_ns_min_chunk", "Q"),
    ("cbus_first_ns", "Q"), ("direct_first_ns", "Q"),
    ("cfg", BENCH)])

#: every UAPI struct by its C name (cn_msg's ``id`` is idx + val here)
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    CN_MSG, HDR, ECHO, GEN_START, GEN_STOP, EVENT, STATS_REQ, CBUS_STATS,
    STATS_REP, GEN_STATS_REQ, GEN_CPU_STATS, GEN_STATS_REP, FAULT, BENCH,
    BENCH_RESULT)}

# Precompiled hot-path structs for rate/loss harnesses.
NLMSGHDR_S = NLMSGHDR.struct
CN_MSG_S = CN_MSG.struct
EVENT_S = EVENT.struct
#: offset of cn_msg data inside a datagram (16 + 20)
DATA_OFFSET = NLMSG_HDRLEN + CN_MSG.size


def nlmsg_align(n: int) -> int:
    return (n + 3) & ~3


# --------------------------------------------------------------------------
# Framing

def frame_cn(idx: int, val: int, data: bytes = b"", seq: int = 0,
             ack: int = 0, flags: int = 0, length: int | None = None) -> bytes:
    """cn_msg header + data. ``length`` overrides cn_msg.len (fuzzing)."""
    ln = len(data) if length is None else length
    return CN_MSG.pack(idx=idx, val=val, seq=seq, ack=ack, len=ln,
                       flags=flags) + data


def frame_nl(payload: bytes, seq: int = 0, pid: int = 0,
             nl_len: int | None = None, nl_type: int = NLMSG_DONE,
             nl_flags: int = 0) -> bytes:
    """nlmsghdr + payload. ``nl_len`` overrides nlmsg_len (fuzzing)."""
    ln = NLMSG_HDRLEN + len(payload) if nl_len is None else nl_len
    return NLMSGHDR.pack(len=ln, type=nl_type, flags=nl_flags, seq=seq,
                         pid=pid) + payload


class CnMessage:
    """One connector message out of a datagram."""

    __slots__ = ("idx", "val", "seq", "ack", "flags", "data", "nl_seq")

    def __init__(self, idx: int, val: int, seq: int, ack: int, flags: int, data: bytes, nl_seq: int = 0):
        self.idx, self.val, self.seq, self.ack = idx, val, seq, ack
        self.flags, self.data, self.nl_seq = flags, data, nl_seq

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CnMessage) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "CnMessage(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

    @property
    def id(self) -> tuple[int, int]:
        return (self.idx, self.val)


def walk_datagram(buf: bytes | bytearray, n: int, now: int, on_event, on_other=None,
                  ids: frozenset | None = None, foreign: frozenset = frozenset()) -> int:
    """Hand every generator event in the first ``n`` bytes of a received datagram to a consumer.

    The readers' hot loop, shared: it walks the nlmsghdrs (``NLMSG_ALIGN``,
    stopping at a short or truncated one) and calls ``on_event(event, now)``
    with the ``EVENT_S`` tuple ``(gen_id, cpu, seq, ts_ns, len, flags)`` of
    each cnlab message of at least an event's size, and of each inner
    message of a CBUS bundle.  A message that is not one goes to
    ``on_other(off, idx, val, seq, length)`` if given, ``off`` being where
    its data starts: too short, a connector idx in ``foreign`` (cn_proc's),
    or an ``(idx, val)`` missing from ``ids`` when that is given.  Returns
    the number of bundles.
    """
    nl_unpack = NLMSGHDR_S.unpack_from
    cn_unpack = CN_MSG_S.unpack_from
    ev_unpack = EVENT_S.unpack_from
    ev_size = EVENT_S.size
    bundles = off = 0
    while off + DATA_OFFSET <= n:
        nl_len = nl_unpack(buf, off)[0]
        if nl_len < DATA_OFFSET or off + nl_len > n:
            break
        idx, val, seq, _ack, length, flags = cn_unpack(buf, off + NLMSG_HDRLEN)
        data = off + DATA_OFFSET
        if idx in foreign:
            if on_other is not None:
                on_other(data, idx, val, seq, length)
        elif flags & CNLAB_CN_F_BUNDLE:
            bundles += 1
            p, end = data, min(data + length, off + nl_len)
            while p + CN_MSG.size + ev_size <= end:
                inner = cn_unpack(buf, p)[4]
                on_event(ev_unpack(buf, p + CN_MSG.size), now)
                p += CN_MSG.size + inner
        elif length >= ev_size and (ids is None or (idx, val) in ids):
            on_event(ev_unpack(buf, data), now)
        elif on_other is not None:
            on_other(data, idx, val, seq, length)
        off += (nl_len + 3) & ~3
    return bundles


def parse_datagram(buf: bytes | bytearray | memoryview,
                   n: int | None = None) -> list[CnMessage]:
    """Every connector message in one received datagram (walks nlmsghdrs
    by NLMSG_ALIGN(nlmsg_len); dispatch on the cn_msg id, not nlmsg_type)."""
    mv = memoryview(buf)
    end = len(mv) if n is None else n
    off = 0
    out: list[CnMessage] = []
    while off + NLMSG_HDRLEN + CN_MSG.size <= end:
        nl_len, _nl_type, _nl_flags, nl_seq, _pid = NLMSGHDR_S.unpack_from(mv, off)
        if nl_len < NLMSG_HDRLEN + CN_MSG.size or off + nl_len > end:
            break
        idx, val, seq, ack, ln, flags = CN_MSG_S.unpack_from(mv, off + NLMSG_HDRLEN)
        start = off + DATA_OFFSET
        data = bytes(mv[start:min(start + ln, off + nl_len)])
        out.append(CnMessage(idx, val, seq, ack, flags, data, nl_seq))
        off += nlmsg_align(nl_len)
    return out


def parse_bundle(data: bytes) -> list[CnMessage]:
    """Inner cn_msgs of a CNLAB_CN_F_BUNDLE message (packed back to back,
    no alignment, like w1)."""
    out: list[CnMessage] = []
    off = 0
    while off + CN_MSG.size <= len(data):
        idx, val, seq, ack, ln, flags = CN_MSG_S.unpack_from(data, off)
        start = off + CN_MSG.size
        if start + ln > len(data):
            raise ValueError("truncated bundle")
        out.append(CnMessage(idx, val, seq, ack, flags, data[start:start + ln]))
        off = start + ln
    if off != len(data):
        raise ValueError("trailing bytes in bundle")
    return out


def expand(msg: CnMessage) -> list[CnMessage]:
    """A message, or the inner messages of a bundle."""
    if msg.flags & CNLAB_CN_F_BUNDLE:
        return parse_bundle(msg.data)
    return [msg]


def decode_event(data: bytes) -> dict:
    return EVENT.unpack(data)


# --------------------------------------------------------------------------
# Requests

def encode_request(msg_type: int, body: bytes = b"", seq: int = 0,
                   ack: int = 0, version: int = CNLAB_ABI_VERSION,
                   hdr_len: int | None = None) -> bytes:
    """A complete datagram: nlmsghdr + cn_msg{ctl id} + cnlab_hdr + body."""
    hdr = HDR.pack(version=version, flags=0, type=msg_type, status=0,
                   len=len(body) if hdr_len is None else hdr_len, reserved=0)
    cn = frame_cn(CNLAB_CTL_IDX, CNLAB_CTL_VAL, hdr + body, seq=seq, ack=ack)
    return frame_nl(cn, seq=seq)


def encode_echo(user_ns: int = 0, data: bytes = b"", seq: int = 0) -> bytes:
    body = ECHO.pack(user_ns=user_ns, data_len=len(data)) + data
    return encode_request(CNLAB_MSG_ECHO, body, seq=seq)


def gen_start_body(bursts: bool = False, **cfg: object) -> bytes:
    """cnlab_gen_start; ``context``/``path`` may be names.

    ``bursts=True`` sets CNLAB_GEN_F_BURSTS: ``rate`` then counts bursts per
    second per CPU and ``burst`` the messages in each, sent back to back
    (e.g. ``rate=200, burst=64``: 64 messages, 200 times a second).
    """
    cfg = dict(cfg)
    if bursts:
        cfg["flags"] = int(cfg.get("flags", 0)) | CNLAB_GEN_F_BURSTS
    if isinstance(cfg.get("context"), str):
        cfg["context"] = CTX_NAMES[cfg["context"]]
    if isinstance(cfg.get("path"), str):
        cfg["path"] = PATH_NAMES[cfg["path"]]
    return GEN_START.pack(**cfg)


def encode_gen_start(seq: int = 0, **cfg: object) -> bytes:
    return encode_request(CNLAB_MSG_GEN_START, gen_start_body(**cfg), seq=seq)


def encode_gen_stop(gen_id: int, seq: int = 0) -> bytes:
    return encode_request(CNLAB_MSG_GEN_STOP, GEN_STOP.pack(gen_id=gen_id),
                          seq=seq)


def encode_stats(seq: int = 0) -> bytes:
    return encode_request(CNLAB_MSG_STATS, STATS_REQ.pack(), seq=seq)


def encode_gen_stats(gen_id: int, seq: int = 0) -> bytes:
    return encode_request(CNLAB_MSG_GEN_STATS,
                          GEN_STATS_REQ.pack(gen_id=gen_id), seq=seq)


def encode_fault(op: int, value: int, seq: int = 0) -> bytes:
    return encode_request(CNLAB_MSG_SET_FAULT, FAULT.pack(op=op, value=value),
                          seq=seq)


def encode_bench(seq: int = 0, **cfg: object) -> bytes:
    return encode_request(CNLAB_MSG_BENCH, BENCH.pack(**cfg), seq=seq)


def encode_bench_result(seq: int = 0) -> bytes:
    return encode_request(CNLAB_MSG_BENCH_RESULT, b"", seq=seq)


# --------------------------------------------------------------------------
# Replies

class Reply:
    """A decoded reply of the module's control channel."""

    __slots__ = ("type", "status", "seq", "ack", "header", "body", "raw")

    def __init__(self, type: int, status: int, seq: int, ack: int, header: dict,  # noqa: A002 - the ABI's name
                 body: dict | None = None, raw: bytes = b""):
        self.type, self.status, self.seq, self.ack = type, status, seq, ack
        self.header, self.body, self.raw = header, {} if body is None else body, raw

    def __repr__(self) -> str:
        return f"Reply(type={self.type}, status={self.status}, seq={self.seq}, body={self.body!r})"

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def error_name(self) -> str:
        return _errno.errorcode.get(-self.status, str(self.status)) if self.status else ""


def _decode_body(msg_type: int, body: bytes) -> dict:
    if msg_type == CNLAB_MSG_ECHO:
        d = ECHO.unpack(body)
        d["data"] = body[ECHO.size:ECHO.size + d["data_len"]]
        return d
    if msg_type in (CNLAB_MSG_GEN_START,):
        return GEN_START.unpack(body)
    if msg_type == CNLAB_MSG_GEN_STOP:
        return GEN_STOP.unpack(body)
    if msg_type == CNLAB_MSG_STATS:
        d = STATS_REP.unpack(body)
        d["cpus"] = [CBUS_STATS.unpack(body, STATS_REP.size + i * CBUS_STATS.size)
                     for i in range(d["nr_cpus"])]
        return d
    if msg_type == CNLAB_MSG_GEN_STATS:
        d = GEN_STATS_REP.unpack(body)
        d["cpus"] = [GEN_CPU_STATS.unpack(body, GEN_STATS_REP.size + i * GEN_CPU_STATS.size)
                     for i in range(d["nr_cpus"])]
        return d
    if msg_type == CNLAB_MSG_SET_FAULT:
        return FAULT.unpack(body)
    if msg_type in (CNLAB_MSG_BENCH, CNLAB_MSG_BENCH_RESULT):
        return BENCH_RESULT.unpack(body)
    return {}


def decode_reply(msg: CnMessage) -> Reply:
    """Parse a control reply (cn_msg data = cnlab_hdr + body)."""
    if msg.id != (CNLAB_CTL_IDX, CNLAB_CTL_VAL):
        raise ValueError(f"not a cnlab control message: {msg.id}")
    if len(msg.data) < HDR.size:
        raise ValueError("reply shorter than cnlab_hdr")
    hdr = HDR.unpack(msg.data)
    body = msg.data[HDR.size:HDR.size + hdr["len"]]
    if len(body) != hdr["len"]:
        raise ValueError("reply body truncated")
    decoded: dict = {}
    if body:  # error replies have none, but a failed BENCH carries what it measured
        decoded = _decode_body(hdr["type"], body)
    return Reply(hdr["type"], hdr["status"], msg.seq, msg.ack, hdr, decoded, body)


def check_invariant(s: dict) -> bool:
    """inserted == sent + every drop + queued, for one cnlab_cbus_stats."""
    return s["inserted"] == (s["sent"] + s["drop_full"] + s["drop_nomem"]
                             + s["drop_nolistener"] + s["drop_overrun"] + s["drop_nlerr"]
                             + s["queued"])


def ledger_problems(s: dict) -> list[str]:
    """Where one cnlab_cbus_stats' independent counters disagree, at a quiescent moment ([] when they agree).

    The producer counts what it accepted (``inserted``) and what it put on the queue (``enqueued``) or
    dropped there (``drop_full``, ``drop_nomem``); the drain counts what it took off (``dequeued``) and
    what became of it (``sent`` and its drops).  Unlike ``queued`` (a derived difference), these can
    disagree: a message lost without being counted shows up here.
    """
    out = []
    produced = s["enqueued"] + s["drop_full"] + s["drop_nomem"]
    if s["inserted"] != produced:
        out.append(f"inserted {s['inserted']} != enqueued {s['enqueued']} + full {s['drop_full']} + "
                   f"nomem {s['drop_nomem']}")
    if s["enqueued"] != s["dequeued"]:
        out.append(f"enqueued {s['enqueued']} != dequeued {s['dequeued']} (still on the queue or lost)")
    accounted = s["sent"] + s["drop_nolistener"] + s["drop_overrun"] + s["drop_nlerr"]
    if s["dequeued"] != accounted:
        out.append(f"dequeued {s['dequeued']} != sent {s['sent']} + nolistener {s['drop_nolistener']} + "
                   f"overrun {s['drop_overrun']} + nlerr {s['drop_nlerr']}")
    return out


def batch_problems(s: dict) -> list[str]:
    """Where one cnlab_cbus_stats' drain batches disagree with its other counters, at a quiescent moment ([]
    when they agree).

    The drain counts each non-empty batch once (``batches``), in the histogram bucket of its size
    (``batch_hist``: 1, 2-3, 4-7, ..., >= 2^(buckets-1)) and in ``batch_max``; each message it took off the
    queue it counts in ``dequeued``.  So the buckets sum to ``batches``; a batch in bucket i held 2^i to
    2^(i+1)-1 messages (the last bucket: up to ``batch_max``), which bounds ``dequeued`` from both sides; and
    ``batch_max`` lies in the highest bucket used.
    """
    hist, batches, most = list(s["batch_hist"]), s["batches"], s["batch_max"]
    last = len(hist) - 1
    out = []
    if sum(hist) != batches:
        out.append(f"batch histogram {hist} sums to {sum(hist)}, not batches {batches}")
    low = sum(n << i for i, n in enumerate(hist))
    high = sum(n * ((2 << i) - 1) for i, n in enumerate(hist[:last])) + hist[last] * most
    if not low <= s["dequeued"] <= high:
        out.append(f"dequeued {s['dequeued']} outside {low}..{high}, what batches of histogram {hist} "
                   f"(largest {most}) hold")
    used = [i for i, n in enumerate(hist) if n]
    bucket = min(most.bit_length() - 1, last) if most else None
    if (used[-1] if used else None) != bucket:
        out.append(f"largest batch {most} is not in the highest bucket used of histogram {hist}")
    return out


def counter_problems(body: dict) -> dict[str, list[str]]:
    """Where a quiescent STATS reply's independent counters disagree (:func:`ledger_problems` and
    :func:`batch_problems`), in the total and on each CPU: ``{"total" or CPU number: [problem, ...]}``, only
    those with a problem (empty when everything agrees)."""
    entries = [("total", body["total"])] + [(str(entry["cpu"]), entry) for entry in body["cpus"]]
    found = {key: ledger_problems(entry) + batch_problems(entry) for key, entry in entries}
    return {key: problems for key, problems in found.items() if problems}


def wait_until(predicate: object, seconds: float, pause: float = 0.05) -> object:
    """Poll ``predicate`` until it is true or ``seconds`` pass; its last value.

    For kernel state that has no notification (generator states, queue
    depths, /proc/net/netlink): the guest programs' one polling loop.
    """
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    return predicate()


# --------------------------------------------------------------------------
# Sockets (guest side)

def open_socket(groups: tuple[int, ...] | list[int] = (), rcvbuf: int = 0) -> socket.socket:
    """A NETLINK_CONNECTOR socket, autobound, joined to ``groups``."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    if rcvbuf:
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((0, 0))
    for g in groups:
        s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
    return s


class CtlClient:
    """Request/reply client for the control connector.

    Threads may share one: a request holds the client from its send to its reply, so no thread reads (and
    discards) the reply another one waits for.
    """

    def __init__(self, sock: socket.socket | None = None, timeout: float = 5.0):
        self.sock = sock or open_socket()
        self.timeout = timeout
        self._seq = (os.getpid() << 12) & 0xFFFFFFFF
        self._busy = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CtlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def send_raw(self, datagram: bytes) -> int:
        return self.sock.send(datagram)

    def recv_reply(self, seq: int | None, timeout: float | None = None) -> Reply | None:
        """Wait for the control reply with cn_msg.seq == seq (any if None);
        None on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            try:
                buf = self.sock.recv(1 << 17)
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno == _errno.ENOBUFS:
                    continue
                raise
            for m in parse_datagram(buf):
                if m.id != (CNLAB_CTL_IDX, CNLAB_CTL_VAL):
                    continue
                if seq is None or m.seq == seq:
                    return decode_reply(m)

    def request(self, msg_type: int, body: bytes = b"",
                timeout: float | None = None) -> Reply:
        with self._busy:
            seq = self.next_seq()
            self.send_raw(encode_request(msg_type, body, seq=seq))
            rep = self.recv_reply(seq, timeout)
        if rep is None:
            raise TimeoutError(f"no reply to {MSG_NAMES.get(msg_type, msg_type)}")
        return rep

    def echo(self, data: bytes = b"") -> Reply:
        t = time.monotonic_ns()
        return self.request(CNLAB_MSG_ECHO, ECHO.pack(user_ns=t, data_len=len(data)) + data)

    def gen_start(self, bursts: bool = False, **cfg: object) -> Reply:
        """GEN_START; ``bursts=True``: B (``burst``) messages back to back R (``rate``) times a second."""
        return self.request(CNLAB_MSG_GEN_START, gen_start_body(bursts=bursts, **cfg))

    def gen_stop(self, gen_id: int, timeout: float | None = None) -> Reply:
        return self.request(CNLAB_MSG_GEN_STOP, GEN_STOP.pack(gen_id=gen_id), timeout)

    def stats(self, reset_hwm: bool = False) -> Reply:
        """STATS; ``reset_hwm=True`` (CAP_NET_ADMIN) first restarts every CPU's high-water mark."""
        return self.request(CNLAB_MSG_STATS, STATS_REQ.pack(flags=CNLAB_STATS_F_RESET_HWM if reset_hwm else 0))

    def gen_stats(self, gen_id: int) -> Reply:
        return self.request(CNLAB_MSG_GEN_STATS, GEN_STATS_REQ.pack(gen_id=gen_id))

    def fault(self, op: int, value: int) -> Reply:
        return self.request(CNLAB_MSG_SET_FAULT, FAULT.pack(op=op, value=value))

    def bench(self, timeout: float = 120.0, **cfg: object) -> Reply:
        return self.request(CNLAB_MSG_BENCH, BENCH.pack(**cfg), timeout)

    def bench_result(self) -> Reply:
        return self.request(CNLAB_MSG_BENCH_RESULT, b"")
