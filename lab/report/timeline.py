"""The flight recorder's timeline: the last milliseconds of a failed scenario's trace as inline SVG.

One lane per CPU.  In each lane, from top to bottom:

* what ran: a bar per task from ``sched_switch`` to ``sched_switch`` (the CBUS drain threads ``cbus/N`` in
  light blue, other tasks in purple, idle left blank), the task's name on bars wide enough;
* CBUS: drains as dark blue spans (``cnlab_drain_start`` to ``cnlab_drain_end``), inserts as green ticks
  (one per pixel column, the count in its tooltip), sends as blue dots (red when the send failed), drops
  as red marks;
* interrupts: hard IRQ handlers (``irq_handler_entry``/``exit``) in red, softirqs in orange, wake-ups as
  grey ticks.

The right edge is the end of the recording (the recorder's stop mark) or the failure's time when known
(a kernel report's console timestamp: printk and the buffer share the ``local`` clock).  Everything is drawn
per pixel column or span, so the element count is bounded by the width times the lanes, whatever the rate.
"""

from __future__ import annotations

import html
from collections import defaultdict

from lab.report.ftrace import Trace, TraceEvent

__all__ = ["timeline_svg", "COLOURS", "DEFAULT_WINDOW_MS"]

#: The last milliseconds shown.
DEFAULT_WINDOW_MS = 20.0
COLOURS = {"cbus_task": "#54aeff", "task": "#8250df", "drain": "#0550ae", "insert": "#1a7f37",
           "send": "#0969da", "send_fail": "#cf222e", "drop": "#cf222e", "irq": "#cf222e", "softirq": "#bc4c00",
           "wakeup": "#8c959f", "end": "#24292f"}
WIDTH, LEFT, RIGHT, LANE, TOP = 760, 64, 16, 64, 40
_ROWS = {"task": (4, 16), "drain": (22, 7), "insert": (31, 7), "send": (40, 6), "irq": (49, 9)}


def _esc(value: object) -> str:
    return html.escape(str(value))


def _spans(events: list[TraceEvent], start: str, end: str, key, t0: float, t1: float):
    """(begin, end, label) spans from ``start`` to ``end`` events matched by ``key``; one open at the window's
    edge is cut there."""
    open_: dict = {}
    out = []
    for e in events:
        if e.name == start:
            open_[key(e)] = e
        elif e.name == end:
            begin = open_.pop(key(e), None)
            out.append((begin.ts if begin else t0, e.ts, begin or e))
    out += [(b.ts, t1, b) for b in open_.values()]
    return out


def timeline_svg(trace: Trace, end: float | None = None, window_ms: float = DEFAULT_WINDOW_MS,
                 title: str = "flight recorder") -> str:
    """The SVG of the ``window_ms`` milliseconds of ``trace`` up to ``end`` (default: the recording's end)."""
    end = trace.end() if end is None else end
    if end is None:
        return f"<p>{_esc(title)}: the trace holds no events</p>"
    t0 = end - window_ms / 1000
    shown = trace.window(end, window_ms)
    cpus = sorted({e.cpu for e in shown} | set(trace.cpus))
    height = TOP + LANE * len(cpus) + 50
    span_w = WIDTH - LEFT - RIGHT

    def x(ts: float) -> float:
        return LEFT + span_w * min(max(ts - t0, 0.0), window_ms / 1000) / (window_ms / 1000)

    by_cpu: dict[int, list[TraceEvent]] = defaultdict(list)
    for e in shown:
        by_cpu[e.cpu].append(e)
    counts = defaultdict(int)
    for e in shown:
        counts[e.name] += 1
    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "no events"
    parts = [f'<svg class="timeline" width="{WIDTH}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{LEFT}" y="16">{_esc(title)}: the last {window_ms:g} ms</text>',
             f'<text x="{LEFT}" y="30" font-size="11"><title>{_esc(summary)}</title>{len(shown)} events '
             f'in the window</text>']
    # the task running on each CPU at the window's start: the last switch before it
    running: dict[int, TraceEvent] = {}
    for e in trace.events:
        if e.ts >= t0:
            break
        if e.name == "sched_switch":
            running[e.cpu] = e
    for lane, cpu in enumerate(cpus):
        y0 = TOP + LANE * lane
        parts.append(f'<text x="4" y="{y0 + 14}" font-size="11">CPU {cpu}</text>'
                     f'<line x1="{LEFT}" y1="{y0 + LANE - 2}" x2="{WIDTH - RIGHT}" y2="{y0 + LANE - 2}" '
                     'stroke="#ddd"/>')
        events = by_cpu.get(cpu, [])
        parts += _task_bars(events, running.get(cpu), t0, end, x, y0)
        parts += _pair_bars(events, "cnlab_drain_start", "cnlab_drain_end", lambda e: e.cpu, t0, end, x,
                            y0 + _ROWS["drain"][0], _ROWS["drain"][1], COLOURS["drain"], "drain")
        parts += _pair_bars(events, "irq_handler_entry", "irq_handler_exit", lambda e: e.fields.get("irq"), t0,
                            end, x, y0 + _ROWS["irq"][0], _ROWS["irq"][1], COLOURS["irq"], "irq")
        parts += _pair_bars(events, "softirq_entry", "softirq_exit", lambda e: e.fields.get("vec"), t0, end, x,
                            y0 + _ROWS["irq"][0], _ROWS["irq"][1], COLOURS["softirq"], "softirq")
        parts += _ticks(events, x, y0)
    x_end, axis = x(end), TOP + LANE * len(cpus) + 4
    parts.append(f'<line x1="{x_end:.1f}" y1="{TOP - 4}" x2="{x_end:.1f}" y2="{axis}" '
                 f'stroke="{COLOURS["end"]}" stroke-dasharray="3 2"/>')
    parts.append(f'<line x1="{LEFT}" y1="{axis}" x2="{WIDTH - RIGHT}" y2="{axis}" stroke="#888"/>')
    for i in range(5):
        ms = window_ms * i / 4
        gx = LEFT + span_w * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(f'<text x="{gx:.1f}" y="{axis + 14}" font-size="10" text-anchor="{anchor}">'
                     f'{ms - window_ms:+.3g} ms</text>')
    parts.append(_legend(height))
    parts.append("</svg>")
    return "".join(parts)


def _task_bars(events: list[TraceEvent], before: TraceEvent | None, t0: float, t1: float, x, y0: int) -> list[str]:
    """A bar per task that ran, from one ``sched_switch`` to the next."""
    out = []
    current, since = (before.fields.get("next_comm"), before.fields.get("next_pid")) if before else (None, None), t0
    switches = [e for e in events if e.name == "sched_switch"]
    for e in switches + [None]:
        until = e.ts if e else t1
        comm, pid = current
        if comm is None and e is not None:  # no switch before the window: the outgoing task ran from its start
            comm, pid = e.fields.get("prev_comm"), e.fields.get("prev_pid")
        if comm and pid != "0" and x(until) - x(since) >= 0.5:
            colour = COLOURS["cbus_task"] if comm.startswith("cbus/") else COLOURS["task"]
            w = x(until) - x(since)
            top, h = _ROWS["task"]
            out.append(f'<rect x="{x(since):.1f}" y="{y0 + top}" width="{w:.1f}" height="{h}" fill="{colour}">'
                       f'<title>{_esc(comm)}-{_esc(pid)} {(until - since) * 1e6:.0f} us</title></rect>')
            if w > 7 * len(comm):
                out.append(f'<text x="{x(since) + 2:.1f}" y="{y0 + top + 12}" font-size="10" fill="#fff">'
                           f'{_esc(comm)}</text>')
        if e is not None:
            current, since = (e.fields.get("next_comm"), e.fields.get("next_pid")), e.ts
    return out


def _pair_bars(events, start: str, end: str, key, t0: float, t1: float, x, y: int, h: int, colour: str,
               what: str) -> list[str]:
    out = []
    for begin, stop, first in _spans(events, start, end, key, t0, t1):
        w = max(x(stop) - x(begin), 1.0)
        out.append(f'<rect x="{x(begin):.1f}" y="{y}" width="{w:.1f}" height="{h}" fill="{colour}">'
                   f'<title>{_esc(what)} {_esc(first.body)} {(stop - begin) * 1e6:.0f} us</title></rect>')
    return out


def _ticks(events: list[TraceEvent], x, y0: int) -> list[str]:
    """Inserts, sends, drops and wake-ups, one mark per pixel column and kind (the count in its tooltip)."""
    columns: dict[tuple[str, int], list[TraceEvent]] = defaultdict(list)
    for e in events:
        kind = {"cnlab_insert": "insert", "cnlab_send": "send", "cnlab_drop": "drop",
                "sched_wakeup": "wakeup"}.get(e.name)
        if kind == "send" and e.fields.get("result", "0").startswith("-"):
            kind = "send_fail"
        if kind:
            columns[(kind, int(x(e.ts)))].append(e)
    out = []
    top = y0 + _ROWS["insert"][0]
    for (kind, col), group in sorted(columns.items()):
        tip = f"{len(group)} {kind}: {group[-1].body}"
        if kind == "insert":
            out.append(f'<rect x="{col}" y="{top}" width="1.5" height="{_ROWS["insert"][1]}" '
                       f'fill="{COLOURS["insert"]}"><title>{_esc(tip)}</title></rect>')
        elif kind in ("send", "send_fail"):
            out.append(f'<circle cx="{col}" cy="{y0 + _ROWS["send"][0] + 3}" r="2.5" fill="{COLOURS[kind]}">'
                       f'<title>{_esc(tip)}</title></circle>')
        elif kind == "drop":
            out.append(f'<path d="M{col - 3},{top}l6,6m0,-6l-6,6" stroke="{COLOURS["drop"]}" '
                       f'stroke-width="2"><title>{_esc(tip)}</title></path>')
        else:
            out.append(f'<line x1="{col}" y1="{y0 + 2}" x2="{col}" y2="{y0 + 6}" stroke="{COLOURS["wakeup"]}">'
                       f'<title>{_esc(tip)}</title></line>')
    return out


def _legend(height: int) -> str:
    items = [("cbus/N ran", "cbus_task"), ("other task", "task"), ("drain", "drain"), ("insert", "insert"),
             ("send", "send"), ("drop", "drop"), ("hard IRQ", "irq"), ("softirq", "softirq")]
    out, lx = [], LEFT
    for label, key in items:
        out.append(f'<rect x="{lx}" y="{height - 10}" width="10" height="8" fill="{COLOURS[key]}"/>'
                   f'<text x="{lx + 13}" y="{height - 2}" font-size="10">{_esc(label)}</text>')
        lx += 18 + 6 * len(label)
    return "".join(out)
