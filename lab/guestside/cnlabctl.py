#!/usr/bin/env python3
"""cnlabctl: the lab module's control connector from a guest shell (docs/cnlabctl.md).

Installed in every guest with the other guest programs (``/run/cnlab/py``), on ``PATH`` as
``/usr/local/bin/cnlabctl``.  Every subcommand has ``--help``::

    cnlabctl echo [TEXT]                       round trip through the module's control callback
    cnlabctl stats [--cpus] [--reset-hwm] [--json]
    cnlabctl start [--id N] [--rate R] [--count N | --seconds S] [--path cbus|direct] [--context C] ...
    cnlabctl stop ID|all
    cnlabctl gen ID [--json]                   one generator's state and per-CPU counts
    cnlabctl fault [KNOB VALUE|default]        show or set stall-ms, alloc-nth, queue-limit, warn
    cnlabctl watch [GROUP...] [--seconds S] [--interval I] [--count N] [--json]

Exit status: 0 done; 1 the module refused a request, did not answer, or is not loaded; 2 bad input.
Standard library and ``kabi`` (beside this file) only.
"""

import argparse
import errno
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import kabi  # noqa: E402

MODULE_DIR = "/sys/module/cnlab"
KNOBS = {"stall-ms": kabi.CNLAB_FAULT_STALL_MS, "alloc-nth": kabi.CNLAB_FAULT_ALLOC_NTH,
         "queue-limit": kabi.CNLAB_FAULT_QLIMIT, "warn": kabi.CNLAB_FAULT_WARN}
#: STATS reply fields that show each knob's value now
KNOB_FIELDS = {"stall-ms": "stall_ms", "alloc-nth": "alloc_fail_nth", "queue-limit": "queue_limit"}
STATE_NAMES = {kabi.CNLAB_GEN_IDLE: "idle", kabi.CNLAB_GEN_RUNNING: "running", kabi.CNLAB_GEN_DONE: "done",
               kabi.CNLAB_GEN_STOPPED: "stopped"}
STATS_COLUMNS = ("online", "inserted", "sent", "drop_full", "drop_nomem", "drop_nolistener", "drop_overrun",
                 "drop_nlerr", "rejected", "queued", "hwm", "enqueued", "dequeued")
STATS_HEADS = ("online", "inserted", "sent", "full", "nomem", "nolisten", "overrun", "nlerr", "rejected", "queued",
               "hwm", "enqueued", "dequeued")
GEN_COLUMNS = ("generated", "ok", "err_nolistener", "err_overrun", "err_nomem", "err_full", "err_other")
GEN_HEADS = ("generated", "ok", "nolisten", "overrun", "nomem", "full", "other")
DEFAULT_IDX, DEFAULT_VAL, DEFAULT_GROUP = 0x3E, 1, 2
ALL_CPUS = (1 << 64) - 1


class CtlError(Exception):
    """A request the module refused or did not answer (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int(text):
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _count(text):
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _sizes(text):
    lo, sep, hi = text.partition("-")
    lo_v, hi_v = _count(lo), _count(hi) if sep else _count(lo)
    if not kabi.EVENT.size <= lo_v <= hi_v <= kabi.CNLAB_PAYLOAD_MAX:
        raise argparse.ArgumentTypeError(f"sizes must satisfy {kabi.EVENT.size} <= MIN <= MAX <= "
                                         f"{kabi.CNLAB_PAYLOAD_MAX}, got {text!r}")
    return lo_v, hi_v


def _cpu_mask(text):
    if text == "all":
        return ALL_CPUS
    mask = 0
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        first, last = _count(lo), _count(hi) if sep else _count(lo)
        if first > last or last >= kabi.CNLAB_MAX_CPUS:
            raise argparse.ArgumentTypeError(f"CPU list like 0,2-3 or all (CPUs 0..{kabi.CNLAB_MAX_CPUS - 1}), "
                                             f"got {text!r}")
        for cpu in range(first, last + 1):
            mask |= 1 << cpu
    return mask


def _group(text):
    value = _int(text)
    if not kabi.CNLAB_GROUP_MIN <= value <= kabi.CNLAB_GROUP_MAX:
        raise argparse.ArgumentTypeError(f"a connector group is {kabi.CNLAB_GROUP_MIN}..{kabi.CNLAB_GROUP_MAX}, "
                                         f"got {text!r}")
    return value


def _gen_id(text):
    if text == "all":
        return kabi.CNLAB_GEN_ALL
    value = _count(text)
    if value >= kabi.CNLAB_MAX_GENS:
        raise argparse.ArgumentTypeError(f"a generator id is 0..{kabi.CNLAB_MAX_GENS - 1}, got {text!r}")
    return value


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value


def build_parser():
    p = _Parser(prog="cnlabctl", description="Talk to the cnlab module's control connector (docs/cnlabctl.md).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    e = sub.add_parser("echo", help="round trip through the module (ECHO)",
                       description="Send ECHO with TEXT; print the bytes back, the CPU and the round trip.")
    e.add_argument("text", nargs="?", default="", help="data to send (at most 1024 bytes)")

    s = sub.add_parser("stats", help="CBUS statistics and knobs (STATS)",
                       description="Print the module's knobs and the CBUS totals (STATS).")
    s.add_argument("--cpus", action="store_true", help="a row per CPU before the total")
    s.add_argument("--reset-hwm", action="store_true",
                   help="restart every CPU's high-water mark first (STATS_F_RESET_HWM; root)")
    s.add_argument("--json", action="store_true", help="the reply as one JSON object")

    g = sub.add_parser("start", help="start a generator (GEN_START)",
                       description="Start one of the module's generators (GEN_START); prints its id.")
    g.add_argument("--id", type=_gen_id, default=None, help="generator id 0..15 (default: the lowest not running)")
    g.add_argument("--rate", type=_count, default=1000, help="messages per second per CPU (0: as fast as it can; "
                                                              "with --bursts: bursts per second) (default 1000)")
    ends = g.add_mutually_exclusive_group()
    ends.add_argument("--count", type=_count, default=None, help="messages per CPU (default 1000)")
    ends.add_argument("--seconds", type=_positive, default=None, help="run this long instead of a count")
    g.add_argument("--path", choices=sorted(kabi.PATH_NAMES), default="cbus", help="cbus or direct (default cbus)")
    g.add_argument("--context", choices=sorted(kabi.CTX_NAMES), default="kthread",
                   help="where it runs (default kthread)")
    g.add_argument("--size", type=_sizes, default=(kabi.EVENT.size, kabi.EVENT.size), metavar="MIN[-MAX]",
                   help=f"payload bytes (default {kabi.EVENT.size})")
    g.add_argument("--cpus", type=_cpu_mask, default=ALL_CPUS, metavar="LIST",
                   help="CPUs to run on: 0,2-3 or all (default all online)")
    g.add_argument("--group", type=_group, default=DEFAULT_GROUP, help=f"connector group (default {DEFAULT_GROUP})")
    g.add_argument("--idx", type=_count, default=DEFAULT_IDX, help=f"connector idx (default {DEFAULT_IDX:#x})")
    g.add_argument("--val", type=_count, default=DEFAULT_VAL, help=f"connector val (default {DEFAULT_VAL})")
    g.add_argument("--burst", type=_count, default=0, help="messages per wake-up (0: the module's default)")
    g.add_argument("--bursts", action="store_true", help="burst mode: --burst messages back to back --rate "
                                                         "times a second")
    g.add_argument("--bundle", action="store_true", help="let CBUS bundle the messages (cbus path only)")
    g.add_argument("--json", action="store_true", help="the effective config as one JSON object")

    t = sub.add_parser("stop", help="stop a generator or all (GEN_STOP)",
                       description="Stop generator ID, or every generator (all); prints each one's counts.")
    t.add_argument("id", type=_gen_id, metavar="ID|all")

    st = sub.add_parser("gen", help="one generator's state and counts (GEN_STATS)",
                        description="Print generator ID's state, config and per-CPU counts (GEN_STATS).")
    st.add_argument("id", type=_gen_id, metavar="ID")
    st.add_argument("--json", action="store_true", help="the reply as one JSON object")

    f = sub.add_parser("fault", help="show or set a fault knob (SET_FAULT)",
                       description="Without arguments: print the knobs. KNOB VALUE: set one (SET_FAULT; root); "
                                   "VALUE 'default' puts queue-limit back to the module parameter, the others to "
                                   "0. warn needs debug_warn=1 and takes no VALUE.")
    f.add_argument("knob", nargs="?", choices=sorted(KNOBS), help="stall-ms, alloc-nth, queue-limit or warn")
    f.add_argument("value", nargs="?", default=None, help="a whole number, or default")

    w = sub.add_parser("watch", help="watch connector groups live",
                       description="Join GROUPs and print, every --interval, the messages received, the rate, "
                                   "sequence gaps in the module's generator streams, ENOBUFS errors and other "
                                   "messages; a total at the end (Ctrl-C, --seconds or --count).")
    w.add_argument("groups", nargs="*", type=_group, metavar="GROUP", help=f"groups (default {DEFAULT_GROUP})")
    w.add_argument("--seconds", type=_positive, default=None, help="stop after this long")
    w.add_argument("--count", type=_count, default=None, help="stop after this many messages")
    w.add_argument("--interval", type=_positive, default=1.0, help="seconds between lines (default 1)")
    w.add_argument("--rcvbuf", type=_count, default=1 << 21, help="receive buffer in bytes (default 2 MiB)")
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


# ---------------------------------------------------------------- replies
def _reply(rep, what):
    if not rep.ok:
        raise CtlError(f"{what} refused: {rep.error_name} ({rep.status})")
    return rep.body


def _request(call, what, *args, **kwargs):
    try:
        rep = call(*args, **kwargs)
    except TimeoutError:
        raise CtlError(f"no reply to {what} (is the cnlab module loaded?)") from None
    return _reply(rep, what)


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _table(heads, rows, first="cpu"):
    """Right-aligned columns; ``rows`` are (label, values)."""
    widths = [max(len(h), *(len(str(r[1][i])) for r in rows)) for i, h in enumerate(heads)]
    label = max(len(first), *(len(str(r[0])) for r in rows))
    lines = [f"{first:<{label}} " + " ".join(f"{h:>{widths[i]}}" for i, h in enumerate(heads))]
    for name, values in rows:
        lines.append(f"{str(name):<{label}} " + " ".join(f"{v:>{widths[i]}}" for i, v in enumerate(values)))
    return lines


def format_stats(body, per_cpu=False):
    """The STATS reply as text: the knobs, a CBUS table (per CPU and total) and the ledger's verdict."""
    lines = [f"queue_limit {body['queue_limit']}  alloc_nth {body['alloc_fail_nth']}  stall_ms {body['stall_ms']}  "
             f"ctl_requests {body['ctl_requests']}  ctl_errors {body['ctl_errors']}  "
             f"ctl_reply_fail {body['ctl_reply_fail']}"]
    rows = [(c["cpu"], [c[k] for k in STATS_COLUMNS]) for c in body["cpus"]] if per_cpu else []
    total = dict(body["total"], online=sum(c["online"] for c in body["cpus"]))
    rows.append(("total", [total[k] for k in STATS_COLUMNS]))
    lines += _table(STATS_HEADS, rows)
    problems = kabi.ledger_problems(body["total"])
    lines.append("ledger ok" if not problems else "ledger: " + "; ".join(problems) + " (in flight, or lost)")
    return "\n".join(lines)


def format_gen(body):
    """A GEN_STATS reply as text: one summary line and a per-CPU table with a total."""
    cfg = body["cfg"]
    path = {v: k for k, v in kabi.PATH_NAMES.items()}.get(cfg["path"], cfg["path"])
    ctx = {v: k for k, v in kabi.CTX_NAMES.items()}.get(cfg["context"], cfg["context"])
    ran = (body["end_ns"] or time.monotonic_ns()) - body["start_ns"] if body["start_ns"] else 0
    head = (f"generator {body['gen_id']}: {STATE_NAMES.get(body['state'], body['state'])}  {path}/{ctx}  "
            f"id {cfg['idx']:#x}:{cfg['val']} group {cfg['group']}  rate {cfg['rate']}/s  "
            f"cpus {cfg['cpu_mask']:#x}  active {body['active']}  ran {ran / 1e9:.3f} s")
    cpus = [c for c in body["cpus"] if c["generated"] or cfg["cpu_mask"] & (1 << c["cpu"])]
    rows = [(c["cpu"], [c[k] for k in GEN_COLUMNS]) for c in cpus]
    rows.append(("total", [sum(c[k] for c in cpus) for k in GEN_COLUMNS]))
    return "\n".join([head, *_table(GEN_HEADS, rows)])


def knob_values(stats_body):
    """The knobs as STATS shows them (warn has no value to show)."""
    return {knob: stats_body[field] for knob, field in KNOB_FIELDS.items()}


def knob_default(knob, module_dir=MODULE_DIR):
    if knob != "queue-limit":
        return 0
    try:
        with open(f"{module_dir}/parameters/queue_limit") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        raise CtlError("cannot read the module's queue_limit parameter for 'default'") from None


# ---------------------------------------------------------------- commands
def cmd_echo(client, args, out):
    data = args.text.encode()
    if len(data) > kabi.CNLAB_ECHO_MAX_DATA:
        raise CtlError(f"echo: at most {kabi.CNLAB_ECHO_MAX_DATA} bytes, got {len(data)}")
    sent = time.monotonic_ns()
    body = _request(client.echo, "ECHO", data)
    rtt_us = (time.monotonic_ns() - sent) / 1000
    back = body["data"]
    print(f"echo: {len(back)} bytes back from CPU {body['cpu']} in {rtt_us:.0f} us"
          f"{'' if back == data else ' (DIFFERENT DATA)'}", file=out)
    return 0 if back == data else 1


def cmd_stats(client, args, out):
    body = _request(client.stats, "STATS", reset_hwm=args.reset_hwm)
    print(json.dumps(_jsonable(body), sort_keys=True) if args.json else format_stats(body, args.cpus), file=out)
    return 0


def _free_gen(client):
    for gid in range(kabi.CNLAB_MAX_GENS):
        if _request(client.gen_stats, "GEN_STATS", gid)["state"] != kabi.CNLAB_GEN_RUNNING:
            return gid
    raise CtlError(f"all {kabi.CNLAB_MAX_GENS} generators are running: stop one first")


def start_config(args, gen_id):
    """The GEN_START fields for ``start``'s arguments."""
    flags = kabi.CNLAB_GEN_F_BUNDLE if args.bundle else 0
    count = args.count if args.count is not None else (0 if args.seconds else 1000)
    return {"gen_id": gen_id, "idx": args.idx, "val": args.val, "group": args.group, "count": count,
            "duration_ns": int(args.seconds * 1e9) if args.seconds else 0, "cpu_mask": args.cpus,
            "rate": args.rate, "size_min": args.size[0], "size_max": args.size[1],
            "context": args.context, "path": args.path, "flags": flags, "burst": args.burst}


def cmd_start(client, args, out):
    gen_id = args.id if args.id is not None else _free_gen(client)
    if gen_id == kabi.CNLAB_GEN_ALL:
        raise CtlError("start: give one generator id, not all")
    body = _request(client.gen_start, "GEN_START", bursts=args.bursts, **start_config(args, gen_id))
    if args.json:
        print(json.dumps(body, sort_keys=True), file=out)
    else:
        print(f"started generator {gen_id}: {args.path}/{args.context} id {args.idx:#x}:{args.val} group "
              f"{args.group} rate {body['rate']}/s cpus {body['cpu_mask']:#x} burst {body['burst']}", file=out)
    return 0


def cmd_stop(client, args, out):
    _request(client.gen_stop, "GEN_STOP", args.id)
    ids = range(kabi.CNLAB_MAX_GENS) if args.id == kabi.CNLAB_GEN_ALL else [args.id]
    for gid in ids:
        body = _request(client.gen_stats, "GEN_STATS", gid)
        if body["state"] != kabi.CNLAB_GEN_IDLE:
            print(format_gen(body), file=out)
    return 0


def cmd_gen(client, args, out):
    if args.id == kabi.CNLAB_GEN_ALL:
        raise CtlError("gen: give one generator id, not all")
    body = _request(client.gen_stats, "GEN_STATS", args.id)
    print(json.dumps(_jsonable(body), sort_keys=True) if args.json else format_gen(body), file=out)
    return 0


def cmd_fault(client, args, out, module_dir=MODULE_DIR):
    if args.knob is None:
        knobs = knob_values(_request(client.stats, "STATS"))
        print("  ".join(f"{k} {v}" for k, v in knobs.items()), file=out)
        return 0
    if args.knob == "warn":
        if args.value is not None:
            raise CtlError("fault warn takes no value")
        value = kabi.CNLAB_WARN_MAGIC
    elif args.value is None:
        raise CtlError(f"fault {args.knob}: give a VALUE (a whole number, or default)")
    elif args.value == "default":
        value = knob_default(args.knob, module_dir)
    else:
        try:
            value = int(args.value, 0)
        except ValueError:
            raise CtlError(f"fault {args.knob}: VALUE must be a whole number or default, got {args.value!r}") from None
    try:
        body = _request(client.fault, f"SET_FAULT {args.knob}", KNOBS[args.knob], value)
    except CtlError as exc:
        if args.knob == "warn" and "ENOTSUP" in str(exc):
            raise CtlError(f"{exc}: write 1 to {module_dir}/parameters/debug_warn first") from None
        raise
    if args.knob == "warn":
        print("warn: the module WARNed (see dmesg)", file=out)
    else:
        print(f"{args.knob} {value} (was {body['value']})", file=out)
    return 0


class Watch:
    """Counts of a watch: messages, the module's generator streams' gaps, ENOBUFS, other messages."""

    def __init__(self):
        self.received = self.gaps = self.enobufs = self.other = 0
        self.next = {}

    def event(self, ev, _now):
        gen_id, cpu, seq = ev[0], ev[1], ev[2]
        self.received += 1
        nxt = self.next.get((gen_id, cpu))
        if nxt is not None and seq > nxt:
            self.gaps += seq - nxt
        if nxt is None or seq >= nxt:
            self.next[(gen_id, cpu)] = seq + 1

    def on_other(self, *_):
        self.received += 1
        self.other += 1


def watch_line(t, w, last, interval, as_json):
    per_s = (w.received - last) / interval if interval > 0 else 0.0
    if as_json:
        return json.dumps({"t": round(t, 3), "received": w.received, "per_s": round(per_s, 1), "gaps": w.gaps,
                           "enobufs": w.enobufs, "other": w.other})
    return f"{t:7.1f} {w.received:10d} {per_s:9.0f} {w.gaps:6d} {w.enobufs:8d} {w.other:6d}"


def cmd_watch(args, out, open_socket=kabi.open_socket, clock=time.monotonic):
    groups = args.groups or [DEFAULT_GROUP]
    sock = open_socket(groups, args.rcvbuf)
    w = Watch()
    buf = bytearray(1 << 17)
    start = clock()
    next_line, last = start + args.interval, 0
    if not args.json:
        print(f"watching group{'s' if len(groups) > 1 else ''} {','.join(map(str, groups))} "
              "(Ctrl-C to stop)", file=out)
        print(f"{'t_s':>7} {'received':>10} {'per_s':>9} {'gaps':>6} {'enobufs':>8} {'other':>6}", file=out)
    out.flush()
    try:
        while True:
            now = clock()
            if args.seconds is not None and now - start >= args.seconds:
                break
            if args.count is not None and w.received >= args.count:
                break
            if now >= next_line:
                print(watch_line(now - start, w, last, args.interval, args.json), file=out)
                out.flush()
                last, next_line = w.received, next_line + args.interval
                continue
            wait = next_line - now
            if args.seconds is not None:
                wait = min(wait, start + args.seconds - now)
            try:
                ready = select.select([sock], [], [], max(wait, 0))[0]
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                n = sock.recv_into(buf)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    w.enobufs += 1
                    continue
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    continue
                raise
            kabi.walk_datagram(buf, n, 0, w.event, w.on_other)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    elapsed = clock() - start
    summary = {"total": w.received, "seconds": round(elapsed, 3), "gaps": w.gaps, "enobufs": w.enobufs,
               "other": w.other, "streams": len(w.next)}
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        print(f"total: {w.received} received in {elapsed:.1f} s, {w.gaps} gaps, {w.enobufs} enobufs, "
              f"{w.other} other messages, {len(w.next)} streams", file=out)
    return 0


COMMANDS = {"echo": cmd_echo, "stats": cmd_stats, "start": cmd_start, "stop": cmd_stop, "gen": cmd_gen,
            "fault": cmd_fault}


def main(argv=None, out=None, client_factory=None, open_socket=None, module_dir=MODULE_DIR):
    """Run one cnlabctl command; returns the exit status (0, 1 refused or no answer, 2 bad input)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.command == "watch":
            return cmd_watch(args, out, **({"open_socket": open_socket} if open_socket else {}))
        if client_factory is None and not os.path.isdir(module_dir):
            raise CtlError(f"the cnlab module is not loaded ({module_dir} is missing)")
        client = (client_factory or kabi.CtlClient)()
        try:
            if args.command == "fault":
                return cmd_fault(client, args, out, module_dir)
            return COMMANDS[args.command](client, args, out)
        finally:
            client.close()
    except CtlError as exc:
        print(f"cnlabctl: error: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"cnlabctl: error: {exc.strerror} (root needed)", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"cnlabctl: error: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
