"""Every allocation a control request makes fails once, in turn (runs in a guest as root, next to ``kabi.py``).

The kernel's per-task ``fail-nth`` (``/proc/thread-self/fail-nth``, ``CONFIG_FAULT_INJECTION``) makes the
N-th fault-injection site the task reaches after the write fail, once, and reads back 0 when it did.  A
connector request is handled in the sender's own ``sendmsg()``, so writing N before each send and sweeping N
from 1 until the request no longer reaches an N-th site fails, one request at a time, every allocation on its
way: the netlink buffer of the request, the module's own allocations (its reply, a generator's instances and
threads), and the connector's buffer for the reply.  ``failslab`` is told to count allocations that may sleep
too, and both it and ``fail_page_alloc`` to stay quiet, for the length of the sweep.

What each request must come to, whichever allocation failed (docs/kmod.md, "Validation and error codes"):

- the send fails (the request never reached the module) and no reply comes; or
- exactly one reply comes, with status 0 (and a right body) or ``-ENOMEM``; or
- no reply comes and the module counted it lost (STATS' ``ctl_reply_fail`` one higher): the connector could
  not allocate the reply's buffer.

A request answered by nothing and counted nowhere, a second reply, another status, or a request that
changed state it should not have (a failed GEN_START that lost the previous run, a SET_FAULT that moved the
queue limit) fails the check.  As evidence that the faults fired, every request type must have had at least
one allocation failed and must have answered ``-ENOMEM`` at least once.  Leaks on the error paths are the
debug kernel's kmemleak scan's to find, after the check.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import fault_knobs
import kabi

FAIL_NTH = "/proc/thread-self/fail-nth"
#: Knobs set for the sweep (and put back after it): count every slab allocation, those that may sleep too, and
#: say nothing when one is failed.  Page allocations keep their defaults (order 1 and up, none that may sleep):
#: a failed order-0 page of a slab or of the per-CPU allocator is reported with a stack trace, which the
#: console check would take for a problem of the module.
KNOBS = {"failslab/ignore-gfp-wait": "N", "failslab/verbose": "0", "fail_page_alloc/verbose": "0"}
#: The most fault sites one request is swept over; a request reaching more fails the check (a runaway path).
MAX_SITES = 200
#: Rounds of one request's sweep, while none has answered -ENOMEM.
ROUNDS = 3
SWEEP_GEN_ID = 12
GEN_IDX, GEN_VAL, GROUP = 0x20, 0x1, 2
GEN_COUNT = 20


@dataclass
class Request:
    """One request type to sweep: its type, body, and what its success and its aftermath must look like."""

    name: str
    msg_type: int
    body: Callable[[], bytes]
    #: (reply or None, the step's record) -> a problem, or "" when the request left things as they must be
    after: Callable[[kabi.Reply | None, dict], str] = lambda rep, rec: ""
    timeout: float = 5.0
    #: the statuses it may answer with nothing failed (BENCH_RESULT before any BENCH: -ENODATA)
    baseline_ok: tuple = (0,)
    #: the one it did, before the sweep
    expected: int = 0


@dataclass
class Sweep:
    """The sweep's tallies, per request type and in all."""

    steps: int = 0
    injected: dict = field(default_factory=dict)
    enomem: dict = field(default_factory=dict)
    lost_counted: dict = field(default_factory=dict)
    send_failed: dict = field(default_factory=dict)
    sites: dict = field(default_factory=dict)
    #: one letter per step: s (send failed), 0 (answered as with nothing failed), E (-ENOMEM), L (lost,
    #: counted), ! (a problem), after the letter a lower-case x when no site failed (the sweep's end)
    trace: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)


def drain(sock) -> list:
    """Every control message waiting on ``sock`` (replies to no request still waited for are strays)."""
    out = []
    while select.select([sock], [], [], 0)[0]:
        try:
            buf = sock.recv(1 << 17)
        except OSError:
            continue
        out.extend(kabi.decode_reply(m) for m in kabi.parse_datagram(buf)
                   if m.id == (kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL))
    return out


def reply_fail(c) -> int:
    return c.stats().body["ctl_reply_fail"]


def await_outcome(c, sock, seq: int, lost_before: int, timeout: float) -> tuple[list, int]:
    """The replies to ``seq`` and how many more replies the module counted lost, once either shows (or at
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    replies: list = []
    while True:
        if select.select([sock], [], [], 0.05)[0]:
            replies += [r for r in drain(sock) if r.seq == seq]
        lost = reply_fail(c) - lost_before
        if replies or lost or time.monotonic() >= deadline:
            time.sleep(0.05)  # a second reply, if the module sends one, is on the socket by now
            replies += [r for r in drain(sock) if r.seq == seq]
            return replies, lost


def one_step(c, sock, nth_fd: int, req: Request, n: int, seq: int) -> tuple[dict, list, int]:
    """Send ``req`` with its ``n``-th fault site made to fail (none for 0); the step's record, the replies,
    and the send's errno."""
    rec = {"request": req.name, "nth": n}
    strays = drain(sock)
    if strays:
        rec["strays"] = [(r.seq, r.status) for r in strays]
    lost_before = reply_fail(c)
    datagram = kabi.encode_request(req.msg_type, req.body(), seq=seq)
    os.pwrite(nth_fd, str(n).encode(), 0)
    try:
        sock.send(datagram)
        send_errno = 0
    except OSError as e:
        send_errno = e.errno
    left = int(os.pread(nth_fd, 32, 0) or b"0")
    os.pwrite(nth_fd, b"0", 0)
    rec["injected"] = n > 0 and left == 0
    if send_errno:
        rec["send_errno"] = errno.errorcode.get(send_errno, send_errno)
        replies, lost = await_outcome(c, sock, seq, lost_before, 0.2)
    else:
        replies, lost = await_outcome(c, sock, seq, lost_before, req.timeout)
    rec["replies"] = [r.status for r in replies]
    rec["lost"] = lost
    return rec, replies, send_errno


def judge(req: Request, rec: dict, replies: list, send_errno: int) -> str:
    """What is wrong with one step's outcome ("" when nothing is)."""
    if rec.get("strays"):
        return "replies to no request waiting"
    if send_errno:
        if replies or rec["lost"]:
            return "a request whose send failed was answered"
        return req.after(None, rec)
    if len(replies) > 1:
        return f"{len(replies)} replies to one request"
    if not replies:
        return req.after(None, rec) if rec["lost"] == 1 else f"no reply, and {rec['lost']} counted lost"
    if rec["lost"]:
        return "a reply arrived and was also counted lost"
    rep = replies[0]
    if rep.status not in (req.expected, -errno.ENOMEM):
        return f"status {rep.error_name} (expected {req.expected} or -ENOMEM)"
    if not rec["injected"] and rep.status != req.expected:
        return f"{rep.error_name} with no allocation failed"
    return req.after(rep, rec)


def step_letter(rec: dict) -> str:
    if rec["problem"]:
        letter = "!"
    elif "send_errno" in rec:
        letter = "s"
    elif not rec["replies"]:
        letter = "L"
    else:
        letter = "E" if rec["replies"][0] == -errno.ENOMEM else "0"
    return letter + ("" if rec["injected"] else "x")


def sweep_request(c, sock, nth_fd: int, req: Request, out: Sweep, seq0: int) -> None:
    """Sweep ``req`` over its fault sites, from the first until one more than it reaches; again (at most
    :data:`ROUNDS` in all) while none of its steps answered -ENOMEM.  Which allocation is the N-th moves a
    little from one send to the next (a slab that needs a new page adds a site; kmemleak's own object is
    one), so one round can step over the module's own allocation."""
    name = req.name
    for key in ("injected", "enomem", "lost_counted", "send_failed"):
        getattr(out, key)[name] = 0
    rec, replies, send_errno = one_step(c, sock, nth_fd, req, 0, seq0)
    if len(replies) == 1 and replies[0].status in req.baseline_ok:
        req.expected = replies[0].status
    rec["problem"] = judge(req, rec, replies, send_errno) or ("" if replies else "no reply with nothing failed")
    if rec["problem"]:
        out.problems.append(rec)
        return
    seq, problems_before = seq0, len(out.problems)
    for _round in range(ROUNDS):
        if out.enomem[name] or len(out.problems) > problems_before:
            return
        if out.trace.get(name):
            out.trace[name] += "|"
        for n in range(1, MAX_SITES + 1):
            seq += 1
            rec, replies, send_errno = one_step(c, sock, nth_fd, req, n, seq)
            rec["problem"] = judge(req, rec, replies, send_errno)
            out.steps += 1
            out.injected[name] += rec["injected"]
            out.enomem[name] += -errno.ENOMEM in rec["replies"]
            out.lost_counted[name] += rec["lost"] == 1 and not rec["replies"]
            out.send_failed[name] += "send_errno" in rec
            out.trace[name] = out.trace.get(name, "") + step_letter(rec)
            if rec["problem"]:
                out.problems.append(rec)
            if not rec["injected"]:
                out.sites[name] = n - 1
                break
        else:
            out.problems.append({"request": name, "problem": f"more than {MAX_SITES} fault sites"})


# ------------------------------------------------------------------ the request types and their aftermath

def _echo_body() -> bytes:
    return kabi.ECHO.pack(user_ns=7, data_len=8) + b"sweep-01"


def _echo_after(rep, rec) -> str:
    if rep is None or rep.status:
        return ""
    return "" if rep.body.get("data") == b"sweep-01" else "wrong echo data"


def _gen_start_body() -> bytes:
    return kabi.gen_start_body(gen_id=SWEEP_GEN_ID, idx=GEN_IDX, val=GEN_VAL, group=GROUP, count=GEN_COUNT,
                               rate=0, cpu_mask=1, size_min=32, size_max=32, context="kthread", path="cbus")


def _gen_run(c) -> tuple:
    r = c.gen_stats(SWEEP_GEN_ID)
    return r.body["start_ns"], r.body["state"], r.body["cfg"]["count"]


def _wait_done(c, timeout=30.0):
    """GEN_STATS of the sweep's generator once it no longer runs (or at ``timeout``)."""
    def finished():
        r = c.gen_stats(SWEEP_GEN_ID)
        return r if r.body["state"] != kabi.CNLAB_GEN_RUNNING else None

    return kabi.wait_until(finished, timeout, pause=0.02) or c.gen_stats(SWEEP_GEN_ID)


def gen_start_request(c) -> Request:
    """GEN_START of a 20-message kthread generator on CPU 0: started (status 0, or -ENOMEM when only its reply
    could not be allocated) it runs to its count; refused, the previous run stays as it was."""
    state = {"before": None}

    def body() -> bytes:
        state["before"] = _gen_run(c)
        return _gen_start_body()

    def after(rep, rec) -> str:
        done = _wait_done(c)
        started = done.body["start_ns"] != state["before"][0]
        rec["started"] = started
        if rep is not None and rep.status == 0 and not started:
            return "GEN_START answered 0 and started nothing"
        if started:
            generated = sum(cpu["generated"] for cpu in done.body["cpus"])
            if done.body["state"] != kabi.CNLAB_GEN_DONE or generated != GEN_COUNT:
                return f"the started run ended {done.body['state']} with {generated} of {GEN_COUNT} generated"
        elif _gen_run(c) != state["before"]:
            return "a refused GEN_START changed the previous run"
        return ""

    return Request("GEN_START", kabi.CNLAB_MSG_GEN_START, body, after, timeout=10.0)


def set_fault_request(c) -> Request:
    """SET_FAULT of the queue limit to the value it has: whatever fails, the limit stays."""
    limit = c.stats().body["queue_limit"]

    def after(rep, rec) -> str:
        now = c.stats().body["queue_limit"]
        if now != limit:
            return f"queue limit {limit} -> {now}"
        if rep is not None and rep.status == 0 and rep.body.get("value") != limit:
            return f"SET_FAULT gave back {rep.body.get('value')}, not {limit}"
        return ""

    return Request("SET_FAULT", kabi.CNLAB_MSG_SET_FAULT,
                   lambda: kabi.FAULT.pack(op=kabi.CNLAB_FAULT_QLIMIT, value=limit), after)


def requests(c) -> list[Request]:
    """The request types swept: each one the module answers with a reply it allocates itself."""
    return [Request("ECHO", kabi.CNLAB_MSG_ECHO, _echo_body, _echo_after),
            Request("STATS", kabi.CNLAB_MSG_STATS, lambda: kabi.STATS_REQ.pack(flags=0)),
            Request("GEN_STATS", kabi.CNLAB_MSG_GEN_STATS, lambda: kabi.GEN_STATS_REQ.pack(gen_id=SWEEP_GEN_ID)),
            Request("BENCH_RESULT", kabi.CNLAB_MSG_BENCH_RESULT, lambda: b"", baseline_ok=(0, -errno.ENODATA)),
            set_fault_request(c), gen_start_request(c)]


def unavailable() -> str:
    """Why this kernel cannot run the sweep ("" when it can)."""
    if not os.path.exists(FAIL_NTH):
        return "no fail-nth (CONFIG_FAULT_INJECTION)"
    if not os.path.isdir(f"{fault_knobs.DEBUGFS}/failslab"):
        return "no failslab in debugfs (CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS)"
    return ""


def sweep(c) -> dict:
    """Run the sweep on control client ``c`` (used for STATS and GEN_STATS between the steps); a result."""
    why = unavailable()
    if why:
        return {"ok": True, "skipped": why}
    out = Sweep()
    t0 = time.monotonic()
    with fault_knobs.knobs_set(KNOBS), kabi.open_socket() as sock:
        nth_fd = os.open(FAIL_NTH, os.O_RDWR)
        try:
            for index, req in enumerate(requests(c)):
                sweep_request(c, sock, nth_fd, req, out, seq0=(index + 1) << 16)
        finally:
            os.pwrite(nth_fd, b"0", 0)
            os.close(nth_fd)
    unproven = sorted(name for name in out.injected if not out.injected[name] or not out.enomem[name])
    ok = not out.problems and not unproven
    return {"ok": ok, "steps": out.steps, "seconds": round(time.monotonic() - t0, 1), "sites": out.sites,
            "injected": out.injected, "enomem": out.enomem, "lost_counted": out.lost_counted,
            "send_failed": out.send_failed, "trace": out.trace, "unproven": unproven, "problems": out.problems[:8]}
