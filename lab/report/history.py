"""Many runs side by side: per scenario its pass rate, whether it flips between passing and failing (flaky), and
how its figures (rate, loss, p99 latency, boot, duration) move from run to run.

The input is result folders as ``cnlab run --out DIR`` leaves them (nightly runs: one folder a night), each with a
``results.jsonl``. Runs keep the order given (records carry no clock, and copied folders lose their times):
name nightly folders so that they sort, and a shell glob gives them oldest first. The HTML page is self-contained
like the run report: inline CSS and SVG, no scripts, no network.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lab.engine.results import final_records, read_results
from lab.errors import UsageError
from lab.plugin.model import ScenarioResult
from lab.report.html import _CSS, _esc, latency_cdf_plot, path_label

__all__ = ["FIGURES", "Run", "ScenarioHistory", "load_run", "load_runs", "build_history", "print_history",
           "render_history_html", "write_history_html"]

#: The figures followed over runs: name -> (label, unit, how to read it from a record; None when absent).
FIGURES: dict[str, tuple[str, str]] = {
    "rate": ("delivered rate", "msgs/s"),
    "lost": ("lost", "msgs"),
    "p99_us": ("p99 latency", "us"),
    "boot_s": ("guest boot", "s"),
    "duration": ("scenario time", "s"),
}
#: Statuses that count towards a pass rate (``interrupted`` and ``not run`` say nothing about the scenario).
COUNTED = ("passed", "failed", "error")


def figure(record: ScenarioResult, name: str) -> float | None:
    """One followed figure of ``record``; None when the record does not carry it (no boot: ``boot_s`` 0)."""
    metrics = record.metrics or {}
    if name == "rate":
        value = metrics.get("rate")
    elif name == "lost":
        value = metrics.get("lost")
    elif name == "p99_us":
        value = (metrics.get("latency_us") or {}).get("p99")
    elif name == "boot_s":
        value = record.boot_s or None
    elif name == "duration":
        value = record.duration if record.status in COUNTED else None
    else:
        raise KeyError(name)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Run:
    """One result folder: its label (the folder's name), where it is, and its scenarios' final records."""

    label: str
    path: Path
    records: tuple[ScenarioResult, ...]


@dataclass
class ScenarioHistory:
    """One scenario over the runs; ``statuses[i]`` and ``values[name][i]`` belong to ``runs[i]`` (None: absent)."""

    name: str
    runs: list[str]
    statuses: list[str | None] = field(default_factory=list)
    retried_flaky: list[bool] = field(default_factory=list)
    values: dict[str, list[float | None]] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def counted(self) -> list[str]:
        return [s for s in self.statuses if s in COUNTED]

    @property
    def passed(self) -> int:
        return sum(1 for s in self.counted if s == "passed")

    @property
    def pass_rate(self) -> float | None:
        """Passed over runs that finished it (passed, failed, error); None when none did."""
        return self.passed / len(self.counted) if self.counted else None

    @property
    def flips(self) -> int:
        """How often the outcome changed between consecutive runs that finished it."""
        outcomes = [s == "passed" for s in self.counted]
        return sum(1 for a, b in zip(outcomes, outcomes[1:], strict=False) if a != b)

    @property
    def flaky(self) -> bool:
        """Passed in some runs and not in others, or passed only on a retry in some run."""
        return 0 < self.passed < len(self.counted) or any(self.retried_flaky)

    def trend(self, name: str) -> dict[str, float] | None:
        """first, last, min, median, max of a figure over the runs that carry it, and the latest value's change
        against the median of the earlier ones (percent; absent with fewer than two values or a zero median)."""
        values = [v for v in self.values.get(name, ()) if v is not None]
        if not values:
            return None
        out = {"n": len(values), "first": values[0], "last": values[-1], "min": min(values),
               "median": statistics.median(values), "max": max(values)}
        if len(values) >= 2:
            before = statistics.median(values[:-1])
            if before:
                out["change_pct"] = round(100.0 * (values[-1] - before) / abs(before), 1)
        return out


def load_run(folder: Path) -> Run:
    """The final records of the run in ``folder``.

    :raises UsageError: no such folder, no ``results.jsonl`` in it, a file that is not cnlab results, or none.
    """
    if not folder.is_dir():
        raise UsageError(f"cnlab report --history: no such results folder: {folder}")
    path = folder / "results.jsonl"
    if not path.is_file():
        raise UsageError(f"cnlab report --history: {folder} has no results.jsonl (not a cnlab run --out folder)")
    try:
        records = final_records(read_results(path))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"cnlab report --history: {path}: not a cnlab results file "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cnlab report --history: {path}: cannot read it ({exc})") from None
    if not records:
        has_text = path.stat().st_size > 0 and path.read_text(encoding="utf-8", errors="replace").strip()
        raise UsageError(f"cnlab report --history: {path}: "
                         + ("not a cnlab results file (no line is a JSON record)" if has_text else "holds no results"))
    return Run(folder.name or str(folder), folder, tuple(records))


def load_runs(folders: Sequence[Path]) -> list[Run]:
    """Every folder's run in the order given (oldest first); a folder named twice counts once."""
    unique = list(dict.fromkeys(Path(f).resolve() for f in folders))
    runs = [load_run(f) for f in unique]
    labels = [r.label for r in runs]
    out = []
    for run in runs:  # two folders of one name (a/run, b/run) keep their parent in the label
        label = run.label if labels.count(run.label) == 1 else f"{run.path.parent.name}/{run.label}"
        out.append(Run(label, run.path, run.records))
    return out


def build_history(runs: Iterable[Run]) -> list[ScenarioHistory]:
    """Per scenario (first-seen order) its status, figures and latency percentiles in every run."""
    runs = list(runs)
    labels = [r.label for r in runs]
    histories: dict[str, ScenarioHistory] = {}
    for run in runs:
        for record in run.records:
            histories.setdefault(record.scenario, ScenarioHistory(record.scenario, labels))
    for history in histories.values():
        for run in runs:
            record = next((r for r in run.records if r.scenario == history.name), None)
            history.statuses.append(record.status if record else None)
            history.retried_flaky.append(bool(record and record.flaky))
            for name in FIGURES:
                history.values.setdefault(name, []).append(figure(record, name) if record else None)
            history.latency.append(dict((record.metrics or {}).get("latency_us") or {}) if record else {})
            history.paths.append(path_label(record) if record else "")
    return list(histories.values())


def _fmt(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    if name == "p99_us":
        return f"{value / 1000:.1f}ms"
    if name in ("boot_s", "duration"):
        return f"{value:.2f}s"
    return f"{value:.0f}"


def _trend_cell(history: ScenarioHistory, name: str) -> str:
    trend = history.trend(name)
    if trend is None:
        return "-"
    change = trend.get("change_pct")
    return _fmt(trend["last"], name) + ("" if change is None else f" ({change:+.0f}%)")


def print_history(runs: list[Run], histories: list[ScenarioHistory], out: TextIO) -> None:
    """The text summary: one line per scenario (pass rate, flips, each figure's latest value and its change
    against the median of the earlier ones), then the flaky scenarios."""
    print(f"cnlab history: {len(runs)} runs, {len(histories)} scenarios: "
          + ", ".join(r.label for r in runs), file=out)
    print(f"\n{'scenario':30} {'passed':>7} {'flips':>5}  {'rate/s':>14} {'lost':>12} {'p99':>16} "
          f"{'boot':>14}  outcomes", file=out)
    for h in histories:
        strip = "".join({"passed": "P", "failed": "F", "error": "E", None: "."}.get(s, "-") for s in h.statuses)
        print(f"{h.name[:30]:30} {h.passed:>3}/{len(h.counted):<3} {h.flips:>5}  {_trend_cell(h, 'rate'):>14} "
              f"{_trend_cell(h, 'lost'):>12} {_trend_cell(h, 'p99_us'):>16} {_trend_cell(h, 'boot_s'):>14}  "
              f"{strip}{'  FLAKY' if h.flaky else ''}", file=out)
    flaky = [h.name for h in histories if h.flaky]
    print("figures: the latest value (change against the median of the earlier ones).  outcomes, oldest "
          "first: P passed, F failed, E error, - interrupted or not run, . absent.", file=out)
    print(f"flaky ({len(flaky)}): {', '.join(flaky)}" if flaky else "flaky: none", file=out)


# ---- HTML -------------------------------------------------------------------------------------------------------

TW, TH, TPAD = 640, 170, 40
_STATUS_COLOUR = {"passed": "#1a7f37", "failed": "#cf222e", "error": "#8250df", "interrupted": "#9a6700",
                  "not run": "#888"}


def trend_plot(title: str, labels: Sequence[str], values: Sequence[float | None], unit: str,
               colour: str = "#0969da") -> str:
    """An SVG plot of one figure over the runs (x: run, oldest left); runs without the figure leave a gap."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return f"<p>{_esc(title)}: no run carries it</p>"
    v_max = max(max(v for _, v in points), 1e-9)
    slots = max(len(labels) - 1, 1)

    def x(i: float) -> float:
        return TPAD + (TW - 2 * TPAD) * i / slots

    def y(v: float) -> float:
        return TH - TPAD - (TH - 2 * TPAD) * v / v_max

    parts = [f'<svg width="{TW}" height="{TH}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{TPAD}" y="16">{_esc(title)} ({_esc(unit)}, max '
             f'{f"{v_max:,.0f}" if v_max >= 10 else f"{v_max:.3g}"})</text>',
             f'<line x1="{TPAD}" y1="{TH - TPAD}" x2="{TW - TPAD}" y2="{TH - TPAD}" stroke="#888"/>']
    run: list[str] = []
    for i, v in enumerate(values):  # consecutive runs with the figure are joined; a missing one breaks the line
        if v is None:
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(run)}"/>')
            run = []
            continue
        run.append(f"{x(i):.1f},{y(v):.1f}")
    if len(run) > 1:
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(run)}"/>')
    for i, v in points:
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                     f'<title>{_esc(labels[i])}: {v:.4g} {_esc(unit)}</title></circle>')
    parts.append(f'<text x="{TPAD}" y="{TH - 8}" font-size="11">{_esc(labels[0])}</text>')
    if len(labels) > 1:
        parts.append(f'<text x="{TW - TPAD}" y="{TH - 8}" font-size="11" text-anchor="end">'
                     f'{_esc(labels[-1])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def status_strip(history: ScenarioHistory) -> str:
    """One square per run, coloured by outcome (grey outline: the scenario was not in that run)."""
    size = 14
    parts = [f'<svg width="{size * len(history.runs) + 2}" height="{size + 2}" role="img" '
             f'aria-label="{_esc(history.name)} outcomes">']
    for i, (label, status) in enumerate(zip(history.runs, history.statuses, strict=True)):
        fill = _STATUS_COLOUR.get(status or "", "none")
        parts.append(f'<rect x="{1 + i * size}" y="1" width="{size - 2}" height="{size - 2}" fill="{fill}" '
                     f'stroke="#888"><title>{_esc(label)}: {_esc(status or "absent")}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def _section(history: ScenarioHistory) -> str:
    rate = history.pass_rate
    out = [f'<section id="{_esc(history.name)}"><h2>{_esc(history.name)} '
           f'<span class="{"failed" if history.flaky else "passed"}">'
           f'{history.passed}/{len(history.counted)} passed{", flaky" if history.flaky else ""}</span></h2>',
           f"<p>{status_strip(history)} oldest first; pass rate "
           f"{'-' if rate is None else f'{100 * rate:.0f}%'}, {history.flips} flips; paths "
           f"{_esc(', '.join(sorted(set(p for p in history.paths if p))) or '-')}</p>"]
    for name, (label, unit) in FIGURES.items():
        values = history.values[name]
        if name == "p99_us":
            values = [None if v is None else v / 1000 for v in values]
            unit = "ms"
        out.append(trend_plot(f"{label}", history.runs, values, unit,
                              "#cf222e" if name == "lost" else "#0969da"))
    last = next(((label, lat, path) for label, lat, path in zip(history.runs[::-1], history.latency[::-1],
                                                               history.paths[::-1], strict=True) if lat), None)
    if last:
        out.append(latency_cdf_plot(f"latency CDF in {last[0]}", [(history.name, last[2], last[1])]))
    out.append("</section>")
    return "".join(out)


def render_history_html(runs: list[Run], histories: list[ScenarioHistory]) -> str:
    """The history page: the table of scenarios, then per scenario its outcomes and trend plots."""
    rows = []
    for h in histories:
        rate = h.pass_rate
        rows.append(f'<tr><td><a href="#{_esc(h.name)}">{_esc(h.name)}</a></td>'
                    f'<td class="{"failed" if h.flaky else ""}">{"flaky" if h.flaky else ""}</td>'
                    f"<td>{h.passed}/{len(h.counted)}</td><td>{'-' if rate is None else f'{100 * rate:.0f}%'}</td>"
                    f"<td>{h.flips}</td><td>{status_strip(h)}</td>"
                    + "".join(f"<td>{_esc(_trend_cell(h, n))}</td>" for n in ("rate", "lost", "p99_us", "boot_s"))
                    + "</tr>")
    table = ("<table><tr><th>scenario</th><th></th><th>passed</th><th>rate</th><th>flips</th><th>outcomes</th>"
             "<th>msgs/s</th><th>lost</th><th>p99</th><th>boot</th></tr>" + "".join(rows) + "</table>")
    flaky = [h.name for h in histories if h.flaky]
    env = runs[-1].records[0].env if runs and runs[-1].records else {}
    head = (f"<p>{len(runs)} runs, oldest first: {_esc(', '.join(r.label for r in runs))}. Latest: kernel "
            f"{_esc(env.get('kernel', '?'))}, accelerator {_esc(env.get('accel', '?'))}, module "
            f"{_esc(env.get('module_source_hash', '?'))}. Figures: the latest value and its change against "
            f"the median of the earlier ones. Flaky: {_esc(', '.join(flaky) or 'none')}.</p>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>cnlab history</title><style>{_CSS}</style>"
            f"</head><body><h1>cnlab history: {len(histories)} scenarios over {len(runs)} runs</h1>{head}{table}"
            + "".join(_section(h) for h in histories) + "</body></html>")


def write_history_html(runs: list[Run], histories: list[ScenarioHistory], path: Path) -> None:
    """Write the history page to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_history_html(runs, histories), encoding="utf-8")
