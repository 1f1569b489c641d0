"""An HTML report of a run: summary table, and per scenario its throughput,
loss and latency with the faults marked on the time axis, and for a failed
scenario whose flight recorder kept a trace, a per-CPU timeline of its last
milliseconds (``lab.report.timeline``).

One self-contained file (inline CSS and SVG, no scripts, no network), so it
opens in any browser and can be attached to a CI run.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab.plugin.model import ScenarioResult
from lab.report.ftrace import read_trace
from lab.report.timeline import timeline_svg

__all__ = ["render_html", "write_html", "latency_cdf_plot", "path_label", "PERCENTILE_POINTS"]

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.passed{color:#1a7f37}.failed,.error,.interrupted{color:#cf222e;font-weight:bold}
section{margin-top:2em;border-top:2px solid #eee;padding-top:1em}pre{background:#f6f8fa;padding:8px;overflow:auto;
max-height:24em}svg{background:#fafafa;border:1px solid #ddd}.fault{stroke:#cf222e;stroke-dasharray:4 3}
"""
WIDTH, HEIGHT, PAD = 640, 180, 36


def _esc(value: object) -> str:
    return html.escape(str(value))


def _span(fault: Mapping[str, Any]) -> tuple[float, float]:
    """Where a fault firing sits on the load's time axis: from its start until undone (or its end)."""
    start = max(fault.get("start") or 0.0, 0.0)
    return start, max(fault.get("restored") or fault.get("end") or start, start)


def _plot(title: str, points: list[tuple[float, float]], faults: list[Mapping[str, Any]], colour: str,
          unit: str) -> str:
    """An SVG line plot of (t, value) with fault spans shaded and marked."""
    if not points:
        return f"<p>{_esc(title)}: no data</p>"
    faults = [f for f in faults if f.get("start") is not None]
    t_max = max(max(t for t, _ in points), max((_span(f)[1] for f in faults), default=0), 0.25)
    v_max = max(max(v for _, v in points), 1.0)

    def x(t: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * t / t_max

    def y(v: float) -> float:
        return HEIGHT - PAD + (-(HEIGHT - 2 * PAD) * v / v_max)

    parts = [f'<svg width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{PAD}" y="16">{_esc(title)} ({_esc(unit)}, max {v_max:.0f})</text>'
             if v_max >= 10 else f'<text x="{PAD}" y="16">{_esc(title)} ({_esc(unit)}, max {v_max:.3g})</text>']
    for fault in faults:
        start, end = (x(t) for t in _span(fault))
        if end - start > 1:
            parts.append(f'<rect x="{start:.1f}" y="{PAD}" width="{end - start:.1f}" height="{HEIGHT - 2 * PAD}" '
                         'fill="#cf222e" opacity="0.12"/>')
        parts.append(f'<line class="fault" x1="{start:.1f}" y1="{PAD - 8}" x2="{start:.1f}" y2="{HEIGHT - PAD}"/>')
        parts.append(f'<text x="{start + 3:.1f}" y="{PAD - 10}" font-size="11" fill="#cf222e">'
                     f'{_esc(fault["label"])}</text>')
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
    parts.append(f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#888"/>')
    parts.append(f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="11" text-anchor="end">{t_max:.1f} s</text>')
    parts.append("</svg>")
    return "".join(parts)


#: The latency percentiles a consumer reports (``latency_us``) as points of the CDF: key, fraction, y-axis label.
PERCENTILE_POINTS = (("p50", 0.5, "0.5"), ("p99", 0.99, "0.99"), ("p999", 0.999, "0.999"), ("max", 1.0, "max"))
#: Curve colours by generator path, a shade per scenario (then dashed); other paths in greys and purples.
_PATH_COLOURS = {"cbus": ("#0969da", "#54aeff", "#0550ae", "#218bff", "#033d8b"),
                 "direct": ("#bc4c00", "#fb8f44", "#953800", "#e16f24", "#762c00")}
_OTHER_COLOURS = ("#8250df", "#6e7781", "#1a7f37", "#9a6700", "#bf3989")


def _ms_text(us: float) -> str:
    ms = us / 1000
    return f"{ms:,.0f}" if ms >= 10 else f"{ms:.3g}"


def _cdf_points(latency: Mapping[str, Any]) -> list[tuple[float, int]]:
    """(latency us, row) for each percentile the consumer reported; row i is PERCENTILE_POINTS[i]."""
    return [(float(latency[k]), i) for i, (k, _, _) in enumerate(PERCENTILE_POINTS) if latency.get(k) is not None]


def latency_cdf_plot(title: str, curves: list[tuple[str, str, Mapping[str, Any]]]) -> str:
    """An SVG latency CDF, one curve per ``(label, path, latency_us)``, coloured by path (blues cbus, oranges
    direct), drawn through the consumer's percentile points only: the records hold p50, p99, p99.9 and max, not
    every sample, so the curve joins those points and the page says so.

    x: latency on a log scale; y: the fraction of messages received within it, on a "nines" scale (0.5, 0.99,
    0.999 evenly spaced, then the maximum) so that the tail is visible.
    """
    curves = [(label, path, points) for label, path, lat in curves if (points := _cdf_points(lat))]
    if not curves:
        return f"<p>{_esc(title)}: no latency samples</p>"
    import math

    lo = math.log10(max(min(p[0][0] for _, _, p in curves), 1.0))
    hi = max(math.log10(max(max(p[-1][0] for _, _, p in curves), 1.0)), lo + 1)
    left, right, top, bottom = PAD + 30, WIDTH - PAD, PAD, PAD + 130
    height = bottom + 30 + 14 * len(curves)

    def x(us: float) -> float:
        return left + (right - left) * (math.log10(max(us, 1.0)) - lo) / (hi - lo)

    def y(row: int) -> float:
        return bottom - (bottom - top) * row / (len(PERCENTILE_POINTS) - 1)

    parts = [f'<svg width="{WIDTH}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{PAD}" y="16">{_esc(title)}</text>',
             f'<text x="{PAD}" y="30" font-size="11">through the consumers\' p50, p99, p99.9 and max only; '
             f'log latency axis, nines fraction axis</text>',
             f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#888"/>']
    for row, (_, _, label) in enumerate(PERCENTILE_POINTS):
        parts.append(f'<line x1="{left}" y1="{y(row):.1f}" x2="{right}" y2="{y(row):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y(row) + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for end, anchor in ((lo, "start"), (hi, "end")):  # the axis's ends, then its decades away from them
        parts.append(f'<text x="{x(10 ** end):.1f}" y="{bottom + 14}" font-size="10" text-anchor="{anchor}">'
                     f'{_ms_text(10 ** end)} ms</text>')
    for decade in range(math.ceil(lo), math.floor(hi) + 1):
        gx = x(10 ** decade)
        if min(gx - left, right - gx) < 40:
            continue
        parts.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{bottom}" stroke="#ddd"/>'
                     f'<text x="{gx:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">'
                     f'{10 ** decade / 1000:g} ms</text>')
    seen: dict[str, int] = {}
    for i, (label, path, points) in enumerate(curves):
        n = seen[path] = seen.get(path, -1) + 1
        palette = _PATH_COLOURS.get(path, _OTHER_COLOURS)
        colour = palette[n % len(palette)]
        dash = "" if n < len(palette) else ' stroke-dasharray="5 3"'
        line = " ".join(f"{x(us):.1f},{y(row):.1f}" for us, row in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{line}">'
                     f"<title>{_esc(label)} ({_esc(path)})</title></polyline>")
        for us, row in points:
            parts.append(f'<circle cx="{x(us):.1f}" cy="{y(row):.1f}" r="2.5" fill="{colour}">'
                         f"<title>{_esc(label)}: {PERCENTILE_POINTS[row][0]} {us / 1000:.4g} ms</title></circle>")
        ly = bottom + 32 + 14 * i
        parts.append(f'<line x1="{left}" y1="{ly - 4}" x2="{left + 18}" y2="{ly - 4}" stroke="{colour}" '
                     f'stroke-width="2"{dash}/><text x="{left + 24}" y="{ly}" font-size="11">{_esc(label)} '
                     f"({_esc(path)})</text>")
    parts.append("</svg>")
    return "".join(parts)


def path_label(record: ScenarioResult) -> str:
    """The scenario's generator paths (``metrics.paths``; older records: from the CBUS counters)."""
    metrics = record.metrics or {}
    paths = metrics.get("paths")
    if paths is None:
        inserted, generated = (metrics.get("cbus") or {}).get("inserted") or 0, metrics.get("generated") or 0
        paths = (["cbus"] if inserted else []) + (["direct"] if generated > inserted else [])
    return "+".join(paths) or "no generator"


def _latency_overview(records: list[ScenarioResult]) -> str:
    """Per path (direct, cbus), each scenario's latency CDF; and each scenario's p99 in the order they finished."""
    with_latency = [r for r in records if (r.metrics.get("latency_us") or {}).get("samples")]
    if not with_latency:
        return ""
    out = ['<section id="latency"><h2>latency by path</h2><p>from the kernel\'s timestamp to the consumer\'s '
           "receipt, consumer backlog included. The records carry each consumer's percentiles, not every "
           "sample, so each CDF joins its p50, p99, p99.9 and max points.</p>"]
    ordered = sorted(with_latency, key=lambda r: (path_label(r), r.scenario))
    out.append(latency_cdf_plot("latency CDF by path, every scenario",
                                [(r.scenario, path_label(r), r.metrics["latency_us"]) for r in ordered]))
    out.append("</section>")
    return "".join(out)


def _scenario_section(record: ScenarioResult) -> str:
    metrics = record.metrics
    faults = list(record.faults)
    out = [f'<section id="{_esc(record.scenario)}"><h2>{_esc(record.scenario)} '
           f'<span class="{_esc(record.status)}">{_esc(record.status)}</span></h2>']
    if record.error:
        out.append(f"<p class=error>{_esc(record.error)}</p>")
    out.append("<ul>" + "".join(
        f'<li class="{"passed" if v.ok else "failed"}">{_esc(v.name)}: {_esc(v.detail)}</li>'
        for v in record.verdicts) + "</ul>")
    for name, series in (record.series or {}).items():
        rate = [(row[0], row[1] * 4.0) for row in series]  # 0.25 s bins
        loss = [(row[0], row[2]) for row in series]
        out.append(_plot(f"{name}: delivered", rate, faults, "#0969da", "msgs/s"))
        out.append(_plot(f"{name}: lost (sequence gaps)", loss, faults, "#cf222e", "msgs per 0.25 s"))
        latency_ms = [(row[0], row[3] / 1000) for row in series if len(row) > 3 and row[3] is not None]
        if latency_ms:  # consumers before the latency column (and bins without timestamps) have none
            out.append(_plot(f"{name}: latency over time, largest in each 0.25 s ({path_label(record)})",
                             latency_ms, faults, _PATH_COLOURS.get(path_label(record), _OTHER_COLOURS)[0], "ms"))
    latency = metrics.get("latency_us") or {}
    if latency:
        out.append("<p>latency, kernel timestamp to consumer receipt, consumer backlog included (us): "
                   + ", ".join(f"{k} {_esc(v)}" for k, v in latency.items()) + "</p>")
        idle = metrics.get("idle_latency_us") or {}
        if idle.get("samples"):
            out.append("<p>latency of the messages that reached the consumer with nothing queued, the kernel "
                       "path and the wake-up without the backlog (us): "
                       + ", ".join(f"{k} {_esc(v)}" for k, v in idle.items()) + "</p>")
        if latency.get("samples"):
            out.append(latency_cdf_plot(f"{record.scenario}: latency CDF",
                                        [(record.scenario, path_label(record), latency)]))
    if faults:
        out.append("<p>faults: " + "; ".join(
            f"{_esc(f['label'])} ({_esc(f.get('trigger', ''))}) at {_esc(f.get('start'))} s"
            + (f", delay {_esc(f['delay_ms'])} ms" if f.get("delay_ms") is not None else "")
            + ("" if f.get("ok", True) else " FAILED") for f in faults) + "</p>")
    for report in record.kernel_reports:
        out.append(f"<h3>{_esc(report['kind'])} {_esc(report['fingerprint'])}</h3>")
        decoded = report.get("decoded") or ()
        if decoded:
            out.append('<ul class="decoded">' + "".join(
                f"<li><code>{_esc(f['frame'])}</code> &rarr; <code>{_esc(f['location'])}</code>"
                + (f" (in {_esc(f['source_function'])}, inlined at {_esc(', '.join(f['inlined']))})"
                   if f.get("inlined") else "") + "</li>" for f in decoded) + "</ul>")
        out.append(f"<pre>{_esc(report['excerpt'])}</pre>")
    vmcore = (record.data or {}).get("vmcore")
    if vmcore:
        out.append(f"<p>no vmcore: {_esc(vmcore['skipped'])}</p>" if vmcore.get("skipped") else
                   f"<p>vmcore: <code>{_esc(vmcore.get('path'))}</code> ({_esc(vmcore.get('bytes'))} bytes, written "
                   f"in {_esc(vmcore.get('seconds'))} s; <code>cnlab debug</code> reads it)</p>")
    out.append(_flight_recorder(record))
    out.append("</section>")
    return "".join(out)


def _flight_recorder(record: ScenarioResult) -> str:
    """The kept trace of a failed scenario as a timeline of its last milliseconds (``cnlab_plugins.flightrec``)."""
    kept = ((record.data or {}).get("flightrec") or {}).get("trace")
    if not kept:
        return ""
    head = (f"<h3>flight recorder</h3><p>trace <code>{_esc(kept.get('path'))}</code> ({_esc(kept.get('bytes'))} "
            f"bytes{', its tail' if kept.get('truncated') else ''}; {_esc(kept.get('overwritten'))} older events "
            "overwritten in the ring buffer)</p>")
    try:
        trace = read_trace(Path(kept["path"]))
    except (OSError, KeyError, TypeError) as exc:
        return head + f"<p>the trace cannot be read: {_esc(exc)}</p>"
    end, why = trace.end(), "the recording's end (the scenario stopped)"
    failed_at = kept.get("failure_time")
    if failed_at is not None and trace.events and trace.events[0].ts <= failed_at <= (end or 0):
        end, why = failed_at, f"the kernel report at {failed_at:.6f} s"
    return head + f"<p>up to {_esc(why)}</p>" + timeline_svg(trace, end, title=f"{record.scenario}: per CPU")


def render_html(records: list[ScenarioResult]) -> str:
    """The whole report page for ``records``."""
    env = records[0].env if records else {}
    head = (f"<p>kernel {_esc(env.get('kernel', '?'))}, accelerator {_esc(env.get('accel', '?'))}, "
            f"{_esc(env.get('qemu', '?'))}, module {_esc(env.get('module_source_hash', '?'))}</p>")
    rows = []
    for r in records:
        m = r.metrics
        p99 = (m.get("latency_us") or {}).get("p99", "-")
        lost = m.get("lost")
        rows.append(f'<tr><td><a href="#{_esc(r.scenario)}">{_esc(r.scenario)}</a></td>'
                    f'<td class="{_esc(r.status)}">{_esc(r.status)}</td>'
                    f'<td>{_esc(r.guest.get("cpus", "-"))}</td><td>{_esc(m.get("rate", "-"))}</td>'
                    f'<td>{_esc("-" if lost is None else lost)}</td>'
                    f'<td>{_esc(p99)}</td><td>{_esc(r.duration)}</td></tr>')
    table = ("<table><tr><th>scenario</th><th>status</th><th>vCPUs</th><th>msgs/s</th><th>lost</th>"
             "<th>p99 us</th><th>seconds</th></tr>" + "".join(rows) + "</table>")
    passed = sum(1 for r in records if r.passed)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>cnlab report</title><style>{_CSS}</style>"
            f"</head><body><h1>cnlab: {passed}/{len(records)} passed</h1>{head}{table}{_latency_overview(records)}"
            + "".join(_scenario_section(r) for r in records) + "</body></html>")


def write_html(records: list[ScenarioResult], path: Path) -> None:
    """Write the report page for ``records`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(records), encoding="utf-8")
